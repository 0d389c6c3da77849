"""Cost: one model per runner backend, priced from a dated, overridable price table (docs/cost.md).

from barecount_provider.cost import estimate

cost = estimate("serverless", runner_result, runtime_s=1.4)
cost.total_usd, cost.formula, cost.missing
"""

from __future__ import annotations

from barecount_provider.cost.models import (
    BACKENDS,
    METRIC_NAMES,
    CostEstimate,
    attribution_key,
    backend_of,
    cost_metric_points,
    estimate,
)
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
