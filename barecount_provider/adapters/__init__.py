"""Every use of another library's private internals, one module per library (airflow, statsd,
opentelemetry). Nothing else in BareCount reaches into them; tests/unit/test_adapters.py (and, for statsd's
socket, tests/integration/test_adapters.py) checks the shape each adapter relies on and names what changed
when an upgrade breaks it."""
