"""The ``[barecount]`` configuration section: declared once, read through one cached getter per option.

``OPTIONS`` is the single source of truth: ``get_provider_info()`` publishes it to Airflow (so
``airflow config list --section barecount`` shows every option with its default) and the getters below
read it. Nothing else in the provider calls ``conf.get`` itself.

``CHECKS`` says, for every option, what a valid value is and how its text is read: each getter reads its
option through it, and :func:`validate` calls every getter, so ``barecount doctor`` and the check each
component makes when it starts (:func:`report_problems`) judge an option exactly as the code that uses it.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SECTION = "barecount"

log = logging.getLogger(__name__)

# name -> (type, default, example, description). Defaults are strings, as in airflow.cfg.
OPTIONS: dict[str, tuple[str, str, str, str]] = {
    "enabled": (
        "boolean",
        "True",
        "False",
        "Master switch. When off, the plugin registers nothing: no listener, no metrics, no spans, no logs.",
    ),
    "environment": (
        "string",
        "development",
        "production",
        "Deployment environment: development, staging or production. In production, debug logging is refused "
        "unless the tenant's policy allows it.",
    ),
    "default_tenant": (
        "string",
        "default",
        "acme",
        "Tenant used when neither the operator, the DAG params / default_args nor a `tenant:` DAG tag declares one.",
    ),
    "policy_path": (
        "string",
        "",
        "/etc/barecount/policy.yaml",
        "Path of the governance policy (YAML). Empty: the built-in default policy shipped with the provider. "
        "An invalid policy is an error, never a silent fall-back.",
    ),
    "policy_invalid": (
        "string",
        "",
        "fail",
        "What an invalid policy file does to task processes: fail (runner tasks are refused before they launch, "
        "with the policy's errors) or warn (tasks that need no policy run). Both put a policy_invalid exception "
        "in the evidence of every try. Empty: fail when environment = production (or is invalid), warn otherwise.",
    ),
    "secret_key": (
        "string",
        "",
        "change-me-to-32-random-bytes",
        "Key of the keyed hashes that derive correlation IDs, run tokens and trace IDs. Must be the same on every "
        "machine. Empty: [core] fernet_key, then [api_auth] jwt_secret are used.",
    ),
    "opt_out_tag": (
        "string",
        "barecount:off",
        "no-telemetry",
        "A DAG carrying this tag is ignored by BareCount. A DAG can also declare the param "
        "`barecount_enabled: false` (its declared default; a run's conf cannot change it).",
    ),
    "statsd_on": (
        "boolean",
        "False",
        "True",
        "Send metrics to StatsD over UDP (fire-and-forget).",
    ),
    "statsd_host": ("string", "127.0.0.1", "statsd-exporter.monitoring", "StatsD host."),
    "statsd_port": ("integer", "8125", "9125", "StatsD UDP port."),
    "statsd_prefix": ("string", "", "airflow", "Prefix put before every metric name sent to StatsD."),
    "statsd_tag_style": (
        "string",
        "dogstatsd",
        "influxdb",
        "How tags are written on StatsD lines: dogstatsd (`name:1|c|#k:v`) or influxdb, which the Prometheus "
        "statsd-exporter also reads (`name,k=v:1|c`).",
    ),
    "otlp_metrics_on": (
        "boolean",
        "False",
        "True",
        "Export metrics over OTLP/HTTP. Task processes spool them under telemetry_dir/spool; the scheduler's "
        "forwarder process (or barecount telemetry forward) forwards the spool. Endpoint, headers and protocol come from the standard "
        "OTEL_EXPORTER_OTLP_* environment variables.",
    ),
    "traces_on": (
        "boolean",
        "True",
        "False",
        "Create a span per task try. Under Airflow's own tracing ([traces] otel_on) spans join Airflow's "
        "tracer provider; otherwise BareCount runs a provider of its own.",
    ),
    "traces_exporter": (
        "string",
        "file",
        "otlp",
        "Where BareCount's own tracer provider sends spans: otlp (OTEL_EXPORTER_OTLP_* settings), file "
        "(JSON lines under telemetry_dir) or none. Ignored when Airflow's tracing is on.",
    ),
    "file_sink_on": (
        "boolean",
        "True",
        "False",
        "Append every task try's summary (context, state, duration, trace id, sinks) to "
        "telemetry_dir/events.jsonl: the embedded default, read by `barecount runs`.",
    ),
    "telemetry_dir": (
        "string",
        "",
        "/var/lib/barecount/telemetry",
        "Directory of the file sink and file span exporter. Empty: AIRFLOW_HOME/barecount/telemetry.",
    ),
    "emit_timeout_ms": (
        "integer",
        "250",
        "500",
        "Longest time one round of the OTLP spool's forwarder (the scheduler's, or barecount telemetry forward) waits "
        "for its metric and span exports; also bounds a StatsD host name look-up. Task processes never wait "
        "for an OTLP export: they spool.",
    ),
    "task_outputs": (
        "string",
        "auto",
        "forwarder",
        "Who writes the file-sink event, the span line and the evidence entry of a try that ends in a task "
        "process, and sends the StatsD points of its end: task (the task process, in its success or failure "
        "hook), forwarder (the task process spools them in one record, already redacted; the scheduler's "
        "forwarder process or barecount telemetry forward --loop writes and sends them, within a round) or auto: forwarder where the scheduler's forwarder process runs "
        "(the scheduler sets BARECOUNT_FORWARDER_PID for the processes it forks after starting it), task "
        "elsewhere.",
    ),
    "forward_spool_at_exit": (
        "boolean",
        "False",
        "True",
        "Whether the task process forwards the OTLP spool itself at its end (one round, bounded by "
        "emit_timeout_ms) instead of leaving it for a forwarder: for KubernetesExecutor pods, where no forwarder "
        "runs beside the task. Adds up to emit_timeout_ms to each task process's end.",
    ),
    "fast_paths": (
        "boolean",
        "True",
        "False",
        "The task side's measured shortcuts (docs/benchmarks.md): the pre-fork preload (what every try needs, "
        "imported, built and warmed in the scheduler before it forks the task processes, which inherit it) and "
        "the lean traceback formatter of a failed try's exception.stacktrace (or its facts, handed off to the "
        "forwarder). False: nothing is preloaded and the traceback is formatted by Python's traceback module; "
        "the output is the same.",
    ),
    "redact_key_names": (
        "string",
        "",
        "customer_ssn,iban",
        "Comma-separated extra key names whose values are always redacted (added to Airflow's sensitive names).",
    ),
    "redact_value_patterns": (
        "string",
        "",
        '["ACME-[0-9A-F]{24}"]',
        "JSON list of extra regular expressions; any match in a log line, field, tag or span attribute is "
        "redacted (added to the built-in patterns for cloud keys, tokens, JWTs, URLs with passwords, keys).",
    ),
    "redact_env_name_patterns": (
        "string",
        "*PASSWORD*,*PASSWD*,*PASSPHRASE*,*SECRET*,*TOKEN*,*API_KEY*,*APIKEY*,*ACCESS_KEY*,*PRIVATE_KEY*,"
        "*CREDENTIAL*,AIRFLOW_CONN_*",
        "*PASSWORD*,*_TOKEN,ACME_*_KEY",
        "Comma-separated environment variable name patterns (* and ? wildcards, any case): the value of every "
        "variable whose name matches one, or whose name Airflow's masker treats as sensitive ([core] "
        "sensitive_var_conn_names and Airflow's built-in names), is registered with Airflow's secrets masker "
        "when a component or a task process starts, and redacted from every output. Empty: Airflow's names only.",
    ),
    "redact_aws_secret_keys": (
        "string",
        "context",
        "anywhere",
        "Where a bare AWS secret access key (40 high-entropy base64 characters with no key name before it) is "
        "redacted: context (when an AWS access key id or the word aws, amazon, secret or credential is within "
        "100 characters) or anywhere. A lone base64 line and aws_secret_access_key=... are redacted either way.",
    ),
    "json_logs": (
        "boolean",
        "True",
        "False",
        "Emit BareCount's own log lines as JSON with the run's context fields.",
    ),
    "scheduler_metrics_on": (
        "boolean",
        "True",
        "False",
        "Take, in a background thread of the scheduler, what task processes cannot see: queued time, tasks "
        "skipped or failed without a task process, and tasks in flight.",
    ),
    "in_flight_interval_seconds": (
        "integer",
        "15",
        "30",
        "How often the scheduler-side sampler counts running task instances for barecount.task.in_flight.",
    ),
    "kubernetes_pod_link": (
        "string",
        "",
        "https://dashboard.k8s.internal/#/pod/{namespace}/{name}?cluster={cluster}",
        "The URL of a pod in your cluster's console (Kubernetes Dashboard, Lens, a cloud console), with the "
        "placeholders {namespace}, {name} and {cluster} (the connection's cluster context, or empty). Used for "
        "KubernetesRunnerOperator's runner console link; empty: pods have no link.",
    ),
    "cost_price_table_path": (
        "string",
        "",
        "/etc/barecount/prices.yaml",
        "Override price table (YAML, or JSON when the name ends in .json), merged over the shipped us-east-1 "
        "list prices; it must set its own name and version. Empty: the shipped table. An invalid file is an "
        "error, never a fall-back. See docs/cost.md.",
    ),
    "cost_kubernetes_vcpu_hour_usd": (
        "string",
        "",
        "0.031",
        "USD per vCPU-hour of a pod's CPU request. Empty: the price table's (none shipped: pod compute cost "
        "unknown).",
    ),
    "cost_kubernetes_gb_hour_usd": (
        "string",
        "",
        "0.004",
        "USD per GB-hour of a pod's memory request. Empty: the price table's (none shipped).",
    ),
    "cost_local_worker_slot_hour_usd": (
        "string",
        "",
        "0.05",
        "USD per hour of one Airflow worker slot, for local tasks (no runner operator). Empty: the price "
        "table's (none shipped: cost unknown).",
    ),
    "dlq_location": (
        "string",
        "",
        "https://sqs.us-east-1.amazonaws.com/123456789012/orders-dlq",
        "The deployment's dead-letter queue: where runner operators send the failed events they know about (a "
        "Lambda function error, a failed batch), and the queue of DeadLetterQueueHook, ReplayOperator and "
        "barecount dlq / replay when they are given none: an SQS queue URL, s3://bucket/prefix, or a local "
        "directory. Empty: the embedded local queue under evidence_dir/dlq (per machine). See docs/recovery.md.",
    ),
    "dlq_aws_conn_id": (
        "string",
        "aws_default",
        "aws_dlq",
        "The Airflow AWS connection of an SQS or S3 dead-letter queue.",
    ),
    "evidence_on": (
        "boolean",
        "True",
        "False",
        "Write an Evidence record per DAG run: each task try writes its entry, the scheduler side assembles, "
        "costs, hash-chains and stores the run's record.",
    ),
    "evidence_store": (
        "string",
        "local",
        "s3",
        "Where evidence is kept: local (files under evidence_dir plus the index at evidence_index_url) or s3 "
        "(one object per entry and record in evidence_s3_bucket, plus the index at evidence_index_url, "
        "PostgreSQL in production).",
    ),
    "evidence_dir": (
        "string",
        "",
        "/var/lib/barecount/evidence",
        "The local store's directory, and the spool of every store. Empty: AIRFLOW_HOME/barecount/evidence.",
    ),
    "evidence_index_url": (
        "string",
        "",
        "postgresql+psycopg2://barecount@db.internal/barecount",
        "SQLAlchemy URL of the evidence index (records, the hash chain, cost lines). Empty: SQLite at "
        "evidence_dir/index.db. Use PostgreSQL when more than one machine writes.",
    ),
    "evidence_s3_bucket": (
        "string",
        "",
        "acme-barecount-evidence",
        "Bucket of the s3 store.",
    ),
    "evidence_s3_prefix": (
        "string",
        "barecount/evidence",
        "audit/barecount",
        "Key prefix of the s3 store's objects.",
    ),
    "evidence_s3_object_lock_days": (
        "integer",
        "0",
        "365",
        "Object Lock retention (COMPLIANCE mode) of each record object, in days; 0: none. The bucket must have "
        "Object Lock enabled.",
    ),
    "evidence_aws_conn_id": (
        "string",
        "aws_default",
        "aws_evidence",
        "The Airflow AWS connection of the s3 store (and of an s3:// checkpoint location): [secrets] backend, "
        "AIRFLOW_CONN_* variables, then the metadata database.",
    ),
    "evidence_grace_seconds": (
        "integer",
        "60",
        "300",
        "How long after a DAG run ends the assembler waits for late task entries before it seals the record "
        "and marks what is missing as absent.",
    ),
    "evidence_store_timeout_ms": (
        "integer",
        "2000",
        "1000",
        "Longest time a task process spends writing its entry to the store; past it (or on any error) the "
        "entry is spooled locally and delivered later.",
    ),
    "evidence_checkpoint_conn_id": (
        "string",
        "",
        "barecount_evidence_checkpoint",
        "Airflow connection (any secrets backend) whose password (or extra private_key) holds the Ed25519 "
        "private key that signs a checkpoint of the tenant's chain head at every seal: PEM (PKCS#8) or the "
        "base64 of the raw 32 bytes. Empty: no checkpoints (verify then checks the hash chains only). Give it "
        "to the scheduler side only, never to the store's other writers. See docs/evidence.md.",
    ),
    "evidence_checkpoint_public_key": (
        "string",
        "",
        "eBBF8LMpQ8+rbhl/mJHaixXn1m5CwUa9OAiL/5SRXAE=",
        "The Ed25519 public key that verifies the checkpoints: the base64 of its raw 32 bytes, or PEM. "
        "Empty: checkpoints are not checked (verify says so).",
    ),
    "evidence_checkpoint_location": (
        "string",
        "",
        "s3://acme-barecount-checkpoints/barecount",
        "Where checkpoints are written: s3://bucket/prefix (a bucket with Object Lock, through "
        "evidence_aws_conn_id) or a directory, outside the store (ship it elsewhere). Empty: the directory "
        "evidence-checkpoints next to evidence_dir.",
    ),
    "evidence_checkpoint_object_lock_days": (
        "integer",
        "0",
        "365",
        "Object Lock retention (COMPLIANCE mode) of each checkpoint object in S3, in days; 0: none. The bucket "
        "must have Object Lock enabled.",
    ),
    "health_timeout_seconds": (
        "integer",
        "10",
        "30",
        "The deadline of one round of health checks (docs/health.md): every dependency of the round is checked "
        "concurrently, each within what remains of it; a check with no answer by then is unhealthy with the "
        "error code timeout. Used when the caller (sensor, runner operator, barecount health check) gives none.",
    ),
    "health_aws_conn_id": (
        "string",
        "aws_default",
        "aws_health",
        "The Airflow AWS connection of the health checks (VPN connections, VPC endpoints, runner readiness) "
        "when a dependency names none.",
    ),
    "health_kubernetes_conn_id": (
        "string",
        "kubernetes_default",
        "kubernetes_onprem",
        "The Airflow Kubernetes connection of the kubernetes_nodes health check when a dependency names none.",
    ),
}


# ---------------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Check:
    """How an option's text is read: ``parse`` (given the text, stripped) returns the value or raises
    ValueError, whose text, if any, adds a detail; ``expected`` says what a valid value is."""

    expected: str
    parse: Callable[[str], Any]


_TRUE = ("true", "t", "1", "yes", "on")
_FALSE = ("false", "f", "0", "no", "off", "")


def _parse_boolean(text: str) -> bool:
    value = text.lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError


def whole(low: int, high: int | None = None) -> Check:
    """A whole number from ``low`` (to ``high``)."""

    def parse(text: str) -> int:
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise ValueError
        value = int(text)
        if value < low or (high is not None and value > high):
            raise ValueError
        return value

    return Check(f"a whole number from {low} to {high}" if high is not None else f"a whole number >= {low}", parse)


def one_of(*choices: str) -> Check:
    """One of ``choices`` (any case), returned in lower case."""

    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError
        return text.lower()

    return Check(f"one of {', '.join(choices)}", parse)


def _parse_patterns(text: str) -> tuple[str, ...]:
    if not text:
        return ()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError
    if value:  # each compiled as the redactor compiles it (scoped flags; one matching "" is refused)
        from barecount_provider.redaction import _compile_one

        for index, pattern in enumerate(value):
            _compile_one(pattern, f"redact_value_patterns[{index}]")
    return tuple(value)


def _parse_rate(text: str) -> str:
    if text:
        try:
            rate = float(text)
        except ValueError:
            rate = math.nan
        if not math.isfinite(rate) or rate < 0:
            raise ValueError
    return text


def _parse_url(text: str) -> str:
    if text:
        from sqlalchemy.engine import make_url

        try:
            make_url(text)
        except Exception:
            raise ValueError from None
    return text


_ENV_NAME_PATTERN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_*?")


def _parse_env_name_patterns(text: str) -> tuple[str, ...]:
    patterns = tuple(part.strip().upper() for part in text.split(",") if part.strip())
    for pattern in patterns:
        if not set(pattern) <= _ENV_NAME_PATTERN or not pattern.strip("*?"):
            raise ValueError(f"{pattern!r} is not a name pattern")
    return patterns


def decode_key_text(text: str) -> bytes | str:
    """An Ed25519 key written as text: a PEM block (returned as is) or the base64 of the key's raw 32 bytes
    (returned decoded); otherwise a ValueError saying which it is not. The one reading of key text, for
    ``evidence_checkpoint_public_key`` here and for the keys evidence/checkpoint.py loads with
    ``cryptography`` (not imported here: reading the configuration must not load it)."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        return text
    import base64
    import binascii

    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not PEM and not base64") from None
    if len(raw) != 32:
        raise ValueError(f"base64 of {len(raw)} bytes")
    return raw


