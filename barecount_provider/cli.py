"""The ``barecount`` command.

    barecount doctor                 resolved config, policy, sinks and whether each sink is reachable
    barecount policy validate FILE   validate a policy file; every mistake with file, key path and value
    barecount runs [--dag D] [--last N]   what BareCount recorded per task try (the file sink)
    barecount pools sync [--dry-run] [--prune]   create/update the tenants' Airflow pools through the REST API
    barecount pools check            exit 1 when the pools or their registry differ from the policy
    barecount telemetry forward [--loop S]   export the OTLP spool (the scheduler runs it as its forwarder process)
    barecount evidence list|show|verify|flush   the evidence store: records, one record, the hash chains, the spool
    barecount cost report --by tenant [--since 30d]   cost roll-up per day from the evidence index
    barecount dlq stats|list         a dead-letter queue's depth and oldest entry per tenant/pipeline; its letters
    barecount replay plan|run|status   replay a dead-letter queue into a target, idempotently (the replay ledger)
    barecount db migrate|check [--url URL]   create or upgrade BareCount's tables; say whether they are current
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from barecount_provider import __version__, config, redaction

if TYPE_CHECKING:
    from barecount_provider.pools import AirflowApi


def _probe_udp(host: str, port: int, timeout: float = 0.3) -> str:
    """UDP cannot confirm a listener; it can detect an ICMP 'port unreachable' (nobody listening)."""
    try:
        address = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
    except OSError as err:
        return f"UNREACHABLE (cannot resolve {host}: {err.strerror or err})"
    with socket.socket(address[0], socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(address[4])
            sock.send(b"barecount.doctor.probe:1|c")
            sock.recv(1)
        except ConnectionRefusedError:
            return "UNREACHABLE (port unreachable: nothing listens)"
        except TimeoutError:
            return "ok (packet sent, no error came back)"
        except OSError as err:
            return f"UNREACHABLE ({err})"
    return "ok"


def _probe_tcp(url: str, timeout: float = 1.0) -> str:
    parsed = urllib.parse.urlparse(url)
    host = parsed.hostname or "localhost"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "ok (TCP connect)"
    except OSError as err:
        return f"UNREACHABLE ({err.strerror or err})"


def _probe_dir(path: str) -> str:
    try:
        os.makedirs(path, exist_ok=True)
        return "ok (writable)" if os.access(path, os.W_OK) else "NOT WRITABLE"
    except OSError as err:
        return f"NOT WRITABLE ({err.strerror or err})"


def cmd_doctor(args: argparse.Namespace) -> int:
    """Every invalid option, the policy, each sink and the evidence store; exit 1 when anything is wrong."""
    report = doctor_report()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_doctor(report)
    return 0 if report["ok"] else 1


def doctor_report() -> dict[str, Any]:
    """What `barecount doctor` checks, as a document (its --json output). An invalid option is reported with
    what it should be, and the checks that need it are not run (``status``: ``not checked: ...``)."""
    invalid = config.validate()
    bad = {problem.option for problem in invalid}
    policy = _doctor_policy(bad)
    price_table = _doctor_price_table(bad)
    sinks = _doctor_sinks(bad)
    evidence = _doctor_evidence(bad)
    emit_failures = _doctor_emit_failures(bad)
    problems = len(invalid) + bool(policy.get("problem")) + sum(bool(sink["problem"]) for sink in sinks)
    problems += bool(price_table.get("problem")) + bool(evidence.get("problem"))
    warnings = []
    if "secret_key" not in bad and not config.secret_key():
        warnings.append("no [barecount] secret_key, [core] fernet_key or [api_auth] jwt_secret: run tokens are guessable")
    return {
        "version": __version__,
        "options": config.resolved(),
        "invalid_options": [problem.as_dict() for problem in invalid],
        "policy": policy,
        "price_table": price_table,
        "sinks": sinks,
        "evidence": evidence,
        "emit_failures": emit_failures,
        "masking": _doctor_masking(),
        "warnings": warnings,
        "problems": problems,
        "ok": problems == 0,
    }


def _doctor_masking() -> dict[str, Any]:
    """Where Airflow's secrets masker is extended: at settings load, by the ``airflow.policy`` entry point (every
    Airflow process, whatever ``[core] lazy_load_plugins`` says), and by the plugin where Airflow loads it."""
    from importlib.metadata import entry_points

    from barecount_provider import policies
    from barecount_provider.redaction import is_installed_in_airflow_masker

    entry_point = any(point.value.startswith("barecount_provider.policies") for point in entry_points(group="airflow.policy"))
    at_settings_load = entry_point and policies.MASKER_EXTENDED_AT_SETTINGS_LOAD
    active = is_installed_in_airflow_masker()
    if at_settings_load:
        where = "extended at settings load in every Airflow process (airflow.policy entry point), and at plugin load"
    elif active:
        where = "extended at plugin load only: processes that do not load plugins (a Celery worker) do not mask BareCount's patterns"
    else:
        where = "NOT extended: the task log files carry only Airflow's own masking"
    return {"entry_point": entry_point, "at_settings_load": at_settings_load, "active_here": active, "status": where}


def _not_checked(bad: set[str], *options: str) -> str | None:
    """``not checked: ...`` when one of ``options`` is invalid (reported once, with the options)."""
    invalid = [name for name in options if name in bad]
    return f"not checked: invalid [barecount] {', '.join(invalid)}" if invalid else None


def _doctor_policy(bad: set[str]) -> dict[str, Any]:
    skipped = _not_checked(bad, "policy_path", "default_tenant")
    if skipped:
        return {"status": skipped, "problem": None}
    try:
        from barecount_provider.policy import load_policy

        policy = load_policy(config.policy_path() or None)
        default = policy.for_tenant(config.default_tenant())
        return {
            "source": str(policy.source),
            "tenants": sorted(policy.tenants),
            "default_tenant": {
                "tenant": default.tenant,
                "allowed_runner_classes": list(default.allowed_runner_classes),
                "max_size": default.max_size,
                "trace_sampling_ratio": default.trace_sampling_ratio,
            },
            "problem": None,
        }
    except Exception as err:
        return {"problem": str(err)}


def _doctor_price_table(bad: set[str]) -> dict[str, Any]:
    """The price table [barecount] cost_price_table_path names (empty: the shipped one), checked whole."""
    skipped = _not_checked(bad, "cost_price_table_path")
    if skipped:
        return {"status": skipped, "problem": None}
    path = config.cost_price_table_path()
    if not path:
        return {"source": "<shipped>", "problem": None}
    from barecount_provider.cost.prices import validate_price_file

    mistakes = validate_price_file(path)
    return {"source": path, "problem": "\n".join(str(mistake) for mistake in mistakes) or None}


def _sink(name: str, target: str, status: str, *failures: str) -> dict[str, Any]:
    return {"sink": name, "target": target, "status": status, "problem": status.startswith(failures) if failures else False}


def _doctor_sinks(bad: set[str]) -> list[dict[str, Any]]:
    from barecount_provider.telemetry import tracing

    sinks = []
    skipped = _not_checked(bad, "statsd_on", "statsd_host", "statsd_port", "statsd_tag_style")
    if skipped:
        sinks.append(_sink("statsd", "", skipped))
    elif config.statsd_on():
        target = f"udp://{config.statsd_host()}:{config.statsd_port()} ({config.statsd_tag_style()})"
        sinks.append(_sink("statsd", target, _probe_udp(config.statsd_host(), config.statsd_port()), "UNREACHABLE"))
    else:
        sinks.append(_sink("statsd", "", "off"))
    skipped = _not_checked(bad, "otlp_metrics_on")
    if skipped:
        sinks.append(_sink("otlp metrics", "", skipped))
    elif config.otlp_metrics_on():
        endpoint = config.otlp_endpoint("metrics")
        sinks.append(_sink("otlp metrics", endpoint, _probe_tcp(endpoint), "UNREACHABLE"))
    else:
        sinks.append(_sink("otlp metrics", "", "off"))
    skipped = _not_checked(bad, "traces_on", "traces_exporter", "telemetry_dir")
    if skipped:
        sinks.append(_sink("traces", "", skipped))
    elif not config.traces_on():
        sinks.append(_sink("traces", "", "off"))
    elif tracing.airflow_tracing_on():
        sinks.append(
            _sink("traces", "Airflow's tracer provider ([traces] otel_on)", "BareCount adds its spans and tenant ratio")
        )
    elif config.traces_exporter() == "file":
        path = os.path.join(config.telemetry_dir(), "spans.jsonl")
        sinks.append(_sink("traces", f"file {path}", _probe_dir(config.telemetry_dir()), "NOT WRITABLE"))
    elif config.traces_exporter() == "otlp":
        endpoint = config.otlp_endpoint("traces")
        sinks.append(_sink("traces", f"otlp {endpoint}", _probe_tcp(endpoint), "UNREACHABLE"))
    else:
        sinks.append(_sink("traces", "spans created, exporter none", "ok"))
    skipped = _not_checked(bad, "file_sink_on", "telemetry_dir")
    if skipped:
        sinks.append(_sink("file", "", skipped))
    elif config.file_sink_on():
        path = os.path.join(config.telemetry_dir(), "events.jsonl")
        sinks.append(_sink("file", path, _probe_dir(config.telemetry_dir()), "NOT WRITABLE"))
    else:
        sinks.append(_sink("file", "", "off"))
    return sinks


def _doctor_evidence(bad: set[str]) -> dict[str, Any]:
    """The evidence store's state; ``problem`` when it cannot be reached."""
    skipped = _not_checked(bad, "evidence_on")
    if skipped:
        return {"status": skipped, "problem": None}
    if not config.evidence_on():
        return {"status": "off", "problem": None}
    skipped = _not_checked(
        bad, "evidence_store", "evidence_dir", "evidence_index_url", "evidence_s3_bucket", "evidence_s3_prefix",
        "evidence_s3_object_lock_days", "evidence_aws_conn_id", "evidence_store_timeout_ms",
    )  # fmt: skip
    if skipped:
        return {"status": skipped, "problem": None}
    kind = config.evidence_store()
    where = config.evidence_dir() if kind == "local" else f"s3://{config.evidence_s3_bucket()}/{config.evidence_s3_prefix()}"
    result: dict[str, Any] = {"store": f"{kind} {where}", "problem": None}
    if kind == "s3":
        result["bucket"] = config.evidence_s3_bucket()
        result["aws_conn_id"] = config.evidence_aws_conn_id()
    try:
        from sqlalchemy.engine import make_url

        result["index"] = make_url(config.evidence_index_url()).render_as_string(hide_password=True)
    except Exception:
        result["index"] = "(not a database URL)"
    from barecount_provider.db import SchemaOutOfDate, schema

    try:
        from barecount_provider.evidence import spool
        from barecount_provider.evidence.store import open_store

        # A diagnosis waits longer than a task does: a store slower than the task's budget still works (a
        # task's entry past the budget is spooled and delivered later); the probe says how slow it was.
        budget_ms = config.evidence_store_timeout_ms()
        store = open_store(timeout_ms=max(budget_ms, _DOCTOR_STORE_TIMEOUT_MS))
        result["index"] = store.index.engine.url.render_as_string(hide_password=True)
        started = time.monotonic()
        result["probe"] = _probe_bodies(store.bodies)
        elapsed_ms = (time.monotonic() - started) * 1000
        if elapsed_ms > budget_ms:
            result["probe"] += (
                f"; WARNING: took {elapsed_ms:.0f} ms, above [barecount] evidence_store_timeout_ms = {budget_ms}: "
                "tasks will spool their entries for the forwarder to deliver"
            )
        result["tenant_chains"] = len(store.index.tenants())
        result["schema"] = f"current (revision {schema.HEAD_REVISION}; docs/database.md)"
        result["spool"] = spool.spool_dir()
        result["spooled"] = len(spool.spooled())
        if store.kind == "local":  # a local store used by several machines: their entries never reach it
            from barecount_provider.evidence.assemble import LOCAL_STORE_FIX, runs_on_several_hosts

            count, latest = runs_on_several_hosts(store)
            result["hosts"] = (
                f"WARNING: {count} run(s) sealed with tries from other machines (latest: {latest['dag_id']} "
                f"{latest['run_id']} on {latest['hosts']}; this store is on {latest['scheduler_host']}): their entries "
                f"are absent; fix: {LOCAL_STORE_FIX}"
                if count and latest is not None
                else "every sealed run's tries ran on this machine"
            )
    except SchemaOutOfDate as err:
        result["problem"] = f"schema: {err}"
        return result
    except Exception as err:
        result["problem"] = f"UNREACHABLE: {type(err).__name__}: {err}"
        return result
    result["checkpoints"] = _doctor_checkpoints(bad)
    if result["checkpoints"].get("problem"):
        result["problem"] = f"checkpoints: {result['checkpoints']['problem']}"
    return result


