"""BareCount telemetry: metrics, traces, structured logs and the redaction every one of them goes through."""
