"""Signed checkpoints: the head of each tenant's chain, signed with a key the store's writers do not hold.

A **checkpoint** says "tenant T's chain had record R with hash H at sequence N at time S", signed with
Ed25519 (``cryptography``). The scheduler side signs one each time it seals a record (the store calls
:meth:`Checkpointer.after_append`), with the private key of the Airflow connection
``[barecount] evidence_checkpoint_conn_id``; anyone verifies with the public key
``[barecount] evidence_checkpoint_public_key``. Checkpoints are written somewhere else than the store
(``[barecount] evidence_checkpoint_location``): a directory to ship elsewhere, or ``s3://bucket/prefix``
with Object Lock (COMPLIANCE) so nobody can delete or overwrite them. One object per checkpoint, named by
its tenant and sequence: ``<tenant>/<sequence:012d>.json``.

The signed message is the canonical JSON (sorted keys, no whitespace, UTF-8) of the checkpoint without its
``signature``: ``{"checkpoint_version": 1, "hash": H, "key_id": K, "record_id": R, "sequence": N,
"signed_at": S, "tenant": T}``; ``signature`` is the base64 of the 64-byte Ed25519 signature; ``key_id`` is
the first 16 hex digits of the SHA-256 of the raw 32-byte public key.

Nothing here raises into the sealing of a record: a checkpoint that cannot be signed or written is logged
and counted; verify then shows the records after the last checkpoint as "not yet checkpointed".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from barecount_provider import config, selfmetrics
from barecount_provider.evidence.record import SignedCheckpoint, canonical

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------------------------------- keys


def _decode_key_text(text: str, what: str) -> bytes | str:
    """PEM text (returned as is) or base64 of the raw 32 bytes (returned decoded): :func:`config.decode_key_text`,
    its error naming ``what``."""
    try:
        return config.decode_key_text(text)
    except ValueError as err:
        expected = "expected the base64 of a raw 32-byte Ed25519 key, or a PEM block"
        raise ValueError(f"{what}: {err} ({expected})") from None


def load_private_key(text: str, what: str = "the checkpoint private key") -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS#8) or the base64 of its raw 32 bytes."""
    decoded = _decode_key_text(text, what)
    if isinstance(decoded, bytes):
        return Ed25519PrivateKey.from_private_bytes(decoded)
    try:
        key = serialization.load_pem_private_key(decoded.encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{what}: the PEM block is not an unencrypted private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{what}: a {type(key).__name__}, expected an Ed25519 key")
    return key


def load_public_key(text: str, what: str = "[barecount] evidence_checkpoint_public_key") -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo) or the base64 of its raw 32 bytes."""
    decoded = _decode_key_text(text, what)
    if isinstance(decoded, bytes):
        return Ed25519PublicKey.from_public_bytes(decoded)
    try:
        key = serialization.load_pem_public_key(decoded.encode())
    except (ValueError, TypeError):
        raise ValueError(f"{what}: the PEM block is not a public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{what}: a {type(key).__name__}, expected an Ed25519 key")
    return key


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(key: Ed25519PublicKey) -> str:
    """The form ``evidence_checkpoint_public_key`` and the bundles carry: base64 of the raw 32 bytes."""
    return base64.b64encode(raw_public(key)).decode()


def key_id(key: Ed25519PublicKey) -> str:
    """The key's fingerprint: the first 16 hex digits of the SHA-256 of its raw 32 bytes."""
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


def private_key_from_connection(conn_id: str) -> Ed25519PrivateKey:
    """The private key held by Airflow connection ``conn_id`` (any secrets backend): its password, or its
    extra's ``private_key``, as PEM or the base64 of the raw 32 bytes."""
    from barecount_provider.connections import get_connection

    connection = get_connection(conn_id)
    extra = connection.extra_dejson or {}
    text = connection.password or extra.get("private_key") or ""
    if not text:
        raise ValueError(f"Airflow connection {conn_id!r} holds no checkpoint key (expected it in its password or extra private_key)")
    return load_private_key(str(text), f"the key of Airflow connection {conn_id!r}")


# ------------------------------------------------------------------------------------------ checkpoints


def signed_message(checkpoint: Mapping[str, Any]) -> bytes:
    """The bytes a checkpoint's signature covers: its canonical JSON without ``signature``."""
    return canonical({name: value for name, value in checkpoint.items() if name != "signature"})