def _parse_public_key(text: str) -> str:
    if text:
        decode_key_text(text)
    return text


def _parse_checkpoint_location(text: str) -> str:
    if text.startswith("s3://") and not text.removeprefix("s3://").partition("/")[0]:
        raise ValueError("names no bucket")
    return text


def _parse_optional(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text and text.lower() not in choices:
            raise ValueError
        return text.lower()

    return parse


BOOLEAN = Check("a boolean (True or False)", _parse_boolean)
TEXT = Check("any text", str)
PORT = whole(1, 65535)
PATTERNS = Check('a JSON list of regular expressions (["ACME-[0-9A-F]{24}"]), or empty', _parse_patterns)
RATE = Check("a rate in USD (a number >= 0), or empty", _parse_rate)
INDEX_URL = Check("an SQLAlchemy URL (postgresql+psycopg2://user@host/db), or empty", _parse_url)
ENVIRONMENTS = ("development", "staging", "production")
TAG_STYLES = ("dogstatsd", "influxdb")
TASK_OUTPUTS = ("auto", "task", "forwarder")
TRACE_EXPORTERS = ("otlp", "file", "none")
EVIDENCE_STORES = ("local", "s3")
POLICY_INVALID_MODES = ("fail", "warn")
AWS_SECRET_KEY_MODES = ("context", "anywhere")

# Every option's check, in the order of OPTIONS (a test fails when an option has none).
CHECKS: dict[str, Check] = {
    "enabled": BOOLEAN,
    "environment": one_of(*ENVIRONMENTS),
    "default_tenant": TEXT,
    "policy_path": TEXT,  # the file itself: `barecount doctor` and `barecount policy validate`
    "policy_invalid": Check("one of fail, warn, or empty (fail in production, warn otherwise)", _parse_optional(POLICY_INVALID_MODES)),
    "secret_key": TEXT,
    "opt_out_tag": TEXT,
    "statsd_on": BOOLEAN,
    "statsd_host": TEXT,
    "statsd_port": PORT,
    "statsd_prefix": TEXT,
    "statsd_tag_style": one_of(*TAG_STYLES),
    "otlp_metrics_on": BOOLEAN,
    "traces_on": BOOLEAN,
    "traces_exporter": one_of(*TRACE_EXPORTERS),
    "file_sink_on": BOOLEAN,
    "telemetry_dir": TEXT,
    "emit_timeout_ms": whole(0),
    "task_outputs": one_of(*TASK_OUTPUTS),
    "forward_spool_at_exit": BOOLEAN,
    "fast_paths": BOOLEAN,
    "redact_key_names": TEXT,
    "redact_value_patterns": PATTERNS,
    "redact_env_name_patterns": Check(
        "comma-separated environment variable name patterns (letters, digits and _, with * and ? wildcards, "
        "e.g. *_TOKEN), or empty",
        _parse_env_name_patterns,
    ),
    "redact_aws_secret_keys": one_of(*AWS_SECRET_KEY_MODES),
    "json_logs": BOOLEAN,
    "scheduler_metrics_on": BOOLEAN,
    "in_flight_interval_seconds": whole(1),
    "kubernetes_pod_link": TEXT,
    "cost_price_table_path": TEXT,  # the file itself: read (and refused when invalid) where cost is computed
    "cost_kubernetes_vcpu_hour_usd": RATE,
    "cost_kubernetes_gb_hour_usd": RATE,
    "cost_local_worker_slot_hour_usd": RATE,
    "dlq_location": TEXT,
    "dlq_aws_conn_id": TEXT,
    "evidence_on": BOOLEAN,
    "evidence_store": one_of(*EVIDENCE_STORES),
    "evidence_dir": TEXT,
    "evidence_index_url": INDEX_URL,
    "evidence_s3_bucket": TEXT,
    "evidence_s3_prefix": TEXT,
    "evidence_s3_object_lock_days": whole(0),
    "evidence_aws_conn_id": TEXT,
    "evidence_grace_seconds": whole(0),
    "evidence_store_timeout_ms": whole(1),
    "evidence_checkpoint_conn_id": TEXT,
    "evidence_checkpoint_public_key": Check("an Ed25519 public key (the base64 of its raw 32 bytes, or PEM), or empty", _parse_public_key),
    "evidence_checkpoint_location": Check("a directory, or s3://bucket/prefix, or empty", _parse_checkpoint_location),
    "evidence_checkpoint_object_lock_days": whole(0),
    "health_timeout_seconds": whole(1, 600),
    "health_aws_conn_id": TEXT,
    "health_kubernetes_conn_id": TEXT,
}


def provider_config_section() -> dict[str, Any]:
    """The ``config`` block of get_provider_info(), built from OPTIONS."""
    return {
        SECTION: {
            "description": "BareCount: telemetry, governance, evidence and cost for pipeline runners.",
            "options": {
                name: {
                    "description": description,
                    "version_added": None,
                    "type": kind,
                    "example": example,
                    "default": default,
                    **({"sensitive": True} if name == "secret_key" else {}),
                }
                for name, (kind, default, example, description) in OPTIONS.items()
            },
        }
    }


def _raw(name: str) -> str:
    default = OPTIONS[name][1]
    try:
        from airflow.configuration import conf
    except ImportError:  # pragma: no cover - only without Airflow installed
        return os.environ.get(f"AIRFLOW__BARECOUNT__{name.upper()}", default)
    try:
        value = conf.get(SECTION, name, fallback=default)
    except Exception:
        value = default
    return default if value is None else str(value)


def _read(name: str, check: Check) -> Any:
    """The option's value read through ``check``; ValueError naming the option, its value and what is expected."""
    text = _raw(name).strip()
    try:
        return check.parse(text)
    except ValueError as err:
        detail = f" ({err})" if str(err) else ""
        raise ValueError(f"[{SECTION}] {name}: {_shown(name, text)!r} is not {check.expected}{detail}") from None


def _value(name: str) -> Any:
    return _read(name, CHECKS[name])


def _bool(name: str) -> bool:
    return bool(_read(name, CHECKS.get(name, BOOLEAN)))


def _int(name: str) -> int:
    return int(_read(name, CHECKS.get(name) or whole(-(2**63))))


def cache_clear() -> None:
    """Forget every cached value (tests and `barecount doctor` after changing the environment)."""
    global _REPORTED
    _REPORTED = None
    for getter in _GETTERS:
        getter.cache_clear()


@functools.cache
def enabled() -> bool:
    return _bool("enabled")


def _choice(name: str, choices: tuple[str, ...]) -> str:
    """An option that takes one of ``choices`` (any case); anything else is a ValueError naming them."""
    return str(_read(name, CHECKS.get(name) or one_of(*choices)))


@functools.cache
def environment() -> str:
    return _choice("environment", ENVIRONMENTS)


@functools.cache
def default_tenant() -> str:
    return _value("default_tenant") or "default"


@functools.cache
def policy_path() -> str:
    return _value("policy_path")




@functools.cache
def policy_invalid() -> str:
    """``fail`` or ``warn``: see OPTIONS; empty follows the environment (production: fail)."""
    mode = str(_value("policy_invalid"))
    if mode:
        return mode
    try:
        production = environment() == "production"
    except ValueError:  # reported as environment's own mistake; meanwhile the safe side
        production = True
    return "fail" if production else "warn"


@functools.cache
def secret_key() -> bytes:
    """The key of every keyed hash; shared by all machines of a deployment."""
    value = _value("secret_key")
    if not value:
        try:
            from airflow.configuration import conf

            value = (conf.get("core", "fernet_key", fallback="") or "").strip()
            if not value:
                value = (conf.get("api_auth", "jwt_secret", fallback="") or "").strip()
        except Exception:
            value = ""
    return value.encode() if value else b""


@functools.cache
def opt_out_tag() -> str:
    return _value("opt_out_tag")


@functools.cache
def statsd_on() -> bool:
    return _bool("statsd_on")


@functools.cache
def statsd_host() -> str:
    return _value("statsd_host")


@functools.cache
def statsd_port() -> int:
    return _int("statsd_port")


@functools.cache
def statsd_prefix() -> str:
    return _value("statsd_prefix")


@functools.cache
def statsd_tag_style() -> str:
    return _choice("statsd_tag_style", TAG_STYLES)


@functools.cache
def otlp_metrics_on() -> bool:
    return _bool("otlp_metrics_on")


@functools.cache
def traces_on() -> bool:
    return _bool("traces_on")


@functools.cache
def task_outputs() -> str:
    return _choice("task_outputs", TASK_OUTPUTS)


@functools.cache
def forward_spool_at_exit() -> bool:
    return _bool("forward_spool_at_exit")


@functools.cache
def fast_paths() -> bool:
    return _bool("fast_paths")


@functools.cache
def traces_exporter() -> str:
    return _choice("traces_exporter", TRACE_EXPORTERS)


@functools.cache
def file_sink_on() -> bool:
    return _bool("file_sink_on")


@functools.cache
def telemetry_dir() -> str:
    value = _value("telemetry_dir")
    if value:
        return value
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return os.path.join(home, "barecount", "telemetry")


@functools.cache
def emit_timeout_ms() -> int:
    return _int("emit_timeout_ms")


@functools.cache
def redact_key_names() -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in _value("redact_key_names").split(",") if part.strip())


