"""One cost model per backend, one module each (``glue.py`` prices a Glue job run), on the shared base
(:mod:`barecount_provider.cost.base`).

Every model is a pure function of the runner_result's ``billing_inputs`` (and a few ``timings`` /
``resources_used`` fields), the price table and, for ``local`` tasks, the task try's duration. What cannot be
priced is never counted as 0: the compute cost is then ``None`` (unknown) and ``missing`` says why, with the
runner_result's own ``field_sources`` reason when it has one. Storage and data transfer a run does not report
cost 0, and ``missing`` records that they were not reported. The formulas are in docs/cost.md.

``MODELS`` maps each backend a runner_result can come from to its model, ``model(estimate, run)``; a
``local`` task has no runner_result and is priced by :func:`.local.model` from the try's duration;
:func:`.storage_and_transfer.storage_and_transfer` adds to any of them."""

from __future__ import annotations

from collections.abc import Callable

from barecount_provider.cost.backends import aws_lambda, ec2, ecs, emr_serverless, glue, kubernetes
from barecount_provider.cost.base import EC2, ECS, EMR_SERVERLESS, GLUE, KUBERNETES, LAMBDA, Estimate, Run

MODELS: dict[str, Callable[[Estimate, Run], None]] = {
    LAMBDA: aws_lambda.model,
    ECS: ecs.model,
    KUBERNETES: kubernetes.model,
    GLUE: glue.model,
    EMR_SERVERLESS: emr_serverless.model,
    EC2: ec2.model,
}