def sign(private_key: Ed25519PrivateKey, tenant: str, sequence: int, record_id: str, record_hash: str, signed_at: str | None = None) -> dict[str, Any]:
    """A checkpoint of ``tenant``'s chain head, signed."""
    checkpoint: dict[str, Any] = {
        "checkpoint_version": CHECKPOINT_VERSION,
        "tenant": tenant,
        "sequence": int(sequence),
        "record_id": record_id,
        "hash": record_hash,
        "signed_at": signed_at or datetime.now(UTC).isoformat(),
        "key_id": key_id(private_key.public_key()),
    }
    checkpoint["signature"] = base64.b64encode(private_key.sign(signed_message(checkpoint))).decode()
    return checkpoint


def signature_valid(checkpoint: Mapping[str, Any], public_key: Ed25519PublicKey) -> bool:
    try:
        signature = base64.b64decode(str(checkpoint.get("signature") or ""), validate=True)
        public_key.verify(signature, signed_message(checkpoint))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def checkpoint_key(tenant: str, sequence: int) -> str:
    """Where a checkpoint lives under the checkpoint location: one object per tenant and sequence."""
    return f"{urllib.parse.quote(tenant, safe='')}/{int(sequence):012d}.json"


Stored = SignedCheckpoint  # a checkpoint as read, with the tenant and sequence its name says


def _name_of(key: str) -> tuple[str, int] | None:
    tenant, _, name = key.rpartition("/")
    stem = name.removesuffix(".json")
    if not name.endswith(".json") or not stem.isdigit() or not tenant:
        return None
    return urllib.parse.unquote(tenant.rsplit("/", 1)[-1]), int(stem)


class CheckpointStore(Protocol):
    def put(self, checkpoint: Mapping[str, Any]) -> None: ...

    def read_all(self) -> list[SignedCheckpoint]: ...


class LocalCheckpoints:
    """Checkpoints as files under a directory (``<dir>/<tenant>/<sequence>.json``): ship it elsewhere."""

    def __init__(self, root: str) -> None:
        self.root = root

    def put(self, checkpoint: Mapping[str, Any]) -> None:
        from barecount_provider.evidence.store import atomic_write_json

        key = checkpoint_key(str(checkpoint["tenant"]), int(checkpoint["sequence"]))
        atomic_write_json(os.path.join(self.root, *key.split("/")), checkpoint, durable=True)

    def read_all(self) -> list[SignedCheckpoint]:
        found: list[SignedCheckpoint] = []
        try:
            tenants = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        for tenant_dir in tenants:
            directory = os.path.join(self.root, tenant_dir)
            if not os.path.isdir(directory):
                continue
            for name in sorted(os.listdir(directory)):
                parsed = _name_of(f"{tenant_dir}/{name}")
                if parsed is None:
                    continue
                try:
                    with open(os.path.join(directory, name), encoding="utf-8") as file:
                        document = json.load(file)
                except (OSError, ValueError):
                    document = {}
                found.append(SignedCheckpoint(parsed[0], parsed[1], document if isinstance(document, dict) else {}))
        return found


class S3Checkpoints:
    """Checkpoints as S3 objects, each with Object Lock retention (COMPLIANCE) for ``lock_days`` when set.

    ``client``: a boto3 S3 client from the amazon provider's ``S3Hook(...).get_conn()``."""

    def __init__(self, client: Any, bucket: str, prefix: str, lock_days: int = 0) -> None:
        self.client, self.bucket, self.prefix, self.lock_days = client, bucket, prefix.strip("/"), lock_days

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, checkpoint: Mapping[str, Any]) -> None:
        key = checkpoint_key(str(checkpoint["tenant"]), int(checkpoint["sequence"]))
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "Body": canonical(dict(checkpoint)),
            "ContentType": "application/json",
        }
        if self.lock_days:
            kwargs["ObjectLockMode"] = "COMPLIANCE"
            kwargs["ObjectLockRetainUntilDate"] = datetime.now(UTC) + timedelta(days=self.lock_days)
        self.client.put_object(**kwargs)

    def read_all(self) -> list[SignedCheckpoint]:
        found: list[SignedCheckpoint] = []
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = f"{self.prefix}/" if self.prefix else ""
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents") or ():
                parsed = _name_of(item["Key"][len(prefix) :])
                if parsed is None:
                    continue
                try:
                    document = json.loads(self.client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read())
                except ValueError:
                    document = {}
                found.append(SignedCheckpoint(parsed[0], parsed[1], document if isinstance(document, dict) else {}))
        return found