@functools.cache
def redact_value_patterns() -> tuple[str, ...]:
    return tuple(_value("redact_value_patterns"))


@functools.cache
def redact_env_name_patterns() -> tuple[str, ...]:
    return tuple(_value("redact_env_name_patterns"))


@functools.cache
def redact_aws_secret_keys() -> str:
    return str(_value("redact_aws_secret_keys"))


@functools.cache
def json_logs() -> bool:
    return _bool("json_logs")


@functools.cache
def scheduler_metrics_on() -> bool:
    return _bool("scheduler_metrics_on")


@functools.cache
def in_flight_interval_seconds() -> int:
    return _int("in_flight_interval_seconds")


@functools.cache
def kubernetes_pod_link() -> str:
    return _value("kubernetes_pod_link")


@functools.cache
def cost_price_table_path() -> str:
    return _value("cost_price_table_path")


@functools.cache
def cost_kubernetes_vcpu_hour_usd() -> str:
    return str(_value("cost_kubernetes_vcpu_hour_usd"))


@functools.cache
def cost_kubernetes_gb_hour_usd() -> str:
    return str(_value("cost_kubernetes_gb_hour_usd"))


@functools.cache
def cost_local_worker_slot_hour_usd() -> str:
    return str(_value("cost_local_worker_slot_hour_usd"))


