"""The leader elector (runtime.leader) against a Lease API with the API server's resourceVersion check."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from urllib3.exceptions import ProtocolError

from gpufleet.adapters.kube import KubeError
from gpufleet.runtime.fencing import FencedKube, NotLeadingError
from gpufleet.runtime.leader import LeaderElector, Leadership
from tests.unit.fake_kube import FakeKube

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class LeaseApi:
    """One Lease as the API server keeps it: create fails when it exists, replace when the resourceVersion
    is not the stored one (both checked against the real API server in tests/integration/test_leader.py)."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if self.down:
            raise KubeError(0, "connection refused")
        return copy.deepcopy(self.lease)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.down:
            raise KubeError(0, "connection refused")
        if self.lease is not None:
            raise KubeError(409, "leases.coordination.k8s.io already exists")
        return self._store(obj)

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.down:
            raise KubeError(0, "connection refused")
        if self.lease is None:
            raise KubeError(404, "not found")
        if obj["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise KubeError(409, "the object has been modified")
        return self._store(obj)

    def _store(self, obj: dict[str, Any]) -> dict[str, Any]:
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
    # pod-a stopped renewing; pod-b last saw the record change at 10 s, by its own clock
    clock[0] = NOW + timedelta(seconds=26)
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


def test_anything_a_step_meets_is_survived_and_the_lead_kept_only_until_the_deadline() -> None:
    api, clock = LeaseApi(), [NOW]
    leader = elector(api, "pod-a", clock)
    assert leader.step()

    def broken(*_: Any) -> dict[str, Any] | None:
        raise ProtocolError("Connection aborted.", ConnectionResetError(104, "reset by peer"))

    api.get = broken  # type: ignore[method-assign]
    clock[0] = NOW + timedelta(seconds=4)
    assert leader.step()  # within the renew deadline
    clock[0] = NOW + timedelta(seconds=11)
    assert not leader.step()  # past it: stands down, and the thread is still there to try again
    steps: list[bool] = []

    def one_step_then_stop(delay: float) -> bool:
        steps.append(leader.leading.is_set())
        leader.stopped.set()
        return True

    leader.stopped.wait = one_step_then_stop  # type: ignore[method-assign]
    leader.run()  # returns: the loop ended because it was stopped, not because a step raised
    assert steps == [False]


def test_the_renew_deadline_is_measured_after_calls_that_blocked() -> None:
    api, clock = LeaseApi(), [NOW]
    leader = elector(api, "pod-a", clock)
    assert leader.step()
    clock[0] = NOW + timedelta(seconds=2)

    def hangs_then_fails(*_: Any) -> dict[str, Any] | None:
        clock[0] = NOW + timedelta(seconds=32)  # a request that took its whole 30 s timeout
        raise KubeError(0, "read timed out")

    api.get = hangs_then_fails  # type: ignore[method-assign]
    assert not leader.step()  # started 2 s after the renewal, but failed 32 s after it


def test_a_standby_that_starts_waits_a_lease_duration_whatever_the_holders_clock_says() -> None:
    api, clock = LeaseApi(), [NOW]
    elector(api, "pod-a", [NOW - timedelta(hours=1)]).step()  # its clock is an hour behind
    standby = elector(api, "pod-b", clock)
    assert not standby.step()  # the renewTime looks an hour old; pod-b only just saw the record
    clock[0] = NOW + timedelta(seconds=15)
    assert not standby.step()
    clock[0] = NOW + timedelta(seconds=16)
    assert standby.step()


def test_a_replica_paused_past_its_lease_does_not_act_on_waking() -> None:
    now = [datetime(2026, 12, 3, 12, 0, tzinfo=UTC)]
    leading = Leadership(lambda: now[0])
    leading.renewed(now[0])
    leading.set()
    kube = FencedKube(FakeKube(), leading.is_set)
    kube.create_event({"metadata": {"name": "m", "namespace": "ml"}}, "Normal", "R", "m", now[0])
    # SIGSTOP for 20 s: the flag is still up, but the last renewal is older than the renew deadline
    now[0] += timedelta(seconds=20)
    assert leading.held()
    assert not leading.is_set()
    assert not leading.wait(0)
    with pytest.raises(NotLeadingError):
        kube.create_event({"metadata": {"name": "m", "namespace": "ml"}}, "Normal", "R", "m", now[0])
    assert kube.list("v1", "Pod", "ml", "") == []  # reads pass
