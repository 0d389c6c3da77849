"""The OpenTelemetry SDK's private internals BareCount relies on: a tracer provider's span processors and
a metric exporter's preferences."""

from __future__ import annotations

from typing import Any


def span_processors(provider: Any) -> Any:
    """The span processors a tracer provider's active (multi) span processor runs, in order; None when the
    provider has no such list."""
    return getattr(getattr(provider, "_active_span_processor", None), "_span_processors", None)


def end_span(provider: Any, span: Any) -> None:
    """Hand a finished (readable) span to every span processor of ``provider``."""
    provider._active_span_processor.on_end(span)


def exporter_preferences(exporter: Any) -> dict[str, Any]:
    """The temporality and aggregation a metric exporter was built with, as ``MetricExporter``'s keyword
    arguments (None where it has none)."""
    return {
        "preferred_temporality": getattr(exporter, "_preferred_temporality", None),
        "preferred_aggregation": getattr(exporter, "_preferred_aggregation", None),
    }