_DOCTOR_STORE_TIMEOUT_MS = 10_000
"""Each store call of `barecount doctor`'s probe waits at least this long (a task waits
``[barecount] evidence_store_timeout_ms``)."""

_PROBE_PREFIX = "doctor-probe"
"""Where `barecount doctor` writes its probe objects (never read as an entry, a record or a checkpoint)."""


def _probe_bodies(bodies: Any) -> str:
    """Write a probe object through ``bodies`` (an evidence store's ``LocalBodies`` / ``S3Bodies``), read it
    back, delete it; the probe is left (and said so) where the delete is refused (e.g. Object Lock)."""
    import uuid

    name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}.json"
    # S3: under a prefix of its own (a lifecycle rule or Object Lock exemption can name it); a local store:
    # a file in its root, so that nothing (not even an empty directory) is left
    key = f"{_PROBE_PREFIX}-{name}" if hasattr(bodies, "root") else f"{_PROBE_PREFIX}/{name}"
    token = uuid.uuid4().hex
    location = bodies.put(key, {"barecount_doctor_probe": token})
    read = bodies.get(location)
    if not read or read.get("barecount_doctor_probe") != token:
        raise RuntimeError(f"probe {location} written but not read back")
    try:
        bodies.delete(location)
    except Exception as err:
        return f"ok (wrote and read back {location}; left there, delete refused: {type(err).__name__}: {err})"
    return f"ok (wrote, read back and deleted {location})"


def _doctor_checkpoints(bad: set[str]) -> dict[str, Any]:
    """Signed checkpoints (``[barecount] evidence_checkpoint_*``): the key's connection and the location,
    probed as the store is; ``off`` when no connection is set."""
    skipped = _not_checked(bad, "evidence_checkpoint_conn_id", "evidence_checkpoint_location")
    if skipped:
        return {"status": skipped, "problem": None}
    conn_id = config.evidence_checkpoint_conn_id()
    if not conn_id:
        return {"status": "off (no [barecount] evidence_checkpoint_conn_id)", "problem": None}
    location = config.evidence_checkpoint_location()
    result: dict[str, Any] = {"conn_id": conn_id, "location": location, "problem": None}
    try:
        from barecount_provider.connections import s3_client
        from barecount_provider.evidence.checkpoint import private_key_from_connection
        from barecount_provider.evidence.store import LocalBodies, S3Bodies

        private_key_from_connection(conn_id)
        result["key"] = f"ok (Airflow connection {conn_id!r})"
        if location.startswith("s3://"):
            bucket, _, prefix = location.removeprefix("s3://").partition("/")
            bodies: Any = S3Bodies(s3_client(config.evidence_aws_conn_id()), bucket, prefix)
        else:
            bodies = LocalBodies(location)
        result["probe"] = _probe_bodies(bodies)
    except Exception as err:
        result["problem"] = f"UNREACHABLE: {type(err).__name__}: {err}"
    return result


def _doctor_emit_failures(bad: set[str]) -> dict[str, Any]:
    """BareCount's own failures (``barecount.emit.failed``) that the components noted in the file sink:
    visible here when every metric sink is down."""
    skipped = _not_checked(bad, "file_sink_on", "telemetry_dir")
    if skipped:
        return {"status": skipped}
    if not config.file_sink_on():
        return {"status": "file sink off: noted only in each component's log (at most one line a minute)"}
    from barecount_provider.telemetry.filesink import emit_failures_path, read_emit_failures

    path = emit_failures_path()
    try:
        summary = read_emit_failures(path)
    except OSError as err:
        return {"path": path, "status": f"cannot be read: {err.strerror or err}"}
    return {"path": path, **summary}


def _print_emit_failures(noted: dict[str, Any]) -> None:
    print("\nOwn failures (barecount.emit.failed)")
    if "total" not in noted:
        print(f"  {noted['path']}: {noted['status']}" if "path" in noted else f"  {noted['status']}")
        return
    if not noted["total"]:
        print(f"  {noted['path']}: none noted")
        return
    by = ", ".join(f"{key} {n}" for key, n in sorted(noted["by"].items(), key=lambda item: (-item[1], item[0])))
    print(f"  {noted['path']}: {noted['total']} failure(s) noted from {noted['first']} to {noted['last']}")
    print(f"    by sink/stage: {by}")


