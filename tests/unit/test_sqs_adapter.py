"""gpufleet.adapters.sqs: boto3 against a real local SQS (moto server on loopback; never real AWS).

Messages are the simulator's (fleetsim.cloud.CloudEvents: the EventBridge shapes
AWS documents), received and deleted through the adapter and parsed by
gpufleet.planning.capacity_signals, as the handler loop will.
"""

from __future__ import annotations

import inspect
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from fleetsim.cloud import CloudEvents, MotoServer, client, require_loopback
from gpufleet.adapters.sqs import (
    MAX_WAIT_SECONDS,
    InterruptionQueue,
    QueueMessage,
    parse_queue_url,
    resolve_region,
)
from gpufleet.planning.capacity_signals import Rejected, parse_message

REGION = "us-east-1"
WHEN = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)


@pytest.fixture
def cloud(moto: MotoServer, request: pytest.FixtureRequest) -> CloudEvents:
    # A queue per test, so each test sees only its own messages.
    return CloudEvents(moto.endpoint_url, REGION, queue_name=f"q-{request.node.name[:60]}")


@pytest.fixture
def queue(cloud: CloudEvents) -> InterruptionQueue:
    # The adapter builds its own client (the default credential chain), pointed at moto only.
    return InterruptionQueue(
        cloud.queue_url, region=REGION, endpoint_url=require_loopback(cloud.endpoint_url)
    )


