"""gpufleet.planning.capacity_signals: EventBridge messages and Node objects → capacity signals.

The messages are the AWS documentation's examples (EC2 user guide: spot
interruption warning, rebalance recommendation, state-change; AWS Health user
guide, aws-health-events-eventbridge-schema: its samples verbatim in shape) and
aws-node-termination-handler's Health example; the simulator's own messages
are checked against the parser in test_sqs_adapter.py.
"""

from __future__ import annotations

import copy
import json
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from gpufleet.planning.capacity_signals import (
    HANDLED,
    SPOT_NOTICE,
    CapacitySignal,
    Rejected,
    node_signals,
    parse_message,
    parse_time,
    provider_instance,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
T = datetime(2026, 3, 1, 11, 59, 30, tzinfo=UTC)  # the events' "time"
TIME = "2026-03-01T11:59:30Z"
ID = "i-1234567890abcdef0"


def spot_warning(action: str | None = "terminate", **top: Any) -> dict[str, Any]:
    # EC2 user guide, "EC2 Spot Instance Interruption Warning" example (zone in the ARN, no account).
    detail: dict[str, Any] = {"instance-id": ID}
    if action is not None:
        detail["instance-action"] = action
    return {
        "version": "0",
        "id": "12345678-1234-1234-1234-123456789012",
        "detail-type": "EC2 Spot Instance Interruption Warning",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": TIME,
        "region": "us-east-2",
        "resources": [f"arn:aws:ec2:us-east-2a:instance/{ID}"],
        "detail": detail,
        **top,
    }


def rebalance() -> dict[str, Any]:
    # EC2 user guide, "EC2 Instance Rebalance Recommendation" example (region + account in the ARN).
    return {
        "version": "0",
        "id": "12345678-1234-1234-1234-123456789012",
        "detail-type": "EC2 Instance Rebalance Recommendation",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": TIME,
        "region": "us-east-2",
        "resources": [f"arn:aws:ec2:us-east-2:123456789012:instance/{ID}"],
        "detail": {"instance-id": ID},
    }


def state_change(state: Any) -> dict[str, Any]:
    # EC2 user guide, monitoring-instance-state-changes example (no "version" key in it).
    return {
        "id": "7bf73129-1428-4cd3-a780-95db273d1602",
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": TIME,
        "region": "us-east-1",
        "resources": [f"arn:aws:ec2:us-east-1:123456789012:instance/{ID}"],
        "detail": {"instance-id": ID, "state": state},
    }


def health_retirement() -> dict[str, Any]:
    # AWS Health user guide sample "Amazon EC2 Instance Retirement": no "resources", the entity is an
    # ARN, startTime in RFC 1123 (its weekday "Thu" is right for 27 Aug 2026; lastUpdatedTime's is not).
    return {
        "version": "0",
        "id": "7bf73129-1428-4cd3-a780-95db273d1602",
        "detail-type": "AWS Health Event",
        "source": "aws.health",
        "account": "123456789012",
        "time": "2026-01-27T01:43:21Z",
        "region": "us-east-1",
        "detail": {
            "eventArn": (
                "arn:aws:health:us-east-1::event/AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED_90353408594353983"
            ),
            "service": "EC2",
            "eventTypeCode": "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED",
            "eventTypeCategory": "scheduledChange",
            "eventScopeCode": "ACCOUNT_SPECIFIC",
            "communicationId": "1234abc01232a4012345678-1",
            "startTime": "Thu, 27 Aug 2026 13:19:03 GMT",
            "lastUpdatedTime": "Thu, 27 Jan 2026 13:44:13 GMT",
            "statusCode": "open",
            "eventRegion": "us-east-1",
            "eventDescription": [{"language": "en_US", "latestDescription": "A description"}],
            "eventMetadata": {"keystring1": "valuestring1", "truncated": "true"},
            "affectedEntities": [
                {
                    "entityValue": "arn:aws:ec2:us-east-1:123456789012:instance/i-1234567890abcdef0",
                    "lastUpdatedTime": "Thu, 26 Jan 2026 19:01:55 GMT",
                    "status": "PENDING",
                }
            ],
            "affectedAccount": "123456789012",
            "page": "1",
            "totalPages": "1",
            "backupEvent": "false",
            "personas": ["OPERATIONS"],
            "actionability": "ACTION_REQUIRED",
        },
    }


def health_nth(*entities: str) -> dict[str, Any]:
    # aws-node-termination-handler pkg/monitor/sqsevent/scheduled-change-event.go example.
    return {
        "version": "0",
        "id": "7fb65329-1628-4cf3-a740-95fg457h1402",
        "detail-type": "AWS Health Event",
        "source": "aws.health",
        "account": "123456789012",
        "time": "2016-06-05T06:27:57Z",
        "region": "us-east-1",
        "resources": list(entities),
        "detail": {
            "eventArn": "arn:aws:health:region::event/id",
            "service": "EC2",
            "eventTypeCode": "AWS_EC2_DEDICATED_HOST_NETWORK_MAINTENANCE_SCHEDULED",
            "eventTypeCategory": "scheduledChange",
            "startTime": "Sat, 05 Jun 2016 15:10:09 GMT",
            "eventDescription": [{"language": "en_US", "latestDescription": "A description"}],
            "affectedEntities": [{"entityValue": e, "tags": {"stage": "prod"}} for e in entities],
        },
    }


def health_issue() -> dict[str, Any]:
    # AWS Health user guide sample "Amazon EC2 operational issue" (public, category issue).
    return {
        "version": "0",
        "id": "7bf73129-1428-4cd3-a780-95db273d1602",
        "detail-type": "AWS Health Event",
        "source": "aws.health",
        "account": "123456789012",
        "time": "2023-01-27T09:01:22Z",
        "region": "af-south-1",
        "resources": [],
        "detail": {
            "service": "EC2",
            "eventTypeCode": "AWS_EC2_OPERATIONAL_ISSUE",
            "eventTypeCategory": "issue",
            "startTime": "Fri, 27 Jan 2023 06:02:51 GMT",
            "eventRegion": "af-south-1",
            "affectedEntities": [],
        },
    }


def parse(event: Any, **kwargs: Any) -> list[CapacitySignal] | Rejected:
    return parse_message(event if isinstance(event, str) else json.dumps(event), now=NOW, **kwargs)


def with_detail(event: dict[str, Any], **changes: Any) -> dict[str, Any]:
    event = copy.deepcopy(event)
    for name, value in changes.items():
        key = name.replace("_", "-") if name in ("instance_id", "instance_action") else name
        if value is _DROP:
            event["detail"].pop(key, None)
        else:
            event["detail"][key] = value
    return event


def with_top(event: dict[str, Any], **changes: Any) -> dict[str, Any]:
    event = copy.deepcopy(event)
    for name, value in changes.items():
        key = name.replace("_", "-")
        if value is _DROP:
            event.pop(key, None)
        else:
            event[key] = value
    return event


_DROP = object()


# --- signals from messages -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "kind", "deadline", "detail_has"),
    [
        pytest.param(
            spot_warning("terminate"), "interruption", T + SPOT_NOTICE, "(terminate)", id="warning-terminate"
        ),
        pytest.param(spot_warning("stop"), "interruption", T + SPOT_NOTICE, "(stop)", id="warning-stop"),
        pytest.param(
            spot_warning("hibernate"), "interruption", T, "(hibernate)", id="warning-hibernate-no-lead"
        ),
        pytest.param(
            spot_warning(None), "interruption", T + SPOT_NOTICE, "action not given", id="warning-no-action"
        ),
        pytest.param(rebalance(), "rebalance", None, "Rebalance", id="rebalance"),
        pytest.param(state_change("stopping"), "stopping", T, "stopping", id="state-stopping"),
        pytest.param(state_change("shutting-down"), "stopping", T, "shutting-down", id="state-shutting-down"),
        pytest.param(state_change("stopped"), "terminated", T, "stopped", id="state-stopped"),
        pytest.param(state_change("terminated"), "terminated", T, "terminated", id="state-terminated"),
        pytest.param(state_change("Terminated"), "terminated", T, "terminated", id="state-case-insensitive"),
    ],
)
def test_ec2_events(event: dict[str, Any], kind: str, deadline: datetime | None, detail_has: str) -> None:
    result = parse(event)
    assert isinstance(result, list)
    (signal,) = result
    assert (signal.kind, signal.source, signal.event_time, signal.deadline) == (kind, "sqs", T, deadline)
    assert (signal.instance_id, signal.node) == (ID, None)
    assert ID in signal.detail
    assert detail_has in signal.detail


