"""Cost: one model per runner backend, priced from a dated, overridable price table (docs/cost.md).

from barecount_provider.cost import estimate

cost = estimate("serverless", runner_result, runtime_s=1.4)
cost.total_usd, cost.formula, cost.missing

Modules: ``estimates`` (the public API), ``base`` (CostEstimate and what every model shares),
``backends/`` (one model per backend: ``aws_lambda``, ``ecs``, ``kubernetes``, ``glue``, ``emr_serverless``,
``ec2``, ``local``, and ``storage_and_transfer``), ``format`` (numbers and money in formulas), ``metrics``
(the ``barecount.cost.*`` points) and ``prices`` (the price table). The package imports only the foundation
(config, policy, schema, selfmetrics).
"""

from __future__ import annotations

from barecount_provider.cost.base import BACKENDS, CostEstimate
from barecount_provider.cost.estimates import attribution_key, backend_of, estimate
from barecount_provider.cost.metrics import METRIC_NAMES, cost_metric_points
from barecount_provider.cost.prices import (
    LIST_PRICE_BASIS,
    PriceTable,
    PriceTableError,
    Problem,
    apply_configured_rates,
    configured_price_table,
    load_price_table,
    parse_price_table,
    shipped_price_table,
    validate_price_file,
)

__all__ = [
    "BACKENDS",
    "LIST_PRICE_BASIS",
    "METRIC_NAMES",
    "CostEstimate",
    "PriceTable",
    "PriceTableError",
    "Problem",
    "apply_configured_rates",
    "attribution_key",
    "backend_of",
    "configured_price_table",
    "cost_metric_points",
    "estimate",
    "load_price_table",
    "parse_price_table",
    "shipped_price_table",
    "validate_price_file",
]
