"""Offline verification: a self-contained bundle of one tenant's chain for an auditor.

A bundle is one JSON document: the tenant's records (from the first one at or after ``since`` to the head,
in sequence order, so the segment is contiguous), the signed checkpoints covering them and the public key
they were made with. :func:`verify_bundle` checks it with nothing else: no index, no store, no Airflow.
The algorithm is documented in docs/evidence.md ("Verifying a chain yourself").
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from barecount_provider.evidence import checkpoint as cp
from barecount_provider.evidence.record import (
    GENESIS_HASH,
    ChainReport,
    SignedCheckpoint,
    check_chain,
    now_iso,
)
from barecount_provider.evidence.store import EvidenceStore

BUNDLE_VERSION = 1


def _ended(record: Mapping[str, Any]) -> str:
    return str(record.get("ended_at") or record.get("sealed_at") or "")


def export_bundle(store: EvidenceStore, tenant: str, since: datetime | None = None) -> dict[str, Any]:
    """The bundle of ``tenant``'s chain: every record from the first that ended at or after ``since`` (all
    when None) to the head, the checkpoints from that sequence on, and the configured public key."""
    records = list(store.iter_records(tenant))
    if not records:
        raise LookupError(f"no evidence record of tenant {tenant!r}")
    start = 0
    if since is not None:
        cut = since.isoformat()
        later = [n for n, record in enumerate(records) if _ended(record) and datetime.fromisoformat(_ended(record)) >= since]
        if not later:
            raise LookupError(f"no evidence record of tenant {tenant!r} ended at or after {cut}")
        start = later[0]
    records = records[start:]
    first = int(records[0]["chain"]["sequence"])
    public_key = store.checkpoints.public_key()
    checkpoints = [
        dict(c.document)
        for c in sorted(store.checkpoints.read(), key=lambda c: c.sequence)
        if c.tenant == tenant and c.sequence >= first
    ] if public_key is not None else []
    return {
        "bundle_version": BUNDLE_VERSION,
        "tenant": tenant,
        "exported_at": now_iso(),
        "since": since.isoformat() if since is not None else None,
        "first_sequence": first,
        "last_sequence": int(records[-1]["chain"]["sequence"]),
        "public_key": cp.public_key_text(public_key) if public_key is not None else None,
        "key_id": cp.key_id(public_key) if public_key is not None else None,
        "algorithm": "docs/evidence.md, section 'Verifying a chain yourself'",
        "records": records,
        "checkpoints": checkpoints,
    }


def verify_bundle(bundle: Mapping[str, Any], public_key: Any = None) -> tuple[ChainReport, str]:
    """Verify a bundle: its records' hashes and links, and its checkpoints with ``public_key`` (an Ed25519
    public key; None: the bundle's own, which the caller should compare with the published one).

    Returns the report and where the key came from (``given``, ``bundle`` or ``none``)."""
    if not isinstance(bundle, Mapping) or bundle.get("bundle_version") != BUNDLE_VERSION:
        raise ValueError(f"not an evidence bundle (expected bundle_version {BUNDLE_VERSION})")
    records = bundle.get("records")
    if not isinstance(records, list) or not all(isinstance(r, Mapping) for r in records):
        raise ValueError("the bundle's records are not a list of records")
    tenant = str(bundle.get("tenant"))
    source = "given"
    if public_key is None and bundle.get("public_key"):
        public_key, source = cp.load_public_key(str(bundle["public_key"]), "the bundle's public_key"), "bundle"
    elif public_key is None:
        source = "none"
    checkpoints = [
        SignedCheckpoint(str(doc.get("tenant")), int(doc.get("sequence") or 0), doc)
        for doc in bundle.get("checkpoints") or ()
        if isinstance(doc, Mapping)
    ]
    first = bundle.get("first_sequence")
    genesis = GENESIS_HASH if first == 1 else None  # a later start: the link to what precedes it is not checked
    report = check_chain(tenant, records, checkpoints=checkpoints, public_key=public_key, genesis=genesis)
    if isinstance(first, int) and records:
        got = (records[0].get("chain") or {}).get("sequence")
        if got != first:
            report.add(got if isinstance(got, int) else None, str(records[0].get("record_id")), "removed",
                       f"the bundle starts at sequence {got}, its first_sequence says {first}")
    return report, source