def test_warning_detail_reads_like_an_event() -> None:
    result = parse(spot_warning())
    assert isinstance(result, list)
    assert result[0].detail == f"EC2 Spot Instance Interruption Warning for {ID} (terminate)"


def test_the_resources_arn_is_never_read() -> None:
    # A nonsense ARN changes nothing: the instance comes from detail.instance-id.
    result = parse(with_top(spot_warning(), resources=["arn:aws:ec2:zz:instance/i-ffffffffffff"]))
    assert isinstance(result, list)
    assert result[0].instance_id == ID
    assert isinstance(parse(with_top(spot_warning(), resources=_DROP)), list)


def test_event_time_normalised_to_utc_and_fraction_kept() -> None:
    result = parse(with_top(spot_warning(), time="2026-03-01T13:59:30.250+02:00"))
    assert isinstance(result, list)
    assert result[0].event_time == T + timedelta(milliseconds=250)
    assert result[0].event_time.tzinfo == UTC
    assert result[0].deadline == T + timedelta(seconds=120, milliseconds=250)


def test_event_without_time_uses_now() -> None:
    result = parse(with_top(spot_warning(), time=_DROP))
    assert isinstance(result, list)
    assert result[0].event_time == NOW
    assert result[0].deadline == NOW + timedelta(seconds=120)


