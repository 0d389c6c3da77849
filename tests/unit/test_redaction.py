"""Redaction: a corpus of secrets in messages, fields, exceptions and tags; benign data left alone; the
extension of Airflow's masker exercised through the supervisor's own log-writing code.

Every secret below is fake and assembled at run time from pieces and seeded random characters, so this file
holds nothing a secret scanner would flag.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import logging
import random
import re
import socket
import string
import sys
import timeit
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import structlog

from barecount_provider import config, redaction
from barecount_provider.redaction import (
    BUILTIN_PATTERNS,
    REPLACEMENT,
    Redactor,
    get_redactor,
    install_in_airflow_masker,
    is_installed_in_airflow_masker,
    redact,
    uninstall_from_airflow_masker,
)

_RNG = random.Random(20261127)
UPPER_DIGITS = string.ascii_uppercase + string.digits
ALNUM = string.ascii_letters + string.digits
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"


def rand(alphabet: str, length: int) -> str:
    return "".join(_RNG.choice(alphabet) for _ in range(length))


def b64url(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def pem(label: str, lines: int = 4) -> tuple[str, list[str]]:
    body = [rand(B64, 64) for _ in range(lines)] + [rand(B64, 30) + "=="]
    block = "\n".join([f"-----BEGIN {label}-----", *body, f"-----END {label}-----"])
    return block, body


@dataclass(frozen=True)
class Case:
    kind: str
    text: str  # the secret in its natural context, as it would be logged
    secrets: tuple[str, ...]  # what must never come out


def _corpus() -> list[Case]:
    cases: list[Case] = []

    def add(kind: str, text: str, *secrets: str) -> None:
        cases.append(Case(kind, text, secrets))

    s = "AK" + "IA" + rand(UPPER_DIGITS, 16)
    add("aws_access_key_id", f"boto3 client created with access key id {s} for eu-west-1", s)
    s = rand(B64, 40)
    add("aws_secret_access_key", f"aws_secret_access_key={s}", s)
    s = rand(B64, 40)
    add("aws_secret_access_key_json", json.dumps({"AccessKeyId": "x", "SecretAccessKey": s}), s)
    s = "FwoGZXIv" + "YXdz" + rand(B64, 120)
    add("aws_session_token", f"assumed role, session {s} expires in 3600s", s)
    s = rand(B64, 80)
    add("aws_session_token_env", f"export AWS_SESSION_TOKEN={s}", s)
    s = "gh" + "p_" + rand(ALNUM, 36)
    add("github_token", f"cloning with {s} from github.com", s)
    s = "github" + "_pat_" + rand(ALNUM, 22) + "_" + rand(ALNUM, 59)
    add("github_fine_grained_pat", f"GH token is {s}", s)
    s = "gl" + "pat-" + rand(URLSAFE, 20)
    add("gitlab_token", f"PRIVATE-TOKEN {s}", s)
    s = "xo" + "xb-" + rand(string.digits, 12) + "-" + rand(string.digits, 13) + "-" + rand(ALNUM, 24)
    add("slack_bot_token", f"posting as {s}", s)
    s = "T" + rand(UPPER_DIGITS, 8) + "/B" + rand(UPPER_DIGITS, 10) + "/" + rand(ALNUM, 24)
    add("slack_webhook", f"alert sent to https://hooks.slack.com/services/{s} ok", s)
    s = "sk" + "_live_" + rand(ALNUM, 24)
    add("stripe_secret_key", f"charging with {s}", s)
    s = "AI" + "za" + rand(URLSAFE, 35)
    add("google_api_key", f"maps?key={s}&q=berlin", s)
    key_block, key_body = pem("PRIVATE KEY", 6)
    add(
        "gcp_service_account_json",
        json.dumps(
            {"type": "service_account", "private_key_id": rand(HEX, 40), "private_key": key_block + "\n"}
        ),
        *key_body,
    )
    s = rand(B64, 86) + "=="
    add(
        "azure_storage_account_key",
        f"DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={s};EndpointSuffix=core.windows.net",
        s,
    )
    s = rand(ALNUM, 40) + "%3D"
    add(
        "azure_sas_signature", f"GET https://acme.blob.core.windows.net/c/b.csv?sv=2022-11-02&sr=b&sig={s}", s
    )
    s = rand(ALNUM + "_~.", 3) + "8Q~" + rand(ALNUM + "_~.-", 34)
    add("azure_ad_client_secret", f"client secret {s} rotated", s)
    s = ".".join(
        [
            b64url({"alg": "HS256", "typ": "JWT"}),
            b64url({"sub": rand(ALNUM, 12), "iat": 1700000000}),
            rand(URLSAFE, 43),
        ]
    )
    add("jwt", f"id token {s} verified", s)
    s = rand(URLSAFE, 40)
    add("authorization_bearer", f"headers: Authorization: Bearer {s}", s)
    s = base64.b64encode(("etl:" + rand(ALNUM, 16)).encode()).decode()
    add("authorization_basic", f"AUTHORIZATION: Basic {s}", s)
    s = rand(ALNUM + "!$*-_.~", 18)
    add("url_password", f"engine url postgresql://etl_user:{s}@db.internal:5432/warehouse", s)
    s = rand(ALNUM, 16)
    add("url_password_redis", f"broker redis://:{s}@cache:6379/0", s)
    block, body = pem("RSA PRIVATE KEY")
    add("pem_rsa", f"loaded key\n{block}\n", *body)
    block, body = pem("OPENSSH PRIVATE KEY")
    add("pem_openssh", block, *body)
    block, body = pem("EC PRIVATE KEY")
    add("pem_ec", block, *body)
    block, body = pem("ENCRYPTED PRIVATE KEY")
    add("pem_encrypted", block, *body)
    block, body = pem("PGP PRIVATE KEY BLOCK")
    add("pem_pgp", block, *body)
    s = "np" + "m_" + rand(ALNUM, 36)
    add("npm_token", f"//registry.npmjs.org/:_authToken={s}", s)
    s = "py" + "pi-AgEIcHlwaS5vcmc" + rand(URLSAFE, 70)
    add("pypi_token", f"twine upload -u __token__ -p {s}", s)
    s = "S" + "K" + rand(HEX, 32)
    add("twilio_api_key", f"twilio key sid {s}", s)
    s = "S" + "G." + rand(URLSAFE, 22) + "." + rand(URLSAFE, 43)
    add("sendgrid_api_key", f"sendgrid {s}", s)
    s = "ke" + "y-" + rand(ALNUM, 32)
    add("mailgun_api_key", f"mailgun auth api:{s}", s)
    s = "sk" + "-proj-" + rand(URLSAFE, 74) + "T3Blbk" + "FJ" + rand(URLSAFE, 74)
    add("openai_api_key", f"OpenAI(api_key) -> {s}", s)
    s = "sk" + "-" + rand(ALNUM, 48)
    add("openai_api_key_legacy", f"openai {s}", s)
    s = "sk" + "-ant-api03-" + rand(URLSAFE, 93) + "AA"
    add("anthropic_api_key", f"anthropic client {s}", s)
    s = "hv" + "s." + rand(URLSAFE, 90)
    add("vault_token", f"VAULT_TOKEN is {s}", s)
    s = "shp" + "at_" + rand(HEX, 32)
    add("shopify_token", f"shopify {s}", s)
    s = "sq" + "0atp-" + rand(URLSAFE, 22)
    add("square_token", f"square {s}", s)
    s = "do" + "p_v1_" + rand(HEX, 64)
    add("digitalocean_token", f"doctl auth init -t {s}", s)
    s = "da" + "pi" + rand(HEX, 32)
    add("databricks_token", f"databricks host=x token {s}", s)
    s = "HR" + "KU-" + rand(URLSAFE, 60)
    add("heroku_api_key", f"heroku {s}", s)
    s = str(uuid.UUID(int=_RNG.getrandbits(128)))
    add("heroku_api_key_legacy", f"HEROKU_API_KEY={s}", s)
    s = rand(HEX, 32)
    add("datadog_api_key", f"DD_API_KEY={s} DD_SITE=datadoghq.eu", s)
    s = rand(HEX, 40)
    add("datadog_app_key", f'{{"dd_app_key": "{s}"}}', s)
    s = "hf" + "_" + rand(ALNUM, 34)
    add("huggingface_token", f"hub login {s}", s)
    s = rand(string.digits, 9) + ":AA" + rand(URLSAFE, 33)
    add("telegram_bot_token", f"bot {s} started", s, s.split(":")[1])
    s = "ATA" + "TT3" + rand(URLSAFE, 180)
    add("atlassian_api_token", f"jira {s}", s)
    s = "gl" + "sa_" + rand(ALNUM, 32) + "_" + rand(HEX, 8)
    add("grafana_service_account_token", f"grafana {s}", s)
    s = rand(HEX, 32)
    add("sentry_dsn", f"SENTRY_DSN=https://{s}@o123.ingest.sentry.io/456", s)
    s = "AGE-SECRET-" + "KEY-1" + rand(UPPER_DIGITS, 58)
    add("age_secret_key", f"age identity {s}", s)
    s = rand(ALNUM + "!@%^*", 14)
    add("generic_password", f"connecting to warehouse with password={s} as etl", s)
    s = rand(ALNUM, 12) + "9"
    add("generic_passwd_yaml", f"db:\n  passwd: {s}\n", s)
    s = rand(ALNUM, 32)
    add("generic_api_key_json", json.dumps({"service": "geo", "api_key": s}), s)
    s = rand(ALNUM, 32)
    add("generic_token_query", f"GET https://api.example.com/v1/items?page=2&token={s}&x=1", s)
    s = rand(ALNUM, 24)
    add("generic_secret_repr", str({"client_id": "etl", "client_secret": s}), s)
    s = rand(ALNUM, 20)
    add("connection_string_password", f"Server=tcp:x.example.net;Database=d;User Id=u;Password={s};", s)
    s = rand(ALNUM, 10) + ";" + rand(ALNUM, 6)
    add("odbc_password_braces", f"DRIVER={{ODBC}};UID=u;PWD={{{s}}};", s)
    s = rand(ALNUM, 20)
    add("cli_password_flag", f"running: mysql --user etl --password {s} warehouse", s)
    s = rand(ALNUM, 20)
    add("x_api_key_header", f"X-Api-Key: {s}1", s)
    return cases


CORPUS = _corpus()
CORPUS_IDS = [case.kind for case in CORPUS]


def _assert_clean(output: object, case: Case) -> None:
    text = output if isinstance(output, str) else json.dumps(output, default=str)
    for secret in case.secrets:
        assert secret not in text, f"{case.kind}: secret survived in {text!r}"
    assert REPLACEMENT in text, f"{case.kind}: nothing was redacted in {text!r}"


def test_corpus_has_at_least_thirty_kinds():
    assert len({case.kind.split("_json")[0] for case in CORPUS}) >= 30
    assert len(BUILTIN_PATTERNS) >= 30


@pytest.mark.parametrize("case", CORPUS, ids=CORPUS_IDS)
def test_secret_in_free_text_message(case):
    _assert_clean(redact(f"step 3/7 of orders: {case.text} (attempt 2)"), case)


@pytest.mark.parametrize("case", CORPUS, ids=CORPUS_IDS)
def test_secret_in_structured_fields(case):
    fields = {
        "tenant": "acme",
        "request": {"detail": case.text, "history": [case.text, ("retry", case.text)], "attempt": 2},
        "notes": {case.text},
    }
    out = redact(fields)
    _assert_clean(out, case)
    assert out["tenant"] == "acme"
    assert out["request"]["attempt"] == 2


@pytest.mark.parametrize("case", CORPUS, ids=CORPUS_IDS)
def test_secret_in_exception_text_and_traceback(case):
    def fail() -> None:
        try:
            raise ValueError(f"upstream said: {case.text}")
        except ValueError as inner:
            raise RuntimeError(f"load failed ({case.text})") from inner

    with pytest.raises(RuntimeError) as caught:
        fail()
    error = caught.value
    redactor = get_redactor()
    _assert_clean(redactor.redact_text(str(error)), case)
    _assert_clean(redactor.redact_exception_text(error), case)
    _assert_clean(redactor.redact_text("".join(traceback.format_exception(error))), case)
    # In place, as Airflow's masker does: message, args, cause.
    assert redact(error) is error
    _assert_clean(str(error), case)
    _assert_clean(str(error.__cause__), case)
    _assert_clean("".join(traceback.format_exception(error)), case)


@pytest.mark.parametrize("case", CORPUS, ids=CORPUS_IDS)
def test_secret_in_metric_tag_and_span_attribute(case):
    tags = {"tenant": "acme", "endpoint": case.text}
    _assert_clean(redact(tags), case)
    _assert_clean(redact([f"endpoint:{case.text}", "tenant:acme"]), case)
    attributes = {"barecount.tenant": "acme", "http.url": case.text}
    _assert_clean(get_redactor().redact_mapping(attributes), case)
    # What the sinks use: metric tags and span attributes as BareCount emits them.
    from barecount_provider.telemetry.metrics import clean_tags
    from barecount_provider.telemetry.tracing import _redact_attributes

    _assert_clean(clean_tags(tags), case)
    _assert_clean(_redact_attributes({**attributes, "barecount.retry.attempt": 2}), case)


@pytest.mark.parametrize("case", CORPUS, ids=CORPUS_IDS)
def test_secret_in_bytes(case):
    out = redact(case.text.encode())
    assert isinstance(out, bytes)
    _assert_clean(out.decode(), case)


# ------------------------------------------------------------------------------------------ benign data

HEX32 = rand(HEX, 32)
HEX40 = rand(HEX, 40)
HEX64 = rand(HEX, 64)
BENIGN = [
    HEX32,
    HEX40,
    HEX64,
    f"sha256:{HEX64}",
    f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/etl/orders@sha256:{HEX64}",
    str(uuid.UUID(int=_RNG.getrandbits(128))),
    f"00-{HEX32}-{rand(HEX, 16)}-01",
    rand(HEX, 16),
    "2026-11-27T13:00:00+00:00",
    "2026-11-27T13:00:00.123456Z",
    "manual__2026-11-27T13:00:00+00:00",
    "scheduled__2026-11-27T00:00:00+00:00",
    "asset_triggered__2026-11-27T13:00:00.123456+00:00_AbCdEf12",
    "dag_id=orders task_id=load run_id=manual__2026-11-27T13:00:00+00:00 try_number=2 map_index=-1",
    f"correlation_id={HEX32} run_token={HEX40} trace_id={HEX32} span_id={rand(HEX, 16)}",
    f"BARECOUNT_RUN_TOKEN={HEX40} BARECOUNT_CORRELATION_ID={HEX32}",
    "The quick brown fox jumps over the lazy dog; retrying in 30 seconds.",
    "Task exited with return code 0",
    "refresh token: connection timed out, retrying",
    "Secrets backends loaded for worker",
    "s3://acme-data/orders/2026/11/27/part-00000-3f2a.snappy.parquet",
    "https://example.com:8443/api/v1/items?page=2&limit=50",
    "postgresql://db.internal:5432/warehouse",
    "orders-load-7d9f8b6c5d-x2x9z",
    "arn:aws:glue:eu-west-1:123456789012:job/orders-nightly",
    "Pod orders-load is Running on node ip-10-0-1-23.eu-west-1.compute.internal",
    "memory=2048Mi cpu=500m size=m runner_class=container network_profile=privatelink",
    "Marking task as SUCCESS. dag_id=orders, task_id=load, start_date=20261127T130000",
    "a,b,c\n1,2,3\n",
    "",
    "ok",
]


@pytest.mark.parametrize("value", BENIGN)
def test_benign_strings_come_out_unchanged(value):
    assert redact(value) == value


def test_barecount_own_fields_survive():
    fields = {
        "correlation_id": HEX32,
        "run_token": HEX40,
        "barecount.run_token": HEX40,
        "BARECOUNT_RUN_TOKEN": HEX40,
        "dag_id": "orders",
        "run_id": "manual__2026-11-27T13:00:00+00:00",
        "task_id": "load",
        "try_number": 2,
        "tenant": "acme",
        "pipeline": "orders",
        "runner_class": "container",
        "image_or_driver_digest": f"sha256:{HEX64}",
        "network_profile": "privatelink",
        "trace_id": HEX32,
        "span_id": rand(HEX, 16),
    }
    assert get_redactor().redact_mapping(fields) == fields


def test_sensitive_keys_hide_whole_values_at_any_depth():
    out = redact({"conn": {"extra": {"password": "short", "token": ["a1", "b2"], "port": 5432}}})
    assert out == {"conn": {"extra": {"password": "***", "token": ["***", "***"], "port": 5432}}}


def test_other_objects_are_left_alone():
    marker = object()
    assert redact(marker) is marker
    assert redact(42) == 42
    assert redact(None) is None


def test_registered_secret_is_redacted_without_any_pattern():
    from airflow.sdk.log import mask_secret

    value = "corp-" + rand(ALNUM, 10)
    mask_secret(value)
    assert redact(f"the value is {value}.") == "the value is ***."


def test_tag_and_attribute_values_seen_before_a_secret_is_registered_are_redacted_after():
    from airflow.sdk.log import mask_secret

    from barecount_provider.telemetry.metrics import clean_tags
    from barecount_provider.telemetry.tracing import _redact_attributes

    value = "corp-" + rand(ALNUM, 10)
    assert clean_tags({"tenant": value, "try_number": 3}) == {"tenant": value}  # unbounded tag dropped
    assert _redact_attributes({"barecount.tenant": value, "n": 1}) == {"barecount.tenant": value, "n": 1}
    mask_secret(value)  # e.g. a connection fetched by the task: its password is now a registered secret
    assert clean_tags({"tenant": value}) == {"tenant": "***"}
    assert _redact_attributes({"barecount.tenant": value, "n": 1}) == {"barecount.tenant": "***", "n": 1}


def test_strings_in_structures_seen_before_a_secret_is_registered_are_redacted_after():
    """Mappings, lists and the structlog processor answer strings from the redactor's text cache; it is
    checked against the registered secrets once per call, so a value cached in the clear is not served after
    it became a secret."""
    from airflow.sdk.log import mask_secret

    value = "corp-" + rand(ALNUM, 10)
    event = {"dag_id": value, "nested": {"items": [value, 1]}}
    redactor = get_redactor()
    assert redact(event) == event
    assert redactor.redact_mapping(event) == event
    assert redactor(None, "info", dict(event)) == event
    mask_secret(value)
    hidden = {"dag_id": "***", "nested": {"items": ["***", 1]}}
    assert redact(event) == hidden
    assert redactor.redact_mapping(event) == hidden
    assert redactor(None, "info", dict(event)) == hidden


# ----------------------------------------------------------------------------------------- configuration


def test_configured_key_names_and_value_patterns(monkeypatch):
    monkeypatch.setenv("AIRFLOW__BARECOUNT__REDACT_KEY_NAMES", "customer_ssn, IBAN")
    monkeypatch.setenv(
        "AIRFLOW__BARECOUNT__REDACT_VALUE_PATTERNS", '["ACME-[0-9A-F]{24}", "(?i)internal-ref-[0-9]+"]'
    )
    config.cache_clear()
    get_redactor.cache_clear()
    ref = "ACME-" + rand("0123456789ABCDEF", 24)
    assert redact(
        {"customer_ssn": "123-45-6789", "payout_iban": "DE89370400440532013000", "tenant": "acme"}
    ) == {
        "customer_ssn": "***",
        "payout_iban": "***",
        "tenant": "acme",
    }
    assert redact(f"order {ref} failed; INTERNAL-REF-123 escalated") == "order *** failed; *** escalated"
    assert redact("customer_ssn=123-45-6789 tenant=acme") == "customer_ssn=*** tenant=acme"


def test_configured_patterns_with_a_kept_prefix(monkeypatch):
    monkeypatch.setenv("AIRFLOW__BARECOUNT__REDACT_VALUE_PATTERNS", '["(?P<pre>employee=)E[0-9]{6}"]')
    config.cache_clear()
    get_redactor.cache_clear()
    assert redact("employee=E123456 left") == "employee=*** left"


def test_invalid_configured_pattern_is_reported_and_builtins_stay(monkeypatch, caplog):
    monkeypatch.setenv("AIRFLOW__BARECOUNT__REDACT_VALUE_PATTERNS", '["ACME-[0-9"]')
    config.cache_clear()
    get_redactor.cache_clear()
    with pytest.raises(ValueError, match=r"redact_value_patterns\[0\]: 'ACME-\[0-9' is not a valid regular"):
        Redactor.from_config()
    with caplog.at_level(logging.ERROR):
        redactor = get_redactor()
    assert "built-in patterns only" in caplog.text
    key = "AK" + "IA" + rand(UPPER_DIGITS, 16)
    assert redactor.redact_text(key) == REPLACEMENT


def test_pattern_matching_the_empty_string_is_refused():
    with pytest.raises(ValueError, match="matches the empty string"):
        Redactor(extra_patterns=["x*"])


def test_builtin_branches_start_with_a_literal():
    """Why the scan is fast: each top-level branch of the joined expression starts with a literal."""
    parser = pytest.importorskip("re._parser")
    joined = get_redactor()._builtin.scan
    assert joined is not None
    tree = parser.parse(joined.pattern)
    branch_op, (_, branches) = tree[0]
    assert branch_op == parser.BRANCH
    for branch in branches:
        assert branch[0][0] == parser.LITERAL, branch


def test_redaction_is_cheap():
    redactor = Redactor()
    line = (
        "2026-11-27T13:00:00.123Z INFO Task finished dag_id=orders task_id=load "
        f"run_id=manual__2026-11-27T13:00:00+00:00 correlation_id={HEX32} duration=12.5"
    )
    runs = 200
    # Uncached: a new line each time (the cache would make this free).
    lines = [f"{line} n={i}" for i in range(runs)]
    per_line = timeit.timeit(lambda: [redactor.redact_text(item) for item in lines], number=1) / runs
    assert per_line < 200e-6, f"{per_line * 1e6:.1f} µs per line"
    tags = {"tenant": "acme", "pipeline": "orders", "runner_class": "container", "dag_id": "orders"}
    redactor.redact_mapping(tags)
    per_mapping = timeit.timeit(lambda: redactor.redact_mapping(tags), number=runs) / runs
    assert per_mapping < 50e-6, f"{per_mapping * 1e6:.1f} µs per tag set"


# ------------------------------------------------------------------------------ Airflow's masker extended


@pytest.fixture
def extended_masker():
    already = is_installed_in_airflow_masker()
    assert install_in_airflow_masker() is True
    yield
    if not already:
        uninstall_from_airflow_masker()


def test_install_is_idempotent_and_keeps_the_instance(extended_masker):
    from airflow.sdk._shared.secrets_masker import SecretsMasker, _secrets_masker

    masker = _secrets_masker()
    cls = type(masker)
    assert install_in_airflow_masker() is True
    assert type(masker) is cls
    assert isinstance(masker, SecretsMasker)
    assert cls.__mro__.count(redaction.BareCountMaskerExtension) == 1


def test_airflow_redact_applies_barecount_patterns_after_reset(extended_masker):
    from airflow.sdk._shared.secrets_masker import redact as airflow_redact
    from airflow.sdk._shared.secrets_masker import reset_secrets_masker, should_hide_value_for_key

    reset_secrets_masker()  # what supervise_task() does before starting the task
    key = "AK" + "IA" + rand(UPPER_DIGITS, 16)
    assert airflow_redact(f"key {key}") == "key ***"
    assert airflow_redact({"run_token": HEX40, "password": "x"}) == {"run_token": HEX40, "password": "***"}
    assert should_hide_value_for_key("sas_url") is True
    assert should_hide_value_for_key("run_token") is False


class _Sink:
    def __init__(self) -> None:
        self.closed: list[socket.socket] = []

    def _on_socket_closed(self, sock: socket.socket) -> None:
        self.closed.append(sock)


def _feed(reader, data: bytes) -> None:
    """Push bytes through a real socket into a supervisor reader callback, as its selector would."""
    callback, _on_close = reader
    ours, theirs = socket.socketpair()
    try:
        ours.sendall(data)
        ours.shutdown(socket.SHUT_WR)
        while callback(theirs):
            pass
    finally:
        ours.close()
        theirs.close()


def test_supervisor_writes_pattern_only_secrets_masked_to_the_task_log_file(
    extended_masker, tmp_path, monkeypatch
):
    """The supervisor's own code path: _configure_logging() opens the task's log file with Airflow's
    processors (mask_logs), _create_log_forwarder() forwards the task's stdout / stderr lines and
    process_log_messages_from_subprocess() its structured events. None of these secrets was registered."""
    from airflow.sdk._shared.secrets_masker import reset_secrets_masker
    from airflow.sdk.execution_time import supervisor

    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(tmp_path))
    no_client = cast(Any, None)  # no remote logging: the API client is not used
    logger, log_file = supervisor._configure_logging(
        "dag_id=orders/run_id=r1/task_id=load/attempt=1.log", no_client
    )
    reset_secrets_masker()
    sink = cast(Any, _Sink())  # stands in for the WatchedSubprocess (only its on-close callback is used)

    printed = CORPUS  # multi-line ones (keys, YAML) reach the supervisor one line at a time
    key_block, key_body = pem("RSA PRIVATE KEY")
    stdout = "".join(f"{case.text}\n" for case in printed) + f"{key_block}\n"
    _feed(
        supervisor.WatchedSubprocess._create_log_forwarder(sink, (logger,), "task.stdout", data=b""),
        stdout.encode(),
    )
    aws_key = "AK" + "IA" + rand(UPPER_DIGITS, 16)
    token = "gh" + "p_" + rand(ALNUM, 36)
    stderr = (
        "Traceback (most recent call last):\n"
        '  File "/opt/dags/orders.py", line 12, in load\n'
        f"    connect(key='{aws_key}')\n"
        f"RuntimeError: upstream rejected {token}\n"
    )
    _feed(
        supervisor.WatchedSubprocess._create_log_forwarder(
            sink, (logger,), "task.stderr", data=b"", log_level=logging.ERROR
        ),
        stderr.encode(),
    )
    url_password = rand(ALNUM, 16)
    event = {
        "timestamp": "2026-11-27T13:00:00.123456Z",
        "level": "error",
        "logger": "airflow.task",
        "event": f"connecting to postgresql://etl:{url_password}@db:5432/w failed",
        "correlation_id": HEX32,
        "run_token": HEX40,
        "tenant": "acme",
        "api_key": "plain-" + rand(ALNUM, 10),
        "exception": [
            {
                "exc_type": "RuntimeError",
                "exc_value": f"bad credentials {token}",
                "frames": [{"filename": "orders.py", "lineno": 12, "name": "load"}],
            }
        ],
    }
    _feed(
        supervisor.make_buffered_socket_reader(
            supervisor.process_log_messages_from_subprocess((logger,)), on_close=sink._on_socket_closed
        ),
        json.dumps(event).encode() + b"\n",
    )
    log_file.close()

    written = (tmp_path / "dag_id=orders/run_id=r1/task_id=load/attempt=1.log").read_text()
    lines = [json.loads(line) for line in written.splitlines()]
    assert len(lines) >= len(printed) + 4
    for case in printed:
        for secret in case.secrets:
            assert secret not in written, f"{case.kind} reached the task log file"
    for value in (*key_body, aws_key, token, url_password, str(event["api_key"])):
        assert value not in written
    structured = lines[-1]
    assert structured["run_token"] == HEX40
    assert structured["correlation_id"] == HEX32
    assert structured["api_key"] == REPLACEMENT
    assert "postgresql://etl:***@db:5432/w" in structured["event"]
    assert any(line.get("logger") == "task.stderr" and "***" in line["event"] for line in lines)


def test_without_the_extension_the_supervisor_writes_them(tmp_path, monkeypatch):
    """The control: Airflow alone does not know unregistered secrets."""
    from airflow.sdk.execution_time import supervisor

    already = is_installed_in_airflow_masker()
    uninstall_from_airflow_masker()
    try:
        monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(tmp_path))
        logger, log_file = supervisor._configure_logging("control.log", cast(Any, None))
        key = "AK" + "IA" + rand(UPPER_DIGITS, 16)
        _feed(
            supervisor.WatchedSubprocess._create_log_forwarder(
                cast(Any, _Sink()), (logger,), "task.stdout", data=b""
            ),
            f"key {key}\n".encode(),
        )
        log_file.close()
        assert key in (tmp_path / "control.log").read_text()
    finally:
        if already:
            install_in_airflow_masker()


def test_sdk_structlog_mask_processor_uses_the_extension(extended_masker):
    from airflow.sdk.log import mask_logs

    secret = "xo" + "xp-" + rand(string.digits, 10) + "-" + rand(ALNUM, 20)
    out = mask_logs(None, "info", {"event": f"token {secret}", "run_token": HEX40, "nested": {"x": [secret]}})
    assert secret not in json.dumps(out)
    assert out["run_token"] == HEX40


def test_core_masker_is_left_alone_by_default(extended_masker):
    from airflow._shared.secrets_masker import _secrets_masker as core_masker

    assert not isinstance(core_masker(), redaction.BareCountMaskerExtension)


def test_uninstall_restores_airflow_class():
    from airflow.sdk._shared.secrets_masker import SecretsMasker, _secrets_masker

    already = is_installed_in_airflow_masker()
    install_in_airflow_masker()
    uninstall_from_airflow_masker()
    try:
        assert type(_secrets_masker()) is SecretsMasker
        assert not is_installed_in_airflow_masker()
    finally:
        if already:
            install_in_airflow_masker()


def test_extension_never_breaks_the_log_writer(extended_masker, monkeypatch):
    from airflow.sdk._shared.secrets_masker import redact as airflow_redact

    def broken() -> Redactor:
        raise RuntimeError("boom")

    broken.cache_clear = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setattr(redaction, "get_redactor", broken)
    assert airflow_redact("anything") == "<redaction-failed>"


def test_sets_tuples_and_named_tuples_keep_their_type():
    key = "AK" + "IA" + rand(UPPER_DIGITS, 16)
    point = SimpleNamespace(x=key)  # other objects: untouched
    assert redact(point) is point
    assert redact((key, 1)) == (REPLACEMENT, 1)
    assert redact(frozenset({key})) == frozenset({REPLACEMENT})


def test_component_logs_mirror_of_task_output_is_redacted():
    """LocalExecutor workers mirror task output to the scheduler's own logging, which has no masking."""
    from airflow._shared.logging import structlog as core_structlog

    saved = structlog.get_config()
    saved_processors = list(saved["processors"])
    already = is_installed_in_airflow_masker()
    buffer = io.BytesIO()
    procs, _, final_writer = core_structlog.structlog_processors(json_output=True)
    structlog.configure(
        processors=[*procs, final_writer],
        logger_factory=structlog.BytesLoggerFactory(buffer),
        cache_logger_on_first_use=False,
    )
    try:
        uninstall_from_airflow_masker()
        assert install_in_airflow_masker() is True
        assert install_in_airflow_masker() is True
        assert structlog.get_config()["processors"].count(redaction.mask_component_event) == 1
        key = "AK" + "IA" + rand(UPPER_DIGITS, 16)
        structlog.get_logger(logger_name="supervisor").info(
            f"key {key}", logger="task.stdout", run_token=HEX40
        )
        line = json.loads(buffer.getvalue())
        assert line["event"] == "key ***"
        assert line["run_token"] == HEX40
    finally:
        uninstall_from_airflow_masker()
        config_back = dict(saved)
        config_back["processors"] = saved_processors
        structlog.configure(**config_back)
        if already:
            install_in_airflow_masker()


