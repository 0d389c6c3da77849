"""`barecount evidence list|show|verify|flush` and `barecount cost report` on a local store in tmp_path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from barecount_provider import cli, config
from barecount_provider.api.queries import parse_time
from barecount_provider.evidence import record as rec
from barecount_provider.evidence import spool as spool_module
from barecount_provider.evidence import store as store_module
from barecount_provider.evidence.store import EvidenceStore, open_store

from .test_api import build_run, fill_store


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EvidenceStore]:
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    monkeypatch.delenv("AIRFLOW__BARECOUNT__EVIDENCE_INDEX_URL", raising=False)
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_STORE", "local")
    config.cache_clear()
    store_module.clear_caches()
    yield open_store()
    store_module.clear_caches()


@pytest.fixture
def filled(store: EvidenceStore) -> dict[str, list[dict[str, Any]]]:
    return fill_store(store)


def _json(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "argv",
    [
        ["evidence", "--help"],
        ["evidence", "list", "--help"],
        ["evidence", "show", "--help"],
        ["evidence", "verify", "--help"],
        ["evidence", "export", "--help"],
        ["evidence", "redact", "--help"],
        ["evidence", "flush", "--help"],
        ["evidence", "seal", "--help"],
        ["cost", "--help"],
        ["cost", "report", "--help"],
    ],
)
def test_every_subcommand_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    assert "usage: barecount" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- list


def test_list_prints_a_table_newest_first_with_the_page(filled: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["evidence", "list", "--limit", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ended", "(UTC)", "tenant", "pipeline", "dag", "run", "state", "complete", "cost", "usd", "seq", "record"]
    assert out[2].startswith("2026-11-23T06:00:00  team_a  orders") and "a_orders" in out[2]
    assert out[-1] == "1-3 of 15"


def test_list_filters_and_json(filled: Any, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["evidence", "list", "--tenant", "team_a", "--since", "2026-11-21T06:00:00+00:00", "--until", "2026-11-22T00:00"]
    assert cli.main([*argv, "--json"]) == 0
    page = _json(capsys)
    assert page["total_entries"] == 4
    found = [(r["ended_at"], r["dag_id"], r["run_id"]) for r in page["records"]]
    assert sorted(found, key=lambda item: item[0], reverse=True) == found  # newest first
    assert {(dag, run) for _ended, dag, run in found} == {
        ("a_orders", "manual__2"), ("a_orders", "manual__3"), ("a_billing", "manual__2"), ("a_billing", "manual__3")
    }  # fmt: skip
    assert "location" not in page["records"][0]
    assert cli.main(["evidence", "list", "--state", "failed", "--pipeline", "orders", "--json"]) == 0
    assert {r["dag_id"] for r in _json(capsys)["records"]} == {"a_orders", "b_orders"}
    assert cli.main(["evidence", "list", "--dag", "nothing"]) == 0
    assert "no evidence records match (0 in all)" in capsys.readouterr().out


def test_relative_times_count_back_from_now() -> None:
    now = datetime(2026, 11, 27, 12, tzinfo=UTC)
    assert parse_time("30d", now=now) == now - timedelta(days=30)
    assert parse_time("12h", now=now) == now - timedelta(hours=12)
    assert parse_time("2w", now=now) == now - timedelta(weeks=2)
    assert parse_time("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time("2026-11-01T10:00:00Z") == datetime(2026, 11, 1, 10, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither an ISO 8601 time"):
        parse_time("last tuesday")


def test_a_bad_time_is_a_usage_error(filled: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error (the option's type refuses it)
        cli.main(["evidence", "list", "--since", "last tuesday"])
    assert exit_info.value.code == 2
    assert "error: argument --since: 'last tuesday' is neither an ISO 8601 time" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- show


def test_show_prints_the_record_and_its_tries(filled: Any, capsys: pytest.CaptureFixture[str]) -> None:
    record = filled["b_orders"][1]
    assert cli.main(["evidence", "show", record["record_id"]]) == 0
    out = capsys.readouterr().out
    assert f"record           {record['record_id']}" in out
    assert "dag / run        b_orders / manual__2" in out and "state            failed" in out
    assert f"hash {record['chain']['hash']}" in out
    assert "work#1  failed  dedicated  l     1800.00    2.0000  task" in out
    assert cli.main(["evidence", "show", record["record_id"], "--json"]) == 0
    assert _json(capsys) == record


def test_show_an_unknown_record_exits_1(filled: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["evidence", "show", "f" * 32]) == 1
    assert f"no record {'f' * 32}" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- verify


def test_verify_intact_chains_exits_0(filled: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["evidence", "verify"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "tenant 'mixed': 2 record(s), chain intact",
        "tenant 'team_a': 9 record(s), chain intact",
        "tenant 'team_b': 4 record(s), chain intact",
        "checkpoints are not configured ([barecount] evidence_checkpoint_public_key): only the hash chains were "
        "checked, which whoever can write the store can rewrite from the newest record back",
    ]


def _body_path(store: EvidenceStore, record_id: str) -> Path:
    path = store.body_path(record_id)
    assert path is not None
    return Path(path)


def test_verify_exits_1_and_names_each_broken_record(
    store: EvidenceStore, filled: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    altered, removed = filled["a_orders"][2], filled["b_orders"][2]
    path = _body_path(store, altered["record_id"])
    body = json.loads(path.read_text())
    body["state"] = "success"  # it failed
    path.write_text(json.dumps(body))
    _body_path(store, removed["record_id"]).unlink()
    assert cli.main(["evidence", "verify"]) == 1
    captured = capsys.readouterr()
    assert "tenant 'mixed': 2 record(s), chain intact" in captured.out
    err = captured.err
    assert "tenant 'team_a': 9 record(s), 1 BROKEN" in err
    assert f"tenant 'team_a' sequence 3 (record {altered['record_id']}): altered" in err
    assert "tenant 'team_b': 4 record(s)" in err
    assert f"(record {removed['record_id']}): removed: its body" in err
    # one tenant, as JSON
    assert cli.main(["evidence", "verify", "--tenant", "team_a", "--json"]) == 1
    result = _json(capsys)
    assert result["intact"] is False
    assert [(p["record_id"], p["kind"]) for p in result["chains"][0]["problems"]] == [(altered["record_id"], "altered")]
    assert cli.main(["evidence", "verify", "--tenant", "mixed"]) == 0


def test_verify_an_empty_store(store: EvidenceStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["evidence", "verify"]) == 0
    assert "nothing to verify" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ flush


def _spooled_entries(count: int) -> list[dict[str, Any]]:
    entries = []
    for n in range(count):
        run = build_run("a_orders", 100 + n, "team_a", "orders", "serverless", "s", 0.1)
        entries.append(run["entries"][0])
        spool_module.spool(run["entries"][0])
    return entries


def test_flush_delivers_the_spool_and_prints_delivered_and_remaining(
    store: EvidenceStore, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = _spooled_entries(3)
    assert len(spool_module.spooled()) == 3
    assert cli.main(["evidence", "flush"]) == 0
    assert capsys.readouterr().out.startswith("delivered 3, remaining 0 (spool: ")
    assert spool_module.spooled() == []
    ctx = entries[0]["context"]
    assert len(store.entries_for_run(ctx["dag_id"], ctx["run_id"])) == 1
    assert cli.main(["evidence", "flush", "--json"]) == 0
    assert _json(capsys)["delivered"] == 0


def test_flush_with_the_store_down_exits_1_and_keeps_the_spool(
    store: EvidenceStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _spooled_entries(2)

    def down(**_kwargs: Any) -> EvidenceStore:
        raise ConnectionError("store unreachable")

    monkeypatch.setattr(spool_module, "open_store", down)
    assert cli.main(["evidence", "flush"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("delivered 0, remaining 2")
    assert "ConnectionError: store unreachable" in captured.err
    assert len(spool_module.spooled()) == 2


# ------------------------------------------------------------------------------------------------- cost


def test_cost_report_by_runner_class_per_day(filled: Any, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["cost", "report", "--by", "runner_class", "--since", "2026-11-21", "--until", "2026-11-22", "--tenant", "team_b"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["day", "runner_class", "hours", "compute", "usd", "storage", "usd", "transfer", "usd", "total", "usd", "runs", "unknown", "tries"]
    assert lines[2].split() == ["2026-11-21", "dedicated", "1.000", "4.0000", "0.0000", "0.0000", "4.0000", "2", "0"]
    assert lines[3].split() == ["total", "1.000", "4.0000", "0.0000", "0.0000", "4.0000", "2", "0"]


def test_cost_report_json_by_several_groups_over_the_range(filled: Any, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["cost", "report", "--by", "tenant", "--by", "size", "--since", "2026-11-01", "--no-per-day", "--json"]
    assert cli.main(argv) == 0
    report = _json(capsys)
    assert report["by"] == ["tenant", "size"] and report["per_day"] is False
    assert {(r["tenant"], r["size"]): r["total_usd"] for r in report["rows"]} == pytest.approx(
        {("mixed", "m"): 1.0, ("mixed", "xs"): 0.0, ("team_a", "m"): 1.5, ("team_a", "s"): 0.6, ("team_b", "l"): 8.0}
    )
    assert report["totals"]["total_usd"] == pytest.approx(11.1)


def test_cost_report_since_30_days_by_default(store: EvidenceStore, capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now(UTC)
    for n, age in enumerate((timedelta(days=1), timedelta(days=45))):
        record = build_run("a_orders", n + 1, "team_a", "orders", "serverless", "s", 0.25)
        store.append(rec.build_record(**{**_record_args(record), "ended_at": now - age}))
    assert cli.main(["cost", "report", "--json"]) == 0
    report = _json(capsys)
    assert report["by"] == ["tenant"]
    assert [(r["tenant"], r["runs"]) for r in report["rows"]] == [("team_a", 1)]


def _record_args(record: dict[str, Any]) -> dict[str, Any]:
    names = ("dag_id", "run_id", "tenant", "pipeline", "state", "started_at", "correlation_id", "entries")
    return {name: record[name] for name in names}


def test_cost_report_by_an_unknown_group_is_a_usage_error(filled: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cost", "report", "--by", "colour"]) == 2
    assert "cost roll-up by 'colour': expected one of tenant, pipeline, runner_class, size, dag_id" in capsys.readouterr().err


# ------------------------------------------------------------------------ unknown cost is never shown as 0

UNKNOWN_WHY = "compute cost unknown: no [barecount] cost_local_worker_slot_hour_usd"


def _with_unknown_cost(store: EvidenceStore, *, known: bool) -> dict[str, Any]:
    """A run of two tries on 2026-11-21: a local one whose cost is unknown, and (``known``) a serverless one
    of 0.25 USD; plus a third try that never left its entry (absent)."""
    record = build_run("u_orders", 1, "team_u", "orders", "serverless", "s", 0.25)
    entries = record["entries"] if known else []
    local = build_run("u_orders", 1, "team_u", "orders", "local", "m", 0.0)["entries"][0]
    local = {**local, "key": local["key"].replace("work", "prepare"), "cost": {**local["cost"], "total_usd": None, "compute_usd": None, "missing": [UNKNOWN_WHY]}}
    args = {**_record_args(record), "entries": [*entries, local], "ended_at": record["ended_at"]}
    return store.append(rec.build_record(**args, absent=["publish#1"]))


def test_show_never_prints_an_unknown_cost_as_0(store: EvidenceStore, capsys: pytest.CaptureFixture[str]) -> None:
    record = _with_unknown_cost(store, known=False)
    assert record["cost"]["total_usd"] == 0.0 and record["cost"]["complete"] is False  # what the record holds
    assert cli.main(["evidence", "show", record["record_id"]]) == 0
    out = capsys.readouterr().out
    assert "cost             unknown (2 tries' cost unknown: see below)" in out
    assert "0.0000 USD" not in out
    assert f"prepare#1: {UNKNOWN_WHY}" in out
    assert "publish#1: the try's evidence entry is absent" in out


def test_show_prints_the_known_part_and_counts_the_unknown(store: EvidenceStore, capsys: pytest.CaptureFixture[str]) -> None:
    record = _with_unknown_cost(store, known=True)
    assert cli.main(["evidence", "show", record["record_id"]]) == 0
    out = capsys.readouterr().out
    assert "cost             0.2500 USD known (list-price estimate) + 2 tries' cost unknown (see below)" in out


def test_cost_report_shows_groups_whose_cost_is_unknown(store: EvidenceStore, capsys: pytest.CaptureFixture[str]) -> None:
    _with_unknown_cost(store, known=True)
    argv = ["cost", "report", "--by", "runner_class", "--since", "2026-11-01", "--no-per-day"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.split("\n\n")[0].splitlines()[2:]}
    assert rows["serverless"] == ["0.500", "0.2500", "0.0000", "0.0000", "0.2500", "1", "0"]
    assert rows["local"] == ["unknown"] * 5 + ["0", "1"]  # shown, never as 0
    assert rows["unknown"] == ["unknown"] * 5 + ["0", "1"]  # the absent try
    assert rows["total"] == ["0.500", "0.2500", "0.0000", "0.0000", "0.2500", "+?", "1", "2"]
    assert "+?: 2 tries' cost is unknown" in out and UNKNOWN_WHY in out and "entry is absent" in out
    assert cli.main([*argv, "--json"]) == 0
    report = _json(capsys)
    local = next(row for row in report["rows"] if row["runner_class"] == "local")
    assert (local["unknown_tries"], local["unknown_reasons"], local["runs"]) == (1, [UNKNOWN_WHY], 0)
    assert report["totals"]["unknown_tries"] == 2


def test_list_never_prints_an_unknown_cost_as_0(store: EvidenceStore, capsys: pytest.CaptureFixture[str]) -> None:
    unknown = _with_unknown_cost(store, known=False)
    assert cli.main(["evidence", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if unknown["record_id"] in line)
    assert " unknown " in row and "0.0000" not in row
