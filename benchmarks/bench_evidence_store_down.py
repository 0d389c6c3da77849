#!/usr/bin/env python3
"""What a task pays at its end to write its evidence entry: store up (local files), and the S3 store down
(connection refused) or hung (a server on 127.0.0.1 that accepts and never answers), where the entry is
spooled after the bounded wait. Prints medians and maxima; ``--docs`` rewrites the block in docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_evidence_store_down.py --docs
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- bench-evidence-store-down:start -->", "<!-- bench-evidence-store-down:end -->"


def _entry(n: int) -> dict:
    from barecount_provider.evidence.facts import TryFacts
    from barecount_provider.evidence.record import build_entry

    ctx = {
        "tenant": "acme", "pipeline": "orders", "runner_class": "local", "size": "m", "network_profile": "public",
        "image_or_driver_digest": None, "dag_id": "bench", "run_id": "r1", "task_id": f"t{n}", "try_number": 1,
        "map_index": -1, "correlation_id": "c" * 32, "run_token": f"tok-{n}-{time.monotonic_ns()}",
    }
    now = datetime.now(UTC)
    return build_entry(TryFacts(**ctx, state="success", started_at=now, ended_at=now))


class Hung:
    """Accepts connections and never answers (benchmarks/bench_health_trigger.py uses it too)."""

    def __init__(self, backlog: int = 64) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def drop(self) -> None:
        """Close the connections held so far (between rounds: the server's memory is not the measured one's)."""
        held, self.held = self.held, []
        for conn in held:
            conn.close()

    def close(self) -> None:
        self.sock.close()
        self.drop()


def _configure(kind: str, endpoint: str | None, home: str) -> None:
    from barecount_provider import config
    from barecount_provider.evidence import spool, store

    os.environ["AIRFLOW__BARECOUNT__EVIDENCE_DIR"] = os.path.join(home, kind)
    os.environ["AIRFLOW__BARECOUNT__EVIDENCE_STORE"] = "local" if endpoint is None else "s3"
    os.environ["AIRFLOW__BARECOUNT__EVIDENCE_S3_BUCKET"] = "evidence"
    os.environ["AIRFLOW__BARECOUNT__EVIDENCE_AWS_CONN_ID"] = "bench_s3"
    if endpoint:
        os.environ["AIRFLOW_CONN_BENCH_S3"] = json.dumps(
            {"conn_type": "aws", "login": "x", "password": "y", "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
        )
    config.cache_clear()
    store.clear_caches()
    spool.clear_caches()


def measure(kind: str, endpoint: str | None, n: int, home: str) -> dict[str, float | int | str]:
    from barecount_provider.evidence import spool

    _configure(kind, endpoint, home)
    spool.write_entry(_entry(-1))  # first use (imports, client) not counted
    times, outcomes = [], []
    for i in range(n):
        started = time.perf_counter()
        outcomes.append(spool.write_entry(_entry(i)))
        times.append((time.perf_counter() - started) * 1000.0)
    return {
        "case": kind,
        "median_ms": round(statistics.median(times), 2),
        "max_ms": round(max(times), 2),
        "outcome": ", ".join(sorted(set(outcomes))),
        "spooled": len(spool.spooled()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20, help="entries per case (default 20)")
    parser.add_argument("--timeout-ms", type=int, default=2000, help="[barecount] evidence_store_timeout_ms")
    parser.add_argument("--docs", action="store_true", help="rewrite the block in docs/benchmarks.md")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="bc-bench-evidence-")
    os.environ.setdefault("AIRFLOW_HOME", home)
    os.environ["AIRFLOW__BARECOUNT__EVIDENCE_STORE_TIMEOUT_MS"] = str(args.timeout_ms)
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    refused_port = refused.getsockname()[1]
    refused.close()
    hung = Hung()
    rows = [
        measure("store up (local)", None, args.n, home),
        measure("S3 refused", f"http://127.0.0.1:{refused_port}", args.n, home),
        measure("S3 hung", f"http://127.0.0.1:{hung.port}", max(3, args.n // 4), home),
    ]
    lines = [
        f"Run of {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: `.venv/bin/python benchmarks/bench_evidence_store_down.py --docs` "
        f"({os.cpu_count()} CPUs, `evidence_store_timeout_ms` = {args.timeout_ms})",
        "",
        "| case | median ms per entry | max ms | outcome | spool files after |",
        "|---|---|---|---|---|",
        *(f"| {r['case']} | {r['median_ms']} | {r['max_ms']} | {r['outcome']} | {r['spooled']} |" for r in rows),
    ]
    text = "\n".join(lines)
    print(text)
    if args.docs:
        path = REPO / "docs" / "benchmarks.md"
        doc = path.read_text(encoding="utf-8")
        block = f"{START}\n{text}\n{END}"
        if START in doc:
            doc = doc[: doc.index(START)] + block + doc[doc.index(END) + len(END) :]
        else:
            doc = doc.rstrip() + "\n\n## Evidence: what a task pays when the store is down\n\n" + (
                "A task writes its evidence entry at its end. Each store call is bounded by "
                "`[barecount] evidence_store_timeout_ms` (S3: connect and read timeouts, no retry); past it the "
                "entry is spooled locally (atomic write) and delivered later, exactly once. Bound: about the "
                "timeout per attempt (a refused connection fails at once; a hung one waits the read timeout), "
                "plus the spool write.\n\n"
            ) + block + "\n"
        path.write_text(doc, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