def test_naive_now_is_taken_as_utc() -> None:
    result = parse_message(json.dumps(with_top(rebalance(), time=_DROP)), now=NOW.replace(tzinfo=None))
    assert isinstance(result, list)
    assert result[0].event_time == NOW


def test_health_retirement_sample_instance_by_arn() -> None:
    result = parse(health_retirement(), region="us-east-1", account="123456789012")
    assert isinstance(result, list)
    (signal,) = result
    assert signal.kind == "scheduled-change"
    assert signal.source == "sqs"
    assert signal.instance_id == ID
    assert signal.event_time == datetime(2026, 1, 27, 1, 43, 21, tzinfo=UTC)
    assert signal.deadline == datetime(2026, 8, 27, 13, 19, 3, tzinfo=UTC)
    assert "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED" in signal.detail
    assert "2026-08-27T13:19:03Z" in signal.detail


def test_health_several_instances_one_signal_each_in_order() -> None:
    event = health_nth("i-12345678", "vol-0123456789abcdef0", "i-abcd1111", "i-12345678")
    result = parse(event)
    assert isinstance(result, list)
    assert [s.instance_id for s in result] == ["i-12345678", "i-abcd1111"]  # volume skipped, duplicate once
    deadline = datetime(2016, 6, 5, 15, 10, 9, tzinfo=UTC)
    assert all(s.kind == "scheduled-change" and s.deadline == deadline for s in result)
    assert all(s.event_time == datetime(2016, 6, 5, 6, 27, 57, tzinfo=UTC) for s in result)


@pytest.mark.parametrize(
    ("start", "deadline"),
    [
        ("Sat, 05 Jun 2016 15:10:09 GMT", datetime(2016, 6, 5, 15, 10, 9, tzinfo=UTC)),
        ("Fri, 3 Jun 2022 05:01:10 GMT", datetime(2022, 6, 3, 5, 1, 10, tzinfo=UTC)),  # one-digit day
        ("Mon, 05 Jun 2016 15:10:09 GMT", datetime(2016, 6, 5, 15, 10, 9, tzinfo=UTC)),  # wrong weekday
        ("05 Jun 2016 15:10:09 +0200", datetime(2016, 6, 5, 13, 10, 9, tzinfo=UTC)),
        ("2016-06-05T15:10:09Z", datetime(2016, 6, 5, 15, 10, 9, tzinfo=UTC)),
        ("2016-06-05T15:10:09", datetime(2016, 6, 5, 15, 10, 9, tzinfo=UTC)),  # naive: UTC
        (_DROP, None),
        (None, None),
    ],
)
def test_health_start_time_formats(start: Any, deadline: datetime | None) -> None:
    result = parse(with_detail(health_nth("i-12345678"), startTime=start))
    assert isinstance(result, list)
    assert result[0].deadline == deadline


