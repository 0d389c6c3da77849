"""A dead-letter queue in SQS (production): one message per record.

A message that SQS itself moved to the queue by a source queue's redrive policy (``maxReceiveCount``
exceeded) is read too: its body becomes the payload, ``ApproximateReceiveCount`` the attempts, and its key
comes from an ``idempotency_key`` message attribute, the FIFO deduplication id, or the hash of its body. A
replay deletes a message once the ledger records it delivered (SQS's own redrive moves messages the same way).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from barecount_provider.recovery.letters import (
    LETTER_VERSION,
    DeadLetter,
    DeliveredKeys,
    QueueStats,
    Scope,
    hash_key,
    iso,
    now_iso,
)

log = logging.getLogger(__name__)

SQS_REDRIVE_ERROR = "sqs.MaxReceiveCountExceeded"
_SQS_ATTRIBUTES = ("tenant", "pipeline", "error_class", "idempotency_key")  # message attributes, from the letter's fields

_Item = TypeVar("_Item")


def _batches(items: Sequence[_Item]) -> Iterator[Sequence[_Item]]:
    """``items`` in slices of 10, the most one SQS batch call takes."""
    for start in range(0, len(items), 10):
        yield items[start : start + 10]


class SqsBackend:
    """A dead-letter queue in SQS (see the module docstring).

    ``client`` is a boto3 SQS client built by the upstream ``SqsHook`` (``SqsHook(...).get_conn()``).
    ``visibility_timeout``: how long a scanned message stays invisible to others while a replay holds it.
    ``tenant`` / ``pipeline``: what a redriven message (which has no BareCount envelope) belongs to.
    """

    kind = "sqs"

    def __init__(
        self,
        client: Any,
        queue_url: str,
        *,
        tenant: str = "",
        pipeline: str = "",
        visibility_timeout: int = 300,
        wait_seconds: int = 1,
        message_group_id: str | None = None,
    ) -> None:
        self.client, self.queue_url = client, queue_url
        self.tenant, self.pipeline = tenant, pipeline
        self.visibility_timeout, self.wait_seconds = visibility_timeout, wait_seconds
        self.fifo = queue_url.endswith(".fifo")
        self.message_group_id = message_group_id
        self._held: dict[str, str] = {}  # message id -> receipt handle of received, undeleted messages
        self.removed = 0

    def describe(self) -> str:
        return f"sqs:{self.queue_url}"

    def put(self, letters: Sequence[DeadLetter]) -> None:
        for batch in _batches(letters):
            entries = []
            for index, letter in enumerate(batch):
                entry: dict[str, Any] = {
                    "Id": str(index),
                    "MessageBody": letter.line().decode().rstrip("\n"),
                    "MessageAttributes": {
                        name: {"DataType": "String", "StringValue": str(getattr(letter, name)) or "-"}
                        for name in _SQS_ATTRIBUTES
                    },
                }
                if self.fifo:
                    entry["MessageGroupId"] = self.message_group_id or letter.pipeline or "barecount"
                    entry["MessageDeduplicationId"] = letter.letter_id
                entries.append(entry)
            response = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            failed = response.get("Failed") or []
            if failed:
                raise RuntimeError(f"SQS refused {len(failed)} dead letter(s): {failed[0].get('Message')}")

    def _letter(self, message: Mapping[str, Any]) -> DeadLetter:
        body = message.get("Body") or ""
        attributes = message.get("Attributes") or {}
        message_attributes = {k: v.get("StringValue") for k, v in (message.get("MessageAttributes") or {}).items()}
        handle = message["ReceiptHandle"]
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("v") == LETTER_VERSION and "idempotency_key" in data:
            letter = DeadLetter.from_dict(data, handle, len(body))
            receives = int(attributes.get("ApproximateReceiveCount") or 1)
            letter.attempts = max(letter.attempts, letter.attempts + receives - 1)
            return letter
        # a message SQS redrove here from a source queue: no envelope
        sent = attributes.get("SentTimestamp")
        sent_iso = (iso(datetime.fromtimestamp(int(sent) / 1000.0, UTC)) if sent else None) or now_iso()
        key = message_attributes.get("idempotency_key") or attributes.get("MessageDeduplicationId")
        if not key:
            key = hash_key(body)
        source_arn = attributes.get("DeadLetterQueueSourceArn", "")
        return DeadLetter(
            payload=data if data is not None else body,
            idempotency_key=str(key),
            error_class=message_attributes.get("error_class") or SQS_REDRIVE_ERROR,
            error_message=f"moved by SQS redrive{' from ' + source_arn if source_arn else ''}",
            tenant=message_attributes.get("tenant") or self.tenant,
            pipeline=message_attributes.get("pipeline") or self.pipeline,
            source={"kind": "sqs_redrive", "source_arn": source_arn, "message_id": message.get("MessageId")},
            attempts=int(attributes.get("ApproximateReceiveCount") or 1),
            first_failed_at=sent_iso,
            last_failed_at=sent_iso,
            enqueued_at=sent_iso,
            letter_id=str(message.get("MessageId") or ""),
            handle=handle,
            size=len(body),
        )

    def _receive(self, visibility_timeout: int) -> list[dict[str, Any]]:
        response = self.client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=self.wait_seconds,
            VisibilityTimeout=visibility_timeout,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return list(response.get("Messages") or [])

    def scan(self, scope: Scope) -> Iterator[DeadLetter]:
        """Receive until the queue shows nothing new. Every received message is held (invisible) until
        :meth:`settle` deletes it or :meth:`finish` makes it visible again; one that comes back (its
        visibility ended during a long scan) is not yielded twice."""
        self._held = {}
        self.removed = 0
        while True:
            messages = self._receive(self.visibility_timeout)
            fresh = []
            for message in messages:  # all held before any is yielded: a caller may stop after any
                message_id = str(message.get("MessageId"))
                if message_id not in self._held:
                    fresh.append(message)
                self._held[message_id] = message["ReceiptHandle"]
            if not fresh:
                return
            for message in fresh:
                letter = self._letter(message)
                if scope.matches(letter):
                    yield letter

    def settle(self, letters: Sequence[DeadLetter]) -> None:
        """Delete delivered messages (SQS's redrive moves a message the same way)."""
        handles = {letter.handle: letter.letter_id for letter in letters if letter.handle}
        by_handle = {handle: message_id for message_id, handle in self._held.items()}
        items = list(handles)
        for batch in _batches(items):
            entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(batch)]
            response = self.client.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            self.removed += len(response.get("Successful") or ())
        for handle in items:
            self._held.pop(by_handle.get(handle, ""), None)

    def finish(self, delivered: DeliveredKeys | None) -> int:
        held, self._held = list(self._held.values()), {}
        for batch in _batches(held):
            entries = [{"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0} for i, h in enumerate(batch)]
            try:
                self.client.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)
            except Exception:  # they become visible at the end of their timeout anyway
                log.debug("dead-letter queue: could not release held SQS messages", exc_info=True)
        removed, self.removed = self.removed, 0
        return removed

    def stats(self, scope: Scope) -> list[QueueStats]:
        """SQS's approximate depth (visible + in flight). Its API reports no age of the oldest message:
        CloudWatch's ApproximateAgeOfOldestMessage does."""
        attributes = self.client.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        ).get("Attributes", {})
        depth = int(attributes.get("ApproximateNumberOfMessages", 0)) + int(
            attributes.get("ApproximateNumberOfMessagesNotVisible", 0)
        )
        return [QueueStats(scope.tenant or self.tenant, scope.pipeline or self.pipeline, depth, None, approximate=True)]