# ------------------------------------------------------------------- environment variables with sensitive names


def _env_secret(prefix: str) -> str:
    return prefix + "-" + rand(ALNUM, 20)


SENSITIVE_ENV = {
    "DB_PASSWORD": _env_secret("pw"),
    "WAREHOUSE_PASSWD": _env_secret("pwd"),
    "PAYMENTS_API_KEY": _env_secret("key"),
    "SLACK_BOT_TOKEN": _env_secret("tok"),
    "MY_SECRET_SAUCE": _env_secret("sauce"),
    "ACME_CREDENTIALS": _env_secret("cred"),
    "AIRFLOW_CONN_WAREHOUSE": "postgresql://etl@db:5432/w?sslkey=" + rand(ALNUM, 16),
    "HTTPS_PROXY": "http://proxy-" + rand(ALNUM, 8) + ".corp:3128",  # Airflow's own name: proxy
    "SSH_PASSPHRASE": "line one " + rand(ALNUM, 10) + "\nline two " + rand(ALNUM, 10),
}
NOT_SENSITIVE_ENV = {
    "PWD": "/opt/airflow/" + rand(ALNUM, 12),
    "HOME": "/home/" + rand(ALNUM, 12),
    "BARECOUNT_RUN_TOKEN": rand(HEX, 40),
    "TOKENIZERS_PARALLELISM": "false",
    "PATH": "/usr/local/bin:/usr/bin:" + rand(ALNUM, 12),
}