def counts(cloud: CloudEvents) -> tuple[int, int]:
    """(visible, in flight) as SQS reports them."""
    attributes = client("sqs", cloud.endpoint_url, REGION).get_queue_attributes(
        QueueUrl=cloud.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


# --- against moto ---------------------------------------------------------------------------------


def test_receive_parse_delete_leaves_the_queue_empty(cloud: CloudEvents, queue: InterruptionQueue) -> None:
    cloud.rebalance_recommendation("i-0aaaaaaaaaaaaaaa1", "us-east-1a", WHEN)
    cloud.spot_interruption_warning("i-0aaaaaaaaaaaaaaa1", "us-east-1a", WHEN, action="terminate")
    cloud.state_change("i-0aaaaaaaaaaaaaaa1", "shutting-down", WHEN)
    cloud.state_change("i-0aaaaaaaaaaaaaaa1", "running", WHEN)

    messages = queue.receive()  # Karpenter's parameters; returns at once: messages are waiting
    assert len(messages) == 4
    assert all(isinstance(m, QueueMessage) and m.message_id and m.receipt_handle for m in messages)
    assert counts(cloud) == (0, 4)  # received = in flight until deleted

    kinds: list[str] = []
    for message in messages:
        result = parse_message(message.body, now=WHEN, region=queue.region, account=queue.account)
        if isinstance(result, Rejected):
            assert result.outcome == "ignored"  # the "running" state change
            kinds.append(result.outcome)
        else:
            assert [s.instance_id for s in result] == ["i-0aaaaaaaaaaaaaaa1"]
            kinds.extend(s.kind for s in result)
        assert queue.delete_batch([message.receipt_handle]) == []
    assert sorted(kinds) == ["ignored", "interruption", "rebalance", "stopping"]

    assert queue.receive(wait_seconds=0) == []
    assert counts(cloud) == (0, 0)


def test_interruption_deadline_from_the_simulated_event(cloud: CloudEvents, queue: InterruptionQueue) -> None:
    cloud.spot_interruption_warning("i-0bbbbbbbbbbbbbbb2", "us-east-1b", WHEN, action="stop")
    (message,) = queue.receive(wait_seconds=1)
    result = parse_message(message.body, now=WHEN, region=queue.region, account=queue.account)
    assert not isinstance(result, Rejected)
    (signal,) = result
    assert signal.event_time == WHEN
    assert (signal.deadline - signal.event_time).total_seconds() == 120  # type: ignore[operator]
    assert signal.detail == "EC2 Spot Instance Interruption Warning for i-0bbbbbbbbbbbbbbb2 (stop)"


def test_foreign_region_seen_through_the_queue(cloud: CloudEvents, queue: InterruptionQueue) -> None:
    event = cloud.spot_interruption_warning("i-0ccccccccccccccc3", "us-east-1a", WHEN)
    (ours,) = queue.receive(wait_seconds=1)
    assert not isinstance(
        parse_message(ours.body, now=WHEN, region=queue.region, account=queue.account), Rejected
    )
    assert queue.delete_batch([ours.receipt_handle]) == []
    # The same event from another region's EventBridge rule, delivered to this queue.
    cloud.sqs.send_message(QueueUrl=cloud.queue_url, MessageBody=json.dumps({**event, "region": "eu-west-1"}))
    (theirs,) = queue.receive(wait_seconds=1)
    result = parse_message(theirs.body, now=WHEN, region=queue.region, account=queue.account)
    assert result == Rejected("foreign", "event for region 'eu-west-1', this queue serves 'us-east-1'")


def test_received_message_stays_invisible_for_the_visibility_timeout(
    cloud: CloudEvents, queue: InterruptionQueue
) -> None:
    cloud.rebalance_recommendation("i-0ddddddddddddddd4", "us-east-1a", WHEN)
    (first,) = queue.receive(wait_seconds=1, visibility_timeout=20)
    assert queue.receive(wait_seconds=0) == []  # not deleted, but invisible: a crash would redeliver it
    assert counts(cloud) == (0, 1)
    assert queue.delete_batch([first.receipt_handle]) == []
    assert counts(cloud) == (0, 0)


def test_visibility_timeout_zero_redelivers_at_once(cloud: CloudEvents, queue: InterruptionQueue) -> None:
    cloud.rebalance_recommendation("i-0eeeeeeeeeeeeeee5", "us-east-1a", WHEN)
    (first,) = queue.receive(wait_seconds=1, visibility_timeout=0)
    (again,) = queue.receive(wait_seconds=1, visibility_timeout=20)
    assert again.message_id == first.message_id
    assert again.body == first.body
    assert queue.delete_batch([again.receipt_handle]) == []
    assert counts(cloud) == (0, 0)


def test_max_messages_limits_one_receive(cloud: CloudEvents, queue: InterruptionQueue) -> None:
    for n in range(3):
        cloud.rebalance_recommendation(f"i-0fffffffffffffff{n}", "us-east-1a", WHEN)
    assert len(queue.receive(wait_seconds=0, max_messages=2)) == 2
    assert len(queue.receive(wait_seconds=0, max_messages=10)) == 1


def test_missing_queue_raises_botocore_error(moto: MotoServer) -> None:
    missing = InterruptionQueue(f"{moto.endpoint_url}/123456789012/no-such-queue", REGION, moto.endpoint_url)
    with pytest.raises(ClientError) as raised:
        missing.receive(wait_seconds=0)
    assert "NonExistentQueue" in str(raised.value) or "QueueDoesNotExist" in str(raised.value)


def test_account_and_region_from_a_moto_url(cloud: CloudEvents, queue: InterruptionQueue) -> None:
    assert cloud.queue_url.startswith("http://127.0.0.1:")
    assert queue.account == "123456789012"  # moto's account, the URL's first path segment
    assert queue.region == REGION


# --- construction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "region", "account"),
    [
        ("https://sqs.us-east-2.amazonaws.com/123456789012/Karpenter-cluster", "us-east-2", "123456789012"),
        ("https://sqs-fips.us-gov-west-1.amazonaws.com/123456789012/q", "us-gov-west-1", "123456789012"),
        ("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q", "cn-north-1", "123456789012"),
        ("https://eu-west-1.queue.amazonaws.com/123456789012/q", "eu-west-1", "123456789012"),
        ("https://SQS.AP-SOUTHEAST-2.AMAZONAWS.COM/123456789012/q", "ap-southeast-2", "123456789012"),
        ("http://127.0.0.1:5000/123456789012/q", None, "123456789012"),
        ("http://localhost:4566/000000000000/q", None, "000000000000"),
        ("https://sqs.us-east-1.amazonaws.com/q", "us-east-1", None),
        ("https://sqs.us-east-1.amazonaws.com/12345/q", "us-east-1", None),
        ("https://sqs.us-east-1.amazonaws.com.evil.example/123456789012/q", None, "123456789012"),
        ("not a url", None, None),
    ],
)
def test_parse_queue_url(url: str, region: str | None, account: str | None) -> None:
    assert parse_queue_url(url) == (region, account)


STANDARD = "https://sqs.us-east-2.amazonaws.com/123456789012/gpufleet"
LOCAL = "http://127.0.0.1:5000/123456789012/gpufleet"
FAKE = object()  # a client that must not be called


def test_region_from_the_url(aws_env: None) -> None:
    queue = InterruptionQueue(STANDARD, client=FAKE)
    assert (queue.region, queue.account) == ("us-east-2", "123456789012")


def test_explicit_region_matching_the_url(aws_env: None) -> None:
    assert InterruptionQueue(STANDARD, region="us-east-2", client=FAKE).region == "us-east-2"


def test_explicit_region_contradicting_the_url(aws_env: None) -> None:
    with pytest.raises(ValueError, match=r"GPUFLEET_AWS_REGION is 'eu-west-1' but .* is in 'us-east-2'"):
        InterruptionQueue(STANDARD, region="eu-west-1", client=FAKE)


