"""``barecount dlq stats|list`` and ``barecount replay plan|run|status``: a dead-letter queue's depth and
letters, and its idempotent replay into a target (the replay ledger)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from barecount_provider.cli.common import (
    TIMES,
    print_json,
    print_table,
    seconds,
    time_arg,
    time_value,
    whole_number,
)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``barecount dlq stats|list`` and ``barecount replay plan|run|status``."""
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
        parser.add_argument("--since", type=time_value, help=f"letters enqueued at or after: {TIMES}")
        parser.add_argument("--until", type=time_value, help=f"letters enqueued before: {TIMES}")
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


def _dlq_hook(args: argparse.Namespace) -> Any:
    from barecount_provider.hooks.dlq import DeadLetterQueueHook

    return DeadLetterQueueHook(
        args.dlq_backend, args.dlq, aws_conn_id=args.aws_conn_id, tenant=args.tenant, pipeline=args.pipeline,
        visibility_timeout=getattr(args, "visibility_timeout", 300), emit_metrics=False,
    )


def _scope(args: argparse.Namespace) -> Any:
    from barecount_provider.recovery.letters import Scope

    since, until = time_arg(args.since), time_arg(args.until)
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
        print_json({"dlq": hook.describe(), "queues": rows, "total_entries": len(rows)})
        return 0
    print(f"dead-letter queue {hook.describe()}")
    if not rows:
        print("empty")
        return 0
    print_table(
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
            print_json(letter.as_dict(), indent=None, default=str)
        return 0
    if not letters:
        print("no dead letters in this scope")
        return 0
    print_table(
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
        print_json(plan)
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
        print_json(outcome)
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
        print_json({"scopes": document, "total_entries": len(document)}, default=str)
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