def open_location(location: str, *, aws_conn_id: str, lock_days: int) -> CheckpointStore:
    """A checkpoint store: ``s3://bucket/prefix`` (through the amazon provider's S3Hook) or a directory."""
    if location.startswith("s3://"):
        from barecount_provider.connections import s3_client

        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"[barecount] evidence_checkpoint_location: {location!r} names no bucket (expected s3://bucket/prefix)")
        return S3Checkpoints(s3_client(aws_conn_id), bucket, prefix, lock_days)
    return LocalCheckpoints(location)


# ------------------------------------------------------------------------------------------ the signer


class Checkpointer:
    """Signs the chain head after each append and writes the checkpoint; never raises into the append.

    ``private_key``: loads the key (None: signing is not configured); ``location``: where to write."""

    def __init__(
        self,
        private_key: Callable[[], Ed25519PrivateKey | None],
        location: Callable[[], CheckpointStore],
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._load_key, self._open_location = private_key, location
        self._key: Ed25519PrivateKey | None = None
        self._location: CheckpointStore | None = None
        self._loaded = False
        self._on_error = on_error
        self.failures = 0

    def after_append(self, record: Mapping[str, Any]) -> dict[str, Any] | None:
        """Sign and write a checkpoint of ``record`` (just appended: the head of its tenant's chain)."""
        try:
            if not self._loaded:
                self._key, self._loaded = self._load_key(), True
            if self._key is None:
                return None
            if self._location is None:
                self._location = self._open_location()
            chain = record["chain"]
            checkpoint = sign(self._key, str(record["tenant"]), int(chain["sequence"]), str(record["record_id"]), str(chain["hash"]))
            self._location.put(checkpoint)
            return checkpoint
        except Exception:
            self.failures += 1
            log.warning("BareCount could not sign or write the evidence checkpoint of %s", record.get("record_id"), exc_info=True)
            if self._on_error is not None:
                try:
                    self._on_error("evidence/checkpoint")
                except Exception:
                    pass
            return None


class CheckpointSetup:
    """A store's checkpoints: who signs after an append (``signer``, None: nobody), where they are
    (``location``, opened on first use) and the public key that checks them (None: not configured)."""

    def __init__(
        self,
        signer: Checkpointer | None,
        location: Callable[[], CheckpointStore] | None,
        public_key: Callable[[], Ed25519PublicKey | None],
    ) -> None:
        self.signer, self._open_location, self._public_key = signer, location, public_key

    @classmethod
    def off(cls) -> CheckpointSetup:
        return cls(None, None, lambda: None)

    @classmethod
    def fixed(
        cls, location: CheckpointStore, *, private_key: Ed25519PrivateKey | None = None, public_key: Ed25519PublicKey | None = None
    ) -> CheckpointSetup:
        """A setup with a known key and place (tests, tools)."""
        signer = Checkpointer(lambda: private_key, lambda: location) if private_key is not None else None
        return cls(signer, lambda: location, lambda: public_key)

    def public_key(self) -> Ed25519PublicKey | None:
        return self._public_key()

    def use_public_key(self, key: Ed25519PublicKey | None) -> None:
        """Check with ``key`` instead (``verify --public-key``)."""
        self._public_key = lambda: key

    def read(self) -> list[SignedCheckpoint]:
        return self._open_location().read_all() if self._open_location is not None else []


def configured_setup() -> CheckpointSetup:
    """The ``[barecount] evidence_checkpoint_*`` setup."""
    return CheckpointSetup(configured_checkpointer(), configured_location, configured_public_key)


def configured_checkpointer() -> Checkpointer:
    """The checkpointer of ``[barecount] evidence_checkpoint_*`` (signing off when no connection is set)."""
    def key() -> Ed25519PrivateKey | None:
        conn_id = config.evidence_checkpoint_conn_id()
        return private_key_from_connection(conn_id) if conn_id else None

    def location() -> CheckpointStore:
        return configured_location()

    def count(_what: str) -> None:
        selfmetrics.failure("evidence", "checkpoint")

    return Checkpointer(key, location, count)


def configured_location() -> CheckpointStore:
    return open_location(
        config.evidence_checkpoint_location(),
        aws_conn_id=config.evidence_aws_conn_id(),
        lock_days=config.evidence_checkpoint_object_lock_days(),
    )


def configured_public_key() -> Ed25519PublicKey | None:
    text = config.evidence_checkpoint_public_key()
    return load_public_key(text) if text else None
