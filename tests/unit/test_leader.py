"""The leader elector (runtime.leader) against a Lease API with the API server's resourceVersion check."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from gpufleet.adapters.kube import KubeError
from gpufleet.runtime.leader import LeaderElector

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class LeaseApi:
    """Get and apply of one Lease with the API server's resourceVersion precondition."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if self.down:
            raise KubeError(0, "connection refused")
        return copy.deepcopy(self.lease)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.down:
            raise KubeError(0, "connection refused")
        expected = obj["metadata"].get("resourceVersion")
        if self.lease is not None and expected != self.lease["metadata"]["resourceVersion"]:
            raise KubeError(409, "the object has been modified")
        self.version += 1
        self.lease = copy.deepcopy(obj)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)


def elector(api: LeaseApi, me: str, clock: list[datetime], started: list[str] | None = None) -> LeaderElector:
    return LeaderElector(
        api,  # type: ignore[arg-type]
        "gpufleet-system",
        "gpufleet-leader",
        me,
        lambda: clock[0],
        on_started_leading=lambda: (started if started is not None else []).append(me),
    )


def test_one_leader_a_standby_and_a_takeover_when_the_leader_stops_renewing() -> None:
    api, clock, started = LeaseApi(), [NOW], []
    first, second = elector(api, "pod-a", clock, started), elector(api, "pod-b", clock, started)
    assert first.step()
    assert not second.step()
    clock[0] = NOW + timedelta(seconds=2)
    assert first.step()  # renewed
    clock[0] = NOW + timedelta(seconds=10)
    assert not second.step()  # still within the lease
    clock[0] = NOW + timedelta(seconds=18)  # pod-a stopped renewing 16 s ago
    assert second.step()
    assert not first.step()  # pod-a sees pod-b's lease and stands by
    assert started == ["pod-a", "pod-b"]


def test_losing_the_race_is_not_leading() -> None:
    api, clock = LeaseApi(), [NOW]
    first = elector(api, "pod-a", clock)
    stale = copy.deepcopy(api.get("", "", "", ""))
    elector(api, "pod-b", clock).step()

    def stale_get(*_: Any) -> dict[str, Any] | None:
        return stale

    api.get = stale_get  # type: ignore[method-assign]
    assert not first.step()  # it read "no lease" and its create conflicted


def test_an_unreachable_api_server_keeps_the_lead_only_until_the_renew_deadline() -> None:
    api, clock = LeaseApi(), [NOW]
    leader = elector(api, "pod-a", clock)
    assert leader.step()
    api.down = True
    clock[0] = NOW + timedelta(seconds=8)
    assert leader.step()
    clock[0] = NOW + timedelta(seconds=11)
    assert not leader.step()


def test_release_hands_over_at_once() -> None:
    api, clock = LeaseApi(), [NOW]
    first, second = elector(api, "pod-a", clock), elector(api, "pod-b", clock)
    first.step()
    first.release()
    assert not first.leading.is_set()
    assert second.step()


# --- prices --------------------------------------------------------------------------------------
