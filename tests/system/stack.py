"""A real Airflow 3.3 on loopback: api-server, scheduler and dag-processor (LocalExecutor, SQLite).

``AirflowStack`` prepares a private AIRFLOW_HOME, migrates its SQLite database and starts each Airflow
component as its own subprocess (own process group, output in ``<home>/logs-<component>.log``). Everything
is configured through ``AIRFLOW__SECTION__KEY`` environment variables given to those subprocesses only: the
calling process never imports Airflow and the user's ``~/airflow`` is never read or written.

Every listening socket is on 127.0.0.1:

* api-server: ``--host 127.0.0.1`` and ``[api] host``, on a free port (``[api] port``); the task
  supervisors reach it through ``[core] execution_api_server_url``.
* worker log server: Airflow 3.3's ``serve_logs`` binds every interface (``host=""``) with no option to
  change it, so the scheduler (and triggerer) run with ``--skip-serve-logs`` and the stack runs the same
  FastAPI log app under uvicorn on ``127.0.0.1:[logging] worker_log_server_port`` (triggerer logs share
  the port). ``[core] hostname_callable`` returns ``127.0.0.1`` so the api-server fetches logs of running
  tasks from there.
* scheduler health-check server: off (``[scheduler] enable_health_check = False``) and, should someone turn
  it on through ``extra_env``, on ``127.0.0.1``.

Authentication: SimpleAuthManager with user ``admin`` (role admin) and password ``admin`` from a passwords
file written before start; the REST helpers get a JWT from ``POST /auth/token`` (signed with a fixed
``[api_auth] jwt_secret``).

Usage::

    with AirflowStack(home, dags_folder) as stack:
        stack.wait_for_dag("my_dag")
        run_id = stack.trigger("my_dag")
        assert stack.wait_for_run("my_dag", run_id) == "success"
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psutil

LOOPBACK = "127.0.0.1"
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin"
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
ACTIVE_RUN_STATES = ("queued", "running")

# Fixed, test-only secrets: every component of one stack must agree on them.
_JWT_SECRET = "barecount-system-stack-jwt-secret-test-only-" + "0123456789abcdef" * 3  # >= 64 bytes for HS512
_API_SECRET_KEY = "barecount-system-stack-api-secret-test-only-" + "0123456789abcdef" * 3
_FERNET_KEY = base64.urlsafe_b64encode(b"barecount-system-tests-fernet!!!").decode()

_HOSTNAME_MODULE = "barecount_stack_net"
_HOSTNAME_SOURCE = f'''"""Written by the BareCount system-test stack: task hosts are reported as loopback."""


def loopback_hostname() -> str:
    return "{LOOPBACK}"
'''

# The FastAPI app behind Airflow's `serve_logs`, served on loopback only.
_LOG_SERVER_SOURCE = """
import sys
import uvicorn
try:
    from setproctitle import setproctitle
    setproctitle("airflow serve-logs (loopback)")
except Exception:
    pass
uvicorn.run(
    "airflow.utils.serve_logs.log_server:get_app",
    host=sys.argv[1],
    port=int(sys.argv[2]),
    factory=True,
    log_level="info",
    access_log=False,
)
"""

# Order of start; stop goes the other way round, the api-server last (tasks report to it while stopping).
_AIRFLOW_COMPONENTS = ("api-server", "log-server", "dag-processor", "scheduler", "triggerer")


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the process that started the stack dies (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class StackError(RuntimeError):
    """The stack failed to start, a component died, or something did not happen in time."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"<cannot read {path.name}: {exc}>"
    return "\n".join(data.splitlines()[-lines:])


