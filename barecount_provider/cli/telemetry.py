"""``barecount telemetry forward``: export the task processes' OTLP spool (the scheduler runs it as its
forwarder process; elsewhere a loop, a cron job or a sidecar), or say whether the forwarder is alive."""

from __future__ import annotations

import argparse
import os
import sys

from barecount_provider.cli.common import print_json, seconds, whole_number


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``barecount telemetry forward``."""
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
                print_json(result, indent=None, flush=True)
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