def test_health_impacted_region_and_account_decide_foreign() -> None:
    # Delivered in us-west-2 (a backup event) about us-east-1: it concerns a us-east-1 cluster.
    event = with_top(health_retirement(), region="us-west-2")
    assert isinstance(parse(event, region="us-east-1"), list)
    rejected = parse(event, region="us-west-2")
    assert isinstance(rejected, Rejected)
    assert rejected.outcome == "foreign"
    assert "us-east-1" in rejected.reason
    # Organizational view: received by the management account, about a member account.
    event = with_top(health_retirement(), account="999999999999")
    assert isinstance(parse(event, account="123456789012"), list)
    assert parse(event, account="999999999999") == Rejected(
        "foreign", "event for account '123456789012', this queue serves '999999999999'"
    )


def test_region_and_account_match() -> None:
    assert isinstance(parse(spot_warning(), region="us-east-2", account="123456789012"), list)


# --- rejections ----------------------------------------------------------------------------------

SNS_ENVELOPE = {
    "Type": "Notification",
    "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
    "TopicArn": "arn:aws:sns:us-east-2:123456789012:interruptions",
    "Message": json.dumps(spot_warning()),
    "Timestamp": "2026-03-01T11:59:31.000Z",
}
S3_TEST_EVENT = {
    "Service": "Amazon S3",
    "Event": "s3:TestEvent",
    "Time": "2026-03-01T11:59:30.000Z",
    "Bucket": "bucket",
    "RequestId": "5582815E1AEA5ADF",
    "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
}