def _env_values(env: dict[str, str]) -> list[str]:
    return [part for value in env.values() for part in (value, *value.splitlines())]


@pytest.fixture
def leaky_environment(monkeypatch):
    for name, value in {**SENSITIVE_ENV, **NOT_SENSITIVE_ENV}.items():
        monkeypatch.setenv(name, value)
    yield


def test_sensitive_env_values_are_registered_and_redacted(leaky_environment):
    from airflow.sdk._shared.secrets_masker import redact as airflow_redact

    registered = redaction.register_env_secrets()
    assert registered >= len(SENSITIVE_ENV)
    for name, value in SENSITIVE_ENV.items():
        for part in (value, *value.splitlines()):
            sentence = f"step 2: connecting with {part} (attempt 1)"
            assert part not in redact(sentence), name  # BareCount's outputs
            assert part not in airflow_redact(sentence), name  # Airflow's masker: the task log file
    for name, value in NOT_SENSITIVE_ENV.items():
        assert redact(f"value {value} here") == f"value {value} here", name
    assert redaction.register_env_secrets() == 0  # once registered, a look-up per variable


def test_a_component_registers_its_environment_when_the_plugin_extends_the_masker(monkeypatch):
    """The scheduler, the API server, the dag-processor: install_in_airflow_masker() at the plugin's load."""
    from airflow.sdk._shared.secrets_masker import redact as airflow_redact

    value = _env_secret("component")
    monkeypatch.setenv("WAREHOUSE_API_KEY", value)
    already = is_installed_in_airflow_masker()
    uninstall_from_airflow_masker()
    try:
        assert value in airflow_redact(f"key {value}")  # not registered yet
        assert install_in_airflow_masker() is True
        assert airflow_redact(f"key {value}") == "key ***"
        assert redact(f"key {value}") == "key ***"
    finally:
        if not already:
            uninstall_from_airflow_masker()


