"""What any run may add to its compute: S3 storage it leaves behind and data it sends to the internet."""

from __future__ import annotations

from barecount_provider.cost.base import GIB, STORAGE, TRANSFER, Estimate, Run
from barecount_provider.cost.format import fmt_number, fmt_usd

_STORAGE_AND_TRANSFER = (
    (STORAGE, "billing_inputs.stored_bytes", ("s3", "standard_gb_month"), "GB-month", "S3 storage"),
    (TRANSFER, "billing_inputs.transfer_out_bytes", ("transfer", "internet_out_gb"), "GB", "data transfer out"),
)
# What a try without a runner_result (every local task) notes: the same two lines each time.
_NOTHING_REPORTED = tuple(
    f"{what}: not reported (no runner_result); counted as 0" for *_, what in _STORAGE_AND_TRANSFER
)


def storage_and_transfer(est: Estimate, run: Run, has_result: bool) -> None:
    """S3 storage the run reports leaving behind (one month) and bytes it reports sending to the internet."""
    if not has_result:
        est.missing.extend(_NOTHING_REPORTED)
        return
    for part, path, keys, unit, what in _STORAGE_AND_TRANSFER:
        value, why = run.number(path)
        if value is None:
            est.not_costed(f"{what}: not reported ({why}); counted as 0")
            continue
        est.inputs[path.split(".", 1)[1]] = value
        price = est.price(*keys)
        if price is None:
            est.not_costed(f"{what}: not costed, " + est.no_price(what, *keys))
            continue
        gb = value / GIB
        est.add(part, gb * price, f"{fmt_number(gb)} {unit} x {fmt_usd(price)}/{unit} ({what})")
