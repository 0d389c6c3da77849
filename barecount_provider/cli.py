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
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import urllib.parse
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from barecount_provider import __version__, config

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
    from barecount_provider.telemetry import tracing

    problems = 0
    print(f"BareCount {__version__}")
    print("\n[barecount] (resolved)")
    for name, value in config.resolved().items():
        print(f"  {name} = {value}")
    print("\nPolicy")
    try:
        from barecount_provider.policy import load_policy

        policy = load_policy(config.policy_path() or None)
        print(f"  source: {policy.source}")
        print(f"  tenants: {', '.join(sorted(policy.tenants)) or '(none: defaults apply to every tenant)'}")
        default = policy.for_tenant(config.default_tenant())
        print(
            f"  default tenant {default.tenant!r}: runner classes {', '.join(default.allowed_runner_classes)}; "
            f"max size {default.max_size}; trace sampling {default.trace_sampling_ratio}"
        )
    except Exception as err:
        problems += 1
        print(f"  INVALID: {err}")
    print("\nSinks")
    if config.statsd_on():
        status = _probe_udp(config.statsd_host(), config.statsd_port())
        problems += status.startswith("UNREACHABLE")
        print(f"  statsd: udp://{config.statsd_host()}:{config.statsd_port()} ({config.statsd_tag_style()}): {status}")
    else:
        print("  statsd: off")
    if config.otlp_metrics_on():
        endpoint = config.otlp_endpoint("metrics")
        status = _probe_tcp(endpoint)
        problems += status.startswith("UNREACHABLE")
        print(f"  otlp metrics: {endpoint}: {status}")
    else:
        print("  otlp metrics: off")
    if not config.traces_on():
        print("  traces: off")
    elif tracing.airflow_tracing_on():
        print("  traces: Airflow's tracer provider ([traces] otel_on); BareCount adds its spans and tenant ratio")
    else:
        kind = config.traces_exporter()
        if kind == "file":
            path = os.path.join(config.telemetry_dir(), "spans.jsonl")
            status = _probe_dir(config.telemetry_dir())
            print(f"  traces: file {path}: {status}")
        elif kind == "otlp":
            endpoint = config.otlp_endpoint("traces")
            status = _probe_tcp(endpoint)
            print(f"  traces: otlp {endpoint}: {status}")
        else:
            status = "ok"
            print("  traces: spans created, exporter none")
        problems += status.startswith(("UNREACHABLE", "NOT WRITABLE"))
    if config.file_sink_on():
        status = _probe_dir(config.telemetry_dir())
        problems += status.startswith("NOT WRITABLE")
        print(f"  file: {os.path.join(config.telemetry_dir(), 'events.jsonl')}: {status}")
    else:
        print("  file: off")
    problems += _doctor_evidence()
    if not config.secret_key():
        print("\nWARNING: no [barecount] secret_key, [core] fernet_key or [api_auth] jwt_secret: run tokens are guessable")
    print(f"\n{'OK' if not problems else f'{problems} problem(s) found'}")
    return 0 if not problems else 1


def _doctor_evidence() -> int:
    """Print the evidence store's state; the number of problems found."""
    print("\nEvidence")
    if not config.evidence_on():
        print("  off")
        return 0
    problems = 0
    try:
        from barecount_provider.evidence import spool
        from barecount_provider.evidence.store import open_store

        store = open_store(timeout_ms=config.evidence_store_timeout_ms())
        where = config.evidence_dir() if store.kind == "local" else f"s3://{config.evidence_s3_bucket()}/{config.evidence_s3_prefix()}"
        print(f"  store: {store.kind} {where}")
        url = store.index.engine.url.render_as_string(hide_password=True)
        tenants = store.index.tenants()
        print(f"  index: {url}: ok ({len(tenants)} tenant chain(s))")
        waiting = len(spool.spooled())
        print(f"  spool: {spool.spool_dir()}: {waiting} entr{'y' if waiting == 1 else 'ies'} waiting")
        if waiting:
            print("    (delivered by the next task that reaches the store, or `barecount evidence flush`)")
    except Exception as err:
        print(f"  UNREACHABLE: {type(err).__name__}: {err}")
        problems += 1
    return problems


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
    header = f"{'dag':<24} {'task':<22} {'try':>3} {'tenant':<10} {'pipeline':<10} {'runner':<8} {'state':<13} {'dur s':>7}  trace"
    print(header)
    print("-" * len(header))
    for e in events[-args.last :]:
        task = e["task_id"] + (f"[{e['map_index']}]" if e.get("map_index", -1) not in (-1, None) else "")
        duration = "" if e.get("duration_s") is None else f"{e['duration_s']:.2f}"
        trace_id = (e.get("trace_id") or "-")[:16]
        print(
            f"{e['dag_id'][:24]:<24} {task[:22]:<22} {e['try_number']:>3} {str(e['tenant'])[:10]:<10} "
            f"{str(e['pipeline'])[:10]:<10} {str(e['runner_class'])[:8]:<8} {e['state']:<13} {duration:>7}  {trace_id}"
        )
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
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per API call (default 30)")


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


