"""False and true positives of BareCount's bare AWS secret access key detection.

A bare key is 40 base64 characters with nothing naming it (no ``aws_secret_access_key=`` before it), inside
a sentence or an exception message. BareCount redacts such a candidate when it looks random (entropy, mixed
case) and, by default, when AWS context is near it (``[barecount] redact_aws_secret_keys = context``); with
``anywhere`` it needs no context. This script builds both corpora deterministically (seeded) and counts:

* negative corpus (must come out unchanged, each value inside a sentence): git SHAs (lower and upper case), UUIDs, SHA-1 and SHA-256
  digests in base64 and base64url (padded and not), 40-character identifiers and paths, and real log lines:
  every line and string value of the repository's test fixtures (recorded AWS API responses of ECS, Glue,
  EMR Serverless and Lambda, and Kubernetes pods). Each digest and identifier is also put into sentences
  with AWS context ("aws s3api ... ETag ...", "secret version ...");
* positive corpus (every key must be hidden): seeded random 40-character keys in sentences and exception
  messages with AWS context, and (for ``anywhere``) without any.

    .venv/bin/python benchmarks/bench_aws_secret_keys.py

Prints, per mode, the corpus sizes, the false positives (with the first few) and the keys missed; exit 1
when any. It also counts the benign values printed alone on a line, which the older lone-base64-line rule
masks by design (it catches the body lines of a private key printed a line at a time): reported, not
counted as this rule's false positives. tests/unit/test_redaction.py asserts the same counts on the same corpora.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import string
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
B64 = string.ascii_letters + string.digits + "+/"
SEED = 20261207

CONTEXT_TEMPLATES = (
    "aws s3api head-object returned ETag {value} for s3://acme/orders.csv",
    "secret version {value} is current",
    "Rotated credentials; previous AWS key fingerprint {value}",
    "boto3 (amazon) request id {value} took 120 ms",
    "commit {value} changed the aws provider",
)
"""Benign values in sentences with AWS context: the hard case for the context rule."""

KEY_TEMPLATES_WITH_CONTEXT = (
    "using aws key {key} for eu-west-1",
    "The AWS secret is {key}, rotate it",
    "boto3 client for AKIA{key_id} / {key} created",
    "botocore.exceptions.ClientError: An error occurred (SignatureDoesNotMatch): secret {key} rejected",
    "RuntimeError: could not assume role with credentials ('AKIA{key_id}', '{key}')",
    "export AWS_SECRET={key}",
    "credentials: {key} (from ~/.aws)",
    '{{"message": "aws upload failed", "detail": "{key}"}}',
)
KEY_TEMPLATES_WITHOUT_CONTEXT = (
    "the value {key} was rejected",
    "ValueError: bad input '{key}'",
    "retrying with {key}.",
)


def _rng() -> random.Random:
    return random.Random(SEED)


def generated_keys(count: int = 1000) -> list[str]:
    """Seeded random keys in AWS's alphabet and length."""
    rng = _rng()
    return ["".join(rng.choice(B64) for _ in range(40)) for _ in range(count)]


def _key_id(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16))


def positive_corpus(anywhere: bool = False, count: int = 1000) -> list[tuple[str, str]]:
    """(text, key) pairs: every key in a sentence or exception message."""
    rng = random.Random(SEED + 1)
    templates = KEY_TEMPLATES_WITH_CONTEXT + (KEY_TEMPLATES_WITHOUT_CONTEXT if anywhere else ())
    return [
        (templates[index % len(templates)].format(key=key, key_id=_key_id(rng)), key)
        for index, key in enumerate(generated_keys(count))
    ]


def _repository_lines() -> list[str]:
    """Every line of the test fixtures (recorded AWS and Kubernetes API responses: ARNs, request ids, ETags,
    digests, log stream names) and every string value in them, as a log line would quote it."""
    lines: list[str] = []
    for path in sorted((ROOT / "tests" / "fixtures").rglob("*.json")):
        text = path.read_text(encoding="utf-8")
        lines.extend(line for line in text.splitlines() if line.strip())
        lines.extend(f"{path.parent.name}: {value}" for value in _strings(json.loads(text)))
    return lines


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [item for child in value.values() for item in _strings(child)]
    if isinstance(value, list):
        return [item for child in value for item in _strings(child)]
    return []


