"""``BareCountGlueJobHook``: the amazon provider's ``GlueJobHook`` plus what the Glue runner reads."""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.hooks.glue import GlueJobHook


class BareCountGlueJobHook(GlueJobHook):
    """``GlueJobHook`` with the whole job run, not only its state."""

    def get_job_run(self, job_name: str, run_id: str) -> dict[str, Any]:
        """GetJobRun's ``JobRun`` of run ``run_id`` of job ``job_name``."""
        return dict(self.conn.get_job_run(JobName=job_name, RunId=run_id)["JobRun"])