def _time_arg(value: str | None) -> datetime | None:
    from barecount_provider.api.queries import parse_time

    return None if value is None else parse_time(value)


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
                _usd(r["total_cost_usd"]) + ("" if r.get("cost_complete", True) else " +?"),
                str(r["sequence"]),
                str(r["record_id"]),
            ]
            for r in rows
        ],
        ["ended (UTC)", "tenant", "pipeline", "dag", "run", "state", "complete", "cost usd", "seq", "record"],
        right=(7, 8),
    )
    print(f"\n{args.offset + 1}-{args.offset + len(rows)} of {total}")
    if any(not r.get("cost_complete", True) for r in rows):
        print("+?: some tries' cost is unknown (e.g. no [barecount] cost_local_worker_slot_hour_usd): see `evidence show`")
    return 0


def cmd_telemetry_forward(args: argparse.Namespace) -> int:
    import signal
    import threading

    from barecount_provider.telemetry import spool

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

    while True:
        # Decided before the round: a stop that comes during a round may follow files that round did not
        # see (its claim was made already), so the round after the stop is the last one.
        stopping = stop.is_set() or not parent_alive()
        # In the loop the OTLP exports are batched (OTEL_BSP_SCHEDULE_DELAY, OTEL_METRIC_EXPORT_INTERVAL);
        # a single round, and the last one, export everything.
        result = spool.flush_spool(batch=bool(args.loop) and not stopping)
        if not args.quiet:
            if args.json:
                print(json.dumps(result), flush=True)
            else:
                print(", ".join(f"{key} {value}" for key, value in result.items()), flush=True)
        if not args.loop or stopping:
            return 0
        try:
            stop.wait(args.loop)
        except KeyboardInterrupt:
            return 0


