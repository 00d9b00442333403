"""The benchmarks' yardsticks: the HPA- and KubeAI-style policies and the figures computed from samples.

A comparison is only as good as its baseline, so the baselines are tested like our own planners.
"""

from __future__ import annotations

import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "hack" / "bench"))

from autoscale import HpaPolicy, KubeAiPolicy, percentile
from spot import Hit, Sample, integrate, replaced_after


class TestHpaPolicy:
    def test_a_usage_ratio_within_the_tolerance_keeps_the_replicas(self) -> None:
        hpa = HpaPolicy(target=2, min_replicas=1, max_replicas=10)
        # 6.5 waiting over 3 replicas at 2 each: ratio 1.08, inside the 0.1 tolerance.
        assert hpa.decide(0.0, 6.5, 3) == 3

    def test_scale_up_is_immediate_but_at_most_max_of_4_pods_and_100_percent(self) -> None:
        assert HpaPolicy(target=2, min_replicas=1, max_replicas=50).decide(0.0, 20.0, 2) == 6
        assert HpaPolicy(target=2, min_replicas=1, max_replicas=50).decide(0.0, 40.0, 10) == 20

    def test_scale_down_waits_for_the_whole_stabilisation_window(self) -> None:
        hpa = HpaPolicy(target=2, min_replicas=1, max_replicas=10)
        assert hpa.decide(0.0, 10.0, 5) == 5
        held = [hpa.decide(t, 2.0, 5) for t in range(15, 300, 15)]
        assert held == [5] * len(held)  # the window still holds the first recommendation of 5
        assert hpa.decide(300.0, 2.0, 5) == 1

    def test_the_highest_recommendation_in_the_window_wins_a_scale_down(self) -> None:
        hpa = HpaPolicy(target=2, min_replicas=1, max_replicas=10)
        hpa.decide(0.0, 8.0, 4)
        hpa.decide(200.0, 6.0, 4)  # recommends 3
        assert hpa.decide(305.0, 2.0, 4) == 3  # 0 s has left the window, 200 s has not

    def test_min_and_max_clamp(self) -> None:
        assert HpaPolicy(target=2, min_replicas=2, max_replicas=10).decide(0.0, 0.0, 1) == 2
        assert HpaPolicy(target=2, min_replicas=1, max_replicas=3).decide(0.0, 100.0, 2) == 3


class TestKubeAiPolicy:
    def test_the_window_starts_filled_with_the_first_reading(self) -> None:
        kubeai = KubeAiPolicy(target=6, min_replicas=1, max_replicas=10, window=60, required_scale_downs=3)
        assert kubeai.decide(18.0, 1) == 3

    def test_desired_follows_the_moving_average(self) -> None:
        kubeai = KubeAiPolicy(target=6, min_replicas=1, max_replicas=10, window=2, required_scale_downs=3)
        kubeai.decide(6.0, 1)
        # The average of 6 and 30 is 18: three replicas, at once (a scale-up never waits).
        assert kubeai.decide(30.0, 1) == 3

    def test_scale_down_needs_consecutive_lower_decisions(self) -> None:
        kubeai = KubeAiPolicy(target=6, min_replicas=1, max_replicas=10, window=1, required_scale_downs=3)
        assert [kubeai.decide(6.0, 4) for _ in range(3)] == [4, 4, 4]
        assert kubeai.decide(6.0, 4) == 1

    def test_a_steady_decision_resets_the_scale_down_count(self) -> None:
        kubeai = KubeAiPolicy(target=6, min_replicas=1, max_replicas=10, window=1, required_scale_downs=2)
        assert kubeai.decide(6.0, 4) == 4
        assert kubeai.decide(24.0, 4) == 4  # steady: the count starts over
        assert kubeai.decide(6.0, 4) == 4
        assert kubeai.decide(6.0, 4) == 4
        assert kubeai.decide(6.0, 4) == 1

    def test_min_and_max_clamp(self) -> None:
        kubeai = KubeAiPolicy(target=6, min_replicas=2, max_replicas=4, window=1, required_scale_downs=0)
        assert kubeai.decide(0.0, 2) == 2
        assert kubeai.decide(600.0, 2) == 4


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 50, None), ([3.0], 99, 3.0), ([1.0, 2.0, 3.0, 4.0], 50, 2.5), ([4.0, 1.0, 3.0, 2.0], 100, 4.0)],
)
def test_percentile_interpolates_between_closest_ranks(
    values: list[float], q: float, expected: float | None
) -> None:
    assert percentile(values, q) == expected


def _sample(t: float, desired: int, ready: tuple[str, ...], cost: float = 0.0) -> Sample:
    on_demand = 2 * cost
    return Sample(t, desired, ready, len(ready), spot=0, cost_per_hour=cost, on_demand_per_hour=on_demand)


def test_integrate_holds_each_sample_until_the_next() -> None:
    samples = [_sample(0.0, 2, ("a", "b"), cost=3600.0), _sample(10.0, 2, ("a",), cost=3600.0)]
    figures = integrate(samples, end=30.0)
    assert figures.seconds == 30.0
    assert figures.below == 20.0  # one replica short for the last 20 s
    assert figures.replica_seconds == 2 * 10 + 1 * 20
    assert figures.cost == 30.0
    assert figures.on_demand_cost == 60.0


def test_replaced_after_counts_only_replicas_off_the_doomed_node() -> None:
    hit = Hit(at=100.0, zone="us-east-1b", rebalance_s=None, node="doomed")
    samples = [
        _sample(100.0, 2, ("doomed", "a")),
        _sample(110.0, 2, ("doomed", "a")),
        _sample(150.0, 2, ("doomed", "a", "b")),
    ]
    assert replaced_after(samples, hit) == 50.0
    assert replaced_after(samples[:2], hit) is None


def test_replaced_after_is_zero_when_a_rebalance_recommendation_already_moved_them() -> None:
    hit = Hit(at=100.0, zone="us-east-1b", rebalance_s=60.0, node="doomed")
    samples = [_sample(100.0, 2, ("doomed", "a")), _sample(160.0, 2, ("a", "b"))]
    assert replaced_after(samples, hit) == 0.0