@pytest.mark.parametrize(
    ("body", "outcome", "reason_has"),
    [
        # malformed: not an event we can read at all
        pytest.param("", "malformed", "not JSON", id="empty"),
        pytest.param("{not json", "malformed", "not JSON", id="not-json"),
        pytest.param("[1, 2]", "malformed", "list", id="json-list"),
        pytest.param("null", "malformed", "NoneType", id="json-null"),
        pytest.param('"text"', "malformed", "str", id="json-string"),
        pytest.param("1e999", "malformed", "float", id="json-number"),
        pytest.param("[" * 100_000 + "]" * 100_000, "malformed", "", id="deep-nesting"),
        # malformed: missing or wrong-typed fields
        pytest.param(
            with_top(spot_warning(), detail_type=_DROP), "malformed", "detail-type", id="no-detail-type"
        ),
        pytest.param(with_top(spot_warning(), source=_DROP), "malformed", "source", id="no-source"),
        pytest.param(with_top(spot_warning(), source=3), "malformed", "'source' is int", id="source-int"),
        pytest.param(with_top(spot_warning(), detail=_DROP), "malformed", "'detail'", id="no-detail"),
        pytest.param(with_top(spot_warning(), detail="x"), "malformed", "'detail' is str", id="detail-str"),
        pytest.param(
            with_top(spot_warning(), region=["us-east-2"]), "malformed", "'region'", id="region-list"
        ),
        pytest.param(
            with_top(spot_warning(), account=123456789012), "malformed", "'account'", id="account-int"
        ),
        pytest.param(with_top(spot_warning(), time="yesterday"), "malformed", "'time'", id="time-text"),
        pytest.param(with_top(spot_warning(), time=1700000000), "malformed", "'time'", id="time-epoch"),
        pytest.param(
            with_top(spot_warning(), time="2026-02-30T00:00:00Z"), "malformed", "'time'", id="time-feb-30"
        ),
        pytest.param(
            with_detail(spot_warning(), instance_id=_DROP), "malformed", "instance-id", id="no-instance"
        ),
        pytest.param(with_detail(spot_warning(), instance_id=42), "malformed", "is int", id="instance-int"),
        pytest.param(
            with_detail(spot_warning(), instance_id=[ID]), "malformed", "is list", id="instance-list"
        ),
        pytest.param(
            with_detail(spot_warning(), instance_id="node-1"), "malformed", "not an EC2", id="instance-name"
        ),
        pytest.param(
            with_detail(rebalance(), instance_id=""), "malformed", "not an EC2", id="instance-empty"
        ),
        pytest.param(
            with_detail(spot_warning(), instance_action=1), "malformed", "instance-action", id="action-int"
        ),
        pytest.param(state_change(None), "malformed", "detail.state", id="state-missing"),
        pytest.param(state_change(["stopped"]), "malformed", "detail.state", id="state-list"),
        pytest.param(state_change("exploded"), "malformed", "'exploded'", id="state-unknown"),
        pytest.param(
            with_detail(health_nth("i-1"), affectedEntities="i-1"),
            "malformed",
            "not a list",
            id="entities-str",
        ),
        pytest.param(
            with_detail(health_nth("i-1"), affectedEntities=["i-1"]), "malformed", "object", id="entity-str"
        ),
        pytest.param(
            with_detail(health_nth("i-1"), affectedEntities=[{"entityValue": 1}]),
            "malformed",
            "entityValue",
            id="entity-value-int",
        ),
        pytest.param(
            with_detail(health_nth("i-1"), startTime="next week"), "malformed", "startTime", id="start-text"
        ),
        pytest.param(
            with_detail(health_nth("i-1"), startTime=1465139409), "malformed", "startTime", id="start-int"
        ),
        # foreign: not EventBridge, or another region/account
        pytest.param(SNS_ENVELOPE, "foreign", "SNS", id="sns-envelope"),
        pytest.param(S3_TEST_EVENT, "foreign", "s3:TestEvent", id="s3-test-event"),
        pytest.param({"hello": "world"}, "foreign", "not an EventBridge event", id="other-json"),
        pytest.param({}, "foreign", "not an EventBridge event", id="empty-object"),
        # unknown: EventBridge, but not a capacity event we handle
        pytest.param(
            with_top(spot_warning(), detail_type="AWS API Call via CloudTrail"),
            "unknown",
            "CloudTrail",
            id="ec2-other",
        ),
        pytest.param(
            with_top(health_nth("i-1"), detail_type="AWS Health Abuse Event"),
            "unknown",
            "Abuse",
            id="health-abuse",
        ),
        pytest.param(
            with_top(
                spot_warning(),
                source="aws.autoscaling",
                detail_type="EC2 Instance-terminate Lifecycle Action",
            ),
            "unknown",
            "aws.autoscaling",
            id="asg-lifecycle",
        ),
        # ignored: handled, but nothing happens to capacity
        pytest.param(state_change("pending"), "ignored", "pending", id="state-pending"),
        pytest.param(state_change("running"), "ignored", "running", id="state-running"),
        pytest.param(health_issue(), "ignored", "issue", id="health-issue-sample"),
        pytest.param(with_detail(health_nth("i-1"), service="RDS"), "ignored", "RDS", id="health-not-ec2"),
        pytest.param(
            health_nth("vol-0123456789abcdef0"), "ignored", "no EC2 instance", id="health-no-instance"
        ),
        pytest.param(
            with_detail(health_nth(), affectedEntities=_DROP), "ignored", "no EC2", id="health-no-entities"
        ),
    ],
)
def test_rejected(body: Any, outcome: str, reason_has: str) -> None:
    result = parse(body)
    assert isinstance(result, Rejected), result
    assert result.outcome == outcome, result
    assert reason_has in result.reason


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"region": "us-east-1"}, "event for region 'us-east-2', this queue serves 'us-east-1'"),
        ({"account": "111111111111"}, "event for account '123456789012', this queue serves '111111111111'"),
    ],
)
def test_foreign_region_or_account(kwargs: dict[str, str], reason: str) -> None:
    assert parse(spot_warning(), **kwargs) == Rejected("foreign", reason)


def test_event_without_region_or_account_is_not_foreign() -> None:
    # Nothing to compare against (hand-written test messages omit them): accepted.
    event = with_top(spot_warning(), region=_DROP, account=_DROP)
    assert isinstance(parse(event, region="us-east-1", account="1"), list)


