"""``barecount doctor``: every [barecount] option, the policy, the price table, each sink, the evidence store
and its checkpoints, BareCount's own failures and where secrets are masked; exit 1 when anything is wrong."""

from __future__ import annotations

import argparse
import os
import socket
import time
import urllib.parse
from typing import Any

from barecount_provider import __version__, config
from barecount_provider.cli.common import print_json


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``barecount doctor``."""
    doctor = sub.add_parser(
        "doctor",
        help="validate every [barecount] option, the policy, each sink and the evidence store",
        description="Prints the resolved options, every invalid one (its value and what is expected), the "
        "policy, each sink and the evidence store. Exit 1 when anything is invalid or unreachable.",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(func=cmd_doctor)


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
        print_json(report)
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

    from barecount_provider import cluster_policies
    from barecount_provider.redaction import is_installed_in_airflow_masker

    entry_point = any(point.value.startswith("barecount_provider.cluster_policies") for point in entry_points(group="airflow.policy"))
    at_settings_load = entry_point and cluster_policies.MASKER_EXTENDED_AT_SETTINGS_LOAD
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
