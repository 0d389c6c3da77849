"""Airflow listeners: thin, defensive hooks that hand work to telemetry, evidence and cost."""