class AirflowStack:
    """Airflow 3.3 api-server + scheduler + dag-processor (+ optional triggerer) on 127.0.0.1."""

    def __init__(
        self,
        home: Path,
        dags_folder: Path,
        extra_env: dict[str, str] | None = None,
        *,
        triggerer: bool = False,
        start_timeout: float = 180.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.home = Path(home).resolve()
        self.dags_folder = Path(dags_folder).resolve()
        self.extra_env = dict(extra_env or {})
        self.with_triggerer = triggerer
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.api_port = free_port()
        self.log_server_port = free_port()
        self.health_check_port = free_port()  # only used if someone enables the scheduler health check
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.startup_seconds: float | None = None
        self._token: str | None = None
        self._client: httpx.Client | None = None
        self._log_handles: list[Any] = []

    # ------------------------------------------------------------------ configuration

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    @property
    def log_folder(self) -> Path:
        return self.home / "logs"

    @property
    def config_folder(self) -> Path:
        return self.home / "config"

    def component_log(self, component: str) -> Path:
        return self.home / f"logs-{component}.log"

    @property
    def env(self) -> dict[str, str]:
        """The environment of every Airflow process of this stack (also usable for `airflow` CLI calls)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        bindir = str(Path(sys.executable).parent)
        pythonpath = [str(self.config_folder)]
        if os.environ.get("PYTHONPATH"):
            pythonpath.append(os.environ["PYTHONPATH"])
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
                "PYTHONPATH": os.pathsep.join(pythonpath),
                "PYTHONUNBUFFERED": "1",
                # core
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.home / "plugins"),
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "8",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__FERNET_KEY": _FERNET_KEY,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{_HOSTNAME_MODULE}.loopback_hostname",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self._passwords_file),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                # api-server
                "AIRFLOW__API__HOST": LOOPBACK,
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__SECRET_KEY": _API_SECRET_KEY,
                "AIRFLOW__API__EXPOSE_CONFIG": "False",
                "AIRFLOW__API_AUTH__JWT_SECRET": _JWT_SECRET,
                # logs
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.log_folder),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.log_server_port),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.log_server_port),
                "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
                # scheduler: quick loops, no health-check server
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": LOOPBACK,
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(self.health_check_port),
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
                "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",
                # dag-processor: notice new files within seconds
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
                "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "2",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "15",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "2",
                "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "300",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            }
        )
        env.update(self.extra_env)
        return env

    @property
    def _passwords_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json"

    def _prepare_home(self) -> None:
        for folder in (self.home, self.log_folder, self.config_folder, self.home / "plugins"):
            folder.mkdir(parents=True, exist_ok=True)
        self._passwords_file.write_text(json.dumps({ADMIN_USER: ADMIN_PASSWORD}) + "\n")
        (self.config_folder / f"{_HOSTNAME_MODULE}.py").write_text(_HOSTNAME_SOURCE)
        # For humans: the environment that reproduces this stack (`set -a; . stack.env; airflow ...`).
        lines = [f"{k}={json.dumps(v)}" for k, v in sorted(self.env.items()) if k.startswith("AIRFLOW")]
        (self.home / "stack.env").write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> AirflowStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.processes:
            raise StackError("stack already started")
        started = time.monotonic()
        self._prepare_home()
        atexit.register(self.stop)
        try:
            self.cli("db", "migrate", timeout=300, log_name="migrate")
            # BareCount's own tables, as a deployment sets them up (docs/database.md)
            self.barecount("db", "migrate", timeout=120, log_name="barecount-migrate")
            for component in _AIRFLOW_COMPONENTS:
                if component == "triggerer" and not self.with_triggerer:
                    continue
                self._spawn(component)
            self._wait_until_ready(started + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _command(self, component: str) -> list[str]:
        airflow = [sys.executable, "-m", "airflow"]
        if component == "api-server":
            return [*airflow, "api-server", "--host", LOOPBACK, "--port", str(self.api_port)]
        if component == "log-server":
            return [sys.executable, "-c", _LOG_SERVER_SOURCE, LOOPBACK, str(self.log_server_port)]
        if component in ("scheduler", "triggerer"):
            return [*airflow, component, "--skip-serve-logs"]
        return [*airflow, component]

    def _spawn(self, component: str) -> None:
        log = self.component_log(component).open("ab")
        self._log_handles.append(log)
        self.processes[component] = subprocess.Popen(
            self._command(component),
            cwd=self.home,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session and process group: pgid == pid
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def cli(
        self, *args: str, timeout: float = 120.0, log_name: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``airflow <args>`` against this stack's home; raise StackError on failure."""
        return self._run([sys.executable, "-m", "airflow", *args], f"airflow {' '.join(args)}", timeout, log_name)

    def barecount(
        self, *args: str, timeout: float = 120.0, log_name: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``barecount <args>`` against this stack's home; raise StackError on failure."""
        command = [sys.executable, "-m", "barecount_provider.cli", *args]
        return self._run(command, f"barecount {' '.join(args)}", timeout, log_name)

    def _run(
        self, cmd: list[str], name: str, timeout: float, log_name: str | None
    ) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(
                cmd,
                cwd=self.home,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"`{name}` timed out after {timeout}s") from exc
        if log_name:
            self.component_log(log_name).write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise StackError(
                f"`{name}` exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"
            )
        return proc

    def _check_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
        if dead:
            raise self.error(f"Airflow component(s) exited: {dead}")

    def _wait_until_ready(self, deadline: float) -> None:
        wanted = ["metadatabase", "scheduler", "dag_processor"] + (
            ["triggerer"] if self.with_triggerer else []
        )
        health: dict[str, Any] = {}
        while True:
            self._check_alive()
            try:
                resp = httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=5)
                if resp.status_code == 200:
                    health = resp.json()
                    if all((health.get(k) or {}).get("status") == "healthy" for k in wanted) and (
                        self._port_open(self.log_server_port)
                    ):
                        break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise self.error(f"Airflow not ready after {self.start_timeout}s; last health: {health}")
            time.sleep(0.5)
        self._login()

    @staticmethod
    def _port_open(port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            return sock.connect_ex((LOOPBACK, port)) == 0

    def pids(self) -> list[int]:
        """Process ids of every running process of the stack (the components and their descendants)."""
        pids: list[int] = []
        for proc in self.processes.values():
            if proc.poll() is not None:
                continue
            try:
                root = psutil.Process(proc.pid)
                pids.append(root.pid)
                pids.extend(child.pid for child in root.children(recursive=True))
            except psutil.NoSuchProcess:
                continue
        return pids

    def stop(self) -> None:
        """Stop every component by its process id: SIGTERM, wait, then SIGKILL of its process group."""
        atexit.unregister(self.stop)
        if self._client is not None:
            self._client.close()
            self._client = None
        self._token = None
        # Everything but the api-server first (in parallel), then the api-server.
        order = [c for c in reversed(_AIRFLOW_COMPONENTS) if c in self.processes and c != "api-server"]
        batches = [order, ["api-server"] if "api-server" in self.processes else []]
        for batch in batches:
            self._terminate([(name, self.processes[name]) for name in batch])
        self.processes.clear()
        for handle in self._log_handles:
            handle.close()
        self._log_handles.clear()

    def _terminate(self, procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
        tracked: list[psutil.Process] = []
        for _name, proc in procs:
            try:
                tracked.extend(psutil.Process(proc.pid).children(recursive=True))
            except psutil.NoSuchProcess:
                pass
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + self.stop_timeout
        for _name, proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # The leader is gone or overdue: kill whatever is left in its process group ...
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # ... and descendants that left the group (e.g. BashOperator runs its command in a new session).
        for child in tracked:
            try:
                if child.is_running():
                    child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tracked, timeout=5)

    # ------------------------------------------------------------------ diagnostics

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for path in sorted(self.home.glob("logs-*.log")):
            parts.append(f"----- {path.name} (last {lines} lines) -----\n{_tail(path, lines)}")
        return "\n".join(parts)

    def error(self, message: str, lines: int = 40) -> StackError:
        return StackError(f"{message}\n{self.log_tails(lines)}")

    def listening_sockets(self) -> list[dict[str, Any]]:
        """TCP sockets in LISTEN state held by any process of the stack: pid, name, ip, port."""
        found: list[dict[str, Any]] = []
        for pid in self.pids():
            try:
                proc = psutil.Process(pid)
                conns = proc.net_connections(kind="tcp")
                name = " ".join(" ".join(proc.cmdline()).split())[:120]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            for conn in conns:
                if conn.status == psutil.CONN_LISTEN:
                    found.append({"pid": pid, "name": name, "ip": conn.laddr.ip, "port": conn.laddr.port})
        return found

    # ------------------------------------------------------------------ REST API v2

    def _login(self) -> None:
        resp = httpx.post(
            f"{self.base_url}/auth/token",
            json={"username": ADMIN_USER, "password": ADMIN_PASSWORD},
            timeout=30,
        )
        if resp.status_code not in (200, 201):
            raise self.error(f"POST /auth/token -> {resp.status_code}: {resp.text[:500]}")
        self._token = resp.json()["access_token"]
        if self._client is not None:
            self._client.close()
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=30,
        )

    @property
    def token(self) -> str:
        if self._token is None:
            self._login()
        assert self._token is not None
        return self._token

    def api(self, method: str, path: str, *, check: bool = True, **kwargs: Any) -> httpx.Response:
        """Call the REST API. ``path`` is relative to ``/api/v2/`` unless it starts with ``/``.

        With ``check`` (default) a 4xx/5xx answer raises StackError carrying the response body.
        """
        if not self.processes:
            raise StackError("stack is not running")
        url = path if path.startswith("/") else f"/api/v2/{path}"
        if self._client is None:
            self._login()
        assert self._client is not None
        resp = self._client.request(method, url, **kwargs)
        if resp.status_code == 401:  # token expired
            self._login()
            resp = self._client.request(method, url, **kwargs)
        for _ in range(5):  # SQLite: a write can meet "database is locked" while runs are in progress
            if resp.status_code != 500 or method == "GET" or "Database error" not in resp.text:
                break
            time.sleep(0.5)
            resp = self._client.request(method, url, **kwargs)
        if check and resp.status_code >= 400:
            raise StackError(f"{method} {url} -> {resp.status_code}: {resp.text[:2000]}")
        return resp

    def _paged(self, path: str, key: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = self.api("GET", path, params={**(params or {}), "limit": 100, "offset": offset}).json()
            batch = page.get(key, [])
            items.extend(batch)
            offset += len(batch)
            if not batch or offset >= page.get("total_entries", 0):
                return items

    def _poll(self, what: str, timeout: float, probe: Callable[[], Any], detail: Callable[[], str]) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            result = probe()
            if result is not None:
                return result
            if time.monotonic() > deadline:
                raise self.error(f"timed out after {timeout}s waiting for {what}; {detail()}")
            time.sleep(1)

    def dags(self) -> list[dict[str, Any]]:
        return self._paged("dags", "dags")

    def import_errors(self) -> list[dict[str, Any]]:
        return self._paged("importErrors", "import_errors")

    def _import_errors_text(self) -> str:
        errors = self.import_errors()
        if not errors:
            return "no import errors"
        return "import errors: " + "; ".join(f"{e.get('filename')}: {e.get('stack_trace')}" for e in errors)

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the dag-processor has serialized ``dag_id``; return its DAG resource."""

        def probe() -> dict[str, Any] | None:
            resp = self.api("GET", f"dags/{quote(dag_id, safe='')}", check=False)
            if resp.status_code == 200:
                return dict(resp.json())
            if resp.status_code != 404:
                raise StackError(f"GET dags/{dag_id} -> {resp.status_code}: {resp.text[:500]}")
            return None

        return dict(self._poll(f"DAG {dag_id!r}", timeout, probe, self._import_errors_text))

    def dag_files(self) -> list[str]:
        """Files of the dags folder that Airflow's default heuristic would parse (relative paths)."""
        files = []
        for path in sorted(self.dags_folder.rglob("*.py")):
            if "__pycache__" in path.parts or path.name.startswith("."):
                continue
            content = path.read_bytes().lower()
            if b"airflow" in content and (b"dag" in content or b"asset" in content):
                files.append(path.relative_to(self.dags_folder).as_posix())
        return files

    def wait_for_dags_folder(self, timeout: float = 180.0) -> tuple[list[str], list[dict[str, Any]]]:
        """Wait until every DAG file of the dags folder is parsed (to DAGs or to an import error).

        Returns (dag ids, import errors).
        """
        expected = set(self.dag_files())

        def probe() -> tuple[list[str], list[dict[str, Any]]] | None:
            dags = self.dags()
            errors = self.import_errors()
            seen = {str(d.get("relative_fileloc") or "") for d in dags}
            seen |= {str(e.get("filename") or "") for e in errors}
            if expected <= seen:
                return sorted(d["dag_id"] for d in dags), errors
            return None

        def detail() -> str:
            seen = {str(d.get("relative_fileloc") or "") for d in self.dags()}
            return f"files not yet parsed: {sorted(expected - seen)}; {self._import_errors_text()}"

        dag_ids, errors = self._poll("the dags folder to be parsed", timeout, probe, detail)
        return dag_ids, errors

    def unpause(self, dag_id: str) -> None:
        self.api("PATCH", f"dags/{quote(dag_id, safe='')}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Create a manual DAG run; return its run_id."""
        resp = self.api(
            "POST",
            f"dags/{quote(dag_id, safe='')}/dagRuns",
            json={"logical_date": None, "conf": conf or {}},
        )
        return str(resp.json()["dag_run_id"])

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}").json())

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 180.0) -> str:
        """Wait until the run is finished; return its state ("success" or "failed")."""

        def probe() -> str | None:
            state = self.dag_run(dag_id, run_id).get("state")
            return str(state) if state in TERMINAL_RUN_STATES else None

        def detail() -> str:
            tis = self.task_instances(dag_id, run_id)
            states = {f"{t['task_id']}[{t.get('map_index', -1)}]": t.get("state") for t in tis}
            return f"run {dag_id}/{run_id} is {self.dag_run(dag_id, run_id).get('state')}; tasks: {states}"

        return str(self._poll(f"run {dag_id}/{run_id}", timeout, probe, detail))

    def active_runs(self) -> list[dict[str, Any]]:
        """Queued or running DAG runs of every DAG."""
        return self._paged("dags/~/dagRuns", "dag_runs", {"state": list(ACTIVE_RUN_STATES)})

    def wait_until_idle(self, timeout: float = 300.0) -> None:
        """Wait until no DAG run is queued or running."""

        def probe() -> bool | None:
            return True if not self.active_runs() else None

        def detail() -> str:
            return "active runs: " + ", ".join(f"{r['dag_id']}/{r['dag_run_id']}" for r in self.active_runs())

        self._poll("all DAG runs to finish", timeout, probe, detail)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self._paged(
            f"dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances", "task_instances"
        )

    def task_log_path(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> Path:
        """The task try's log file on disk (Airflow 3.3's default ``[logging] log_filename_template``)."""
        path = self.log_folder / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            path = path / f"map_index={map_index}"
        return path / f"attempt={try_number}.log"

    def wait_for_file(self, path: Path, timeout: float = 30.0, contains: str | None = None) -> str:
        """Wait until ``path`` exists (and contains ``contains``); return its text."""

        def probe() -> str | None:
            if path.exists():
                text = path.read_text(errors="replace")
                if contains is None or contains in text:
                    return text
            return None

        return str(self._poll(str(path), timeout, probe, lambda: f"exists: {path.exists()}"))
