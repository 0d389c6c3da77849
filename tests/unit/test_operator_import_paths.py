"""The runner operators' import paths from before the one-service-a-module split keep working.

``operators.serverless``, ``operators.container``, ``operators.managed_etl`` and ``operators.dedicated`` are
re-exports: every public name they had is importable from them and is the very object of its new module, so
DAGs written against the old paths still parse and still get the same classes.
"""

from __future__ import annotations

import importlib

import pytest

# old module -> {public name: new module}; the names are every public top-level name the old module had.
OLD_PATHS = {
    "serverless": {
        "LambdaRunnerOperator": "lambda_function",
        "LambdaFunctionError": "lambda_function",
        "LambdaReport": "lambda_function",
        "parse_report": "lambda_function",
        "decode_log_result": "lambda_function",
        "client_context_with_identity": "lambda_function",
        "payload_with_identity": "lambda_function",
    },
    "container": {
        "KubernetesRunnerOperator": "kubernetes",
        "KubernetesPodFailed": "kubernetes",
        "ObservePodCallback": "kubernetes",
        "parse_pod": "kubernetes",
        "pod_resources": "kubernetes",
        "record_pod_run": "kubernetes",
        "EcsRunnerOperator": "ecs",
        "EcsTaskFailed": "ecs",
        "parse_ecs_task": "ecs",
        "parse_describe_tasks": "ecs",
        "overrides_with_size_and_identity": "ecs",
        "LABEL_PREFIX": "base",
    },
    "managed_etl": {
        "GlueRunnerOperator": "glue",
        "GlueJobRunFailed": "glue",
        "glue_dpu_seconds": "glue",
        "record_glue_job_run": "glue",
        "EmrServerlessRunnerOperator": "emr_serverless",
        "EmrServerlessJobRunFailed": "emr_serverless",
        "record_emr_serverless_job_run": "emr_serverless",
        "job_driver_with_identity": "emr_serverless",
    },
    "dedicated": {
        "DedicatedComputeOperator": "ec2",
        "DedicatedComputeFailed": "ec2",
        "HostsNotReady": "ec2",
        "ReadinessCheck": "ec2",
        "ManagedHost": "ec2",
        "sweep_orphans": "ec2",
        "ssm_agent_online": "ec2",
        "instance_state_only": "ec2",
        "MANAGED_TAG": "ec2",
    },
}


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [(old, name, new) for old, names in OLD_PATHS.items() for name, new in names.items()],
)
def test_old_import_path_gives_the_same_object_as_the_new_module(old: str, name: str, new: str) -> None:
    old_module = importlib.import_module(f"barecount_provider.operators.{old}")
    new_module = importlib.import_module(f"barecount_provider.operators.{new}")
    assert getattr(old_module, name) is getattr(new_module, name)


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_every_name_the_old_module_exports_resolves(old: str) -> None:
    module = importlib.import_module(f"barecount_provider.operators.{old}")
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"operators.{old}.__all__ names {missing} that it does not define"
    assert set(OLD_PATHS[old]) <= set(module.__all__), f"operators.{old} no longer exports {set(OLD_PATHS[old]) - set(module.__all__)}"
