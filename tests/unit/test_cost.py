"""Cost models, the price table and its override, the cost metrics, and docs/cost.md's examples."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from barecount_provider import config
from barecount_provider.cost import (
    LIST_PRICE_BASIS,
    METRIC_NAMES,
    CostEstimate,
    PriceTableError,
    apply_configured_rates,
    attribution_key,
    backend_of,
    configured_price_table,
    cost_metric_points,
    estimate,
    load_price_table,
    parse_price_table,
    shipped_price_table,
    validate_price_file,
)
from barecount_provider.cost.backends.glue import GLUE_DPU_PER_WORKER
from barecount_provider.cost.format import fmt_number, fmt_usd
from barecount_provider.telemetry.metrics import COUNTER

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "cost.md"
OVERRIDE_SOURCE = "prices.yaml"


@pytest.fixture(autouse=True)
def _fresh_price_table():
    configured_price_table.cache_clear()
    yield
    configured_price_table.cache_clear()


def table(**rates: float) -> Any:
    return apply_configured_rates(shipped_price_table(), **rates)


def lam(**billing: Any) -> dict[str, Any]:
    inputs = {"requests": 1, "billed_duration_ms": 1200, "memory_size_mb": 128, "architecture": "x86_64"}
    inputs.update(billing)
    return {"runner_class": "serverless", "billing_inputs": inputs}


def ecs(**billing: Any) -> dict[str, Any]:
    inputs = {"cpu_units": 1024, "memory_mb": 2048, "runtime_s": 600, "launch_type": "FARGATE"}
    inputs.update(billing)
    return {"runner_class": "container", "billing_inputs": inputs}


def glue(version: str | None = "4.0", duration: float | None = 600, **billing: Any) -> dict[str, Any]:
    inputs = {
        "dpu_seconds": 6000,
        "worker_type": "G.1X",
        "number_of_workers": 10,
        "execution_class": "STANDARD",
    }
    inputs.update(billing)
    result: dict[str, Any] = {
        "runner_class": "managed_etl",
        "driver_version": version,
        "billing_inputs": inputs,
    }
    if duration is not None:
        result["timings"] = {"duration_s": duration}
    return result


def ec2(instance_type: str = "m5.large", lifetimes: Any = None) -> dict[str, Any]:
    lifetimes = {"i-1": 3600} if lifetimes is None else lifetimes
    return {
        "runner_class": "dedicated",
        "billing_inputs": {
            "instance_type": instance_type,
            "host_count": len(lifetimes),
            "host_lifetimes_s": lifetimes,
        },
    }


def pod(**billing: Any) -> dict[str, Any]:
    inputs = {"cpu_request_cores": 0.5, "memory_request_bytes": 2 * 1024**3, "runtime_s": 3600}
    inputs.update(billing)
    return {"runner_class": "container", "billing_inputs": inputs}


def compute_unknown(cost: CostEstimate) -> list[str]:
    return [reason for reason in cost.missing if reason.startswith("compute cost unknown:")]


# ------------------------------------------------------------------------------------------- price table


def test_shipped_table_is_dated_with_source_and_caveat_and_holds_the_reference_prices():
    shipped = shipped_price_table()
    assert (shipped.name, shipped.version, shipped.region, shipped.currency) == (
        "aws-list-prices-us-east-1",
        "2026-11",
        "us-east-1",
        "USD",
    )
    assert shipped.basis == LIST_PRICE_BASIS
    assert "secondary sources" in shipped.source and "2026-11" in shipped.source
    assert "not checked against the AWS Price List API" in shipped.caveat
    expected = {
        ("lambda", "request_per_million"): 0.20,
        ("lambda", "gb_second", "x86_64"): 0.0000166667,
        ("lambda", "gb_second", "arm64"): 0.0000133334,
        ("fargate", "vcpu_hour", "x86_64"): 0.04048,
        ("fargate", "gb_hour", "x86_64"): 0.004445,
        ("fargate", "vcpu_hour", "arm64"): 0.03238,
        ("fargate", "gb_hour", "arm64"): 0.00356,
        ("fargate", "ephemeral_storage_gb_hour"): 0.000111,
        ("glue", "dpu_hour", "STANDARD"): 0.44,
        ("glue", "dpu_hour", "FLEX"): 0.29,
        ("emr_serverless", "vcpu_hour"): 0.052624,
        ("emr_serverless", "gb_hour"): 0.0057785,
        ("emr_serverless", "storage_gb_hour"): 0.000111,
        ("ec2", "instance_hour", "m5.large"): 0.096,
        ("ec2", "instance_hour", "m6i.xlarge"): 0.192,
        ("ec2", "instance_hour", "c6g.large"): 0.068,
        ("s3", "standard_gb_month"): 0.023,
        ("transfer", "internet_out_gb"): 0.09,
    }
    for keys, price in expected.items():
        assert shipped.price(*keys) == price, keys
    for keys in (
        ("lambda", "ephemeral_storage_gb_second"),
        ("kubernetes", "vcpu_hour"),
        ("local", "worker_slot_hour"),
    ):
        assert shipped.price(*keys) is None, keys


def test_glue_dpu_table_is_the_operator_s():
    from barecount_provider.operators.glue import GLUE_DPU_PER_WORKER as OPERATOR_TABLE

    assert OPERATOR_TABLE is GLUE_DPU_PER_WORKER  # one table: the operator's derivation and the cost agree
    assert GLUE_DPU_PER_WORKER["G.1X"] == 1.0 and GLUE_DPU_PER_WORKER["G.025X"] == 0.25


def test_override_merges_over_the_shipped_table_and_names_itself():
    override = parse_price_table(
        'name: acme\nversion: "2027-01"\nprices:\n  ec2:\n    instance_hour:\n      r6i.8xlarge: 0.3\n'
        "  glue:\n    dpu_hour:\n      STANDARD: 0.4\n",
        OVERRIDE_SOURCE,
    )
    assert (override.name, override.version, override.date, override.basis) == (
        "acme",
        "2027-01",
        "2027-01",
        "negotiated rates (acme)",
    )
    assert override.region == "us-east-1" and override.caveat == shipped_price_table().caveat
    assert OVERRIDE_SOURCE in override.source and "aws-list-prices-us-east-1 2026-11" in override.source
    # merged key by key: the shipped instance types and the FLEX price are kept
    assert override.price("ec2", "instance_hour", "r6i.8xlarge") == 0.3
    assert override.price("ec2", "instance_hour", "m5.large") == 0.096
    assert override.price("glue", "dpu_hour", "STANDARD") == 0.4
    assert override.price("glue", "dpu_hour", "FLEX") == 0.29
    # the basis follows the prices used
    standard = estimate("managed_etl", glue(), runtime_s=None, price_table=override)
    flex = estimate("managed_etl", glue(execution_class="FLEX"), runtime_s=None, price_table=override)
    assert standard.basis == "negotiated rates (acme)"
    assert standard.price_table == {
        "name": "acme",
        "version": "2027-01",
        "date": "2027-01",
        "region": "us-east-1",
    }
    assert flex.basis == LIST_PRICE_BASIS
    assert standard.total_usd == pytest.approx(6000 / 3600 * 0.4)


def test_override_basis_region_and_null_price():
    override = parse_price_table(
        "name: eu\nversion: 2027-01-15\nregion: eu-west-1\nbasis: list prices eu-west-1\n"
        "prices:\n  ec2:\n    instance_hour:\n      m5.large: null\n",
        OVERRIDE_SOURCE,
    )
    assert (override.version, override.region) == ("2027-01-15", "eu-west-1")
    cost = estimate("dedicated", ec2(), runtime_s=None, price_table=override)
    assert cost.total_usd is None
    assert "no price for instance type m5.large in price table eu 2027-01-15" in compute_unknown(cost)[0]


def test_override_json_file_and_load_from_path(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps({"name": "acme", "version": "3", "prices": {"local": {"worker_slot_hour": 0.2}}})
    )
    loaded = load_price_table(str(path))
    assert (loaded.name, loaded.version, loaded.origin) == ("acme", "3", str(path))
    cost = estimate("local", None, runtime_s=1800, price_table=loaded)
    assert cost.total_usd == pytest.approx(0.1)
    assert cost.basis == "negotiated rates (acme)"
    assert validate_price_file(str(path)) == []
    assert load_price_table(None) is shipped_price_table()


@pytest.mark.parametrize(
    ("text", "source", "errors"),
    [
        (
            "name: acme\nprices:\n  fargate:\n    vcpu_hour: 0.04\n",
            OVERRIDE_SOURCE,
            [
                "prices.yaml: version: missing; expected the override's own version, such as '2027-01'",
                "prices.yaml: prices.fargate.vcpu_hour: 0.04 is not a mapping (keys: x86_64, arm64)",
            ],
        ),
        (
            'name: acme\nversion: "1"\nprices:\n  glue:\n    minimum_s_by_version:\n      2: 60\n',
            OVERRIDE_SOURCE,
            [
                "prices.yaml: prices.glue.minimum_s_by_version[2]: 2 is not a Glue version such as '1.0' (quoted)"
            ],
        ),
        (
            'name: acme\nversion: "1"\ncaveat: 7\nextra: true\n',
            OVERRIDE_SOURCE,
            [
                "prices.yaml: extra: 'extra' is not a known key (allowed: name, version, date, region, basis, "
                "source, caveat, currency, prices)",
                "prices.yaml: caveat: 7 is not a non-empty string",
            ],
        ),
        (
            "",
            OVERRIDE_SOURCE,
            ["prices.yaml: the file is empty; expected a price table with at least `name` and `version`"],
        ),
        (
            "- a\n- b\n",
            OVERRIDE_SOURCE,
            [
                "prices.yaml: holds a list; expected a mapping with the keys name, version, date, region, basis, source, caveat, currency, prices"
            ],
        ),
        (
            '{"name": "a", "version": "1", "name": "b"}',
            "prices.json",
            ["prices.json: name: given again; expected each key once in an object"],
        ),
        (
            '{"name": "a",}',
            "prices.json",
            [
                "prices.json: JSON syntax error at line 1, column 14: Expecting property name enclosed in double quotes; expected valid JSON"
            ],
        ),
    ],
)
def test_override_validation_errors_are_precise(text, source, errors):
    with pytest.raises(PriceTableError) as info:
        parse_price_table(text, source)
    assert [str(problem) for problem in info.value.problems] == errors
    assert str(info.value) == "\n".join(errors)


def test_unreadable_override_file(tmp_path):
    missing = tmp_path / "absent.yaml"
    problems = validate_price_file(str(missing))
    assert [str(problem) for problem in problems] == [
        f"{missing}: cannot be read: No such file or directory; expected a readable price table file"
    ]
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\n")
    with pytest.raises(PriceTableError, match=r"is not UTF-8 text \(byte 6\)"):
        load_price_table(str(binary))


def test_configured_price_table_reads_the_options_by_name(tmp_path, monkeypatch):
    assert configured_price_table() is shipped_price_table()  # no option declared, or all empty
    path = tmp_path / "prices.yaml"
    path.write_text('name: acme\nversion: "2027-01"\nprices:\n  kubernetes:\n    vcpu_hour: 0.05\n')
    monkeypatch.setattr(config, "cost_price_table_path", lambda: str(path), raising=False)
    monkeypatch.setattr(config, "cost_kubernetes_gb_hour_usd", lambda: "0.006", raising=False)
    monkeypatch.setattr(config, "cost_kubernetes_vcpu_hour_usd", lambda: None, raising=False)
    monkeypatch.setattr(config, "cost_local_worker_slot_hour_usd", lambda: 0.08, raising=False)
    configured_price_table.cache_clear()
    configured = configured_price_table()
    assert configured is configured_price_table()  # cached
    assert configured.name == "acme"
    assert configured.price("kubernetes", "vcpu_hour") == 0.05
    assert configured.price("kubernetes", "gb_hour") == 0.006
    assert configured.price("local", "worker_slot_hour") == 0.08
    cost = estimate("container", pod(), runtime_s=None)
    assert cost.basis == "negotiated rates (acme); configured rate ([barecount] cost_kubernetes_gb_hour_usd)"
    assert cost.total_usd == pytest.approx(0.5 * 0.05 + 2 * 0.006)
    monkeypatch.setattr(config, "cost_local_worker_slot_hour_usd", lambda: "-1", raising=False)
    configured_price_table.cache_clear()
    with pytest.raises(
        ValueError, match=r"\[barecount\] cost_local_worker_slot_hour_usd: '-1' is not a rate in USD"
    ):
        configured_price_table()


# ------------------------------------------------------------------------------------------------ models


def test_lambda_requests_plus_gb_seconds_by_architecture():
    x86 = estimate("serverless", lam(), runtime_s=2.0, price_table=table())
    assert x86.backend == "lambda"
    assert x86.compute_usd == pytest.approx(0.2 / 1e6 + 0.125 * 1.2 * 0.0000166667, abs=1e-10)
    assert x86.runtime_hours == pytest.approx(1.2 / 3600, abs=1e-10)
    assert x86.formula == "1 request x $0.20/1M + 0.125 GB x 1.2 s x $0.0000166667/GB-s = $0.0000027"
    arm = estimate(
        "serverless", lam(architecture="arm64", memory_size_mb=1024), runtime_s=None, price_table=table()
    )
    assert arm.compute_usd == pytest.approx(0.2 / 1e6 + 1 * 1.2 * 0.0000133334, abs=1e-10)
    assert arm.inputs["architecture"] == "arm64"


def test_lambda_without_architecture_assumes_x86_and_says_so():
    result = lam()
    del result["billing_inputs"]["architecture"]
    cost = estimate("serverless", result, runtime_s=None, price_table=table())
    assert cost.total_usd is not None
    assert cost.assumptions == (
        "architecture x86_64 (billing_inputs.architecture not reported; Lambda's default)",
    )


def test_lambda_without_billed_duration_is_unknown_with_the_runner_s_reason():
    result = lam(billed_duration_ms=None)
    result["field_sources"] = {
        "billing_inputs.billed_duration_ms": "not reported by Lambda: the REPORT line is not in the log tail"
    }
    cost = estimate("serverless", result, runtime_s=3.0, price_table=table())
    assert cost.compute_usd is None and cost.total_usd is None and not cost.known
    assert compute_unknown(cost) == [
        "compute cost unknown: no billed duration: billing_inputs.billed_duration_ms not reported by Lambda: "
        "the REPORT line is not in the log tail"
    ]
    assert cost.formula.endswith("= unknown (see missing)")
    assert cost.runtime_hours == pytest.approx(3.0 / 3600, abs=1e-10)  # the try's duration, as a fallback
    assert any("runtime_s" in text for text in cost.assumptions)


def test_lambda_ephemeral_storage_is_costed_only_with_a_price():
    listed = estimate("serverless", lam(ephemeral_storage_mb=1536), runtime_s=None, price_table=table())
    assert listed.storage_usd == 0
    assert any(
        reason.startswith("Lambda ephemeral storage above 512 MB (1 GB x 1.2 s): not costed, no price")
        for reason in listed.missing
    )
    priced = parse_price_table(
        'name: x\nversion: "1"\nprices:\n  lambda:\n    ephemeral_storage_gb_second: 0.0000000309\n',
        OVERRIDE_SOURCE,
    )
    cost = estimate("serverless", lam(ephemeral_storage_mb=1536), runtime_s=None, price_table=priced)
    assert cost.storage_usd == pytest.approx(1 * 1.2 * 0.0000000309, abs=1e-10)
    assert "1 GB x 1.2 s x $0.0000000309/GB-s" in cost.formula


@pytest.mark.parametrize(
    ("runtime", "billed"),
    [(0.5, 60), (42.5, 60), (60, 60), (61, 61), (3600, 3600)],
)
def test_fargate_one_minute_minimum(runtime, billed):
    cost = estimate("container", ecs(runtime_s=runtime), runtime_s=None, price_table=table())
    assert cost.backend == "ecs"
    assert cost.inputs["billed_s"] == billed
    assert cost.runtime_hours == pytest.approx(billed / 3600, abs=1e-9)
    assert cost.compute_usd == pytest.approx(billed / 3600 * (1 * 0.04048 + 2 * 0.004445), abs=1e-9)


def test_fargate_arm_and_ephemeral_storage_above_20_gb():
    cost = estimate(
        "container", ecs(architecture="ARM64", ephemeral_storage_gb=30), runtime_s=None, price_table=table()
    )
    assert cost.compute_usd == pytest.approx(600 / 3600 * (0.03238 + 2 * 0.00356), abs=1e-9)
    assert cost.storage_usd == pytest.approx(10 * 600 / 3600 * 0.000111, abs=1e-10)
    plain = estimate("container", ecs(), runtime_s=None, price_table=table())
    assert any(
        reason.startswith("Fargate ephemeral storage above the 20 GB included: not costed")
        for reason in plain.missing
    )
    assert (
        "architecture x86_64 (billing_inputs.architecture not reported; Fargate's default)"
        in plain.assumptions
    )


def test_ecs_on_ec2_launch_type_is_not_costed_per_task():
    cost = estimate("container", ecs(launch_type="EC2"), runtime_s=None, price_table=table())
    assert cost.total_usd is None
    assert compute_unknown(cost)[0].startswith(
        "compute cost unknown: ECS launch type EC2: the container instances"
    )


def test_ecs_task_never_described_is_unknown_with_the_reason():
    reason = "not reported by ECS DescribeTasks: the task was never described"
    result = ecs(cpu_units=None, memory_mb=None, runtime_s=None)
    result["field_sources"] = {
        f"billing_inputs.{key}": reason for key in ("cpu_units", "memory_mb", "runtime_s")
    }
    cost = estimate("container", result, runtime_s=12.0, price_table=table())
    assert cost.total_usd is None
    assert f"compute cost unknown: no task CPU: billing_inputs.cpu_units {reason}" in cost.missing


@pytest.mark.parametrize(
    ("version", "minimum"),
    [("0.9", 600), ("1.0", 600), ("1", 600), ("2.0", 60), ("3.0", 60), ("4.0", 60), ("5.0", 60)],
)
def test_glue_minimum_by_version(version, minimum):
    # 2 x G.1X for 30 s: 60 DPU-seconds measured
    cost = estimate(
        "managed_etl",
        glue(version, duration=30, dpu_seconds=60, number_of_workers=2),
        runtime_s=None,
        price_table=table(),
    )
    assert cost.backend == "glue"
    assert cost.inputs["minimum_s"] == minimum
    assert cost.inputs["billed_dpu_seconds"] == 2 * minimum
    assert cost.compute_usd == pytest.approx(2 * minimum / 3600 * 0.44, abs=1e-10)
    assert cost.runtime_hours == pytest.approx(minimum / 3600, abs=1e-9)


def test_glue_flex_and_runs_longer_than_the_minimum():
    flex = estimate("managed_etl", glue(execution_class="FLEX"), runtime_s=None, price_table=table())
    assert flex.compute_usd == pytest.approx(6000 / 3600 * 0.29, abs=1e-10)
    assert flex.formula == "max(6000 DPU-s, 10 DPU x 60 s)/3600 x $0.29/DPU-h (FLEX) = $0.4833333333"
    lower = estimate("managed_etl", glue(execution_class="flex"), runtime_s=None, price_table=table())
    assert lower.compute_usd == flex.compute_usd


def test_glue_defaults_and_unknowns():
    assumed = estimate(
        "managed_etl", glue(version=None, execution_class=None), runtime_s=None, price_table=table()
    )
    assert assumed.total_usd == pytest.approx(6000 / 3600 * 0.44, abs=1e-10)
    assert len(assumed.assumptions) == 2
    unknown_class = estimate(
        "managed_etl", glue(execution_class="TURBO"), runtime_s=None, price_table=table()
    )
    assert "no price for Glue execution class 'TURBO'" in compute_unknown(unknown_class)[0]
    # moto's runs: no ExecutionTime-based DPU-seconds
    result = glue(dpu_seconds=None)
    result["field_sources"] = {
        "billing_inputs.dpu_seconds": "not reported by Glue: no DPUSeconds and no ExecutionTime in GetJobRun"
    }
    cost = estimate("managed_etl", result, runtime_s=None, price_table=table())
    assert cost.total_usd is None
    assert compute_unknown(cost) == [
        "compute cost unknown: no DPU-seconds: billing_inputs.dpu_seconds not reported by Glue: no DPUSeconds and "
        "no ExecutionTime in GetJobRun"
    ]


def test_glue_without_duration_applies_the_minimum_from_the_workers():
    cost = estimate(
        "managed_etl",
        glue("1.0", duration=None, dpu_seconds=120, worker_type="G.2X", number_of_workers=3),
        runtime_s=None,
        price_table=table(),
    )
    assert cost.inputs["dpus"] == 6
    assert cost.inputs["billed_dpu_seconds"] == 6 * 600


def test_emr_serverless_billed_utilisation():
    result = {
        "runner_class": "managed_etl",
        "timings": {"duration_s": 300},
        "billing_inputs": {
            "billed_vcpu_hours": 1.0,
            "billed_memory_gb_hours": 4.0,
            "billed_storage_gb_hours": 2.0,
        },
    }
    cost = estimate("managed_etl", result, runtime_s=None, price_table=table())
    assert cost.backend == "emr_serverless"
    assert cost.compute_usd == pytest.approx(0.052624 + 4 * 0.0057785, abs=1e-10)
    assert cost.storage_usd == pytest.approx(2 * 0.000111, abs=1e-10)
    assert cost.runtime_hours == pytest.approx(300 / 3600, abs=1e-9)
    zero = dict(
        result,
        billing_inputs={"billed_vcpu_hours": 0, "billed_memory_gb_hours": 0, "billed_storage_gb_hours": 0},
    )
    assert (
        estimate("managed_etl", zero, runtime_s=None, price_table=table()).total_usd == 0
    )  # reported 0 (moto)


def test_ec2_per_host_minimum_and_lifetimes():
    cost = estimate(
        "dedicated", ec2(lifetimes={"i-1": 10, "i-2": 59.9, "i-3": 120}), runtime_s=None, price_table=table()
    )
    assert cost.backend == "ec2"
    assert cost.inputs["billed_host_seconds"] == pytest.approx(60 + 60 + 120)
    assert cost.compute_usd == pytest.approx(0.096 * 240 / 3600, abs=1e-10)
    assert cost.formula.startswith("$0.096/h x (max(60 s, 10 s) + max(60 s, 59.9 s) + max(60 s, 120 s))/3600")


def test_ec2_unknown_instance_type_is_recorded_never_zero():
    cost = estimate("dedicated", ec2("r6i.8xlarge"), runtime_s=None, price_table=table())
    assert cost.compute_usd is None and cost.total_usd is None
    assert compute_unknown(cost) == [
        "compute cost unknown: no price for instance type r6i.8xlarge in price table aws-list-prices-us-east-1 "
        "2026-11 (prices.ec2.instance_hour['r6i.8xlarge'])"
    ]
    assert cost.runtime_hours == pytest.approx(1.0)  # the hosts' billed time is still known


def test_ec2_host_not_confirmed_terminated_and_nothing_launched():
    cost = estimate(
        "dedicated", ec2(lifetimes={"i-1": 100, "i-2": None}), runtime_s=None, price_table=table()
    )
    assert cost.total_usd is None
    assert "lifetime of i-2 unknown" in compute_unknown(cost)[0]
    none = {
        "runner_class": "dedicated",
        "billing_inputs": {"instance_type": "m5.large", "host_count": 0, "host_lifetimes_s": {}},
    }
    assert estimate("dedicated", none, runtime_s=5.0, price_table=table()).total_usd == 0


def test_kubernetes_requests_times_configured_rates():
    rated = table(kubernetes_vcpu_hour_usd=0.04, kubernetes_gb_hour_usd=0.005)
    cost = estimate("container", pod(), runtime_s=None, price_table=rated)
    assert cost.backend == "kubernetes"
    assert cost.compute_usd == pytest.approx(0.5 * 0.04 + 2 * 0.005, abs=1e-10)
    assert (
        cost.basis
        == "configured rates ([barecount] cost_kubernetes_vcpu_hour_usd, cost_kubernetes_gb_hour_usd)"
    )
    # quantities from resources_used when billing_inputs lack them
    result = pod(cpu_request_cores=None, memory_request_bytes=None)
    result["resources_used"] = {"cpu_request": "500m", "memory_request": "2Gi"}
    assert estimate("container", result, runtime_s=None, price_table=rated).compute_usd == cost.compute_usd


def test_kubernetes_without_rates_is_unknown_and_names_the_options():
    cost = estimate("container", pod(), runtime_s=None, price_table=table())
    reasons = compute_unknown(cost)
    assert len(reasons) == 2
    assert "[barecount] cost_kubernetes_vcpu_hour_usd" in reasons[0]
    assert "[barecount] cost_kubernetes_gb_hour_usd" in reasons[1]


def test_local_task_runtime_times_worker_slot_rate():
    cost = estimate("local", None, runtime_s=90, price_table=table(local_worker_slot_hour_usd=0.1))
    assert cost.backend == "local"
    assert cost.total_usd == pytest.approx(0.0025)
    assert cost.formula == "1 slot x 90 s/3600 x $0.10/slot-h = $0.0025"
    no_rate = estimate("local", None, runtime_s=90, price_table=table())
    assert no_rate.total_usd is None and "cost_local_worker_slot_hour_usd" in compute_unknown(no_rate)[0]
    no_runtime = estimate("local", None, runtime_s=None, price_table=table(local_worker_slot_hour_usd=0.1))
    assert no_runtime.total_usd is None and no_runtime.runtime_hours is None


def test_storage_and_transfer_reported_and_not_reported():
    cost = estimate(
        "serverless",
        lam(stored_bytes=2 * 1024**3, transfer_out_bytes=3 * 1024**3),
        runtime_s=None,
        price_table=table(),
    )
    assert cost.storage_usd == pytest.approx(2 * 0.023)
    assert cost.transfer_usd == pytest.approx(3 * 0.09)
    assert cost.total_usd == pytest.approx(cost.compute_usd + 2 * 0.023 + 3 * 0.09)
    assert not [reason for reason in cost.missing if "not reported" in reason]
    plain = estimate("serverless", lam(), runtime_s=None, price_table=table())
    assert (plain.storage_usd, plain.transfer_usd) == (0, 0)
    assert [reason for reason in plain.missing if "counted as 0" in reason] == [
        "S3 storage: not reported (billing_inputs.stored_bytes is not in the runner_result); counted as 0",
        "data transfer out: not reported (billing_inputs.transfer_out_bytes is not in the runner_result); counted as 0",
    ]


def test_missing_runner_result_and_unknown_backend():
    cost = estimate("serverless", None, runtime_s=4.0, price_table=table())
    assert cost.total_usd is None and "no runner_result" in compute_unknown(cost)[0]
    ambiguous = estimate(
        "container", {"runner_class": "container", "billing_inputs": {}}, runtime_s=None, price_table=table()
    )
    assert ambiguous.backend is None and ambiguous.total_usd is None
    assert backend_of("managed_etl", {"billing_inputs": {"billed_vcpu_hours": None}}) == "emr_serverless"


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="runner class 'gpu' is not one of"):
        estimate("gpu", None, runtime_s=1)
    with pytest.raises(ValueError, match="but the runner_result is of 'serverless'"):
        estimate("dedicated", lam(), runtime_s=1)
    with pytest.raises(ValueError, match="runtime_s: -1 is not"):
        estimate("local", None, runtime_s=-1)
    with pytest.raises(TypeError, match="is not a mapping"):
        estimate("serverless", ["x"], runtime_s=1)  # type: ignore[arg-type]
    bad = estimate("serverless", lam(billed_duration_ms="12"), runtime_s=None, price_table=table())
    assert "billing_inputs.billed_duration_ms: '12' is not a number >= 0" in compute_unknown(bad)[0]


def test_runner_result_object_and_attribution_key():
    from barecount_provider.operators.base import RunnerResult

    result = RunnerResult("serverless", "s", "acme", "orders", "public")
    result.record("billing_inputs.requests", 1, "one Invoke call")
    result.record("billing_inputs.billed_duration_ms", 100, "REPORT")
    result.record("billing_inputs.memory_size_mb", 512, "GetFunctionConfiguration")
    result.record("billing_inputs.architecture", "arm64", "GetFunctionConfiguration")
    cost = estimate("serverless", result, runtime_s=None, price_table=table())
    assert cost.compute_usd == pytest.approx(0.2 / 1e6 + 0.5 * 0.1 * 0.0000133334, abs=1e-10)
    assert attribution_key(result) == ("acme", "orders", "serverless", "s")
    assert attribution_key(result.as_dict()) == ("acme", "orders", "serverless", "s")
    assert attribution_key({"tenant": "acme"}) == ("acme", "unknown", "unknown", "unknown")


def test_estimate_is_frozen_and_json_able():
    cost = estimate("serverless", lam(), runtime_s=None, price_table=table())
    with pytest.raises(AttributeError):
        cost.total_usd = 0  # type: ignore[misc]
    data = json.loads(json.dumps(cost.as_dict()))
    assert data["currency"] == "USD" and data["basis"] == LIST_PRICE_BASIS
    assert data["price_table"]["name"] == "aws-list-prices-us-east-1"
    assert set(data) >= {
        "runtime_hours",
        "compute_usd",
        "storage_usd",
        "transfer_usd",
        "total_usd",
        "currency",
        "price_table",
        "basis",
        "formula",
        "inputs",
        "missing",
    }


def test_cost_metric_points_are_counters_and_skip_unknown_values():
    tags = {"tenant": "acme", "pipeline": "orders", "size": "s", "dag_id": "d", "task_id": "t"}
    cost = estimate("serverless", lam(), runtime_s=None, price_table=table())
    points = cost_metric_points(cost, tags)
    assert [name for name, *_ in points] == list(METRIC_NAMES)
    assert {kind for _, kind, _, _ in points} == {COUNTER}
    assert points[-1][2] == cost.total_usd
    assert points[0][3] == {**tags, "runner_class": "serverless"}
    unknown = estimate("dedicated", ec2("x9.huge"), runtime_s=None, price_table=table())
    names = [name for name, *_ in cost_metric_points(unknown, tags)]
    assert names == [
        "barecount.cost.runtime_hours",
        "barecount.cost.storage_usd",
        "barecount.cost.transfer_usd",
    ]


def test_number_formatting():
    assert [fmt_number(value) for value in (0.125, 1.2, 60.0, 0.00001, 2.5e-7)] == [
        "0.125",
        "1.2",
        "60",
        "0.00001",
        "0.00000025",
    ]
    assert [fmt_usd(value) for value in (0.2, 0.0000166667, 2.7e-6, 3.0, 0.0976)] == [
        "$0.20",
        "$0.0000166667",
        "$0.0000027",
        "$3.00",
        "$0.0976",
    ]


# ----------------------------------------------------------------------------------- docs/cost.md examples

_BLOCK = re.compile(r"^```(\w+) ([\w-]+)\n(.*?)^```$", re.S | re.M)


def doc_blocks(text: str) -> list[tuple[str, str]]:
    """(kind, body) of every tagged fenced block, in order."""
    return [(match.group(2), match.group(3)) for match in _BLOCK.finditer(text)]


def doc_override(text: str) -> Any:
    [body] = [body for kind, body in doc_blocks(text) if kind == "cost-override"]
    return parse_price_table(body, OVERRIDE_SOURCE)


def run_doc_example(example: dict[str, Any], text: str) -> CostEstimate:
    base = doc_override(text) if example.get("price_table") == "override" else shipped_price_table()
    priced = apply_configured_rates(base, **example.get("rates", {}))
    return estimate(
        example["runner_class"], example["runner_result"], runtime_s=example["runtime_s"], price_table=priced
    )


def result_lines(cost: CostEstimate) -> list[str]:
    """An estimate as the doc's ``cost-result`` block writes it."""

    def show(value: Any) -> str:
        return "unknown" if value is None else fmt_number(value)

    lines = [
        f"backend: {cost.backend}",
        f"runtime_hours: {show(cost.runtime_hours)}",
        f"compute_usd: {show(cost.compute_usd)}",
        f"storage_usd: {show(cost.storage_usd)}",
        f"transfer_usd: {show(cost.transfer_usd)}",
        f"total_usd: {show(cost.total_usd)}",
        f"basis: {cost.basis}",
        f"formula: {cost.formula}",
    ]
    lines += [f"missing: {reason}" for reason in cost.missing]
    lines += [f"assumption: {text}" for text in cost.assumptions]
    return lines