@functools.cache
def dlq_location() -> str:
    return _value("dlq_location")


@functools.cache
def dlq_aws_conn_id() -> str:
    return _value("dlq_aws_conn_id") or "aws_default"


@functools.cache
def evidence_on() -> bool:
    return _bool("evidence_on")


@functools.cache
def evidence_store() -> str:
    return _choice("evidence_store", EVIDENCE_STORES)


@functools.cache
def evidence_dir() -> str:
    value = _value("evidence_dir")
    if value:
        return value
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return os.path.join(home, "barecount", "evidence")


@functools.cache
def evidence_index_url() -> str:
    return str(_value("evidence_index_url")) or "sqlite:///" + os.path.join(evidence_dir(), "index.db")


@functools.cache
def evidence_s3_bucket() -> str:
    return _value("evidence_s3_bucket")


@functools.cache
def evidence_s3_prefix() -> str:
    return _value("evidence_s3_prefix").strip("/")


@functools.cache
def evidence_s3_object_lock_days() -> int:
    return _int("evidence_s3_object_lock_days")


@functools.cache
def evidence_aws_conn_id() -> str:
    return _value("evidence_aws_conn_id") or "aws_default"


@functools.cache
def evidence_grace_seconds() -> int:
    return _int("evidence_grace_seconds")


