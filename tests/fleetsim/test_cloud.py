"""fleetsim.cloud against a real local moto server (loopback only; never real AWS)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from fleetsim.clock import SimClock
from fleetsim.cloud import (
    CloudEvents,
    MotoServer,
    client,
    interruption_timeline,
    require_loopback,
)
from fleetsim.pools import Pool

WHEN = datetime(2026, 3, 1, 12, 0, 5, 250000, tzinfo=UTC)
SPOT = Pool(
    name="a100-1b-spot",
    instance_type="p4de.24xlarge",
    zone="us-east-1b",
    capacity_type="spot",
    count=1,
    max_count=4,
)
ON_DEMAND = SPOT.model_copy(update={"name": "a100-1a-od", "zone": "us-east-1a", "capacity_type": "on-demand"})


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with MotoServer(log=log) as server:
        yield server


@pytest.fixture
def cloud(moto: MotoServer, request: pytest.FixtureRequest) -> CloudEvents:
    # A queue per test, so each test reads only its own events.
    return CloudEvents(moto.endpoint_url, "us-east-1", queue_name=f"q-{request.node.name[:60]}")


def receive(cloud: CloudEvents) -> list[dict[str, Any]]:
    """Read the queue as a consumer would (Karpenter: long poll, up to 10 messages)."""
    sqs = client("sqs", cloud.endpoint_url, "us-east-1")
    messages = sqs.receive_message(QueueUrl=cloud.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    return [json.loads(m["Body"]) for m in messages.get("Messages", [])]


def test_server_is_on_loopback_with_a_log(moto: MotoServer) -> None:
    assert moto.endpoint_url.startswith("http://127.0.0.1:")
    assert moto.log_path is not None
    assert moto.log_path.exists()


def test_queue_created(cloud: CloudEvents) -> None:
    url = cloud.create_queue()
    assert url.startswith(cloud.endpoint_url)
    assert url.endswith("/q-test_queue_created")
    assert cloud.create_queue() == url  # idempotent


def test_launch_describe_terminate(cloud: CloudEvents) -> None:
    spot_id = cloud.launch_instance(SPOT, node_name="a100-1b-spot-1")
    od_id = cloud.launch_instance(ON_DEMAND)
    assert spot_id.startswith("i-")
    assert spot_id != od_id
    spot = cloud.describe_instance(spot_id)
    assert spot["InstanceType"] == "p4de.24xlarge"
    assert spot["Placement"]["AvailabilityZone"] == "us-east-1b"
    assert spot["InstanceLifecycle"] == "spot"
    assert {"Key": "Name", "Value": "a100-1b-spot-1"} in spot["Tags"]
    assert "InstanceLifecycle" not in cloud.describe_instance(od_id)
    assert cloud.terminate_instance(spot_id) in {"shutting-down", "terminated"}
    assert cloud.describe_instance(spot_id)["State"]["Name"] in {"shutting-down", "terminated"}


def test_spot_interruption_warning_exact_json(cloud: CloudEvents) -> None:
    instance_id = cloud.launch_instance(SPOT)
    sent = cloud.spot_interruption_warning(instance_id, "us-east-1b", WHEN)
    (body,) = receive(cloud)
    assert body == sent
    assert set(body) == {
        "version",
        "id",
        "detail-type",
        "source",
        "account",
        "time",
        "region",
        "resources",
        "detail",
    }
    assert body["version"] == "0"
    assert body["detail-type"] == "EC2 Spot Instance Interruption Warning"
    assert body["source"] == "aws.ec2"
    assert body["account"] == "123456789012"
    assert body["time"] == "2026-03-01T12:00:05Z"
    assert body["region"] == "us-east-1"
    # AWS's own example: zone in place of the region, no account. Consumers must not parse it.
    assert body["resources"] == [f"arn:aws:ec2:us-east-1b:instance/{instance_id}"]
    assert body["detail"] == {"instance-id": instance_id, "instance-action": "terminate"}
    assert len(body["id"]) == 36
    # What a consumer does: read detail.instance-id and find the instance.
    assert (
        cloud.describe_instance(body["detail"]["instance-id"])["Placement"]["AvailabilityZone"]
        == "us-east-1b"
    )


def test_rebalance_and_state_change_events(cloud: CloudEvents) -> None:
    instance_id = cloud.launch_instance(SPOT)
    cloud.rebalance_recommendation(instance_id, "us-east-1b", WHEN)
    cloud.spot_interruption_warning(instance_id, "us-east-1b", WHEN, action="stop")
    cloud.state_change(instance_id, "shutting-down", WHEN + timedelta(minutes=2))
    # Not a FIFO queue: order is not guaranteed, so index by detail-type.
    bodies = {b["detail-type"]: b for b in receive(cloud) + receive(cloud)}
    rebalance = bodies["EC2 Instance Rebalance Recommendation"]
    assert rebalance["detail"] == {"instance-id": instance_id}
    assert rebalance["resources"] == [f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"]
    assert rebalance["source"] == "aws.ec2"
    assert bodies["EC2 Spot Instance Interruption Warning"]["detail"]["instance-action"] == "stop"
    change = bodies["EC2 Instance State-change Notification"]
    assert change["detail"] == {"instance-id": instance_id, "state": "shutting-down"}
    assert change["time"] == "2026-03-01T12:02:05Z"
    # Any timezone is written in UTC; naive datetimes are refused.
    later = cloud.state_change(instance_id, "terminated", WHEN.astimezone(timezone(timedelta(hours=-5))))
    assert later["time"] == "2026-03-01T12:00:05Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        cloud.state_change(instance_id, "terminated", datetime(2026, 3, 1))


@pytest.mark.parametrize(
    "url",
    [
        "https://sqs.us-east-1.amazonaws.com",
        "http://ec2.us-east-1.amazonaws.com",
        "http://localhost:5000",
        "http://10.0.0.5:5000",
        "http://192.168.1.2:5000",
        "https://127.0.0.1:5000",
        "http://127.0.0.1.nip.io:5000",
        "",
    ],
)
def test_endpoint_guard_refuses_anything_but_loopback(url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="refusing AWS endpoint"):
        require_loopback(url)
    with pytest.raises(ValueError, match="refusing AWS endpoint"):
        CloudEvents(url, "us-east-1")
    with pytest.raises(ValueError, match="refusing AWS endpoint"):
        client("ec2", url, "us-east-1")


def test_endpoint_guard_accepts_loopback() -> None:
    assert require_loopback("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert require_loopback("http://127.3.2.1:80/") == "http://127.3.2.1:80/"


def test_interruption_timeline_scales_with_the_clock() -> None:
    steps = interruption_timeline(SimClock(scale=10))
    assert [(s.delay_real_s, s.action, s.at_simulated_s) for s in steps] == [
        (0.0, "interruption-warning", 0.0),
        (12.0, "terminate", 120.0),
    ]
    steps = interruption_timeline(SimClock(scale=2), notice_s=120, rebalance_lead_s=60)
    assert [(s.delay_real_s, s.action) for s in steps] == [
        (0.0, "rebalance-recommendation"),
        (30.0, "interruption-warning"),
        (60.0, "terminate"),
    ]
    with pytest.raises(ValueError, match=">= 0"):
        interruption_timeline(SimClock(), notice_s=-1)