def cmd_evidence_seal(args: argparse.Namespace) -> int:
    from barecount_provider.evidence import scheduler as evidence

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
    cost = record.get("cost") or {}
    for label, value in (
        ("record", record["record_id"]),
        ("tenant", record["tenant"]),
        ("pipeline", record["pipeline"]),
        ("dag / run", f"{record['dag_id']} / {record['run_id']}"),
        ("state", record["state"]),
        ("started / ended", f"{record.get('started_at')} / {record.get('ended_at')}"),
        ("complete", "yes" if record.get("complete") else f"NO (absent: {', '.join(record.get('absent') or [])})"),
        ("cost", f"{_usd(cost.get('total_usd'))} USD ({', '.join(cost.get('basis') or []) or 'no basis'})"),
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
    return 0


def cmd_evidence_verify(args: argparse.Namespace) -> int:
    from barecount_provider.api import queries
    from barecount_provider.evidence.store import open_store

    result = queries.verify(open_store(), args.tenant)
    if args.json:
        chains = [
            {
                "tenant": name,
                "records": result.records.get(name, 0),
                "intact": not problems,
                "problems": [queries.problem_dict(p) for p in problems],
            }
            for name, problems in sorted(result.problems.items())
        ]
        print(json.dumps({"intact": result.intact, "chains": chains, "total_entries": len(chains)}, indent=2))
        return 0 if result.intact else 1
    if not result.problems:
        print("no evidence records: nothing to verify")
    for name, problems in sorted(result.problems.items()):
        count = result.records.get(name, 0)
        if not problems:
            print(f"tenant {name!r}: {count} record(s), chain intact")
            continue
        print(f"tenant {name!r}: {count} record(s), {len(problems)} BROKEN", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
    return 0 if result.intact else 1


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

    def sums(values: dict[str, Any]) -> list[str]:
        return [f"{values['runtime_hours']:.3f}"] + [
            f"{values[name]:.4f}" for name in ("compute_usd", "storage_usd", "transfer_usd", "total_usd")
        ]

    table = [[str(row[k]) for k in keys] + sums(row) + [str(row["runs"])] for row in rows]
    table.append(["total"] + [""] * (len(keys) - 1) + sums(totals) + [str(sum(row["runs"] for row in rows))])
    _table(
        table,
        keys + ["hours", "compute usd", "storage usd", "transfer usd", "total usd", "runs"],
        right=tuple(range(len(keys), len(keys) + 6)),
    )
    print("\nestimates from list prices (the records' price tables), USD")
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
    listing.add_argument("--since", help=f"runs that ended at or after: {times}")
    listing.add_argument("--until", help=f"runs that ended before: {times}")
    listing.add_argument("--limit", type=int, default=50, help="records per page (default 50)")
    listing.add_argument("--offset", type=int, default=0, help="records to skip (default 0)")
    listing.add_argument("--json", action="store_true", help="print JSON ({records, total_entries}) instead of a table")
    listing.set_defaults(func=cmd_evidence_list)
    show = evidence_sub.add_parser("show", help="one record: its summary and a line per task try")
    show.add_argument("record_id", help="the record's id (32 hex digits; `evidence list` shows them)")
    show.add_argument("--json", action="store_true", help="print the whole record as JSON")
    show.set_defaults(func=cmd_evidence_show)
    verify = evidence_sub.add_parser(
        "verify", help="verify the tenants' hash chains; exit 1 and name every broken record"
    )
    verify.add_argument("--tenant", help="only this tenant's chain (default: every chain)")
    verify.add_argument("--json", action="store_true", help="print JSON instead of text")
    verify.set_defaults(func=cmd_evidence_verify)
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
        type=int,
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
    forward.add_argument("--loop", type=float, metavar="SECONDS", help="forward every SECONDS until interrupted")
    forward.add_argument("--json", action="store_true", help="print each round's counts as JSON")
    forward.add_argument("--quiet", action="store_true", help="print nothing (failures are counted and sent)")
    forward.add_argument(
        "--parent-pid",
        type=int,
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
    report.add_argument("--since", default="30d", help=f"from this day on: {times} (default 30d)")
    report.add_argument("--until", help=f"before this day: {times} (default: no end)")
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
    from barecount_provider.recovery.dlq import Scope

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
    from barecount_provider.recovery.ledger import open_ledger
    from barecount_provider.recovery.replay import Replayer, target_from_spec

    hook = _dlq_hook(args)
    emit = None
    if getattr(args, "emit", False):
        from barecount_provider.telemetry.metrics import get_emitter

        emit = get_emitter().emit
    return Replayer(
        hook.backend,
        target_from_spec(args.target, aws_conn_id=args.aws_conn_id),
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
            help="the queue: an SQS queue URL, s3://bucket/prefix, or a directory (default [barecount] evidence_dir/dlq)",
        )
        parser.add_argument("--dlq-backend", choices=("local", "s3", "sqs"), help="default: what --dlq implies")
        parser.add_argument("--aws-conn-id", default="aws_default", help="AWS connection of the SQS/S3/Lambda hooks")
        parser.add_argument("--tenant", help="only this tenant's letters")
        parser.add_argument("--pipeline", help="only this pipeline's letters")
        parser.add_argument("--error-class", action="append", help="only letters with this error class (repeat)")
        parser.add_argument("--since", help=f"letters enqueued at or after: {times}")
        parser.add_argument("--until", help=f"letters enqueued before: {times}")
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")

    dlq = sub.add_parser("dlq", help="dead-letter queues: depth and oldest entry, the letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", metavar="SUBCOMMAND", required=True)
    stats = dlq_sub.add_parser("stats", help="depth and oldest entry per tenant and pipeline")
    queue_arguments(stats)
    stats.add_argument("--emit", action="store_true", help="also emit barecount.dlq.depth / oldest_age (cron, sidecar)")
    stats.set_defaults(func=cmd_dlq_stats)
    listing = dlq_sub.add_parser("list", help="the letters, oldest first (nothing is removed)")
    queue_arguments(listing)
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
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
        parser.add_argument("--batch-size", type=int, default=500, help="records claimed and delivered together (default 500)")
        parser.add_argument("--lease-seconds", type=float, default=300.0, help="a claimed batch's lease (default 300)")
        parser.add_argument("--visibility-timeout", type=int, default=300, help="sqs: seconds a scanned message stays hidden")
        parser.set_defaults(func=func)
        if name == "run":
            parser.add_argument("--rate", type=float, help="records per second at most (default: unthrottled)")
            parser.add_argument("--max-records", type=int, help="deliver at most this many (what an approval allowed)")
            parser.add_argument("--keep", action="store_true", help="leave delivered letters in the queue")
            parser.add_argument("--progress", type=float, default=10.0, help="seconds between progress lines (default 10)")
            parser.add_argument("--emit", action="store_true", help="emit barecount.replay.* metrics to the configured sinks")
    status = replay_sub.add_parser("status", help="each replay's ledger counts and its latest runs")
    status.add_argument("--replay-id", help="only this replay scope")
    status.add_argument("--ledger-url", help="SQLAlchemy URL of the ledger (default [barecount] evidence_index_url)")
    status.add_argument("--runs", type=int, default=5, help="latest runs to show per replay (default 5)")
    status.add_argument(
        "--lease-seconds", type=float, default=300.0,
        help="a running replay on another host without a heartbeat for this long is shown stale (default 300)",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    status.set_defaults(func=cmd_replay_status)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barecount", description="Operate and observe BareCount.")
    parser.add_argument("--version", action="version", version=f"barecount {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    doctor = sub.add_parser("doctor", help="print the resolved config, policy and sinks, and check each sink")
    doctor.set_defaults(func=cmd_doctor)

    policy = sub.add_parser("policy", help="governance policy commands")
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", required=True)
    validate = policy_sub.add_parser("validate", help="validate a policy file and report every mistake")
    validate.add_argument("file", help="path of the policy YAML file")
    validate.set_defaults(func=cmd_policy_validate)

    runs = sub.add_parser("runs", help="show what BareCount recorded per task try (the file sink)")
    runs.add_argument("--dag", help="only this DAG id")
    runs.add_argument("--last", type=int, default=50, help="how many tries to show (default 50)")
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
    return parser


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