def _print_doctor(report: dict[str, Any]) -> None:
    print(f"BareCount {report['version']}")
    print("\n[barecount] (resolved)")
    for name, value in report["options"].items():
        print(f"  {name} = {value}")
    invalid = report["invalid_options"]
    print(f"\nOptions: {f'{len(invalid)} invalid' if invalid else 'every one valid'}")
    for problem in invalid:
        print(f"  INVALID {problem['option']} = {problem['value']!r}: expected {problem['expected']}")
        plain = f"[barecount] {problem['option']}: {problem['value']!r} is not {problem['expected']}"
        if problem["message"] != plain:  # the message says more (a pattern's error, an unknown option)
            print(f"    {problem['message']}")
    policy = report["policy"]
    print("\nPolicy")
    if policy.get("problem"):
        print(f"  INVALID: {policy['problem']}")
    elif "status" in policy:
        print(f"  {policy['status']}")
    else:
        default = policy["default_tenant"]
        print(f"  source: {policy['source']}")
        print(f"  tenants: {', '.join(policy['tenants']) or '(none: defaults apply to every tenant)'}")
        print(
            f"  default tenant {default['tenant']!r}: runner classes {', '.join(default['allowed_runner_classes'])}; "
            f"max size {default['max_size']}; trace sampling {default['trace_sampling_ratio']}"
        )
    price_table = report["price_table"]
    if price_table.get("problem"):
        print(f"\nPrice table {price_table['source']}: INVALID")
        for line in str(price_table["problem"]).splitlines():
            print(f"  {line}")
    elif price_table.get("source", "<shipped>") != "<shipped>":
        print(f"\nPrice table {price_table['source']}: valid")
    print("\nSinks")
    for sink in report["sinks"]:
        print(f"  {sink['sink']}: {sink['target']}: {sink['status']}" if sink["target"] else f"  {sink['sink']}: {sink['status']}")
    evidence = report["evidence"]
    print("\nEvidence")
    if "status" in evidence:
        print(f"  {evidence['status']}")
    else:
        print(f"  store: {evidence['store']}" + (f" (bucket {evidence['bucket']}, connection {evidence['aws_conn_id']!r})" if "bucket" in evidence else ""))
        if "probe" in evidence:
            print(f"    probe: {evidence['probe']}")
        chains = f": ok ({evidence['tenant_chains']} tenant chain(s))" if "tenant_chains" in evidence else ""
        print(f"  index: {evidence['index']}{chains}")
        if "schema" in evidence:
            print(f"  schema: {evidence['schema']}")
        if "spooled" in evidence:
            waiting = evidence["spooled"]
            print(f"  spool: {evidence['spool']}: {waiting} entr{'y' if waiting == 1 else 'ies'} waiting")
            if waiting:
                print("    (delivered by the next task that reaches the store, or `barecount evidence flush`)")
        if evidence.get("hosts"):
            print(f"  hosts: {evidence['hosts']}")
        checkpoints = evidence.get("checkpoints")
        if checkpoints and "status" in checkpoints:
            print(f"  checkpoints: {checkpoints['status']}")
        elif checkpoints:
            print(f"  checkpoints: {checkpoints['location']} (key: Airflow connection {checkpoints['conn_id']!r})")
            if "probe" in checkpoints:
                print(f"    probe: {checkpoints['probe']}")
        if evidence.get("problem"):
            print(f"  {evidence['problem']}")
    _print_emit_failures(report["emit_failures"])
    print(f"\nMasking: {report['masking']['status']}")
    for warning in report["warnings"]:
        print(f"\nWARNING: {warning}")
    problems = report["problems"]
    print(f"\n{'OK' if not problems else f'{problems} problem(s) found'}")


def cmd_policy_validate(args: argparse.Namespace) -> int:
    from barecount_provider.policy import validate_file

    problems = validate_file(args.file)
    if problems:
        for problem in problems:
            print(str(problem), file=sys.stderr)
        print(f"{args.file}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.file}: valid")
    return 0


def _cell(value: Any, width: int = 28) -> str:
    if value is None or value == "":
        return "-"
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _duration(value: Any) -> str:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return "-"
    return f"{seconds:.2f}s" if seconds < 60 else f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def _active_sinks(sinks: Any) -> str:
    if not isinstance(sinks, dict) or not sinks:
        return "-"
    on = [  # written_by: who wrote the event (the task process or the forwarder), not a sink
        name for name, where in sinks.items() if name != "written_by" and str(where).strip().lower() != "off"
    ]
    return ",".join(on) if on else "none"


def task_label(event: Mapping[str, Any]) -> str:
    """``task_id``, with ``[map_index]`` for a mapped task's try."""
    task = str(event.get("task_id", "?"))
    try:
        map_index = int(event.get("map_index", -1))
    except (TypeError, ValueError):
        map_index = -1
    return f"{task}[{map_index}]" if map_index >= 0 else task