@functools.cache
def evidence_store_timeout_ms() -> int:
    return _int("evidence_store_timeout_ms")


@functools.cache
def evidence_checkpoint_conn_id() -> str:
    return str(_value("evidence_checkpoint_conn_id"))


@functools.cache
def evidence_checkpoint_public_key() -> str:
    return str(_value("evidence_checkpoint_public_key"))


@functools.cache
def evidence_checkpoint_location() -> str:
    value = str(_value("evidence_checkpoint_location"))
    if value:
        return value
    return os.path.join(os.path.dirname(os.path.normpath(evidence_dir())), "evidence-checkpoints")


@functools.cache
def evidence_checkpoint_object_lock_days() -> int:
    return int(_value("evidence_checkpoint_object_lock_days"))


@functools.cache
def health_timeout_seconds() -> int:
    return _int("health_timeout_seconds")


@functools.cache
def health_aws_conn_id() -> str:
    return _value("health_aws_conn_id") or "aws_default"


@functools.cache
def health_kubernetes_conn_id() -> str:
    return _value("health_kubernetes_conn_id") or "kubernetes_default"


_GETTERS = [
    enabled,
    environment,
    default_tenant,
    policy_path,
    policy_invalid,
    secret_key,
    opt_out_tag,
    statsd_on,
    statsd_host,
    statsd_port,
    statsd_prefix,
    statsd_tag_style,
    otlp_metrics_on,
    traces_on,
    traces_exporter,
    file_sink_on,
    telemetry_dir,
    emit_timeout_ms,
    redact_key_names,
    redact_value_patterns,
    redact_env_name_patterns,
    redact_aws_secret_keys,
    json_logs,
    scheduler_metrics_on,
    in_flight_interval_seconds,
    kubernetes_pod_link,
    cost_price_table_path,
    cost_kubernetes_vcpu_hour_usd,
    cost_kubernetes_gb_hour_usd,
    cost_local_worker_slot_hour_usd,
    dlq_location,
    dlq_aws_conn_id,
    evidence_on,
    evidence_store,
    evidence_dir,
    evidence_index_url,
    evidence_s3_bucket,
    evidence_s3_prefix,
    evidence_s3_object_lock_days,
    evidence_aws_conn_id,
    evidence_grace_seconds,
    evidence_store_timeout_ms,
    evidence_checkpoint_conn_id,
    evidence_checkpoint_public_key,
    evidence_checkpoint_location,
    evidence_checkpoint_object_lock_days,
    health_timeout_seconds,
    health_aws_conn_id,
    health_kubernetes_conn_id,
    task_outputs,
    forward_spool_at_exit,
    fast_paths,
]


