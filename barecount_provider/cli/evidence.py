"""``barecount evidence list|show|verify|export|redact|flush|seal``: the evidence store, read and written
directly (its configuration, no Airflow permission check)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from barecount_provider.cli.common import (
    TIMES,
    fail,
    print_json,
    print_table,
    time_arg,
    time_value,
    usd,
    whole_number,
)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``barecount evidence`` and its subcommands."""
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
    listing.add_argument("--since", type=time_value, help=f"runs that ended at or after: {TIMES}")
    listing.add_argument("--until", type=time_value, help=f"runs that ended before: {TIMES}")
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
    export.add_argument("--since", type=time_value, help=f"from the first record that ended at or after: {TIMES}")
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


def _listed_cost(row: Mapping[str, Any]) -> str:
    """A listed record's cost: the known sum, ``+?`` when some tries' cost is unknown (absent tries too),
    ``unknown`` when nothing known was summed."""
    known = row.get("total_cost_usd")
    if row.get("cost_complete", True) and row.get("complete", True):
        return usd(known)
    return "unknown" if not known else f"{usd(known)} +?"


def cmd_evidence_list(args: argparse.Namespace) -> int:
    from barecount_provider.api import queries
    from barecount_provider.evidence.store import RecordFilter, open_store

    filters = RecordFilter(
        tenant=args.tenant,
        pipeline=args.pipeline,
        dag_id=args.dag,
        state=args.state,
        since=time_arg(args.since),
        until=time_arg(args.until),
    )
    rows, total = queries.list_records(open_store(), filters, limit=args.limit, offset=args.offset)
    if args.json:
        print_json({"records": rows, "total_entries": total})
        return 0
    if not rows:
        print(f"no evidence records match ({total} in all)")
        return 0
    print_table(
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
    if any(_listed_cost(r) != usd(r["total_cost_usd"]) for r in rows):
        print(
            "+?: some tries' cost is unknown (e.g. no [barecount] cost_local_worker_slot_hour_usd, or an absent "
            "entry), unknown: no try's cost is known; never counted as 0: see `evidence show`"
        )
    return 0


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
        return f"{usd(cost.get('total_usd'))} USD ({basis})" if basis else f"{usd(cost.get('total_usd'))} USD (no try was costed)"
    if known <= 0:
        return f"unknown ({len(unknown)} tries' cost unknown: see below)"
    return f"{usd(cost.get('total_usd'))} USD known ({basis}) + {len(unknown)} tries' cost unknown (see below)"


def cmd_evidence_show(args: argparse.Namespace) -> int:
    from barecount_provider.api import queries
    from barecount_provider.evidence.store import open_store

    record = queries.get_record(open_store(), args.record_id)
    if record is None:
        return fail("barecount evidence show", f"no record {args.record_id}")
    if args.json:
        print_json(record, sort_keys=True)
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
        print_table(
            [
                [
                    str(e.get("key")),
                    str(e.get("state")),
                    str((e.get("context") or {}).get("runner_class")),
                    str((e.get("context") or {}).get("size")),
                    "" if (e.get("timings") or {}).get("duration_s") is None else f"{e['timings']['duration_s']:.2f}",
                    usd((e.get("cost") or {}).get("total_usd")) if e.get("cost") else "-",
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
        print_json({"intact": result.intact, "chains": chains, "total_entries": len(chains)})
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
        print_json({"intact": report.intact, "key_source": source, "chains": [queries.chain_dict(report, count)]})
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
        document = bundles.export_bundle(open_store(), args.tenant, time_arg(args.since))
    except LookupError as err:
        return fail("barecount evidence export", err.args[0])
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
        return fail("barecount evidence redact", err.args[0])
    redaction = stored["redaction"]
    if args.json:
        print_json({"record_id": args.record_id, "redaction_record_id": stored["record_id"],
                    "sequence": stored["chain"]["sequence"], "paths": redaction["paths"], "by": by, "at": redaction["at"]})
        return 0
    print(f"record {args.record_id}: {len(redaction['paths'])} field(s) redacted: {', '.join(redaction['paths'])}")
    print(f"redaction record {stored['record_id']} (sequence {stored['chain']['sequence']}) by {by} at {redaction['at']}")
    return 0


def cmd_evidence_flush(args: argparse.Namespace) -> int:
    from barecount_provider.evidence import spool

    result = spool.flush()
    if args.json:
        print_json({**result.__dict__, "spool": spool.spool_dir()}, indent=None)
    else:
        print(f"delivered {result.delivered}, remaining {result.remaining} (spool: {spool.spool_dir()})")
        if result.failed or result.error:
            print(f"failed {result.failed}: {result.error or 'unreadable entries kept as *.unreadable'}", file=sys.stderr)
    return 1 if (result.error or result.failed) else 0


def cmd_evidence_seal(args: argparse.Namespace) -> int:
    from barecount_provider.runtime import sealing

    run_ids = args.run or _finished_runs(args.dag)
    results, status = [], 0
    for run_id in run_ids:
        try:
            record = sealing.seal_run(args.dag, run_id, grace_seconds=args.grace)
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
        print_json(results)
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


