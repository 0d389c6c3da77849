"""The upstream shapes the adapters (barecount_provider/adapters/) rely on: each test fails with a message
that names what changed in Airflow, statsd or the OpenTelemetry SDK."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from barecount_provider.adapters import airflow as airflow_adapter
from barecount_provider.adapters import opentelemetry as otel_adapter

# ------------------------------------------------------------------------------------------------ Airflow


@pytest.mark.parametrize("name", [airflow_adapter.SDK_MASKER_MODULE, airflow_adapter.CORE_MASKER_MODULE])
def test_airflows_masker_modules_have_a_process_wide_masker(name):
    try:
        module = airflow_adapter.masker_module(name)
    except ImportError as err:
        pytest.fail(f"Airflow's secrets masker module {name} is gone ({err}): update adapters/airflow.py")
    singleton = getattr(module, airflow_adapter.MASKER_SINGLETON, None)
    assert callable(singleton), f"{name}.{airflow_adapter.MASKER_SINGLETON}() is gone: update adapters/airflow.py"
    masker = singleton()
    assert masker is singleton(), f"{name}.{airflow_adapter.MASKER_SINGLETON}() no longer returns one masker"
    assert isinstance(masker, module.SecretsMasker), f"{name}'s masker is no longer a {name}.SecretsMasker"
    assert "DEFAULT_SENSITIVE_FIELDS" in vars(module), f"{name}.DEFAULT_SENSITIVE_FIELDS is gone"


def test_airflows_masker_has_the_methods_the_extension_overrides():
    """BareCountMaskerExtension (redaction.py) overrides these methods of Airflow's SecretsMasker."""
    masker_class = airflow_adapter.masker_module(airflow_adapter.SDK_MASKER_MODULE).SecretsMasker
    expected = {
        "_redact": ["self", "item", "name", "depth", "max_depth", "replacement"],
        "reset_masker": ["self"],
        "should_hide_value_for_key": ["self", "name"],
    }
    for method, parameters in expected.items():
        function = getattr(masker_class, method, None)
        assert function is not None, f"SecretsMasker.{method} is gone: BareCountMaskerExtension overrides it"
        found = list(inspect.signature(function).parameters)
        assert found == parameters, f"SecretsMasker.{method}{tuple(found)} is no longer {method}{tuple(parameters)}"


def test_a_masker_is_extended_in_place_and_restored():
    masker_class = airflow_adapter.masker_module(airflow_adapter.SDK_MASKER_MODULE).SecretsMasker

    class Extension:
        def extended(self) -> bool:
            return True

    masker = masker_class()
    try:
        airflow_adapter.extend_masker(masker, Extension)
    except TypeError as err:  # e.g. __slots__ or a C type: the class of an instance can no longer be assigned
        pytest.fail(f"Airflow's SecretsMasker can no longer change class in place ({err}): see adapters/airflow.py")
    assert isinstance(masker, Extension) and isinstance(masker, masker_class) and masker.extended()
    assert airflow_adapter.original_masker_class(masker) is masker_class
    airflow_adapter.restore_masker(masker)
    assert type(masker) is masker_class and airflow_adapter.original_masker_class(masker) is masker_class


def test_a_task_instance_keeps_the_api_servers_context_where_the_adapter_reads_it():
    from airflow.sdk.api.datamodels._generated import TIRunContext
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    assert "_ti_context_from_server" in RuntimeTaskInstance.__private_attributes__, (
        "RuntimeTaskInstance._ti_context_from_server is gone: update adapters/airflow.ti_context_from_server"
    )
    assert "next_method" in TIRunContext.model_fields, "TIRunContext.next_method (a resume's method) is gone"
    ti = SimpleNamespace(_ti_context_from_server=SimpleNamespace(next_method="resume"))
    assert airflow_adapter.ti_context_from_server(ti).next_method == "resume"
    assert airflow_adapter.ti_context_from_server(object()) is None


