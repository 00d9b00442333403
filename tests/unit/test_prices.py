"""The spot price refresh (runtime.prices): fresh prices reach the reconciler; errors keep the last ones."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gpufleet.planning.cost import ProductPrices
from gpufleet.runtime.prices import SpotPriceRefresher
from gpufleet.runtime.reconciler import Reconciler
from tests.unit.fake_kube import FakeKube
from tests.unit.helpers import reconcile_policy

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

A100 = ProductPrices(on_demand=27.45, gpus_per_instance=8, spot={"a": 11.8}, instance_type="p4de.24xlarge")


def test_the_refresher_updates_the_reconciler_and_survives_errors() -> None:
    reconciler = Reconciler(FakeKube(), reconcile_policy(), clock=lambda: NOW, prices={"A100": A100})
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