GETTERS: dict[str, Callable[[], Any]] = {getter.__name__: getter for getter in _GETTERS}


@dataclass(frozen=True)
class ConfigProblem:
    """An invalid option: its name, its value as set (a secret's hidden), what is expected, the getter's message."""

    option: str
    value: str
    expected: str
    message: str

    @property
    def fix(self) -> str:
        if self.option not in OPTIONS:
            return f"remove [{SECTION}] {self.option} (airflow.cfg or AIRFLOW__{SECTION.upper()}__{self.option.upper()}), or name {self.expected}"
        return (
            f"set [{SECTION}] {self.option} in airflow.cfg, or AIRFLOW__{SECTION.upper()}__{self.option.upper()}, "
            f"to {self.expected} (default {OPTIONS[self.option][1]!r})"
        )

    def as_dict(self) -> dict[str, str]:
        return {"option": self.option, "value": self.value, "expected": self.expected, "message": self.message, "fix": self.fix}

    def __str__(self) -> str:
        return self.message


def _shown(name: str, value: str) -> str:
    """An option's value as it may be shown: a secret is hidden, a URL's password too."""
    if name == "secret_key":
        return "<hidden>" if value else ""
    return _hide_password(value) if "://" in value else value


def validate() -> list[ConfigProblem]:
    """Every invalid option, each judged by its own getter (the code that uses it reads it the same way)."""
    problems: list[ConfigProblem] = []
    for name in OPTIONS:
        check, getter = CHECKS.get(name), GETTERS.get(name)
        if check is None or getter is None:  # a programming error (tests/unit/test_doctor.py catches it)
            missing = "check in config.CHECKS" if check is None else "getter in config._GETTERS"
            problems.append(ConfigProblem(name, "", "-", f"[{SECTION}] {name}: declared without a {missing}"))
            continue
        try:
            getter()
        except ValueError as err:
            problems.append(ConfigProblem(name, _shown(name, _raw(name).strip()), check.expected, str(err)))
    for name in _set_names():
        if name not in OPTIONS:  # a typo: the option meant keeps its default, silently
            close = difflib.get_close_matches(name, OPTIONS, n=1)
            expected = f"an option of [{SECTION}]" + (f": {close[0]}?" if close else " (docs/configuration.md)")
            problems.append(ConfigProblem(name, "(set)", expected, f"[{SECTION}] {name}: not an option of BareCount"))
    return problems