def test_env_names_are_judged_by_the_patterns_and_airflows_names():
    redactor = Redactor()
    for name in (
        "DB_PASSWORD",
        "db_password",
        "GITHUB_TOKEN",
        "X_SECRET_Y",
        "PAYMENTS_API_KEY",
        "AIRFLOW_CONN_X",
    ):
        assert redactor.is_sensitive_env_name(name), name
    from airflow.sdk._shared.secrets_masker import _secrets_masker

    assert not redactor.is_sensitive_env_name("HTTP_PROXY")  # Airflow's name, but no masker given
    assert redactor.is_sensitive_env_name("HTTP_PROXY", _secrets_masker())
    for name in ("PWD", "OLDPWD", "HOME", "PATH", "BARECOUNT_RUN_TOKEN", "LANG"):
        assert not redactor.is_sensitive_env_name(name, _secrets_masker()), name


def test_env_name_patterns_are_configurable(monkeypatch):
    value = _env_secret("acme")
    monkeypatch.setenv("ACME_SIGNING_SEED", value)
    monkeypatch.setenv("AIRFLOW__BARECOUNT__REDACT_ENV_NAME_PATTERNS", "acme_*_seed, *PASSWORD*")
    config.cache_clear()
    get_redactor.cache_clear()
    assert config.redact_env_name_patterns() == ("ACME_*_SEED", "*PASSWORD*")
    assert get_redactor().is_sensitive_env_name("ACME_SIGNING_SEED")
    assert not get_redactor().is_sensitive_env_name("GITHUB_TOKEN")
    redaction.register_env_secrets()
    assert value not in redact(f"seed is {value}")


