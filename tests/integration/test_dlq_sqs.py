"""The SQS dead-letter queue on moto in server mode (real HTTP, the upstream SqsHook), its redrive, and the
replay into an SQS FIFO target (the key as deduplication id); the S3 backend on the same server."""

from __future__ import annotations

import json

import pytest

from barecount_provider.hooks.dlq import DeadLetterQueueHook
from barecount_provider.recovery.ledger import ReplayLedger
from barecount_provider.recovery.letters import Scope
from barecount_provider.recovery.replay import Replayer, SqsTarget
from tests.integration.conftest import MOTO_CONN_ID

pytestmark = pytest.mark.integration


@pytest.fixture
def ledger(tmp_path):
    ledger = ReplayLedger(f"sqlite:///{tmp_path}/ledger.db")
    yield ledger
    ledger.dispose()


def test_sqs_dlq_send_stats_and_replay_into_a_fifo_queue_once(moto_server, ledger, tmp_path):
    sqs = moto_server.client("sqs")
    dlq_url = sqs.create_queue(QueueName="orders-dlq")["QueueUrl"]
    target_url = sqs.create_queue(QueueName="orders-in.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    hook = DeadLetterQueueHook("sqs", dlq_url, aws_conn_id=MOTO_CONN_ID, tenant="acme", pipeline="orders",
                               visibility_timeout=30, emit_metrics=False)
    keys = hook.send([{"order": i} for i in range(25)], error=ValueError("schema"))
    assert hook.stats()[0].depth == 25
    assert len(list(hook.scan(limit=5))) == 5 and hook.stats()[0].depth == 25  # a listing removes nothing

    replayer = Replayer(hook.backend, SqsTarget(target_url, aws_conn_id=MOTO_CONN_ID), ledger, batch_size=10)
    assert replayer.plan().records == 25
    outcome = replayer.run()
    assert (outcome.status, outcome.delivered, outcome.removed_from_queue) == ("complete", 25, 25)
    assert hook.stats()[0].depth == 0  # moved, as SQS's redrive moves

    received = []
    while True:
        messages = sqs.receive_message(QueueUrl=target_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"],
                                       AttributeNames=["All"]).get("Messages") or []
        if not messages:
            break
        for message in messages:
            received.append(message)
            sqs.delete_message(QueueUrl=target_url, ReceiptHandle=message["ReceiptHandle"])
    assert sorted(json.loads(m["Body"])["idempotency_key"] for m in received) == sorted(keys)
    assert all(m["MessageAttributes"]["idempotency_key"]["StringValue"] == json.loads(m["Body"])["idempotency_key"]
               for m in received)
    assert all(m["Attributes"]["MessageDeduplicationId"] for m in received)


def test_messages_sqs_redrove_are_replayed_with_their_receive_count(moto_server, ledger):
    sqs = moto_server.client("sqs")
    dlq_url = sqs.create_queue(QueueName="payments-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    source_url = sqs.create_queue(
        QueueName="payments",
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"})},
    )["QueueUrl"]
    sqs.send_message(QueueUrl=source_url, MessageBody=json.dumps({"payment": 1}))
    for _ in range(3):  # a consumer that keeps failing: received, never deleted
        sqs.receive_message(QueueUrl=source_url, VisibilityTimeout=0)
    hook = DeadLetterQueueHook("sqs", dlq_url, aws_conn_id=MOTO_CONN_ID, tenant="acme", pipeline="payments",
                               visibility_timeout=30, emit_metrics=False)
    (letter,) = list(hook.scan())
    assert letter.payload == {"payment": 1} and letter.error_class == "sqs.MaxReceiveCountExceeded"
    assert letter.idempotency_key.startswith("sha256:") and letter.pipeline == "payments"
    got = []
    outcome = Replayer(hook.backend, _callable(got), ledger).run()
    assert outcome.delivered == 1 and got == [({"payment": 1}, letter.idempotency_key)]
    assert hook.stats()[0].depth == 0


def _callable(got):
    from barecount_provider.recovery.replay import CallableTarget

    return CallableTarget(lambda payload, key: got.append((payload, key)))


def test_s3_dlq_json_lines_batches_replay_and_removal(moto_server, ledger):
    moto_server.client("s3").create_bucket(Bucket="barecount-dlq")
    hook = DeadLetterQueueHook("s3", "s3://barecount-dlq/dlq", aws_conn_id=MOTO_CONN_ID, tenant="acme",
                               pipeline="orders", emit_metrics=False)
    hook.send([{"n": i} for i in range(7)], error="bad")
    hook.send([{"n": i} for i in range(7, 10)], error="bad")
    listed = moto_server.client("s3").list_objects_v2(Bucket="barecount-dlq", Prefix="dlq/acme/orders/")["Contents"]
    assert len(listed) == 2  # one JSON-lines object per batch sent
    assert hook.stats()[0].depth == 10
    got = []
    outcome = Replayer(hook.backend, _callable(got), ledger, scope=Scope.of(pipeline="orders"), batch_size=4).run()
    assert outcome.delivered == 10 and sorted(p["n"] for p, _ in got) == list(range(10))
    assert sum(s.depth for s in hook.stats()) == 0


def test_replay_into_a_lambda_function_on_moto_delivers_each_record_once(moto_server, ledger, tmp_path):
    """The Lambda target through the upstream LambdaHook against moto (its function echoes the event):
    every record is invoked once with its idempotency key in the event; a second replay invokes nothing."""
    import io
    import zipfile

    from barecount_provider.recovery.replay import LambdaTarget

    iam = moto_server.client("iam")
    role = iam.create_role(
        RoleName="barecount-replay-target",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )["Role"]["Arn"]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("app.py", "def handler(event, context):\n    return event\n")
    moto_server.client("lambda").create_function(
        FunctionName="orders-reload", Runtime="python3.11", Role=role, Handler="app.handler",
        Code={"ZipFile": archive.getvalue()},
    )
    hook = DeadLetterQueueHook("local", str(tmp_path / "dlq"), tenant="acme", pipeline="orders", emit_metrics=False)
    keys = hook.send([{"order": i} for i in range(6)], error=ValueError("amount missing"))
    moto_server.start_recording()
    outcome = Replayer(hook.backend, LambdaTarget("orders-reload", aws_conn_id=MOTO_CONN_ID), ledger, batch_size=4).run()
    assert (outcome.status, outcome.delivered) == ("complete", 6)
    import base64

    invocations = [
        json.loads(base64.b64decode(r["body"]) if r.get("body_encoded") else r["body"])
        for r in moto_server.recorded_requests()
        if "/functions/orders-reload/invocations" in r["url"] and r["method"] == "POST"
    ]
    assert sorted(event["idempotency_key"] for event in invocations) == sorted(keys)
    hook.send([{"order": i} for i in range(6)], error=ValueError("amount missing"))  # the same records again
    again = Replayer(hook.backend, LambdaTarget("orders-reload", aws_conn_id=MOTO_CONN_ID), ledger, batch_size=4).run()
    assert again.delivered == 0  # already delivered: skipped by the ledger