def test_the_dagbag_calls_the_dag_policy_from_bag_dag_with_its_bundle_name(monkeypatch, tmp_path: Path):
    from airflow import settings
    from airflow.dag_processing.dagbag import BundleDagBag

    seen: list[str | None] = []
    monkeypatch.setattr(settings, "dag_policy", lambda dag: seen.append(airflow_adapter.bagging_bundle_name()))
    (tmp_path / "adapter_dag.py").write_text(
        "from airflow.sdk import DAG\nfrom airflow.providers.standard.operators.empty import EmptyOperator\n"
        "with DAG('adapter_dag', schedule=None):\n    EmptyOperator(task_id='t')\n"
    )
    bag = BundleDagBag(dag_folder=str(tmp_path), bundle_path=tmp_path, bundle_name="adapter_bundle")
    assert "adapter_dag" in bag.dags, bag.import_errors
    assert seen == ["adapter_bundle"], (
        "the DAG policy is no longer called from DagBag.bag_dag with self.bundle_name set: "
        "update adapters/airflow.bagging_bundle_name"
    )
    assert airflow_adapter.bagging_bundle_name() is None  # outside a DagBag


def test_the_dag_processor_parses_in_its_parse_file():
    import airflow.dag_processing.processor as processor

    assert inspect.isfunction(getattr(processor, "_parse_file", None)), (
        "airflow.dag_processing.processor._parse_file is gone: update adapters/airflow.in_dag_processor_parse"
    )
    assert airflow_adapter.in_dag_processor_parse() is False

    def _parse_file() -> bool:  # a frame of that name in that module
        return airflow_adapter.in_dag_processor_parse()

    fake = SimpleNamespace(__name__="airflow.dag_processing.processor")
    in_module = type(_parse_file)(_parse_file.__code__, {**vars(fake), "airflow_adapter": airflow_adapter})
    assert in_module() is True


def test_airflows_structlog_modules_keep_per_logger_levels():
    import airflow.sdk._shared.logging.structlog  # noqa: F401

    assert airflow_adapter.STRUCTLOG_MODULES[0] in sys.modules
    assert airflow_adapter.per_logger_levels(), (
        f"PER_LOGGER_LEVELS is gone from {airflow_adapter.STRUCTLOG_MODULES}: update adapters/airflow.per_logger_levels"
    )


def test_airflows_tracing_can_fix_the_next_spans_ids():
    override = airflow_adapter.override_ids()
    assert override is not None, "airflow._shared.observability.traces.override_ids is gone: fixed-id spans are off"
    assert list(inspect.signature(override).parameters)[:2] == ["trace_id", "span_id"], (
        "override_ids(trace_id, span_id) changed its arguments"
    )


def test_a_task_process_has_its_supervisor_link_in_the_task_runner(monkeypatch):
    import airflow.sdk.execution_time.task_runner as task_runner

    assert task_runner.__name__ == airflow_adapter.TASK_RUNNER_MODULE
    assert airflow_adapter.SUPERVISOR_COMMS in task_runner.__annotations__, (
        "airflow.sdk.execution_time.task_runner.SUPERVISOR_COMMS is gone: update adapters/airflow.in_supervised_task_process"
    )
    assert airflow_adapter.in_supervised_task_process() is False  # no supervisor here
    monkeypatch.setattr(task_runner, airflow_adapter.SUPERVISOR_COMMS, object(), raising=False)
    assert airflow_adapter.in_supervised_task_process() is True


# ------------------------------------------------------------------------------------------ OpenTelemetry


def test_a_tracer_providers_span_processors_and_their_end():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    assert otel_adapter.span_processors(provider) == (), (
        "TracerProvider._active_span_processor._span_processors is gone: update adapters/opentelemetry.py"
    )
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    assert list(otel_adapter.span_processors(provider)) == [processor]
    span = provider.get_tracer("adapters").start_span("ended")
    span.end()
    exporter.clear()
    otel_adapter.end_span(provider, span)
    assert [s.name for s in exporter.get_finished_spans()] == ["ended"], "the active span processor's on_end changed"


def test_a_metric_exporters_preferences():
    from opentelemetry.sdk.metrics import Counter
    from opentelemetry.sdk.metrics.export import AggregationTemporality, ConsoleMetricExporter
    from opentelemetry.sdk.metrics.view import SumAggregation

    exporter = ConsoleMetricExporter(
        preferred_temporality={Counter: AggregationTemporality.DELTA},
        preferred_aggregation={Counter: SumAggregation()},
    )
    preferences = otel_adapter.exporter_preferences(exporter)
    assert preferences["preferred_temporality"] is not None and preferences["preferred_aggregation"] is not None, (
        "MetricExporter._preferred_temporality / _preferred_aggregation are gone: update adapters/opentelemetry.py"
    )
    assert preferences["preferred_temporality"][Counter] == AggregationTemporality.DELTA
    assert isinstance(preferences["preferred_aggregation"][Counter], SumAggregation)