def tries_table(tries: Sequence[Mapping[str, Any]]) -> str:
    """The table of task tries that ``barecount runs`` and ``make demo`` print: one row per file-sink
    ``task_try`` event, sorted by DAG and run (file order within a run), nothing cut but long ids (…)."""
    ordered = sorted(tries, key=lambda e: (str(e.get("dag_id")), str(e.get("run_id"))))
    header = ["dag", "task", "try", "tenant", "pipeline", "runner class", "state", "duration", "trace id", "sinks"]
    rows = [
        [
            _cell(e.get("dag_id"), 30),
            _cell(task_label(e), 24),
            _cell(e.get("try_number"), 4),
            _cell(e.get("tenant"), 16),
            _cell(e.get("pipeline"), 16),
            _cell(e.get("runner_class"), 14),
            _cell(e.get("state"), 16),
            _duration(e.get("duration_s")),
            (str(e["trace_id"])[:12] + "…") if e.get("trace_id") else "-",
            _active_sinks(e.get("sinks")),
        ]
        for e in ordered
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def cmd_runs(args: argparse.Namespace) -> int:
    from barecount_provider.telemetry.filesink import events_path, read_events

    events = [e for e in read_events() if e.get("kind") == "task_try" and (not args.dag or e.get("dag_id") == args.dag)]
    if args.json:
        for event in events[-args.last :]:
            print(json.dumps(event))
        return 0
    if not events:
        print(f"no task tries recorded in {events_path()}")
        return 1
    print(tries_table(events[-args.last :]))
    return 0


def _pools_api(args: argparse.Namespace) -> AirflowApi:
    from barecount_provider import pools

    url = args.api_url or os.environ.get("BARECOUNT_API_URL", "")
    if not url:
        raise pools.ApiError(
            "no Airflow API URL: give --api-url or BARECOUNT_API_URL (the API server's [api] base_url)",
            exit_code=pools.EXIT_USAGE,
        )
    credentials = pools.Credentials(
        token=args.token or os.environ.get("BARECOUNT_API_TOKEN") or None,
        username=args.username or os.environ.get("BARECOUNT_API_USERNAME") or None,
        password=args.password or os.environ.get("BARECOUNT_API_PASSWORD") or None,
    )
    return pools.AirflowApi(url, credentials, timeout=args.timeout)


def cmd_pools(args: argparse.Namespace) -> int:
    from barecount_provider import pools
    from barecount_provider.policy import PolicyError

    try:
        api = _pools_api(args)
        if args.pools_command == "sync":
            return pools.sync(api, dry_run=args.dry_run, prune=args.prune)
        return pools.check(api)
    except pools.ApiError as err:
        print(f"barecount pools {args.pools_command}: {err}", file=sys.stderr)
        return err.exit_code
    except PolicyError as err:
        print(f"barecount pools {args.pools_command}: invalid policy:\n{err}", file=sys.stderr)
        return pools.EXIT_USAGE


def _add_api_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-url", help="the Airflow API server's URL ([api] base_url); env BARECOUNT_API_URL")
    parser.add_argument("--username", help="user exchanged for a token at /auth/token; env BARECOUNT_API_USERNAME")
    parser.add_argument(
        "--password", help="its password (prefer the env var: arguments show in `ps`); env BARECOUNT_API_PASSWORD"
    )
    parser.add_argument("--token", help="a bearer token instead of a user; env BARECOUNT_API_TOKEN")
    parser.add_argument("--timeout", type=seconds, default=30.0, help="seconds per API call (default 30)")


# ------------------------------------------------------------------------------------- evidence and cost


def _table(rows: Sequence[Sequence[str]], header: Sequence[str], right: Sequence[int] = ()) -> None:
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def _usd(value: object) -> str:
    return "unknown" if value is None else f"{float(str(value)):.4f}"


# ------------------------------------------------------------------------------------- argument types
#
# Every option value is checked by argparse (``type=``): a bad one exits 2 with the usage and one line
# ``barecount <command>: error: argument --x: <what is wrong>``, before the command reads anything.

INT64_MAX = 2**63 - 1  # the index's integers (SQLite's INTEGER, PostgreSQL's bigint)


def whole_number(low: int, high: int = INT64_MAX) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range (expected a whole number from {low} to {high})")
        return value

    return parse


def seconds(text: str) -> float:
    """An argparse type: a finite number > 0 (seconds, or records per second)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number > 0")
    return value


def time_value(text: str) -> datetime:
    """An argparse type: an ISO 8601 time (naive: UTC) or a duration back from now (30d, 12h, 90m, 2w)."""
    from barecount_provider.api.queries import parse_time

    try:
        return parse_time(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _time_arg(value: str | datetime | None) -> datetime | None:
    """A ``--since`` / ``--until`` value: parsed by :func:`time_value` already, or a string to parse."""
    if value is None or isinstance(value, datetime):
        return value
    return time_value(value)


def _listed_cost(row: Mapping[str, Any]) -> str:
    """A listed record's cost: the known sum, ``+?`` when some tries' cost is unknown (absent tries too),
    ``unknown`` when nothing known was summed."""
    known = row.get("total_cost_usd")
    if row.get("cost_complete", True) and row.get("complete", True):
        return _usd(known)
    return "unknown" if not known else f"{_usd(known)} +?"


def cmd_evidence_list(args: argparse.Namespace) -> int:
    from barecount_provider.api import queries
    from barecount_provider.evidence.store import RecordFilter, open_store

    filters = RecordFilter(
        tenant=args.tenant,
        pipeline=args.pipeline,
        dag_id=args.dag,
        state=args.state,
        since=_time_arg(args.since),
        until=_time_arg(args.until),
    )
    rows, total = queries.list_records(open_store(), filters, limit=args.limit, offset=args.offset)
    if args.json:
        print(json.dumps({"records": rows, "total_entries": total}, indent=2))
        return 0
    if not rows:
        print(f"no evidence records match ({total} in all)")
        return 0
    _table(
        [
            [
                str(r["ended_at"] or "")[:19],
                str(r["tenant"]),
                str(r["pipeline"]),
                str(r["dag_id"]),
                str(r["run_id"]),
                str(r["state"]),
                "yes" if r["complete"] else "NO",
                _listed_cost(r),
                str(r["sequence"]),
                str(r["record_id"]),
            ]
            for r in rows
        ],
        ["ended (UTC)", "tenant", "pipeline", "dag", "run", "state", "complete", "cost usd", "seq", "record"],
        right=(7, 8),
    )
    print(f"\n{args.offset + 1}-{args.offset + len(rows)} of {total}")
    if any(_listed_cost(r) != _usd(r["total_cost_usd"]) for r in rows):
        print(
            "+?: some tries' cost is unknown (e.g. no [barecount] cost_local_worker_slot_hour_usd, or an absent "
            "entry), unknown: no try's cost is known; never counted as 0: see `evidence show`"
        )
    return 0


def cmd_telemetry_forward(args: argparse.Namespace) -> int:
    import signal
    import threading

    from barecount_provider import outbox
    from barecount_provider.runtime import forwarding

    if args.check:
        healthy, line = forwarding.check_heartbeat(args.max_age)
        print(line, flush=True)
        return 0 if healthy else 1
    stop = threading.Event()
    if args.loop:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # a last round, then exit 0
    parent = args.parent_pid
    parent_is_ppid = parent is not None and parent == os.getppid()

    def parent_alive() -> bool:
        if parent is None:
            return True
        if parent_is_ppid:
            return os.getppid() == parent  # re-parented: the scheduler is gone (a zombie still answers kill 0)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    # A loop is quiet by default (one line at start, then only problems); --verbose or --json: every round.
    every_round = not args.loop or args.verbose or args.json
    if args.loop and not args.quiet and not every_round:
        print(
            f"BareCount forwarder: pid {os.getpid()}, spool {outbox.spool_dir()}, a round every {args.loop:g} s, "
            f"heartbeat {forwarding.heartbeat_path()} (check: barecount telemetry forward --check)",
            flush=True,
        )
    while True:
        # Decided before the round: a stop that comes during a round may follow files that round did not
        # see (its claim was made already), so the round after the stop is the last one.
        stopping = stop.is_set() or not parent_alive()
        # In the loop the OTLP exports are batched (OTEL_BSP_SCHEDULE_DELAY, OTEL_METRIC_EXPORT_INTERVAL);
        # a single round, and the last one, export everything.
        result = forwarding.flush_spool(batch=bool(args.loop) and not stopping)
        if args.loop:
            forwarding.write_heartbeat(result, args.loop)
        if not args.quiet:
            if args.json:
                print(json.dumps(result), flush=True)
            elif every_round:
                print(", ".join(f"{key} {value}" for key, value in result.items()), flush=True)
            elif forwarding.LAST_ROUND_FAILURES or result.get("busy"):
                problems = ", ".join(f"{key} {n}" for key, n in forwarding.LAST_ROUND_FAILURES.items())
                print(
                    f"BareCount forwarder: round with problems: {problems or 'previous round still running (busy)'}",
                    file=sys.stderr,
                    flush=True,
                )
        if not args.loop or stopping:
            return 0
        try:
            stop.wait(args.loop)
        except KeyboardInterrupt:
            return 0


def cmd_evidence_seal(args: argparse.Namespace) -> int:
    from barecount_provider.runtime import sealing as evidence

    run_ids = args.run or _finished_runs(args.dag)
    results, status = [], 0
    for run_id in run_ids:
        try:
            record = evidence.seal_run(args.dag, run_id, grace_seconds=args.grace)
        except (LookupError, ValueError) as err:
            results.append({"run_id": run_id, "error": str(err)})
            status = 1
            continue
        if record is None:
            results.append({"run_id": run_id, "error": "entries missing and the grace period has not passed"})
            status = 1
        else:
            results.append(
                {
                    "run_id": run_id,
                    "record_id": record["record_id"],
                    "sequence": record["chain"]["sequence"],
                    "complete": record["complete"],
                    "absent": record["absent"],
                }
            )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for item in results:
            if "error" in item:
                print(f"{args.dag} {item['run_id']}: not sealed: {item['error']}")
            else:
                missing = f" (absent: {', '.join(item['absent'])})" if item["absent"] else ""
                print(f"{args.dag} {item['run_id']}: record {item['record_id']}, sequence {item['sequence']}{missing}")
    return status


def _finished_runs(dag_id: str) -> list[str]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    with create_session() as session:
        query = select(DagRun.run_id).where(
            DagRun.dag_id == dag_id, DagRun.state.in_([DagRunState.SUCCESS, DagRunState.FAILED])
        )
        return [str(run_id) for run_id in session.scalars(query)]


def _unknown_costs(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(try key, why) of every try of the record whose cost is unknown, absent tries included."""
    unknown = set((record.get("cost") or {}).get("unknown") or ())
    found = [
        (str(entry.get("key")), "; ".join((entry.get("cost") or {}).get("missing") or ["no reason recorded"]))
        for entry in record.get("entries") or ()
        if entry.get("key") in unknown
    ]
    from barecount_provider.api.queries import absent_reasons

    return found + absent_reasons(record)


def _record_cost(record: Mapping[str, Any]) -> str:
    """The record's cost for a person: the known sum, and the tries whose cost is unknown (never as 0)."""
    cost = record.get("cost") or {}
    unknown = _unknown_costs(record)
    basis = ", ".join(cost.get("basis") or [])
    costed = [entry for entry in record.get("entries") or () if entry.get("cost")]
    known = len(costed) - len(cost.get("unknown") or ())
    if not unknown:
        return f"{_usd(cost.get('total_usd'))} USD ({basis})" if basis else f"{_usd(cost.get('total_usd'))} USD (no try was costed)"
    if known <= 0:
        return f"unknown ({len(unknown)} tries' cost unknown: see below)"
    return f"{_usd(cost.get('total_usd'))} USD known ({basis}) + {len(unknown)} tries' cost unknown (see below)"


def cmd_evidence_show(args: argparse.Namespace) -> int:
    from barecount_provider.api import queries
    from barecount_provider.evidence.store import open_store

    record = queries.get_record(open_store(), args.record_id)
    if record is None:
        print(f"barecount evidence show: no record {args.record_id}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
        return 0
    chain = record.get("chain") or {}
    for label, value in (
        ("record", record["record_id"]),
        ("tenant", record["tenant"]),
        ("pipeline", record["pipeline"]),
        ("dag / run", f"{record['dag_id']} / {record['run_id']}"),
        ("state", record["state"]),
        ("started / ended", f"{record.get('started_at')} / {record.get('ended_at')}"),
        ("complete", "yes" if record.get("complete") else f"NO (absent: {', '.join(record.get('absent') or [])})"),
        ("cost", _record_cost(record)),
        ("chain", f"sequence {chain.get('sequence')}, hash {chain.get('hash')}"),
        ("previous", str(chain.get("previous_hash"))),
    ):
        print(f"{label:<16} {value}")
    entries = record.get("entries") or []
    if entries:
        print()
        _table(
            [
                [
                    str(e.get("key")),
                    str(e.get("state")),
                    str((e.get("context") or {}).get("runner_class")),
                    str((e.get("context") or {}).get("size")),
                    "" if (e.get("timings") or {}).get("duration_s") is None else f"{e['timings']['duration_s']:.2f}",
                    _usd((e.get("cost") or {}).get("total_usd")) if e.get("cost") else "-",
                    str(e.get("source")),
                ]
                for e in entries
            ],
            ["try", "state", "runner", "size", "dur s", "cost usd", "source"],
            right=(4, 5),
        )
    unknown = _unknown_costs(record)
    if unknown:
        print(f"\ncost unknown for {len(unknown)} tries (not in the sum, never counted as 0):")
        for key, why in unknown:
            print(f"  {key}: {why}")
    return 0


def _public_key_arg(value: str | None) -> Any:
    """--public-key: a file holding the key, or the key itself (base64 of the raw 32 bytes, or PEM)."""
    from barecount_provider.evidence import checkpoint

    if not value:
        return None
    text = value
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as file:
            text = file.read()
    return checkpoint.load_public_key(text, "--public-key")


def _checkpoint_line(report: Any) -> str:
    if report.checkpoints == "not configured":
        return ""
    if report.checkpoints == "unreadable":
        return f"; the checkpoints could not be read: {len(report.not_yet_checkpointed)} record(s) not verified by them"
    if report.checkpointed_through is None:
        pending = report.not_yet_checkpointed
        return f"; no signed checkpoint: {len(pending)} record(s) not yet checkpointed" if pending else "; no signed checkpoint"
    line = f"; signed checkpoints verify it through sequence {report.checkpointed_through} (signed {report.latest_checkpoint_at})"
    pending = report.not_yet_checkpointed
    if pending:
        span = str(pending[0]) if len(pending) == 1 else f"{pending[0]}-{pending[-1]}"
        line += f"; not yet checkpointed: sequence {span}"
    return line


def _print_reports(reports: Sequence[tuple[Any, int]]) -> bool:
    """Print each chain's verification (problems to stderr); True when every chain is intact."""
    intact = True
    for report, count in reports:
        if report.intact:
            print(f"tenant {report.tenant!r}: {count} record(s), chain intact{_checkpoint_line(report)}")
        else:
            intact = False
            print(
                f"tenant {report.tenant!r}: {count} record(s), {len(report.problems)} BROKEN{_checkpoint_line(report)}",
                file=sys.stderr,
            )
            for problem in report.problems:
                print(f"  {problem}", file=sys.stderr)
        for item in report.redacted:
            print(
                f"  sequence {item['sequence']} (record {item['record_id']}): redacted at {item['at']} by redaction record "
                f"{item['by_record']} ({', '.join(item['paths'])})"
            )
    if reports and all(report.checkpoints == "not configured" for report, _count in reports):
        print(
            "checkpoints are not configured ([barecount] evidence_checkpoint_public_key): only the hash chains were "
            "checked, which whoever can write the store can rewrite from the newest record back"
        )
    return intact


def cmd_evidence_verify(args: argparse.Namespace) -> int:
    from barecount_provider.api import queries
    from barecount_provider.evidence.store import open_store

    if args.bundle:
        return _verify_bundle(args)
    store = open_store()
    if args.public_key:
        store.checkpoints.use_public_key(_public_key_arg(args.public_key))
    result = queries.verify(store, args.tenant)
    reports = [(result.reports[name], result.records.get(name, 0)) for name in sorted(result.reports)]
    if args.json:
        chains = [queries.chain_dict(report, count) for report, count in reports]
        print(json.dumps({"intact": result.intact, "chains": chains, "total_entries": len(chains)}, indent=2))
        return 0 if result.intact else 1
    if not reports:
        print("no evidence records: nothing to verify")
    return 0 if _print_reports(reports) else 1


def _verify_bundle(args: argparse.Namespace) -> int:
    from barecount_provider.api import queries
    from barecount_provider.evidence import bundle as bundles

    try:
        with open(args.bundle, encoding="utf-8") as file:
            document = json.load(file)
    except OSError as err:
        raise ValueError(f"--bundle {args.bundle}: {err.strerror or err}") from None
    except ValueError as err:
        raise ValueError(f"--bundle {args.bundle}: not JSON ({err})") from None
    key = _public_key_arg(args.public_key)
    if key is None:
        from barecount_provider.evidence.checkpoint import configured_public_key

        key = configured_public_key()
    report, source = bundles.verify_bundle(document, key)
    count = len(document.get("records") or [])
    if args.json:
        print(json.dumps({"intact": report.intact, "key_source": source, "chains": [queries.chain_dict(report, count)]}, indent=2))
        return 0 if report.intact else 1
    print(f"bundle {args.bundle}: tenant {report.tenant!r}, exported {document.get('exported_at')}")
    intact = _print_reports([(report, count)])
    if source == "bundle":
        print(
            f"checked with the bundle's own public key {document.get('key_id')}: compare it with the key your "
            "organisation published, or give that key with --public-key"
        )
    return 0 if intact else 1


def cmd_evidence_export(args: argparse.Namespace) -> int:
    from barecount_provider.evidence import bundle as bundles
    from barecount_provider.evidence.store import open_store

    try:
        document = bundles.export_bundle(open_store(), args.tenant, _time_arg(args.since))
    except LookupError as err:
        print(f"barecount evidence export: {err.args[0]}", file=sys.stderr)
        return 1
    try:
        with open(args.out, "w", encoding="utf-8") as file:
            json.dump(document, file, indent=1, sort_keys=True, ensure_ascii=False)
            file.write("\n")
    except OSError as err:
        raise ValueError(f"--out {args.out}: {err.strerror or err}") from None
    print(
        f"wrote {len(document['records'])} record(s) of tenant {args.tenant!r} (sequences {document['first_sequence']}-"
        f"{document['last_sequence']}) and {len(document['checkpoints'])} checkpoint(s) to {args.out}"
    )
    if document["public_key"] is None:
        print("no [barecount] evidence_checkpoint_public_key: the bundle has no checkpoints (hash chain only)")
    return 0


def cmd_evidence_redact(args: argparse.Namespace) -> int:
    import getpass

    from barecount_provider.evidence.store import open_store

    values = list(args.value or [])
    for name in args.value_env or []:
        if not os.environ.get(name):
            raise ValueError(f"--value-env {name}: the environment variable is not set or empty")
        values.append(os.environ[name])
    try:
        by = args.by or getpass.getuser()
    except (KeyError, OSError):
        by = "unknown"
    try:
        stored = open_store().redact(args.record_id, values=values, patterns=args.pattern or [], reason=args.reason, by=by)
    except LookupError as err:
        print(f"barecount evidence redact: {err.args[0]}", file=sys.stderr)
        return 1
    redaction = stored["redaction"]
    if args.json:
        print(json.dumps({"record_id": args.record_id, "redaction_record_id": stored["record_id"],
                          "sequence": stored["chain"]["sequence"], "paths": redaction["paths"], "by": by,
                          "at": redaction["at"]}, indent=2))
        return 0
    print(f"record {args.record_id}: {len(redaction['paths'])} field(s) redacted: {', '.join(redaction['paths'])}")
    print(f"redaction record {stored['record_id']} (sequence {stored['chain']['sequence']}) by {by} at {redaction['at']}")
    return 0


def cmd_evidence_flush(args: argparse.Namespace) -> int:
    from barecount_provider.evidence import spool

    result = spool.flush()
    if args.json:
        print(json.dumps({**result.__dict__, "spool": spool.spool_dir()}))
    else:
        print(f"delivered {result.delivered}, remaining {result.remaining} (spool: {spool.spool_dir()})")
        if result.failed or result.error:
            print(f"failed {result.failed}: {result.error or 'unreadable entries kept as *.unreadable'}", file=sys.stderr)
    return 1 if (result.error or result.failed) else 0


def cmd_cost_report(args: argparse.Namespace) -> int:
    from barecount_provider.api import queries
    from barecount_provider.evidence.store import open_store

    groups = queries.validate_groups(args.by or ["tenant"])
    rows, totals = queries.cost_report(
        open_store(),
        groups,
        since=_time_arg(args.since),
        until=_time_arg(args.until),
        tenant=args.tenant,
        per_day=not args.no_per_day,
    )
    if args.json:
        document = {"by": groups, "per_day": not args.no_per_day, "rows": rows, "total_entries": len(rows)}
        print(json.dumps({**document, "totals": totals}, indent=2))
        return 0
    if not rows:
        print("no cost recorded in this range")
        return 0
    keys = ([] if args.no_per_day else ["day"]) + groups

    def sums(values: dict[str, Any], known: bool) -> list[str]:
        if not known:  # only tries of unknown cost: no number is shown as 0
            return ["unknown"] * 5
        return [f"{values['runtime_hours']:.3f}"] + [
            f"{values[name]:.4f}" + (" +?" if name == "total_usd" and values["unknown_tries"] else "")
            for name in ("compute_usd", "storage_usd", "transfer_usd", "total_usd")
        ]

    table = [[str(row[k]) for k in keys] + sums(row, row["runs"] > 0) + [str(row["runs"]), str(row["unknown_tries"])] for row in rows]
    known_runs = sum(row["runs"] for row in rows)
    table.append(["total"] + [""] * (len(keys) - 1) + sums(totals, known_runs > 0) + [str(known_runs), str(totals["unknown_tries"])])
    _table(
        table,
        keys + ["hours", "compute usd", "storage usd", "transfer usd", "total usd", "runs", "unknown tries"],
        right=tuple(range(len(keys), len(keys) + 7)),
    )
    print("\nestimates from list prices (the records' price tables), USD")
    if totals["unknown_tries"]:
        reasons = sorted({reason for row in rows for reason in row["unknown_reasons"]})
        print(
            f"+?: {totals['unknown_tries']} tries' cost is unknown and is not in the sums (never counted as 0); "
            "`barecount evidence show RECORD` names each. Why:"
        )
        for reason in reasons:
            print(f"  - {reason}")
    return 0


def _add_evidence_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    times = "ISO 8601 (naive: UTC) or a duration back from now: 30d, 12h, 90m, 2w"
    evidence = sub.add_parser(
        "evidence",
        help="the evidence store: list records, show one, verify the hash chains, deliver the spool",
        description="Reads the configured store directly ([barecount] evidence_store, evidence_dir, "
        "evidence_index_url), with no Airflow permission check: run it where the store's configuration is.",
    )
    evidence_sub = evidence.add_subparsers(dest="evidence_command", metavar="SUBCOMMAND", required=True)
    listing = evidence_sub.add_parser("list", help="records, newest first, with filters and pages")
    listing.add_argument("--tenant", help="only this tenant")
    listing.add_argument("--pipeline", help="only this pipeline")
    listing.add_argument("--dag", help="only this DAG id")
    listing.add_argument("--state", help="only runs in this state (success, failed, ...)")
    listing.add_argument("--since", type=time_value, help=f"runs that ended at or after: {times}")
    listing.add_argument("--until", type=time_value, help=f"runs that ended before: {times}")
    listing.add_argument("--limit", type=whole_number(1), default=50, help="records per page (default 50)")
    listing.add_argument("--offset", type=whole_number(0), default=0, help="records to skip (default 0)")
    listing.add_argument("--json", action="store_true", help="print JSON ({records, total_entries}) instead of a table")
    listing.set_defaults(func=cmd_evidence_list)
    show = evidence_sub.add_parser("show", help="one record: its summary and a line per task try")
    show.add_argument("record_id", help="the record's id (32 hex digits; `evidence list` shows them)")
    show.add_argument("--json", action="store_true", help="print the whole record as JSON")
    show.set_defaults(func=cmd_evidence_show)
    verify = evidence_sub.add_parser(
        "verify",
        help="verify the tenants' hash chains against the signed checkpoints; exit 1 and name every broken record",
        description="Checks every record's hash and link, and every signed checkpoint ([barecount] "
        "evidence_checkpoint_public_key); records after the latest checkpoint are reported as not yet "
        "checkpointed. With --bundle: an exported bundle alone, without the index or the store.",
    )
    verify.add_argument("--tenant", help="only this tenant's chain (default: every chain)")
    verify.add_argument("--bundle", metavar="FILE", help="verify this bundle (`evidence export`) instead of the store")
    verify.add_argument(
        "--public-key",
        metavar="KEY",
        help="the checkpoints' public key (base64 of the raw 32 bytes, PEM, or a file holding either); default "
        "[barecount] evidence_checkpoint_public_key, then a bundle's own",
    )
    verify.add_argument("--json", action="store_true", help="print JSON instead of text")
    verify.set_defaults(func=cmd_evidence_verify)
    export = evidence_sub.add_parser(
        "export",
        help="write one tenant's chain as a self-contained bundle (records, checkpoints, public key) for an auditor",
        description="The bundle verifies offline with `barecount evidence verify --bundle FILE` (or the "
        "algorithm in docs/evidence.md). With --since: from the first record that ended then to the head.",
    )
    export.add_argument("--tenant", required=True, help="the tenant")
    export.add_argument("--since", type=time_value, help=f"from the first record that ended at or after: {times}")
    export.add_argument("--out", required=True, metavar="FILE", help="the bundle's file (JSON)")
    export.set_defaults(func=cmd_evidence_export)
    redact = evidence_sub.add_parser(
        "redact",
        help="replace a leaked secret in a sealed record and re-seal it (a redaction record keeps the chain verifiable)",
        description="Appends a redaction record (which fields, who, when, why: never the value) and a policy "
        "exception entry to the tenant's chain, replaces the record's body by its redacted body and deletes the "
        "old one. See docs/evidence.md, 'Redacting a record'.",
    )
    redact.add_argument("record_id", help="the record's id")
    redact.add_argument("--value", action="append", help="the secret to replace (repeat; it shows in `ps`: prefer --value-env)")
    redact.add_argument("--value-env", action="append", metavar="NAME", help="an environment variable holding the secret (repeat)")
    redact.add_argument("--pattern", action="append", help="a regular expression to replace (repeat)")
    redact.add_argument("--reason", required=True, help="why (kept in the redaction record)")
    redact.add_argument("--by", help="who redacts (default: the OS user)")
    redact.add_argument("--json", action="store_true", help="print JSON instead of text")
    redact.set_defaults(func=cmd_evidence_redact)
    flush = evidence_sub.add_parser(
        "flush", help="deliver the spooled entries to the store; print delivered / remaining; exit 1 on a failure"
    )
    flush.add_argument("--json", action="store_true", help="print JSON instead of text")
    flush.set_defaults(func=cmd_evidence_flush)
    seal = evidence_sub.add_parser(
        "seal",
        help="assemble finished DAG runs' records now from Airflow's database (after dag.test(), or for runs "
        "the scheduler side did not seal)",
        description="Needs Airflow's database (run it where the scheduler runs). A run already sealed is "
        "left as it is. Exit 1 when a run could not be sealed.",
    )
    seal.add_argument("--dag", required=True, help="the DAG id")
    seal.add_argument("--run", action="append", help="a run id (repeat); default: every finished run of the DAG")
    seal.add_argument(
        "--grace",
        type=whole_number(0),
        default=0,
        help="seconds after the run's end to wait for missing entries (default 0: seal now, listing them as absent)",
    )
    seal.add_argument("--json", action="store_true", help="print JSON instead of text")
    seal.set_defaults(func=cmd_evidence_seal)

    telemetry = sub.add_parser("telemetry", help="the task processes' OTLP spool")
    telemetry_sub = telemetry.add_subparsers(dest="telemetry_command", metavar="SUBCOMMAND", required=True)
    forward = telemetry_sub.add_parser(
        "forward",
        help="export the OTLP spool (spans and metric points the task processes wrote) to the collector",
        description="The scheduler forwards the spool of its machine. Where no scheduler runs (Celery or "
        "Kubernetes workers), run this in a loop, a cron job or a sidecar. Each round is bounded by "
        "[barecount] emit_timeout_ms.",
    )
    forward.add_argument("--loop", type=seconds, metavar="SECONDS", help="forward every SECONDS until interrupted")
    forward.add_argument("--json", action="store_true", help="print each round's counts as JSON")
    forward.add_argument("--quiet", action="store_true", help="print nothing (failures are counted and sent)")
    forward.add_argument(
        "--verbose", action="store_true", help="with --loop: print each round's counts (default: one line at start, then only problems)"
    )
    forward.add_argument(
        "--check",
        action="store_true",
        help="exit 0 when the forwarder's last round (its heartbeat, telemetry_dir/forwarder.heartbeat) is recent, "
        "1 otherwise; one line",
    )
    forward.add_argument(
        "--max-age",
        type=seconds,
        metavar="SECONDS",
        help="with --check: how recent the last round must be (default: 3 x the loop's interval)",
    )
    forward.add_argument(
        "--parent-pid",
        type=whole_number(1),
        metavar="PID",
        help="with --loop: forward a last time and exit when process PID is gone (the scheduler starts its "
        "forwarder so); SIGTERM does the same",
    )
    forward.set_defaults(func=cmd_telemetry_forward)

    cost = sub.add_parser("cost", help="cost attribution from the evidence index")
    cost_sub = cost.add_subparsers(dest="cost_command", metavar="SUBCOMMAND", required=True)
    report = cost_sub.add_parser(
        "report",
        help="cost per day and group (tenant, pipeline, runner_class, size, dag_id)",
        description="Sums the cost lines of the runs that ended in the range, per UTC day and group.",
    )
    report.add_argument(
        "--by",
        action="append",
        metavar="GROUP",
        help="tenant, pipeline, runner_class, size or dag_id; repeat or comma-separate for several (default tenant)",
    )
    report.add_argument("--since", type=time_value, default="30d", help=f"from this day on: {times} (default 30d)")
    report.add_argument("--until", type=time_value, help=f"before this day: {times} (default: no end)")
    report.add_argument("--tenant", help="only this tenant")
    report.add_argument("--no-per-day", action="store_true", help="one row per group over the whole range")
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.set_defaults(func=cmd_cost_report)


# ------------------------------------------------------------------------------------- dead letters, replay


def _dlq_hook(args: argparse.Namespace) -> Any:
    from barecount_provider.hooks.dlq import DeadLetterQueueHook

    return DeadLetterQueueHook(
        args.dlq_backend, args.dlq, aws_conn_id=args.aws_conn_id, tenant=args.tenant, pipeline=args.pipeline,
        visibility_timeout=getattr(args, "visibility_timeout", 300), emit_metrics=False,
    )


def _scope(args: argparse.Namespace) -> Any:
    from barecount_provider.recovery.letters import Scope

    since, until = _time_arg(args.since), _time_arg(args.until)
    return Scope.of(
        tenant=args.tenant, pipeline=args.pipeline, error_classes=",".join(args.error_class or []), since=since, until=until
    )


def cmd_dlq_stats(args: argparse.Namespace) -> int:
    hook = _dlq_hook(args)
    stats = hook.emit_metrics(_scope(args)) if args.emit else hook.stats(_scope(args))
    rows = [
        {
            "tenant": s.tenant,
            "pipeline": s.pipeline,
            "depth": s.depth,
            "oldest_enqueued_at": s.oldest_enqueued_at,
            "oldest_age_s": None if s.oldest_age_s() is None else round(float(s.oldest_age_s() or 0.0), 1),
            "approximate": s.approximate,
        }
        for s in stats
    ]
    if args.json:
        print(json.dumps({"dlq": hook.describe(), "queues": rows, "total_entries": len(rows)}, indent=2))
        return 0
    print(f"dead-letter queue {hook.describe()}")
    if not rows:
        print("empty")
        return 0
    _table(
        [[r["tenant"], r["pipeline"], ("~" if r["approximate"] else "") + str(r["depth"]), str(r["oldest_enqueued_at"] or "-"),
          "-" if r["oldest_age_s"] is None else f"{r['oldest_age_s']:.0f}"] for r in rows],
        ["tenant", "pipeline", "depth", "oldest entry (UTC)", "age s"],
        right=(2, 4),
    )
    return 0


def cmd_dlq_list(args: argparse.Namespace) -> int:
    hook = _dlq_hook(args)
    letters = list(hook.scan(_scope(args), limit=args.limit))
    if args.json:
        for letter in letters:
            print(json.dumps(letter.as_dict(), default=str))
        return 0
    if not letters:
        print("no dead letters in this scope")
        return 0
    _table(
        [[ltr.enqueued_at[:19], ltr.tenant, ltr.pipeline, ltr.error_class[:32], str(ltr.attempts),
          str(ltr.source.get("dag_id") or ltr.source.get("kind") or ""), ltr.idempotency_key[:48]] for ltr in letters],
        ["enqueued (UTC)", "tenant", "pipeline", "error", "tries", "source", "idempotency key"],
        right=(4,),
    )
    return 0


def _replayer(args: argparse.Namespace) -> Any:
    from barecount_provider import cost
    from barecount_provider.recovery.ledger import open_ledger
    from barecount_provider.recovery.replay import Replayer, target_from_spec

    hook = _dlq_hook(args)
    emit = None
    if getattr(args, "emit", False):
        from barecount_provider.telemetry.metrics import get_emitter

        emit = get_emitter().emit
    return Replayer(
        hook.backend,
        target_from_spec(args.target, aws_conn_id=args.aws_conn_id, prices=cost.configured_price_table()),
        open_ledger(args.ledger_url),
        scope=_scope(args),
        scope_id=args.replay_id,
        batch_size=args.batch_size,
        rate=getattr(args, "rate", None),
        max_records=getattr(args, "max_records", None),
        lease_seconds=args.lease_seconds,
        remove_delivered=not getattr(args, "keep", False),
        progress_interval_s=getattr(args, "progress", 10.0),
        metric_tags={"tenant": args.tenant or "", "pipeline": args.pipeline or ""},
        emit=emit,
    )


def cmd_replay_plan(args: argparse.Namespace) -> int:
    plan = _replayer(args).plan().as_dict()
    if args.tenant:
        from barecount_provider.policy import get_policy

        approval = get_policy().for_tenant(args.tenant).replay_approval
        plan["needs_approval"] = approval.needs_approval(plan["records"], plan["estimated_cost_usd"])
    if args.json:
        print(json.dumps(plan, indent=2))
        return 0
    print(f"replay {plan['scope_id']}: {plan['dlq']} -> {plan['target']}")
    print(f"  scope: {json.dumps(plan['scope'])}")
    print(f"  would deliver {plan['records']} record(s), {plan['bytes']} bytes; {plan['already_delivered']} delivered before")
    print(f"  estimated cost {plan['estimated_cost_usd']:.6f} USD ({plan['cost_basis']})")
    for name, count in plan["by_error_class"].items():
        print(f"    {name}: {count}")
    if "needs_approval" in plan:
        print(f"  needs approval (tenant {args.tenant!r}'s replay_approval): {'yes' if plan['needs_approval'] else 'no'}")
    return 0


def cmd_replay_run(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    outcome = _replayer(args).run().as_dict()
    if args.json:
        print(json.dumps(outcome, indent=2))
    else:
        print(
            f"replay {outcome['scope_id']} (run {outcome['run_id']}): {outcome['status']}; delivered {outcome['delivered']} "
            f"({outcome['redelivered']} again after a crash), skipped {outcome['skipped_delivered']} delivered before, "
            f"{outcome['skipped_busy']} held by another run; failed {outcome['failed']}; removed {outcome['removed_from_queue']} "
            f"from the queue; {outcome['records_per_second']} records/s"
        )
        if outcome["last_error"]:
            print(f"last error: {outcome['last_error']}", file=sys.stderr)
    return 1 if outcome["failed"] else 0


def cmd_replay_status(args: argparse.Namespace) -> int:
    from barecount_provider.recovery.ledger import open_ledger

    ledger = open_ledger(args.ledger_url)
    scopes = [args.replay_id] if args.replay_id else ledger.scopes()
    document: list[dict[str, Any]] = []
    for scope_id in scopes:
        runs = ledger.runs(scope_id, limit=args.runs, lease_seconds=args.lease_seconds)
        document.append({"scope_id": scope_id, "ledger": ledger.counts(scope_id), "runs": runs})
    if args.json:
        print(json.dumps({"scopes": document, "total_entries": len(document)}, indent=2, default=str))
        return 0
    if not document:
        print("no replays recorded in the ledger")
        return 0
    for item in document:
        counts = item["ledger"]
        print(
            f"replay {item['scope_id']}: delivered {counts['delivered']}, in flight {counts['in_flight']}, "
            f"failed {counts['failed']}, redeliveries after crashes {counts['redeliveries']}"
        )
        for run in item["runs"]:
            summary = run["summary"]
            started = datetime.fromtimestamp(run["started_at"]).astimezone().isoformat(timespec="seconds")
            state = run["state"]
            if state == "interrupted":
                state = "interrupted (its process is gone; resumable: run the replay again)"
            elif state == "stale":
                state = "stale (on another host, no heartbeat within the lease; resumable: run the replay again)"
            print(
                f"  run {run['run_id']} on {run['host']} pid {run['pid']}, started {started}: {state} "
                f"({summary.get('status', '?')}), delivered {summary.get('delivered', 0)}, failed {summary.get('failed', 0)}"
            )
    return 0


def _add_recovery_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    times = "ISO 8601 (naive: UTC) or a duration back from now: 30d, 12h, 90m, 2w"

    def queue_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--dlq",
            help="the queue: an SQS queue URL, s3://bucket/prefix, or a directory (default [barecount] dlq_location, "
            "then [barecount] evidence_dir/dlq)",
        )
        parser.add_argument("--dlq-backend", choices=("local", "s3", "sqs"), help="default: what --dlq implies")
        parser.add_argument(
            "--aws-conn-id",
            default="aws_default",
            help="AWS connection of the SQS/S3/Lambda hooks (default: aws_default; [barecount] dlq_aws_conn_id "
            "for the configured queue)",
        )
        parser.add_argument("--tenant", help="only this tenant's letters")
        parser.add_argument("--pipeline", help="only this pipeline's letters")
        parser.add_argument("--error-class", action="append", help="only letters with this error class (repeat)")
        parser.add_argument("--since", type=time_value, help=f"letters enqueued at or after: {times}")
        parser.add_argument("--until", type=time_value, help=f"letters enqueued before: {times}")
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")

    dlq = sub.add_parser("dlq", help="dead-letter queues: depth and oldest entry, the letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", metavar="SUBCOMMAND", required=True)
    stats = dlq_sub.add_parser("stats", help="depth and oldest entry per tenant and pipeline")
    queue_arguments(stats)
    stats.add_argument("--emit", action="store_true", help="also emit barecount.dlq.depth / oldest_age (cron, sidecar)")
    stats.set_defaults(func=cmd_dlq_stats)
    listing = dlq_sub.add_parser("list", help="the letters, oldest first (nothing is removed)")
    queue_arguments(listing)
    listing.add_argument("--limit", type=whole_number(1), default=50, help="at most this many (default 50)")
    listing.set_defaults(func=cmd_dlq_list)

    replay = sub.add_parser(
        "replay",
        help="replay a dead-letter queue into a target, once per record (plan, run, status)",
        description="Targets: lambda:FUNCTION[:QUALIFIER], sqs:QUEUE_URL, sql:URL_OR_CONN_ID#TABLE, "
        "callable:module:function. The ledger lives in [barecount] evidence_index_url unless --ledger-url.",
    )
    replay_sub = replay.add_subparsers(dest="replay_command", metavar="SUBCOMMAND", required=True)
    for name, func, text in (
        ("plan", cmd_replay_plan, "the dry run: records a run would deliver now, bytes, estimated cost"),
        ("run", cmd_replay_run, "deliver; exit 1 when records failed (they stay queued)"),
    ):
        parser = replay_sub.add_parser(name, help=text)
        queue_arguments(parser)
        parser.add_argument("--target", required=True, help="where the records go (see `barecount replay --help`)")
        parser.add_argument("--replay-id", help="the ledger scope (default: one per queue and target)")
        parser.add_argument("--ledger-url", help="SQLAlchemy URL of the ledger (default [barecount] evidence_index_url)")
        parser.add_argument("--batch-size", type=whole_number(1), default=500, help="records claimed and delivered together (default 500)")
        parser.add_argument("--lease-seconds", type=seconds, default=300.0, help="a claimed batch's lease (default 300)")
        parser.add_argument("--visibility-timeout", type=whole_number(0, 43200), default=300, help="sqs: seconds a scanned message stays hidden")
        parser.set_defaults(func=func)
        if name == "run":
            parser.add_argument("--rate", type=seconds, help="records per second at most (default: unthrottled)")
            parser.add_argument("--max-records", type=whole_number(0), help="deliver at most this many (what an approval allowed)")
            parser.add_argument("--keep", action="store_true", help="leave delivered letters in the queue")
            parser.add_argument("--progress", type=seconds, default=10.0, help="seconds between progress lines (default 10)")
            parser.add_argument("--emit", action="store_true", help="emit barecount.replay.* metrics to the configured sinks")
    status = replay_sub.add_parser("status", help="each replay's ledger counts and its latest runs")
    status.add_argument("--replay-id", help="only this replay scope")
    status.add_argument("--ledger-url", help="SQLAlchemy URL of the ledger (default [barecount] evidence_index_url)")
    status.add_argument("--runs", type=whole_number(1), default=5, help="latest runs to show per replay (default 5)")
    status.add_argument(
        "--lease-seconds", type=seconds, default=300.0,
        help="a running replay on another host without a heartbeat for this long is shown stale (default 300)",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    status.set_defaults(func=cmd_replay_status)


def _db_url(args: argparse.Namespace) -> str:
    """``--url``, else ``[barecount] evidence_index_url`` (the local default); exit 2 when not a database URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = args.url or config.evidence_index_url()
    try:
        make_url(url)
    except ArgumentError:
        raise ValueError(f"db {args.db_command}: --url {url!r} is not an SQLAlchemy database URL (e.g. sqlite:///index.db)") from None
    return str(url)


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_db_migrate(args: argparse.Namespace) -> int:
    """Create or upgrade BareCount's tables to the head revision; idempotent."""
    import logging

    from barecount_provider.db import migrate

    url = _db_url(args)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the one line below says what was done
    before, after = migrate.upgrade(url)
    if before == after:
        print(f"BareCount's database {_shown(url)}: already at revision {after}")
    else:
        print(f"BareCount's database {_shown(url)}: upgraded from {before or 'no revision'} to revision {after}")
    return 0


def cmd_db_check(args: argparse.Namespace) -> int:
    """Exit 0 when BareCount's tables are at the head revision, 1 when not (nothing is changed)."""
    from barecount_provider.db import SchemaOutOfDate, migrate, schema

    url = _db_url(args)
    revision, tables = migrate.status(url)
    if revision == schema.HEAD_REVISION:
        print(f"BareCount's database {_shown(url)}: current (revision {revision})")
        return 0
    if revision is None and not tables:
        print(f"BareCount's database {_shown(url)}: empty (created at first use, or by `barecount db migrate`)")
        return 0
    print(str(SchemaOutOfDate(_shown(url), revision)))
    return 1


def _add_db_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    database = sub.add_parser(
        "db",
        help="BareCount's own tables (evidence index, retry budgets, replay ledger) and their migrations",
        description="BareCount's tables live in [barecount] evidence_index_url (or --url) under Alembic "
        "migrations, with their own version table (barecount_alembic_version).",
    )
    database_sub = database.add_subparsers(dest="db_command", metavar="SUBCOMMAND", required=True)
    for name, text, func in (
        ("migrate", "create BareCount's tables or upgrade them to this version's schema (idempotent)", cmd_db_migrate),
        ("check", "exit 0 when the schema is current (or the database empty), 1 when it needs `db migrate`", cmd_db_check),
    ):
        parser = database_sub.add_parser(name, help=text, description=text)
        parser.add_argument("--url", help="SQLAlchemy URL of the database (default [barecount] evidence_index_url)")
        parser.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barecount", description="Operate and observe BareCount.")
    parser.add_argument("--version", action="version", version=f"barecount {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    doctor = sub.add_parser(
        "doctor",
        help="validate every [barecount] option, the policy, each sink and the evidence store",
        description="Prints the resolved options, every invalid one (its value and what is expected), the "
        "policy, each sink and the evidence store. Exit 1 when anything is invalid or unreachable.",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(func=cmd_doctor)

    policy = sub.add_parser("policy", help="governance policy commands")
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", required=True)
    validate = policy_sub.add_parser("validate", help="validate a policy file and report every mistake")
    validate.add_argument("file", help="path of the policy YAML file")
    validate.set_defaults(func=cmd_policy_validate)

    runs = sub.add_parser("runs", help="show what BareCount recorded per task try (the file sink)")
    runs.add_argument("--dag", help="only this DAG id")
    runs.add_argument("--last", type=whole_number(1), default=50, help="how many tries to show (default 50)")
    runs.add_argument("--json", action="store_true", help="print the raw JSON lines")
    runs.set_defaults(func=cmd_runs)

    pools_parser = sub.add_parser(
        "pools",
        help="the tenants' Airflow pools (barecount_<tenant>_<runner_class>) through Airflow's REST API",
        description="Exit codes: 0 ok / in sync, 1 a call failed (sync) or drift (check), 2 usage, missing "
        "credentials or invalid policy, 3 API unreachable, 4 credentials or permission refused (401/403).",
    )
    pools_sub = pools_parser.add_subparsers(dest="pools_command", metavar="SUBCOMMAND", required=True)
    sync = pools_sub.add_parser(
        "sync",
        help="create and update the pools the policy asks for, then write the registry Variable barecount_pools",
    )
    _add_api_arguments(sync)
    sync.add_argument("--dry-run", action="store_true", help="print the plan only; change nothing")
    sync.add_argument(
        "--prune", action="store_true", help="delete barecount_* pools the sync created that the policy no longer has"
    )
    sync.set_defaults(func=cmd_pools)
    check = pools_sub.add_parser("check", help="compare the pools and the registry with the policy; exit 1 on drift")
    _add_api_arguments(check)
    check.set_defaults(func=cmd_pools)
    _add_evidence_parsers(sub)
    _add_recovery_parsers(sub)
    _add_db_parsers(sub)
    return parser


@redaction.redacting_stdio  # every line a command prints, redacted
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Standard output is the command's own (one JSON document with --json); every log line, Airflow's and
    # its secrets masker's included, goes to standard error.
    from barecount_provider.telemetry.logging import logs_to_stderr

    logs_to_stderr()
    try:
        return int(args.func(args))
    except ValueError as err:  # configuration mistakes
        print(f"barecount: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from barecount_provider.db import SchemaOutOfDate

        if not isinstance(err, SchemaOutOfDate):
            raise
        print(f"barecount: {err}", file=sys.stderr)  # names `barecount db migrate`
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
