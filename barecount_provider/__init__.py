"""BareCount: an Apache Airflow provider that operates and observes pipeline runners."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""
    from barecount_provider.config import provider_config_section

    return {
        "package-name": "airflow-provider-barecount",
        "name": "BareCount",
        "description": "Operate and observe pipeline runners (Lambda, Kubernetes, ECS, Glue, EMR Serverless, "
        "EC2): metrics, structured redacted logs, traces, cost attribution and per-run evidence.",
        "versions": [__version__],
        "config": provider_config_section(),
    }