def negative_values(count: int = 2000) -> dict[str, list[str]]:
    """Benign values by kind."""
    rng = random.Random(SEED + 2)
    blobs = [rng.randbytes(64) for _ in range(count)]
    sha1 = [hashlib.sha1(blob).digest() for blob in blobs]
    sha256 = [hashlib.sha256(blob).digest() for blob in blobs]
    return {
        "git_sha": [digest.hex() for digest in sha1],
        "git_sha_upper": [digest.hex().upper() for digest in sha1[: count // 4]],
        "uuid": [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(count)],
        "uuid_hex": [uuid.UUID(int=rng.getrandbits(128)).hex for _ in range(count // 4)],
        "sha1_base64": [base64.b64encode(digest).decode() for digest in sha1],
        "sha256_base64": [base64.b64encode(digest).decode() for digest in sha256],
        "sha256_base64_unpadded": [base64.b64encode(digest).decode().rstrip("=") for digest in sha256],
        "sha256_base64url": [base64.urlsafe_b64encode(digest).decode().rstrip("=") for digest in sha256],
        "sha256_hex": [digest.hex() for digest in sha256[: count // 4]],
        "sri_sha256": [f"sha256-{base64.b64encode(digest).decode()}" for digest in sha256[: count // 4]],
        "identifier_40": [
            "AbstractSingletonProxyFactoryBeanBuilder",
            "TaskInstanceStateChangedListenerFactory1",
            "SecretsManagerBackendConfigurationLoader",
            "AmazonWebServicesCredentialProviderChain",
            "opt/airflow/dags/repo/dags/subdir/etl/pip",
            "usr/local/lib/python3/site/packages/boto3",
        ],
    }


def negative_corpus() -> list[tuple[str, str]]:
    """(kind, text) pairs that must come out unchanged."""
    corpus: list[tuple[str, str]] = []
    for kind, values in negative_values().items():
        for index, value in enumerate(values):
            corpus.append((kind, f"{kind.replace('_', ' ')} {value} recorded"))
            template = CONTEXT_TEMPLATES[index % len(CONTEXT_TEMPLATES)]
            corpus.append((f"{kind}_in_aws_context", template.format(value=value)))
    corpus.extend(("repository_log_line", line) for line in _repository_lines())
    return corpus


def measure(anywhere: bool) -> dict[str, object]:
    from barecount_provider.redaction import Redactor

    redactor = Redactor(maskers=[], aws_secret_keys="anywhere" if anywhere else "context")
    negatives = negative_corpus()
    false_positives = [(kind, text) for kind, text in negatives if redactor.redact_text(text) != text]
    positives = positive_corpus(anywhere=anywhere)
    missed = [text for text, key in positives if key in redactor.redact_text(text)]
    alone = [value for values in negative_values().values() for value in values]
    alone_masked = sum(1 for value in alone if redactor.redact_text(value) != value)
    return {
        "mode": "anywhere" if anywhere else "context",
        "negatives": len(negatives),
        "negative_kinds": len({kind for kind, _ in negatives}),
        "false_positives": len(false_positives),
        "false_positive_examples": false_positives[:5],
        "positives": len(positives),
        "missed": len(missed),
        "missed_examples": missed[:5],
        "alone_on_a_line": len(alone),
        "alone_on_a_line_masked": alone_masked,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results = [measure(anywhere=False), measure(anywhere=True)]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(
                f"mode {result['mode']}: {result['false_positives']} false positives in {result['negatives']} "
                f"benign texts ({result['negative_kinds']} kinds); {result['missed']} of {result['positives']} "
                f"keys missed; benign values alone on a line (the lone-base64-line rule, not this one): "
                f"{result['alone_on_a_line_masked']} of {result['alone_on_a_line']} masked"
            )
            for example in result["false_positive_examples"]:  # type: ignore[attr-defined]
                print(f"  false positive: {example}")
            for example in result["missed_examples"]:  # type: ignore[attr-defined]
                print(f"  missed: {example}")
    return 1 if any(result["false_positives"] or result["missed"] for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