@pytest.mark.parametrize("value", ["DB-PASSWORD", "*", "PASS WORD", "[A-Z]*"])
def test_invalid_env_name_pattern_names_key_value_and_expected(monkeypatch, value):
    monkeypatch.setenv("AIRFLOW__BARECOUNT__REDACT_ENV_NAME_PATTERNS", f"*_TOKEN,{value}")
    config.cache_clear()
    with pytest.raises(ValueError) as caught:
        config.redact_env_name_patterns()
    message = str(caught.value)
    assert "[barecount] redact_env_name_patterns" in message
    assert repr(value.upper()) in message and "is not comma-separated environment variable name patterns" in message


def test_supervisor_reset_keeps_env_secrets_and_masks_what_the_task_prints(
    leaky_environment, extended_masker, tmp_path, monkeypatch
):
    """supervise_task() resets Airflow's masker before it forks the task; the extension registers the
    environment's secrets again, so the supervisor masks them in the task's print() / subprocess output and
    stderr, and the forked task process inherits them."""
    from airflow.sdk._shared.secrets_masker import _secrets_masker, reset_secrets_masker
    from airflow.sdk.execution_time import supervisor

    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(tmp_path))
    logger, log_file = supervisor._configure_logging("env.log", cast(Any, None))
    reset_secrets_masker()
    assert _secrets_masker().patterns  # registered again by the reset itself
    sink = cast(Any, _Sink())
    printed = "".join(f"connecting with {part}\n" for part in _env_values(SENSITIVE_ENV))
    _feed(
        supervisor.WatchedSubprocess._create_log_forwarder(sink, (logger,), "task.stdout", data=b""),
        printed.encode(),
    )
    stderr = f"Traceback (most recent call last):\nRuntimeError: login refused for {SENSITIVE_ENV['DB_PASSWORD']}\n"
    _feed(
        supervisor.WatchedSubprocess._create_log_forwarder(
            sink, (logger,), "task.stderr", data=b"", log_level=logging.ERROR
        ),
        stderr.encode(),
    )
    log_file.close()
    written = (tmp_path / "env.log").read_text()
    assert written.count("connecting with ***") >= len(SENSITIVE_ENV)
    for name, value in SENSITIVE_ENV.items():
        for part in (value, *value.splitlines()):
            assert part not in written, f"{name} reached the task log file"


