"""The benchmarks' yardsticks: the HPA- and KubeAI-style policies and the figures computed from samples.

A comparison is only as good as its baseline, so the baselines are tested like our own planners.
"""

from __future__ import annotations

import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "hack" / "bench"))

from autoscale import Figures, HpaPolicy, KubeAiPolicy, percentile, policy_of, summary_lines, trial_names
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


class TestAutoscaleRounds:
    def test_rounds_interleave_the_policies(self) -> None:
        names = trial_names(["ours", "hpa", "kubeai"], 2)
        assert names == ["ours", "hpa", "kubeai", "ours#2", "hpa#2", "kubeai#2"]
        assert [policy_of(n) for n in names] == ["ours", "hpa", "kubeai"] * 2

    def test_one_round_prints_the_goal_and_the_last_line_as_before(self) -> None:
        lines = summary_lines(
            {"ours": Figures(0.11, 2.47), "hpa": Figures(0.17, 3.06), "kubeai": Figures(0.33, 3.38)}
        )
        assert lines == [
            "goal (fewer SLO violations than both at no more GPU-hours): met "
            "(fewer violations: yes, no more GPU-hours: yes)",
            "autoscale: slo_violations ours=0.1100 hpa=0.1700 kubeai=0.3300 "
            "gpu_hours ours=2.470 hpa=3.060 kubeai=3.380",
        ]

    def test_several_rounds_give_means_ranges_and_the_goal_per_round(self) -> None:
        figures = {
            "ours": Figures(0.10, 2.5),
            "hpa": Figures(0.20, 3.0),
            "kubeai": Figures(0.30, 3.0),
            "ours#2": Figures(0.30, 2.7),  # more violations than the HPA in this round
            "hpa#2": Figures(0.25, 3.1),
            "kubeai#2": Figures(0.35, 3.2),
        }
        lines = summary_lines(figures)
        assert lines[0] == (
            "ours   over 2 rounds: SLO violations mean 0.2000 (range 0.1000-0.3000), "
            "GPU-hours mean 2.600 (range 2.500-2.700)"
        )
        assert "round 1: met" in lines[3]
        assert "round 2: not met (fewer violations: no, no more GPU-hours: yes)" in lines[4]
        assert lines[5].endswith(": met in 1 of 2 rounds")
        # On the means ours has 0.200 against the HPA's 0.225: met.
        assert lines[6].endswith("on the means: met (fewer violations: yes, no more GPU-hours: yes)")
        assert lines[7] == (
            "autoscale: slo_violations ours=0.2000 hpa=0.2250 kubeai=0.3250 "
            "gpu_hours ours=2.600 hpa=3.050 kubeai=3.100"
        )

    def test_missing_policies_print_n_a_and_no_goal(self) -> None:
        assert summary_lines({"ours": Figures(0.12, 2.6)}) == [
            "autoscale: slo_violations ours=0.1200 hpa=n/a kubeai=n/a gpu_hours ours=2.600 hpa=n/a kubeai=n/a"
        ]