def test_time_at_the_end_of_time_is_malformed_not_an_overflow() -> None:
    result = parse(with_top(spot_warning(), time="9999-12-31T23:59:59Z"))
    assert isinstance(result, Rejected)
    assert result.outcome == "malformed"
    assert "out of range" in result.reason


def test_non_string_body_is_malformed() -> None:
    result = parse_message(b"{}", now=NOW)  # type: ignore[arg-type]
    assert result == Rejected("malformed", "body is bytes, not str")


# --- fuzz ----------------------------------------------------------------------------------------


def _junk(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(9 if depth < 3 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 2**70, 1.5, float("nan"), float("inf")])
    if choice == 3:
        return rng.choice(
            ["", "i-", "i-0abc", "terminate", "hibernate", "Sat, 05 Jun 2016", "9999-12-31T23:59:59Z"]
        )
    if choice == 4:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(12)))
    if choice == 5:
        return rng.choice(
            ["EC2", "scheduledChange", "aws.ec2", "aws.health", "stopped", "0001-01-01T00:00:00Z"]
        )
    if choice == 6:
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["instance-id", "state", "entityValue", "affectedEntities", "startTime", "service", "x"]
    return {rng.choice(keys): _junk(rng, depth + 1) for _ in range(rng.randrange(4))}


def _mutate(rng: random.Random, event: Any) -> Any:
    """Replace or drop one value somewhere in a valid event."""
    event = copy.deepcopy(event)
    node = event
    while isinstance(node, (dict, list)) and node and rng.random() < 0.6:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        if not isinstance(node[key], (dict, list)) or not node[key]:
            break
        node = node[key]
    if isinstance(node, dict) and node:
        key = rng.choice(list(node))
        if rng.random() < 0.2:
            del node[key]
        else:
            node[key] = _junk(rng)
    elif isinstance(node, list) and node:
        node[rng.randrange(len(node))] = _junk(rng)
    return event


def _check(result: Any) -> None:
    assert isinstance(result, (list, Rejected))
    if isinstance(result, Rejected):
        assert result.outcome in ("ignored", "unknown", "foreign", "malformed")
        assert result.reason
        return
    assert result, "a signal list is never empty"
    for signal in result:
        assert isinstance(signal, CapacitySignal)
        assert signal.event_time.tzinfo is not None
        assert signal.deadline is None or signal.deadline.tzinfo is not None
        assert signal.instance_id is not None
        assert signal.instance_id.startswith("i-")


def test_fuzz_never_raises() -> None:
    rng = random.Random(20260301)
    valid = [
        spot_warning(),
        rebalance(),
        state_change("stopped"),
        health_retirement(),
        health_nth("i-1", "i-2"),
    ]
    for _ in range(1500):
        _check(parse_message(json.dumps(_mutate(rng, rng.choice(valid))), now=NOW, region="us-east-1"))
    for _ in range(500):
        _check(parse_message(json.dumps(_junk(rng)), now=NOW))
    for _ in range(500):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        _check(parse_message(raw.decode("utf-8", errors="surrogateescape"), now=NOW))
        _check(parse_message(raw.decode("latin-1"), now=NOW))


def test_handled_pairs_are_the_documented_four() -> None:
    assert {detail_type for _, detail_type in HANDLED} == {
        "EC2 Spot Instance Interruption Warning",
        "EC2 Instance Rebalance Recommendation",
        "EC2 Instance State-change Notification",
        "AWS Health Event",
    }


# --- times ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-02-18T19:49:35Z", datetime(2021, 2, 18, 19, 49, 35, tzinfo=UTC)),
        ("2021-02-18T21:49:35+02:00", datetime(2021, 2, 18, 19, 49, 35, tzinfo=UTC)),
        ("Thu, 18 Feb 2021 19:49:35 GMT", datetime(2021, 2, 18, 19, 49, 35, tzinfo=UTC)),
        ("  2021-02-18T19:49:35Z ", datetime(2021, 2, 18, 19, 49, 35, tzinfo=UTC)),
        ("", None),
        ("soon", None),
        ("Thu, 18 Feb", None),
        ("2021-13-01T00:00:00Z", None),
        (None, None),
        (1613677775, None),
        ("9" * 100, None),
    ],
)
def test_parse_time(text: Any, expected: datetime | None) -> None:
    parsed = parse_time(text)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo == UTC