def test_a_task_process_tells_its_supervisor_what_it_lacks(monkeypatch):
    """A supervisor without the plugin (or a variable the task's environment has and the supervisor's not)."""
    from airflow.sdk._shared.secrets_masker import _secrets_masker
    from airflow.sdk.execution_time import task_runner

    value = _env_secret("only-in-task")
    monkeypatch.setenv("JOB_ONLY_TOKEN", value)
    sent: list[Any] = []
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", SimpleNamespace(send=sent.append), raising=False)
    assert redaction.register_env_secrets() >= 1
    assert [message.value for message in sent if getattr(message, "value", None) == value]
    assert re.escape(value) in _secrets_masker().patterns
    sent.clear()
    redaction.register_env_secrets()
    assert not [message for message in sent if getattr(message, "value", None) == value]  # only once


def test_the_start_of_a_try_registers_the_environment(monkeypatch, tmp_path):
    """A failed try whose exception text carries an environment variable's value: the span line, the file-sink
    event and the evidence entry (written by the task process) never hold it."""
    from barecount_provider.runtime import entries as evidence_task
    from barecount_provider.runtime import task_side
    from barecount_provider.telemetry import metrics

    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path / "telemetry"))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_INDEX_URL", f"sqlite:///{tmp_path / 'index.db'}")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TASK_OUTPUTS", "task")
    metrics.EMIT_FAILURES.counts.clear()
    monkeypatch.setattr(redaction, "_ENV_REGISTERED_BY", None)  # a supervisor without the plugin
    password = "Zq8-" + rand(ALNUM, 18)  # nothing in it a value pattern knows
    monkeypatch.setenv("WAREHOUSE_DB_PASSWORD", password)
    dag = SimpleNamespace(dag_id="etl", tags=["tenant:acme"], params={}, default_args={})
    task = SimpleNamespace(dag=dag, upstream_task_ids=set(), params={})
    ti = SimpleNamespace(
        dag_id="etl",
        run_id="manual__2026-12-07T12:00:00+00:00",
        task_id="load",
        map_index=-1,
        try_number=1,
        task=task,
        start_date=None,
        max_tries=1,
        _ti_context_from_server=None,
        queued_dttm=None,
    )
    task_side.on_try_running(ti)
    task_side.on_try_finished(ti, "failed", RuntimeError(f"login refused for etl with {password}"))
    written = [tmp_path / "telemetry" / "events.jsonl", tmp_path / "telemetry" / "spans.jsonl"]
    written += sorted((tmp_path / "evidence").rglob("*.json"))
    assert len(written) >= 3 and all(path.exists() for path in written)
    everything = "".join(path.read_text() for path in written)
    assert "login refused for etl with ***" in everything
    assert password not in everything
    assert evidence_task is not None


