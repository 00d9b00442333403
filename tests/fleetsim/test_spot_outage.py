"""fleetsim's spotOutage event and cordoned nodes in the provisioner: pure and fast (a fake API)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleetsim.pools import LABEL_CAPACITY_TYPE, LABEL_ZONE, Pool, parse_fleet
from fleetsim.provisioner import Provisioner
from fleetsim.scenario import parse_scenario

ROOT = Path(__file__).resolve().parents[2]

SCENARIO: dict[str, Any] = {
    "name": "t",
    "duration": 60,
    "fleet": "hack/fleets/three-zone-a100.yaml",
    "apply": ["samples/llama-3-70b-a100-spot.yaml"],
}

FLEET = parse_fleet(
    {
        "region": "us-east-1",
        "pools": [
            {
                "name": f"{zone}-{kind}",
                "instance_type": "p4de.24xlarge",
                "zone": f"us-east-1{zone}",
                "capacity_type": "spot" if kind == "spot" else "on-demand",
                "count": 1,
                "max_count": 3,
            }
            for zone in ("a", "b")
            for kind in ("spot", "od")
        ],
    }
)


def test_spot_outage_event_parses() -> None:
    events = [{"at": 30, "spotOutage": {"zone": "us-east-1a", "seconds": 600}}]
    scenario = parse_scenario({**SCENARIO, "events": events}, ROOT)
    (event,) = scenario.events
    assert event.kind == "spotOutage"
    assert event.spot_outage is not None
    assert (event.spot_outage.zone, event.spot_outage.seconds) == ("us-east-1a", 600)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"at": 0, "spotOutage": {"zone": "us-east-1a", "seconds": 0}}, "spotOutage.seconds"),
        ({"at": 0, "spotOutage": {"zone": "us-east-1a"}}, "spotOutage.seconds: Field required"),
        (
            {"at": 0, "spotOutage": {"zone": "us-east-1a", "seconds": 5}, "zoneOutage": "us-east-1b"},
            "exactly one of interrupt, zoneOutage, spotOutage, deleteNode, scale",
        ),
    ],
)
def test_bad_spot_outage_names_the_field(event: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_scenario({**SCENARIO, "events": [event]}, ROOT)


@dataclass
class _Response:
    data: bytes


class FakeCore:
    """list_pod_for_all_namespaces and list_node as the provisioner calls them (raw JSON)."""

    def __init__(self, pods: list[dict[str, Any]], cordoned: frozenset[str] = frozenset()) -> None:
        self.pods = pods
        self.cordoned = set(cordoned)

    def list_pod_for_all_namespaces(self, **_: Any) -> _Response:
        return _Response(json.dumps({"items": self.pods}).encode())

    def list_node(self, **_: Any) -> _Response:
        nodes = [{"metadata": {"name": n}, "spec": {"unschedulable": True}} for n in sorted(self.cordoned)]
        return _Response(json.dumps({"items": nodes}).encode())


def _pending(name: str, zone: str, capacity_type: str, node: str | None = None) -> dict[str, Any]:
    expressions = [
        {"key": LABEL_ZONE, "operator": "In", "values": [zone]},
        {"key": LABEL_CAPACITY_TYPE, "operator": "In", "values": [capacity_type]},
    ]
    pod: dict[str, Any] = {
        "metadata": {"namespace": "ns", "name": name},
        "spec": {
            "containers": [{"name": "vllm", "resources": {"requests": {"nvidia.com/gpu": "1"}}}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": expressions}]
                    }
                }
            },
        },
        "status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]},
    }
    if node:
        pod["spec"]["nodeName"] = node
        pod["status"] = {"conditions": [{"type": "PodScheduled", "status": "True"}]}
    return pod


@dataclass
class _Record:
    pool: Pool


def _nodes(*pools: str) -> dict[str, _Record]:
    return {f"{name}-1": _Record(FLEET.pool(name)) for name in pools}


def test_spot_outage_blocks_only_spot_pools_of_that_zone() -> None:
    pods = [
        _pending("p-a-spot", "us-east-1a", "spot"),
        _pending("p-a-od", "us-east-1a", "on-demand"),
        _pending("p-b-spot", "us-east-1b", "spot"),
    ]
    provisioner = Provisioner(FakeCore(pods), FLEET)  # type: ignore[arg-type]
    launched = provisioner.decide({}, set(), {"us-east-1a"})
    assert sorted(p.name for p in launched) == ["a-od", "b-spot"]
    assert any("p-a-spot" in r and "a-spot: offering unavailable" in r for r in provisioner.last_reasons)


def test_spot_launches_again_once_the_outage_is_over() -> None:
    provisioner = Provisioner(FakeCore([_pending("p", "us-east-1a", "spot")]), FLEET)  # type: ignore[arg-type]
    assert provisioner.decide({}, set(), {"us-east-1a"}) == []
    assert [p.name for p in provisioner.decide({}, set(), set())] == ["a-spot"]


def test_default_is_no_outage() -> None:
    provisioner = Provisioner(FakeCore([_pending("p", "us-east-1a", "spot")]), FLEET)  # type: ignore[arg-type]
    assert [p.name for p in provisioner.decide({}, set())] == ["a-spot"]


def test_a_cordoned_node_takes_no_pending_pod_even_with_free_gpus() -> None:
    pods = [_pending("p", "us-east-1a", "spot")]
    nodes = _nodes("a-spot")
    free = Provisioner(FakeCore(pods), FLEET)  # type: ignore[arg-type]
    assert free.decide(nodes, set()) == []  # the scheduler will bind it to a-spot-1
    cordoned = Provisioner(FakeCore(pods, cordoned=frozenset({"a-spot-1"})), FLEET)  # type: ignore[arg-type]
    assert [p.name for p in cordoned.decide(nodes, set())] == ["a-spot"]


def test_simulation_spot_outage_adds_and_removes_the_zone() -> None:
    from fleetsim.clock import SimClock
    from fleetsim.sim import Simulation

    class Stub:
        """Only what Simulation.spot_outage touches."""

        def __init__(self) -> None:
            self.spot_out_zones: set[str] = set()
            self.clock = SimClock(1000.0)
            self.notes: list[str] = []
            self.seen: set[str] = set()

        def _note(self, text: str) -> None:
            self.notes.append(text)
            self.seen |= self.spot_out_zones

    stub = Stub()
    asyncio.run(Simulation.spot_outage(stub, "us-east-1a", 5.0))  # type: ignore[arg-type]
    assert stub.seen == {"us-east-1a"}
    assert stub.spot_out_zones == set()
    assert stub.notes == ["spot capacity out in us-east-1a for 5s", "spot capacity back in us-east-1a"]