def test_parse_time_converts_offsets() -> None:
    parsed = parse_time("2021-02-18T19:49:35-05:00")
    assert parsed == datetime(2021, 2, 19, 0, 49, 35, tzinfo=UTC)
    assert parsed.utcoffset() == timedelta(0)
    assert datetime(2021, 2, 18, 19, 49, 35, tzinfo=timezone(timedelta(hours=-5))) == parsed


# --- provider ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider_id", "expected"),
    [
        ("aws:///us-east-1a/i-0abc", ("us-east-1a", "i-0abc")),
        (f"aws:///eu-central-1c/{ID}", ("eu-central-1c", ID)),
        ("aws:///us-gov-west-1a/i-0abc", ("us-gov-west-1a", "i-0abc")),
        ("aws:///us-west-2-lax-1a/i-0abc", ("us-west-2-lax-1a", "i-0abc")),  # Local Zone
        ("gce://my-project/us-central1-a/gke-node-1", None),
        ("azure:///subscriptions/x/resourceGroups/y/providers/Microsoft.Compute/virtualMachines/z", None),
        ("aws://us-east-1a/i-0abc", None),
        ("aws:///us-east-1a/", None),
        ("aws:///i-0abc", None),
        ("aws:///us-east-1a/i-0abc/extra", None),
        ("aws:///us-east-1a/fargate-ip-10-0-0-1.ec2.internal", None),
        ("aws:///us-east-1a/node-1", None),
        ("kind://docker/kind/kind-control-plane", None),
        ("", None),
    ],
)
def test_provider_instance(provider_id: str, expected: tuple[str, str] | None) -> None:
    assert provider_instance(provider_id) == expected


def test_provider_instance_of_a_non_string_is_none() -> None:
    assert provider_instance(None) is None  # type: ignore[arg-type]


# --- node signals --------------------------------------------------------------------------------


def node(
    taints: list[dict[str, Any]] | None = None,
    ready: str | None = "True",
    since: str = "2026-03-01T11:58:00Z",
    provider_id: str = "aws:///us-east-1a/i-0abc",
) -> dict[str, Any]:
    conditions = [{"type": "MemoryPressure", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    if ready is not None:
        conditions.append(
            {"type": "Ready", "status": ready, "lastTransitionTime": since, "reason": "KubeletReady"}
        )
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "gpu-node-1", "labels": {"karpenter.sh/capacity-type": "spot"}},
        "spec": {"providerID": provider_id, "taints": taints or []},
        "status": {"conditions": conditions},
    }


