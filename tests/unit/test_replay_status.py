"""`barecount replay status`: a replay on another host is shown stale once its heartbeat is older than the
lease (a replay whose process was killed: tests/integration/test_replay_status.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from barecount_provider.cli import main
from barecount_provider.recovery import ledger as ledger_module
from barecount_provider.recovery.ledger import ReplayLedger


def _status(ledger_url: str, capsys, *extra: str) -> dict:
    assert main(["replay", "status", "--ledger-url", ledger_url, "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_replay_on_another_host_is_stale_only_after_its_lease(tmp_path: Path, capsys, monkeypatch) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = ReplayLedger(ledger_url)
    monkeypatch.setattr(ledger_module, "HOST", "another-host")
    run_id = ledger.start_run("orders-replay")  # recorded as run by another host (whose pids mean nothing here)
    monkeypatch.undo()
    (run,) = _status(ledger_url, capsys)["scopes"][0]["runs"]
    assert (run["run_id"], run["state"], run["resumable"]) == (run_id, "running", False)
    with ledger.engine.begin() as connection:
        connection.execute(
            ledger_module.runs_table.update().values(updated_at=time.time() - 600).where(ledger_module.runs_table.c.run_id == run_id)
        )
    (run,) = _status(ledger_url, capsys)["scopes"][0]["runs"]
    assert (run["state"], run["resumable"]) == ("stale", True)
    (run,) = _status(ledger_url, capsys, "--lease-seconds", "900")["scopes"][0]["runs"]
    assert run["state"] == "running"
    ledger.dispose()
