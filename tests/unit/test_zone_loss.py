"""The zone-loss rule (planning.zone_loss): an outage, as opposed to spot capacity taken back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gpufleet.planning.zone_loss import NodeLoss, lost_zones, recent

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=10)


def loss(node: str, kind: str = "on-demand", zone: str = "a", ago: float = 0) -> NodeLoss:
    return NodeLoss(NOW - timedelta(seconds=ago), node, zone, kind)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("losses", "ready_zones", "lost"),
    [
        pytest.param([loss("n1")], set(), {}, id="one node down is a node problem"),
        pytest.param(
            [loss("n1", ago=60), loss("n2")], set(), {"a": NOW - timedelta(seconds=60)}, id="two, none ready"
        ),
        pytest.param([loss("n1"), loss("n2")], {"a"}, {}, id="a node still ready there"),
        pytest.param(
            [loss("s1", "spot"), loss("s2", "spot"), loss("s3", "spot")], set(), {}, id="spot alone never"
        ),
        pytest.param([loss("s1", "spot"), loss("n2")], set(), {"a": NOW}, id="spot and on-demand"),
        pytest.param([loss("n1", ago=700), loss("n2")], set(), {}, id="outside the window"),
        pytest.param([loss("n1"), loss("n1")], set(), {}, id="the same node twice is one"),
        pytest.param([loss("n1", zone=""), loss("n2", zone="")], set(), {}, id="no zone, nothing to avoid"),
    ],
)
def test_lost_zones(losses: list[NodeLoss], ready_zones: set[str], lost: dict[str, datetime]) -> None:
    assert lost_zones(losses, ready_zones, NOW, WINDOW) == lost


def test_only_recent_losses_are_kept() -> None:
    assert recent([loss("old", ago=601), loss("new", ago=600)], NOW, WINDOW) == [loss("new", ago=600)]