ADDED = "2026-03-01T11:59:00Z"
T_ADDED = datetime(2026, 3, 1, 11, 59, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("taint", "kind", "event_time", "deadline"),
    [
        ({"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}, "disruption", NOW, None),
        (
            {"key": "karpenter.sh/disruption", "value": "disrupting", "effect": "NoSchedule"},
            "disruption",
            NOW,
            None,
        ),
        (
            {
                "key": "aws-node-termination-handler/spot-itn",
                "value": "spot-itn-1a2b",
                "effect": "NoSchedule",
            },
            "interruption",
            NOW,
            NOW + SPOT_NOTICE,
        ),
        (
            {"key": "aws-node-termination-handler/spot-itn", "effect": "NoExecute", "timeAdded": ADDED},
            "interruption",
            T_ADDED,
            T_ADDED + SPOT_NOTICE,
        ),
        (
            {"key": "aws-node-termination-handler/spot-itn", "effect": "NoSchedule", "timeAdded": "garbage"},
            "interruption",
            NOW,
            NOW + SPOT_NOTICE,
        ),
        ({"key": "aws-node-termination-handler/rebalance-recommendation"}, "rebalance", NOW, None),
        ({"key": "aws-node-termination-handler/scheduled-maintenance"}, "scheduled-change", NOW, None),
        (
            {"key": "aws-node-termination-handler/asg-lifecycle-termination", "timeAdded": ADDED},
            "stopping",
            T_ADDED,
            T_ADDED,
        ),
        (
            {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"},
            "terminated",
            NOW,
            NOW,
        ),
    ],
)
def test_node_taints(
    taint: dict[str, Any], kind: str, event_time: datetime, deadline: datetime | None
) -> None:
    signals = node_signals(node([taint]), now=NOW)
    assert signals == [
        CapacitySignal(
            kind,  # type: ignore[arg-type]
            "node",
            event_time,
            deadline,
            instance_id="i-0abc",
            node="gpu-node-1",
            detail=f"node gpu-node-1 has taint {taint['key']}",
        )
    ]


@pytest.mark.parametrize(
    "taint",
    [
        {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
        {"key": "karpenter.sh/disruption", "value": "candidate", "effect": "NoSchedule"},
        {"key": "karpenter.sh/candidate", "effect": "PreferNoSchedule"},
        {"key": "karpenter.sh/unregistered", "effect": "NoExecute"},
        {"key": "aws-node-termination-handler/spot-itn-typo"},
        {"key": 7},
        {"value": "no key"},
        "karpenter.sh/disrupted",
    ],
)
def test_unrelated_or_broken_taints_give_nothing(taint: Any) -> None:
    assert node_signals(node([taint]), now=NOW) == []


@pytest.mark.parametrize("status", ["False", "Unknown"])
def test_not_ready(status: str) -> None:
    (signal,) = node_signals(node(ready=status), now=NOW)
    assert signal.kind == "not-ready"
    assert signal.source == "node"
    assert signal.event_time == datetime(2026, 3, 1, 11, 58, 0, tzinfo=UTC)
    assert signal.deadline is None
    assert signal.node == "gpu-node-1"
    assert signal.instance_id == "i-0abc"
    assert signal.detail == f"node gpu-node-1 Ready={status} (KubeletReady)"


def test_ready_or_no_condition_gives_nothing() -> None:
    assert node_signals(node(ready="True"), now=NOW) == []
    assert node_signals(node(ready=None), now=NOW) == []


def test_not_ready_without_transition_time_uses_now() -> None:
    (signal,) = node_signals(node(ready="False", since="not a time"), now=NOW)
    assert signal.event_time == NOW


def test_taints_and_not_ready_together_in_order() -> None:
    taints = [
        {"key": "aws-node-termination-handler/rebalance-recommendation"},
        {"key": "karpenter.sh/disrupted", "effect": "NoSchedule"},
    ]
    kinds = [s.kind for s in node_signals(node(taints, ready="Unknown"), now=NOW)]
    assert kinds == ["rebalance", "disruption", "not-ready"]


def test_non_aws_node_has_no_instance_id() -> None:
    (signal,) = node_signals(
        node([{"key": "karpenter.sh/disrupted"}], provider_id="gce://p/us-central1-a/n"), now=NOW
    )
    assert signal.instance_id is None
    assert signal.node == "gpu-node-1"


@pytest.mark.parametrize(
    "broken",
    [
        {},
        {"metadata": None, "spec": None, "status": None},
        {"metadata": [], "spec": "x", "status": 3},
        {"metadata": {"name": 5}, "spec": {"taints": "karpenter.sh/disrupted", "providerID": 9}},
        {"status": {"conditions": "Ready"}},
        {"status": {"conditions": [None, "Ready", {"type": "Ready"}]}},
    ],
)
def test_broken_nodes_never_raise(broken: dict[str, Any]) -> None:
    assert node_signals(broken, now=NOW) == []


def test_nameless_node_detail_uses_the_instance() -> None:
    bare = {"spec": {"providerID": "aws:///us-east-1a/i-0abc", "taints": [{"key": "karpenter.sh/disrupted"}]}}
    (signal,) = node_signals(bare, now=NOW)
    assert signal.node is None
    assert signal.detail == "node i-0abc has taint karpenter.sh/disrupted"


def test_time_added_at_the_end_of_time_does_not_overflow() -> None:
    taint = {"key": "aws-node-termination-handler/spot-itn", "timeAdded": "9999-12-31T23:59:59Z"}
    (signal,) = node_signals(node([taint]), now=NOW)
    assert signal.deadline == signal.event_time
