"""The ``barecount`` command.

    barecount doctor                 resolved config, policy, sinks and whether each sink is reachable
    barecount policy validate FILE   validate a policy file; every mistake with file, key path and value
    barecount runs [--dag D] [--last N]   what BareCount recorded per task try (the file sink)
    barecount pools sync [--dry-run] [--prune]   create/update the tenants' Airflow pools through the REST API
    barecount pools check            exit 1 when the pools or their registry differ from the policy
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING

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
    if not config.secret_key():
        print("\nWARNING: no [barecount] secret_key, [core] fernet_key or [api_auth] jwt_secret: run tokens are guessable")
    print(f"\n{'OK' if not problems else f'{problems} problem(s) found'}")
    return 0 if not problems else 1


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as err:  # configuration mistakes
        print(f"barecount: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