def test_a_try_in_a_process_forked_after_the_supervisors_registration_scans_nothing(
    monkeypatch, extended_masker
):
    """The task process inherits the masker the supervisor filled from the same environment right after its
    reset: the start of a try reads no environment variable then; otherwise it scans."""
    import os

    from airflow.sdk._shared.secrets_masker import reset_secrets_masker

    reset_secrets_masker()  # in the supervisor: registers this process's environment again
    scans: list[int] = []
    real = redaction.register_env_secrets

    def counted() -> int:
        scans.append(1)
        return real()

    monkeypatch.setattr(redaction, "register_env_secrets", counted)
    supervisor_pid = os.getpid()
    monkeypatch.setattr(os, "getppid", lambda: supervisor_pid)  # as seen from the forked task process
    assert redaction.register_env_secrets_for_try() == 0
    assert scans == []
    monkeypatch.setattr(
        os, "getppid", lambda: supervisor_pid + 1
    )  # forked by a process that did not register
    redaction.register_env_secrets_for_try()
    assert scans == [1]


# ------------------------------------------------------------------------------- bare AWS secret access keys

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def aws_bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("bench_aws_secret_keys")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("anywhere", [False, True], ids=["context", "anywhere"])
def test_bare_aws_keys_no_false_positive_and_none_missed(aws_bench, anywhere):
    """benchmarks/bench_aws_secret_keys.py's corpora: git SHAs, UUIDs, SHA-1 / SHA-256 digests in base64 and
    base64url, 40-character names and paths, and the fixture files' lines, each alone and in AWS context,
    against 1,000 seeded keys in sentences and exception messages."""
    result = aws_bench.measure(anywhere=anywhere)
    assert result["negatives"] > 20000 and result["negative_kinds"] >= 20
    assert result["false_positives"] == 0, result["false_positive_examples"]
    assert result["positives"] == 1000
    assert result["missed"] == 0, result["missed_examples"]


def test_bare_aws_key_in_a_sentence_and_an_exception_message(extended_masker):
    from airflow.sdk._shared.secrets_masker import redact as airflow_redact

    key = rand(B64, 39) + "a"
    key_id = "AK" + "IA" + rand(UPPER_DIGITS, 16)
    texts = [
        f"uploading with aws secret {key} to s3://acme",
        f"client ({key_id}, {key}) created",
        f"botocore.exceptions.ClientError: SignatureDoesNotMatch for credential {key}",
    ]
    for text in texts:
        assert key not in redact(text) and REPLACEMENT in redact(text)
        assert key not in airflow_redact(text)  # the supervisor: the task log file
    error = RuntimeError(f"AWS rejected the request signed with {key}")
    assert key not in get_redactor().redact_exception_text(error)


