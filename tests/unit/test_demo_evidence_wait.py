"""The demo waits for one evidence record per observed run before it stops Airflow (scripts/demo.py)."""

import importlib.util
import threading
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"


def _demo():
    spec = importlib.util.spec_from_file_location("barecount_demo_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_waits_until_the_store_holds_every_expected_record(tmp_path):
    demo = _demo()
    tenant = tmp_path / "records" / "acme"
    tenant.mkdir(parents=True)
    (tenant / "000000000001-a.json").write_text("{}")

    def assemble_later():
        time.sleep(1.0)
        (tenant / "000000000002-b.json").write_text("{}")

    writer = threading.Thread(target=assemble_later)
    writer.start()
    assert demo._wait_for_evidence(tmp_path, expected=2, limit=30.0) == 2
    writer.join()


def test_gives_up_after_its_limit_and_says_how_many_it_found(tmp_path):
    demo = _demo()
    (tmp_path / "records" / "acme").mkdir(parents=True)
    (tmp_path / "records" / "acme" / "000000000001-a.json").write_text("{}")
    assert demo._wait_for_evidence(tmp_path, expected=3, limit=0.6) == 1  # returns at its limit
