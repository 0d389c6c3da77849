"""System tests: a real Airflow (api-server, scheduler, dag-processor) on loopback."""