def test_bare_aws_key_without_context_needs_anywhere(monkeypatch):
    key = rand(B64, 39) + "Z"
    text = f"the value {key} was rejected"
    assert redact(text) == text  # no AWS context: by default left alone (a 40-character value of anything)
    monkeypatch.setenv("AIRFLOW__BARECOUNT__REDACT_AWS_SECRET_KEYS", "anywhere")
    config.cache_clear()
    get_redactor.cache_clear()
    assert redact(text) == "the value *** was rejected"
    monkeypatch.setenv("AIRFLOW__BARECOUNT__REDACT_AWS_SECRET_KEYS", "everywhere")
    config.cache_clear()
    with pytest.raises(
        ValueError,
        match=r"\[barecount\] redact_aws_secret_keys: 'everywhere' is not one of context, anywhere",
    ):
        config.redact_aws_secret_keys()


def test_forty_character_hashes_are_not_aws_keys():
    for value in (HEX40, HEX40.upper(), "AbstractSingletonProxyFactoryBeanBuilder"):
        text = f"aws secret rotation: commit {value} deployed"
        assert redact(text) == text


# ------------------------------------------------------------------- every output through one redaction step


def _leaked_record(secret: str) -> dict[str, Any]:
    """A record holding a secret that slipped through where it was made (sealed before a fix)."""
    from tests.unit.test_api import build_run

    record = build_run("a_orders", 99, "team_a", "orders", "serverless", "s", 0.1)
    record["entries"][0]["error"] = {
        "error_class": "RuntimeError",
        "message": f"aws rejected secret {secret}",
    }
    return record


def test_the_evidence_entry_redacts_what_operators_leave_on_the_task(monkeypatch, tmp_path):
    """A runner's result (a log tail, overrides) goes into the entry: redacted in the task process."""
    from barecount_provider.evidence.facts import CONTEXT_FIELDS
    from barecount_provider.jsonlines import encode_line
    from barecount_provider.runtime import entries as evidence_task

    aws_key = rand(B64, 39) + "q"
    password = "Pw-" + rand(ALNUM, 16)
    ctx = SimpleNamespace(**dict.fromkeys(CONTEXT_FIELDS, "x"))
    task = SimpleNamespace(
        barecount_runner_result={
            "log_tail": f"boto3: using aws secret {aws_key}",
            "overrides": {"environment": {"DB_PASSWORD": password}},
            "billed_duration_ms": 1200,
        },
        barecount_approvals=[{"approver": "alice", "comment": f"ok, password={password}"}],
    )
    facts = evidence_task.try_facts(
        ctx,
        SimpleNamespace(task=task),
        state="success",
        started_at=None,
        ended_at=datetime_now(),
        duration_s=1.0,
        metrics={},
        trace=None,
        error=None,
    )
    text = encode_line(facts).decode()  # as the outbox holds them
    assert aws_key not in text and password not in text
    result = facts.runner_result
    assert result is not None
    assert (
        result["billed_duration_ms"] == 1200
        and result["overrides"]["environment"]["DB_PASSWORD"] == REPLACEMENT
    )


def datetime_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def test_airflows_own_spans_are_redacted_in_the_span_file(tmp_path):
    """OTEL_TRACES_EXPORTER=barecount_file: Airflow's spans, whose attributes nobody redacted, reach the span
    file through the exporter."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from barecount_provider.telemetry.tracing import JsonLinesSpanExporter

    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(str(path))))
    token = "gh" + "p_" + rand(ALNUM, 36)
    password = "Pw-" + rand(ALNUM, 16)
    with provider.get_tracer("airflow").start_as_current_span("task_run") as span:
        span.set_attribute("airflow.task.command", f"git clone https://{token}@github.com/acme/etl")
        span.set_attribute("airflow.conn.password", password)
        span.add_event("log", {"message": f"aws secret {rand(B64, 39)}x"})
    provider.shutdown()
    written = path.read_text()
    assert token not in written and password not in written and "task_run" in written
    assert json.loads(written)["attributes"]["airflow.conn.password"] == REPLACEMENT


@pytest.fixture
def api_auth(monkeypatch):
    """tests/unit/test_api.py's ``auth``: Airflow's SimpleAuthManager as the API server holds it."""
    from tests.unit import test_api

    yield from test_api.auth.__wrapped__(monkeypatch)  # type: ignore[attr-defined]


def test_rest_responses_are_redacted_on_the_way_out(tmp_path, api_auth):
    from fastapi.testclient import TestClient

    from barecount_provider.api.app import create_app
    from barecount_provider.evidence import store as store_module
    from barecount_provider.evidence.store import EvidenceStore, LocalBodies
    from tests.unit.test_api import _token

    secret = rand(B64, 39) + "k"
    store_module.clear_caches()
    root = tmp_path / "evidence"
    store = EvidenceStore(LocalBodies(str(root)), f"sqlite:///{root / 'index.db'}", "local")
    stored = store.append(_leaked_record(secret))
    assert secret in json.dumps(stored)  # what the store holds: the API must not serve it
    try:
        with TestClient(create_app(lambda: store)) as client:
            one = client.get(f"/evidence/{stored['record_id']}", headers=_token(api_auth, "admin", "ADMIN"))
        assert one.status_code == 200
        assert secret not in one.text and "aws rejected secret ***" in one.text
        assert one.json()["record_id"] == stored["record_id"]
    finally:
        store_module.clear_caches()


def test_cli_output_is_redacted(tmp_path, monkeypatch, capsys):
    from barecount_provider import cli
    from barecount_provider.evidence import store as store_module
    from barecount_provider.evidence.store import open_store

    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    monkeypatch.delenv("AIRFLOW__BARECOUNT__EVIDENCE_INDEX_URL", raising=False)
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_STORE", "local")
    config.cache_clear()
    store_module.clear_caches()
    secret = rand(B64, 39) + "c"
    stored = open_store().append(_leaked_record(secret))
    try:
        assert cli.main(["evidence", "show", stored["record_id"], "--json"]) == 0
        out = capsys.readouterr().out
        assert secret not in out and "aws rejected secret ***" in out
        assert json.loads(out)["record_id"] == stored["record_id"]
    finally:
        store_module.clear_caches()
    assert not isinstance(sys.stdout, redaction._RedactingStream)  # restored after the command
