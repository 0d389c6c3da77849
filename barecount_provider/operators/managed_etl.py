"""Old import path of the managed ETL runners; the code lives in ``barecount_provider.operators.glue`` and ``barecount_provider.operators.emr_serverless`` (one service a module).

Kept so that no DAG breaks: every public name this module had is importable from here and is the same
object as in its new module (tests/unit/test_operator_import_paths.py checks it). New code imports from
the new module.
"""

from __future__ import annotations

from barecount_provider.cost.backends.glue import (
    GLUE_DPU_PER_WORKER,
)
from barecount_provider.operators.emr_serverless import (
    EMR_SERVERLESS,
    EMR_SUCCESS_STATE,
    EmrServerlessJobRunFailed,
    EmrServerlessRunnerOperator,
    emr_serverless_max_workers,
    job_driver_with_identity,
    record_emr_serverless_job_run,
    spark_submit_parameters_with_identity,
)
from barecount_provider.operators.glue import (
    GLUE,
    GLUE_AUTO_SCALING_ARGUMENT,
    GLUE_CAPACITY_RUN_ARGUMENTS,
    GLUE_SUCCESS_STATE,
    GlueJobRunFailed,
    GlueRunnerOperator,
    glue_dpu_seconds,
    glue_identity_arguments,
    glue_run_kwargs_for_size,
    glue_script_args_with_identity,
    record_glue_job_run,
)

__all__ = [
    "EMR_SERVERLESS",
    "EMR_SUCCESS_STATE",
    "EmrServerlessJobRunFailed",
    "EmrServerlessRunnerOperator",
    "GLUE",
    "GLUE_AUTO_SCALING_ARGUMENT",
    "GLUE_CAPACITY_RUN_ARGUMENTS",
    "GLUE_DPU_PER_WORKER",
    "GLUE_SUCCESS_STATE",
    "GlueJobRunFailed",
    "GlueRunnerOperator",
    "emr_serverless_max_workers",
    "glue_dpu_seconds",
    "glue_identity_arguments",
    "glue_run_kwargs_for_size",
    "glue_script_args_with_identity",
    "job_driver_with_identity",
    "record_emr_serverless_job_run",
    "record_glue_job_run",
    "spark_submit_parameters_with_identity",
]