def override_errors(body: str) -> list[str]:
    with pytest.raises(PriceTableError) as info:
        parse_price_table(body, OVERRIDE_SOURCE)
    return [str(problem) for problem in info.value.problems]


def _paired(kind: str, following: str) -> list[tuple[str, str]]:
    blocks = doc_blocks(DOC.read_text(encoding="utf-8"))
    pairs = []
    for index, (block_kind, body) in enumerate(blocks):
        if block_kind == kind:
            assert index + 1 < len(blocks) and blocks[index + 1][0] == following, (
                f"{kind} block without {following}"
            )
            pairs.append((body, blocks[index + 1][1]))
    return pairs


def test_doc_examples_cover_every_backend_and_are_what_the_code_gives():
    text = DOC.read_text(encoding="utf-8")
    pairs = _paired("cost-example", "cost-result")
    backends = set()
    for body, expected in pairs:
        cost = run_doc_example(json.loads(body), text)
        backends.add(cost.backend)
        assert result_lines(cost) == expected.rstrip("\n").split("\n"), body
    assert backends == {"lambda", "ecs", "kubernetes", "glue", "emr_serverless", "ec2", "local"}
    assert len(pairs) >= 14


def test_doc_override_errors_are_what_the_code_gives():
    pairs = _paired("cost-override-invalid", "cost-override-errors")
    assert len(pairs) >= 3
    for body, expected in pairs:
        assert override_errors(body) == expected.rstrip("\n").split("\n"), body


