"""Airflow on CeleryExecutor past one machine, simulated on loopback: a Redis broker, and Celery workers that
each have an AIRFLOW_HOME, a telemetry directory, a host name and a BareCount forwarder of their own.

* :class:`RedisServer`: Debian's ``redis-server`` on a free 127.0.0.1 port, in a temporary directory, no
  persistence (no RDB snapshot, no append-only file), stopped by its process id.
* :class:`CeleryStack`: :class:`~tests.system.stack.AirflowStack` (api-server, scheduler, dag-processor) with
  ``[core] executor = CeleryExecutor``, plus one ``airflow celery worker`` per :class:`WorkerSpec` and beside
  each one ``barecount telemetry forward --loop 1`` with the same environment, as on a worker machine.

A worker differs from the stack's other processes by its environment only: ``AIRFLOW_HOME`` (its own
directory), ``[logging] base_log_folder`` (its task logs), ``[barecount] telemetry_dir`` and ``evidence_dir``
(its spool, events, span lines), ``[barecount] task_outputs = forwarder`` and ``[core] hostname_callable``:
Airflow names the host a try ran on with that callable, and on one machine every process would give the same
name, so the workers use :func:`barecount_celery_host.worker_hostname` (written to the stack's config folder),
which returns the worker's ``BARECOUNT_TEST_WORKER_HOSTNAME``. The workers serve the default queue and a queue
of their own (``WorkerSpec.queue``), skip Airflow's log server (it binds every interface) and are not told
about each other (``--without-mingle --without-gossip``).

Every process runs in its own process group and is stopped through it (SIGTERM, then SIGKILL of the group)
by :meth:`CeleryStack.stop`, even when the start failed; :meth:`CeleryStack.kill_worker` kills one worker's
whole process group with SIGKILL (a machine lost) and leaves its forwarder running.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from .stack import LOOPBACK, AirflowStack, StackError, _die_with_parent, _tail, free_port

_HOSTNAME_MODULE = "barecount_celery_host"
_HOSTNAME_SOURCE = '''"""Written by the BareCount Celery system test: each worker names its host from its environment."""

import os


def worker_hostname() -> str:
    return os.environ.get("BARECOUNT_TEST_WORKER_HOSTNAME", "127.0.0.1")
'''


def _preexec() -> Any:
    return _die_with_parent if sys.platform.startswith("linux") else None


def _descendants(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    try:
        return list(psutil.Process(proc.pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def _kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=5)


def _stop_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM to the process, then SIGKILL to its whole process group (pgid == pid: own session) and to the
    descendants that left the group (a Celery worker's task processes run in process groups of their own)."""
    descendants = _descendants(proc)
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    _kill_all(descendants)


class RedisServer:
    """``redis-server`` on 127.0.0.1 with no persistence, in a temporary directory removed at stop."""

    def __init__(self) -> None:
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="barecount-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float = 30.0) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError(
                "redis-server is not installed (scripts/system-deps.sh installs Debian's package)"
            )
        command = [
            binary,
            "--bind", LOOPBACK,
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_preexec(),
        )
        deadline = time.monotonic() + timeout
        while not self._answers_ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = _tail(self.directory / "redis.log", 20)
                self.stop()
                raise StackError(f"redis-server did not start on port {self.port}:\n{log}")
            time.sleep(0.1)
        return self.url

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            _stop_group(self.process, timeout=10)
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass(frozen=True)
class WorkerSpec:
    """One Celery worker "machine": its name (Celery node name and Airflow host name) and its own queue."""

    hostname: str
    queue: str
    concurrency: int = 4