def test_region_from_the_environment(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    assert InterruptionQueue(LOCAL, client=FAKE).region == "eu-central-1"
    monkeypatch.setenv("AWS_REGION", "eu-north-1")  # boto3's order: AWS_REGION first
    assert InterruptionQueue(LOCAL, client=FAKE).region == "eu-north-1"
    assert InterruptionQueue(STANDARD, client=FAKE).region == "us-east-2"  # the URL wins over the environment


def test_no_region_at_all_names_the_setting(aws_env: None) -> None:
    with pytest.raises(ValueError, match="GPUFLEET_AWS_REGION") as raised:
        InterruptionQueue(LOCAL)
    assert LOCAL in str(raised.value)


def test_resolved_region_order_explicit_url_then_environment(
    aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_region(None, None) is None
    assert resolve_region(None, LOCAL) is None  # a local URL names no region
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    assert resolve_region(None, None) == "eu-central-1"
    monkeypatch.setenv("AWS_REGION", "eu-north-1")
    assert resolve_region(None, LOCAL) == "eu-north-1"
    assert resolve_region(None, STANDARD) == "us-east-2"
    assert resolve_region("ap-south-1", STANDARD) == "ap-south-1"
    assert resolve_region("", "") == "eu-north-1"  # empty settings are unset (chart values default to "")


def test_price_refresh_without_a_region_is_refused_at_start(aws_env: None) -> None:
    import threading

    from gpufleet.config import Settings
    from gpufleet.runtime.composition_root import price_refresher

    config = Settings(spot_price_refresh_seconds=300, interruption_queue_url=LOCAL)
    with pytest.raises(
        ValueError, match=r"no AWS region .* set GPUFLEET_AWS_REGION \(chart value spot.awsRegion\)"
    ):
        price_refresher(config, None, None, threading.Event())  # type: ignore[arg-type]


def test_empty_url(aws_env: None) -> None:
    with pytest.raises(ValueError, match="GPUFLEET_INTERRUPTION_QUEUE_URL"):
        InterruptionQueue("", region=REGION, client=FAKE)


def test_own_client_region_endpoint_and_timeouts(aws_env: None) -> None:
    queue = InterruptionQueue(LOCAL, region="eu-west-3", endpoint_url="http://127.0.0.1:5000")
    meta = queue._client.meta
    assert meta.region_name == "eu-west-3"
    assert meta.endpoint_url == "http://127.0.0.1:5000"
    assert meta.config.read_timeout > MAX_WAIT_SECONDS  # a 20 s long poll must not time out
    assert meta.config.connect_timeout <= 10
    assert meta.config.retries["total_max_attempts"] == 3  # the first try and two retries, then the caller


def test_no_key_arguments() -> None:
    parameters = set(inspect.signature(InterruptionQueue).parameters)
    assert parameters == {"queue_url", "region", "endpoint_url", "client"}


# --- parameters (recorded, without a server) ---------------------------------------------------------


class Recorder:
    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("receive_message", kwargs))
        return {"Messages": self.messages} if self.messages else {}

    def delete_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("delete_message_batch", kwargs))
        return {"Failed": [{"Id": "1", "SenderFault": True, "Code": "ReceiptHandleIsInvalid"}]}


def test_defaults_are_karpenters_long_poll() -> None:
    recorder = Recorder(
        [{"MessageId": "m1", "ReceiptHandle": "r1", "Body": "{}"}, {"MessageId": "m2", "Body": "x"}]
    )
    queue = InterruptionQueue(STANDARD, client=recorder)
    assert queue.receive() == [QueueMessage("m1", "r1", "{}")]  # m2 has no receipt handle: undeletable
    # The second handle is refused: the caller gets it back (the message will come back from SQS).
    assert queue.delete_batch(["r1", "stale"]) == ["stale"]
    assert recorder.calls == [
        (
            "receive_message",
            {"QueueUrl": STANDARD, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 20, "VisibilityTimeout": 20},
        ),
        (
            "delete_message_batch",
            {
                "QueueUrl": STANDARD,
                "Entries": [{"Id": "0", "ReceiptHandle": "r1"}, {"Id": "1", "ReceiptHandle": "stale"}],
            },
        ),
    ]


def test_empty_answer() -> None:
    assert InterruptionQueue(STANDARD, client=Recorder([])).receive() == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"wait_seconds": 21},
        {"wait_seconds": -1},
        {"max_messages": 0},
        {"max_messages": 11},
        {"visibility_timeout": -1},
        {"visibility_timeout": 43201},
    ],
)
def test_out_of_range_parameters(kwargs: dict[str, int]) -> None:
    recorder = Recorder([])
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        InterruptionQueue(STANDARD, client=recorder).receive(**kwargs)
    assert recorder.calls == []
