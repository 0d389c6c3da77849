"""Evidence: one tamper-evident record per DAG run (see docs/evidence.md)."""