class CeleryWorker:
    """A worker and its forwarder: the processes, the home and the environment they share."""

    def __init__(self, spec: WorkerSpec, home: Path, env: dict[str, str]) -> None:
        self.spec = spec
        self.home = home
        self.env = env
        self.worker: subprocess.Popen[bytes] | None = None
        self.forwarder: subprocess.Popen[bytes] | None = None
        self.killed = False

    @property
    def log_folder(self) -> Path:
        return self.home / "logs"

    @property
    def telemetry_dir(self) -> Path:
        return self.home / "barecount" / "telemetry"

    def component_log(self, component: str) -> Path:
        return self.home / f"logs-{component}.log"

    def task_log_path(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> Path:
        path = self.log_folder / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            path = path / f"map_index={map_index}"
        return path / f"attempt={try_number}.log"


class CeleryStack(AirflowStack):
    """An :class:`AirflowStack` on CeleryExecutor with Celery workers on loopback (see the module docstring).

    ``extra_env`` must give the metadata database (``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``, PostgreSQL) and
    BareCount's shared stores; the executor, the broker and the result backend are set here.
    """

    def __init__(
        self,
        home: Path,
        dags_folder: Path,
        broker_url: str,
        workers: list[WorkerSpec],
        extra_env: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        env = dict(extra_env or {})
        database = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
        if not database.startswith("postgresql"):
            raise ValueError(f"CeleryStack needs a PostgreSQL metadata database, got {database!r}")
        env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CELERY__BROKER_URL": broker_url,
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + database,
                "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
            }
        )
        super().__init__(home, dags_folder, env, **kwargs)
        self.worker_specs = list(workers)
        self.workers: dict[str, CeleryWorker] = {}

    def worker_env(self, spec: WorkerSpec, home: Path) -> dict[str, str]:
        env = dict(self.env)
        env.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{_HOSTNAME_MODULE}.worker_hostname",
                "BARECOUNT_TEST_WORKER_HOSTNAME": spec.hostname,
                "AIRFLOW__BARECOUNT__TELEMETRY_DIR": str(home / "barecount" / "telemetry"),
                "AIRFLOW__BARECOUNT__EVIDENCE_DIR": str(home / "barecount" / "evidence"),
                "AIRFLOW__BARECOUNT__TASK_OUTPUTS": "forwarder",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(spec.concurrency),
            }
        )
        return env

    def start(self) -> None:
        (self.home / "config").mkdir(parents=True, exist_ok=True)
        (self.home / "config" / f"{_HOSTNAME_MODULE}.py").write_text(_HOSTNAME_SOURCE)
        super().start()
        try:
            for spec in self.worker_specs:
                home = self.home.parent / f"{self.home.name}-{spec.hostname}"
                (home / "logs").mkdir(parents=True, exist_ok=True)
                worker = CeleryWorker(spec, home, self.worker_env(spec, home))
                self.workers[spec.hostname] = worker
                worker.forwarder = self._spawn_in(
                    worker,
                    "forwarder",
                    [str(Path(sys.executable).with_name("barecount")), "telemetry", "forward", "--loop", "1"],
                )
                worker.worker = self._spawn_in(
                    worker,
                    "celery-worker",
                    [
                        sys.executable, "-m", "airflow", "celery", "worker",
                        "--queues", f"default,{spec.queue}",
                        "--concurrency", str(spec.concurrency),
                        "--celery-hostname", f"{spec.hostname}@{LOOPBACK}",
                        "--skip-serve-logs", "--without-mingle", "--without-gossip",
                    ],
                )  # fmt: skip
            deadline = time.monotonic() + self.start_timeout
            for worker in self.workers.values():
                self._wait_for_worker(worker, deadline)
        except BaseException:
            self.stop()
            raise

    def _spawn_in(self, worker: CeleryWorker, component: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = worker.component_log(component).open("ab")
        self._log_handles.append(log)
        return subprocess.Popen(
            command,
            cwd=worker.home,
            env=worker.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: pgid == pid
            preexec_fn=_preexec(),
        )

    def _wait_for_worker(self, worker: CeleryWorker, deadline: float) -> None:
        """Until Celery says the node is ready (it has connected to the broker and consumes its queues)."""
        log = worker.component_log("celery-worker")
        ready = f"{worker.spec.hostname}@{LOOPBACK} ready".encode()
        while not (log.exists() and ready in log.read_bytes()):
            self._check_alive()
            if time.monotonic() > deadline:
                raise self.error(
                    f"Celery worker {worker.spec.hostname} not ready after {self.start_timeout}s"
                )
            time.sleep(0.5)

    def _worker_processes(self) -> dict[str, subprocess.Popen[bytes]]:
        procs = {}
        for name, worker in self.workers.items():
            if worker.worker is not None and not worker.killed:
                procs[f"celery-worker {name}"] = worker.worker
            if worker.forwarder is not None:
                procs[f"forwarder {name}"] = worker.forwarder
        return procs

    def _check_alive(self) -> None:
        super()._check_alive()
        dead = {name: p.returncode for name, p in self._worker_processes().items() if p.poll() is not None}
        if dead:
            raise self.error(f"Celery worker process(es) exited: {dead}")

    def kill_worker(self, hostname: str) -> None:
        """``kill -9`` of the worker's whole process group (the worker and its pool), and of the task processes
        it forked, which Airflow's supervisor puts in process groups of their own (left alone, such a process
        runs on as an orphan): the machine is lost. Its forwarder is another process group and runs on."""
        worker = self.workers[hostname]
        assert worker.worker is not None
        worker.killed = True
        descendants = _descendants(worker.worker)
        os.killpg(worker.worker.pid, signal.SIGKILL)
        _kill_all(descendants)
        worker.worker.wait(timeout=10)

    def pids(self) -> list[int]:
        pids = super().pids()
        for proc in self._worker_processes().values():
            if proc.poll() is None:
                try:
                    root = psutil.Process(proc.pid)
                    pids.append(root.pid)
                    pids.extend(child.pid for child in root.children(recursive=True))
                except psutil.NoSuchProcess:
                    continue
        return pids

    def stop(self) -> None:
        """The workers (then their forwarders: a last round), then the Airflow components."""
        for worker in self.workers.values():
            for proc in (worker.worker, worker.forwarder):
                if proc is not None:
                    _stop_group(proc, timeout=self.stop_timeout)
        super().stop()

    def log_tails(self, lines: int = 40) -> str:
        parts = [super().log_tails(lines)]
        for worker in self.workers.values():
            for path in sorted(worker.home.glob("logs-*.log")):
                parts.append(
                    f"----- {worker.spec.hostname}: {path.name} (last {lines} lines) -----\n{_tail(path, lines)}"
                )
        return "\n".join(parts)