def test_doc_price_table_rows_are_the_shipped_prices():
    shipped = shipped_price_table()
    rows = re.findall(
        r"^\| `([a-z0-9_.]+)`(?: / `(\.[A-Za-z0-9_]+)`)? \| \$([0-9.]+)(?: / \$([0-9.]+))? ",
        DOC.read_text(encoding="utf-8"),
        re.M,
    )
    assert len(rows) >= 12
    for first, second, price, second_price in rows:
        section, _, rest = first.partition(".")
        key, _, sub = rest.partition(".")
        keys = [section, key] + ([sub] if sub else [])
        if section == "ec2":  # instance types contain dots
            keys = ["ec2", "instance_hour", rest.partition(".")[2]]
        assert shipped.price(*keys) == float(price), first
        if second:
            assert shipped.price(*keys[:-1], second[1:]) == float(second_price), second


def test_doc_and_code_name_the_same_options():
    text = DOC.read_text(encoding="utf-8")
    from barecount_provider.cost.prices import PATH_OPTION, RATE_OPTIONS

    for option in (PATH_OPTION, *RATE_OPTIONS):
        assert f"`{option}`" in text, option


def test_a_local_try_without_runner_result_is_costed_as_the_general_path_does(tmp_path):
    """estimate() takes a shortcut for a local try without a runner_result (every task not run by a runner
    operator): its result is the general path's, field for field, with and without a slot rate, for a
    configured rate and a negotiated one, and it follows a change of price table."""
    from barecount_provider.cost import estimates

    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"name": "acme", "version": "3", "prices": {"local": {"worker_slot_hour": 0.2}}}))
    tables = [table(), table(local_worker_slot_hour_usd=0.1), table(local_worker_slot_hour_usd=0.0375),
              load_price_table(str(path))]
    runtimes = [0, 0.0005, 1, 12.345, 90, 1800, 3599.999, 86_400, 123_456.789, 1e-9, 3e7]
    for price_table in tables:
        for runtime in runtimes:
            quick = estimate("local", None, runtime_s=runtime, price_table=price_table)
            general = estimates._estimate("local", None, float(runtime), price_table)
            assert quick.as_dict() == general.as_dict(), (price_table.label, runtime)
            assert quick == general
    assert estimate("local", None, runtime_s=90, price_table=tables[1]).total_usd == pytest.approx(0.0025)
    assert estimate("local", None, runtime_s=90, price_table=tables[0]).total_usd is None
