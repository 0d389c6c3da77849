"""``BareCountEmrServerlessHook``: the amazon provider's ``EmrServerlessHook`` plus what the EMR Serverless
runner reads."""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.hooks.emr import EmrServerlessHook


class BareCountEmrServerlessHook(EmrServerlessHook):
    """``EmrServerlessHook`` with the application and the job run."""

    def get_application(self, application_id: str) -> dict[str, Any]:
        """GetApplication's ``application`` (its initial and maximum capacity, among others)."""
        return dict(self.conn.get_application(applicationId=application_id)["application"])

    def get_job_run(self, application_id: str, job_run_id: str) -> dict[str, Any]:
        """GetJobRun's ``jobRun`` of run ``job_run_id`` on application ``application_id``."""
        return dict(self.conn.get_job_run(applicationId=application_id, jobRunId=job_run_id)["jobRun"])
