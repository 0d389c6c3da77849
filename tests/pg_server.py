"""A throwaway PostgreSQL server on 127.0.0.1 for the tests and benchmarks (Debian's postgresql package).

``PostgresServer().start()`` runs ``initdb`` in a temporary directory and starts the server on a free
loopback port (Unix socket in the data directory, trust authentication, fsync off: a test server), returns
its SQLAlchemy URL, and ``stop()`` stops it by its process id (postmaster.pid). PostgreSQL refuses to run as
root: as root the commands run as the ``postgres`` user the Debian package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def available() -> bool:
    if not (find_binary("initdb") and find_binary("pg_ctl")):
        return False
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="barecount-pg-")
        self.data = os.path.join(self.directory, "data")
        self.port = _free_port()
        self.pid: int | None = None

    def _run(self, *command: str) -> None:
        if os.geteuid() == 0:
            command = ("runuser", "-u", "postgres", "--", *command)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def start(self) -> str:
        initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        if not (initdb and pg_ctl):
            raise RuntimeError("PostgreSQL is not installed (initdb / pg_ctl not found)")
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        self._run(initdb, "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(pg_ctl, "-D", self.data, "-o", options, "-l", os.path.join(self.directory, "server.log"), "-w", "-t", "60", "start")
        with open(os.path.join(self.data, "postmaster.pid"), encoding="utf-8") as file:
            self.pid = int(file.readline().strip())
        return self.url()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str) -> str:
        """A new, empty database on the running server (``prefix`` plus a unique suffix); its URL."""
        import uuid

        import sqlalchemy as sa

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        admin = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            admin.dispose()
        return self.url(name)

    def stop(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGINT)  # "fast" shutdown
                for _ in range(300):
                    os.kill(self.pid, 0)
                    time.sleep(0.1)
            except ProcessLookupError:
                pass
            self.pid = None
        shutil.rmtree(self.directory, ignore_errors=True)
