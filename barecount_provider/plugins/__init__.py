"""Airflow plugins of BareCount (registered through the ``airflow.plugins`` entry point only)."""