def _set_names() -> list[str]:
    """The option names set in airflow.cfg's [barecount] section or as AIRFLOW__BARECOUNT__* variables."""
    names: set[str] = set()
    try:
        from airflow.configuration import conf

        if conf.has_section(SECTION):
            names.update(name.lower() for name in conf.options(SECTION))
    except Exception:  # pragma: no cover - without Airflow, or an unreadable airflow.cfg (Airflow says so)
        pass
    prefix = f"AIRFLOW__{SECTION.upper()}__"
    for variable in os.environ:
        if variable.startswith(prefix):
            name = variable[len(prefix) :].lower()
            for suffix in ("_cmd", "_secret"):  # Airflow's ways to give a value by command or secrets backend
                if name.endswith(suffix) and name[: -len(suffix)] in OPTIONS:
                    name = name[: -len(suffix)]
            names.add(name)
    return sorted(names)


_REPORTED: list[ConfigProblem] | None = None


def report_problems(logger: logging.Logger | None = None) -> list[ConfigProblem]:
    """Validate every option once per process and log each invalid one, with its fix, at ERROR; never
    raises (it runs where a component loads BareCount: the plugin, in every Airflow process)."""
    global _REPORTED
    if _REPORTED is not None:
        return _REPORTED
    try:
        problems = validate()
    except Exception:  # pragma: no cover - validate() itself catches the getters' ValueError
        (logger or log).warning("BareCount could not validate its [%s] options", SECTION, exc_info=True)
        problems = []
    _REPORTED = problems
    for problem in problems:
        (logger or log).error("BareCount configuration: %s. Fix: %s", problem.message, problem.fix)
    return problems


