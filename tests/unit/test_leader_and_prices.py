"""Leader election over a Lease (pure rule + elector against a fake API) and the spot price refresh."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpufleet.adapters.kube import KubeError
from gpufleet.handlers.leader import LeaderElector
from gpufleet.handlers.prices import SpotPriceRefresher
from gpufleet.handlers.reconcile import Reconciler
from gpufleet.planning.cost import ProductPrices, with_spot_prices
from gpufleet.planning.lease import LEASE_DURATION, lease_action, lease_object, read_lease
from gpufleet.planning.workloads import WorkloadOptions
from tests.unit.fake_kube import FakeKube

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


def test_lease_rule() -> None:
    assert lease_action(None, "a", NOW) == "create"
    held = read_lease(lease_object("ns", "l", "a", NOW, None, "create"))
    assert lease_action(held, "a", NOW) == "renew"
    assert lease_action(held, "b", NOW + LEASE_DURATION) == "wait"
    assert lease_action(held, "b", NOW + LEASE_DURATION + timedelta(seconds=1)) == "take"
    taken = read_lease(lease_object("ns", "l", "b", NOW, held, "take"))
    assert (taken.holder, taken.transitions) == ("b", 1)


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

A100 = ProductPrices(on_demand=27.45, gpus_per_instance=8, spot={"a": 11.8}, instance_type="p4de.24xlarge")


def test_fresh_spot_prices_replace_configured_ones_per_zone() -> None:
    latest = {("p4de.24xlarge", "a"): 9.0, ("p4de.24xlarge", "b"): 10.0, ("p5.48xlarge", "a"): 30.0}
    books = with_spot_prices({"A100": A100}, latest)
    assert books["A100"].spot == {"a": 9.0, "b": 10.0}
    assert with_spot_prices({"A100": A100}, {}) == {"A100": A100}


def test_the_refresher_updates_the_reconciler_and_survives_errors() -> None:
    reconciler = Reconciler(FakeKube(), WorkloadOptions(), clock=lambda: NOW, prices={"A100": A100})
    asked: list[tuple[list[str], list[str]]] = []

    def fetch(instance_types: list[str], zones: list[str], now: datetime) -> dict[tuple[str, str], float]:
        asked.append((instance_types, zones))
        return {("p4de.24xlarge", "b"): 10.5}

    refresher = SpotPriceRefresher(reconciler, lambda: {"b", "a"}, fetch, lambda: NOW, interval=60)
    assert refresher.refresh() == 1
    assert asked == [(["p4de.24xlarge"], ["a", "b"])]
    assert reconciler.prices["A100"].spot == {"a": 11.8, "b": 10.5}

    def broken(*_: Any, **__: Any) -> dict[tuple[str, str], float]:
        raise ConnectionError("EC2 unreachable")

    refresher.fetch = broken
    waits: list[float] = []

    def wait_once(delay: float) -> bool:
        waits.append(delay)
        refresher.stopped.set()
        return True

    refresher.stopped.wait = wait_once  # type: ignore[method-assign]
    refresher.run()
    assert waits == [60]
    assert reconciler.prices["A100"].spot == {"a": 11.8, "b": 10.5}  # the last known prices stay


@pytest.mark.parametrize("value", [None, "", "garbage"])
def test_unreadable_lease_times_count_as_expired(value: Any) -> None:
    lease = read_lease({"spec": {"holderIdentity": "pod-a", "renewTime": value}, "metadata": {}})
    assert lease_action(lease, "pod-b", NOW) == "take"
