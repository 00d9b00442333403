"""Nodes, pods and interruption messages as the watches and the SQS queue deliver them, for spot tests."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from gpufleet.adapters.sqs import QueueMessage
from gpufleet.planning.workloads import LABEL_CAPACITY_TYPE, LABEL_MODEL_DEPLOYMENT, LABEL_ZONE
from gpufleet.runtime.capacity_store import CapacityStore
from tests.unit.helpers import DEFAULTS

CAPACITY_LABEL = "karpenter.sh/capacity-type"


def node(
    name: str,
    zone: str,
    capacity: str = "spot",
    ready: bool = True,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone, CAPACITY_LABEL: capacity}},
        "spec": {"providerID": f"aws:///{zone}/{instance(name)}", "taints": taints or []},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def instance(node_name: str) -> str:
    """A real-looking EC2 instance id for a node name."""
    return "i-" + hashlib.sha256(node_name.encode()).hexdigest()[:17]


def warning_body(instance: str, region: str = "us-east-1") -> str:
    return json.dumps(
        {
            "version": "0",
            "id": "1",
            "detail-type": "EC2 Spot Instance Interruption Warning",
            "source": "aws.ec2",
            "account": "123456789012",
            "time": "2026-11-22T12:00:00Z",
            "region": region,
            "resources": [],
            "detail": {"instance-id": instance, "instance-action": "terminate"},
        }
    )


def store(notice: timedelta | None = None) -> CapacityStore:
    return CapacityStore(
        CAPACITY_LABEL,
        "spot",
        notice=notice or timedelta(seconds=DEFAULTS.spot_notice_seconds),
        zone_loss_window=timedelta(seconds=DEFAULTS.zone_loss_window_seconds),
    )


class FakeQueue:
    region = "us-east-1"
    account: str | None = "123456789012"

    def __init__(self, batches: list[list[QueueMessage]], fail: int = 0) -> None:
        self.batches = batches
        self.fail = fail
        self.deleted: list[str] = []

    def receive(
        self, wait_seconds: int = 20, max_messages: int = 10, visibility_timeout: int = 20
    ) -> list[QueueMessage]:
        self.asked = (wait_seconds, visibility_timeout)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("queue unreachable")
        return self.batches.pop(0) if self.batches else []

    def delete_batch(self, receipt_handles: list[str]) -> list[str]:
        assert 1 <= len(receipt_handles) <= 10  # SQS's limit
        self.deleted.extend(receipt_handles)
        return []


def pod_object(name: str, zone: str, capacity: str, node_name: str, ready: bool = True) -> dict[str, Any]:
    """A pod of llama-3-70b in namespace ml, as the API server lists it."""
    return {
        "metadata": {
            "name": name,
            "namespace": "ml",
            "labels": {
                LABEL_MODEL_DEPLOYMENT: "llama-3-70b",
                LABEL_ZONE: zone,
                LABEL_CAPACITY_TYPE: capacity,
            },
        },
        "spec": {"nodeName": node_name},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
