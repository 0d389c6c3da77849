"""BareCount's triggers: what a deferred sensor or operator waits on in Airflow's triggerer (docs/health.md)."""