def otlp_endpoint(signal: str) -> str:
    """Where the OTLP/HTTP exporter of ``signal`` (metrics, traces) sends, by the standard variables."""
    return os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318"
    )


def _otel_int(variable: str, default: int) -> int:
    """A standard ``OTEL_*`` whole-number variable (milliseconds, or a count); a bad value: the default."""
    raw = os.environ.get(variable, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        log.warning("%s=%r is not a whole number: %d is used", variable, raw, default)
        return default
    return max(0, value)


def otlp_span_export_interval_ms() -> int:
    """How long the spool's forwarder keeps spans before it exports them, batched (the standard
    ``OTEL_BSP_SCHEDULE_DELAY``, 5,000 ms by default, as the SDK's batch span processor)."""
    return _otel_int("OTEL_BSP_SCHEDULE_DELAY", 5000)


def otlp_span_export_batch_size() -> int:
    """The spans that make the forwarder export at once (``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``, 512)."""
    return max(1, _otel_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512))


def otlp_metric_export_interval_ms() -> int:
    """How often at most the spool's forwarder exports its metrics (the standard
    ``OTEL_METRIC_EXPORT_INTERVAL``, 60,000 ms by default, as the SDK's periodic reader)."""
    return _otel_int("OTEL_METRIC_EXPORT_INTERVAL", 60000)


def warm() -> None:
    """Read every option once (a forked task process then inherits the values: Airflow's conf.get costs
    about 0.2 ms a call). A bad value is left for its getter to report where it is used."""
    for getter in _GETTERS:
        try:
            getter()
        except ValueError:
            pass


def resolved() -> dict[str, str]:
    """Every option with its effective value (secret_key shown only as set / unset)."""
    values = {name: _raw(name) for name in OPTIONS}
    values["secret_key"] = "<set>" if secret_key() else "<unset: run tokens are guessable>"
    values["telemetry_dir"] = telemetry_dir()
    values["evidence_index_url"] = _hide_password(values["evidence_index_url"])
    return values


def _hide_password(url: str) -> str:
    """``scheme://user:***@host/db``: a URL's password never reaches a terminal or a log."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
