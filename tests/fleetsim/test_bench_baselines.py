"""The benchmarks' yardsticks: the HPA- and KubeAI-style policies and the figures computed from samples.

A comparison is only as good as its baseline, so the baselines are tested like our own planners.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "hack" / "bench"))

from autoscale import (
    Figures,
    HpaPolicy,
    KubeAiPolicy,
    LimitPolicy,
    Settings,
    engine_profile,
    erlang_c,
    fleet_yaml,
    hpa_sync_flag,
    late_share,
    limit_policy,
    percentile,
    policy_of,
    request_seconds,
    scaled_object,
    slo_capacity,
    startup_delays,
    summary_lines,
    trial_names,
    whole_seconds,
)
from benchkit import BenchError
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
        names = trial_names(["ours", "keda", "limit"], 2)
        assert names == ["ours", "keda", "limit", "ours#2", "keda#2", "limit#2"]
        assert [policy_of(n) for n in names] == ["ours", "keda", "limit"] * 2

    def test_one_round_prints_figures_ratios_to_every_policy_and_the_goal_against_the_peers(self) -> None:
        lines = summary_lines(
            {
                "ours": Figures(0.10, 2.0, 1000),
                "keda": Figures(0.20, 4.0, 1000),
                "kubeai": Figures(0.40, 2.5, 1000),
                "limit": Figures(0.05, 2.5, 1000),
            }
        )
        assert lines == [
            "ours: SLO violations 0.1000, GPU-hours 2.000, violations per GPU-hour 50.0",
            "keda (real KEDA v2.21.0 + HPA): SLO violations 0.2000, GPU-hours 4.000, "
            "violations per GPU-hour 50.0",
            "kubeai-style (re-implementation): SLO violations 0.4000, GPU-hours 2.500, "
            "violations per GPU-hour 160.0",
            "limit (clairvoyant): SLO violations 0.0500, GPU-hours 2.500, violations per GPU-hour 20.0",
            "ours / keda (real KEDA v2.21.0 + HPA): SLO violations 0.50, GPU-hours 0.50, "
            "violations per GPU-hour 1.00",
            "ours / kubeai-style (re-implementation): SLO violations 0.25, GPU-hours 0.80, "
            "violations per GPU-hour 0.31",
            "ours / limit (clairvoyant): SLO violations 2.00, GPU-hours 0.80, violations per GPU-hour 2.50",
            # The limit is a floor, not a peer: more violations than it does not fail the goal.
            "goal (fewer SLO violations than keda (real KEDA v2.21.0 + HPA), "
            "kubeai-style (re-implementation) at no more GPU-hours): met "
            "(fewer violations: yes, no more GPU-hours: yes)",
            "autoscale: slo_violations ours=0.1000 keda=0.2000 kubeai=0.4000 limit=0.0500 "
            "gpu_hours ours=2.000 keda=4.000 kubeai=2.500 limit=2.500",
        ]

    def test_several_rounds_give_means_and_the_spread_of_figures_and_of_per_round_ratios(self) -> None:
        figures = {
            "ours": Figures(0.10, 2.0, 1000),
            "keda": Figures(0.20, 2.5, 1000),
            "ours#2": Figures(0.30, 3.0, 1000),  # more violations and GPU-hours than keda in this round
            "keda#2": Figures(0.20, 2.0, 1000),
        }
        lines = summary_lines(figures)
        assert lines[0] == (
            "ours: SLO violations 0.2000 (0.1000-0.3000 over 2 rounds), GPU-hours 2.500 (2.000-3.000 over "
            "2 rounds), violations per GPU-hour 75.0 (50.0-100.0 over 2 rounds)"
        )
        # Ratios of the means (0.2 / 0.2, 2.5 / 2.25, 75 / 90), spread of the rounds' own ratios.
        assert lines[2] == (
            "ours / keda (real KEDA v2.21.0 + HPA): SLO violations 1.00 (0.50-1.50 over 2 rounds), "
            "GPU-hours 1.11 (0.80-1.50 over 2 rounds), violations per GPU-hour 0.83 (0.62-1.00 over 2 rounds)"
        )
        assert lines[3].endswith("round 1: met (fewer violations: yes, no more GPU-hours: yes)")
        assert lines[4].endswith("round 2: not met (fewer violations: no, no more GPU-hours: no)")
        assert lines[5].endswith(": met in 1 of 2 rounds")
        assert lines[6].endswith("on the means: not met (fewer violations: no, no more GPU-hours: no)")
        assert lines[7] == (
            "autoscale: slo_violations ours=0.2000 keda=0.2000 kubeai=n/a limit=n/a "
            "gpu_hours ours=2.500 keda=2.250 kubeai=n/a limit=n/a"
        )

    def test_a_policy_without_violations_or_gpu_hours_gives_no_ratio_instead_of_failing(self) -> None:
        lines = summary_lines({"ours": Figures(0.1, 2.0, 100), "limit": Figures(0.0, 0.0, 100)})
        assert (
            lines[1]
            == "limit (clairvoyant): SLO violations 0.0000, GPU-hours 0.000, violations per GPU-hour n/a"
        )
        assert lines[2] == (
            "ours / limit (clairvoyant): SLO violations n/a, GPU-hours n/a, violations per GPU-hour n/a"
        )

    def test_the_spread_of_ratios_says_when_a_round_had_none(self) -> None:
        figures = {
            "ours": Figures(0.4, 0.5, 100),
            "limit": Figures(0.0, 0.4, 100),  # no violations: no ratio in this round
            "ours#2": Figures(0.2, 0.5, 100),
            "limit#2": Figures(0.1, 0.4, 100),
        }
        assert summary_lines(figures)[2].startswith(
            "ours / limit (clairvoyant): SLO violations 6.00 (2.00-2.00 over 1 of 2 rounds), "
            "GPU-hours 1.25 (1.25-1.25 over 2 rounds)"
        )

    def test_missing_policies_print_n_a_and_no_goal(self) -> None:
        assert summary_lines({"ours": Figures(0.12, 2.6, 100)}) == [
            "ours: SLO violations 0.1200, GPU-hours 2.600, violations per GPU-hour 4.6",
            "autoscale: slo_violations ours=0.1200 keda=n/a kubeai=n/a limit=n/a "
            "gpu_hours ours=2.600 keda=n/a kubeai=n/a limit=n/a",
        ]

    def test_the_re_implemented_hpa_is_labelled_as_one_and_listed_only_when_run(self) -> None:
        lines = summary_lines({"ours": Figures(0.1, 2.0, 100), "hpa": Figures(0.2, 3.0, 100)})
        assert lines[1].startswith("hpa-style (re-implementation): ")
        assert lines[-1].endswith("limit=n/a hpa=3.000")


def _step(at: float, before: float, after: float) -> Callable[[float], float]:
    return lambda t: before if t < at else after


class TestLimitPolicy:
    def test_it_orders_replicas_a_lead_plus_an_interval_ahead(self) -> None:
        limit = LimitPolicy(
            _step(100.0, 1.0, 3.0),
            lead_s=50.0,
            interval_s=10.0,
            capacity=1.0,
            min_replicas=1,
            max_replicas=10,
        )
        assert limit.decide(39.0) == 1  # the window [39, 99] ends before the step
        assert limit.decide(40.0) == 3  # [40, 100] reaches it

    def test_it_never_goes_below_what_is_needed_now(self) -> None:
        limit = LimitPolicy(
            _step(100.0, 3.0, 1.0),
            lead_s=50.0,
            interval_s=10.0,
            capacity=1.0,
            min_replicas=1,
            max_replicas=10,
        )
        assert limit.decide(99.0) == 3
        assert limit.decide(100.0) == 1

    def test_replicas_are_the_peak_rate_over_capacity_rounded_up_within_min_and_max(self) -> None:
        def limit(rate: float, low: int = 1, high: int = 10) -> int:
            return LimitPolicy(lambda _: rate, 60.0, 15.0, 0.8, low, high).decide(0.0)

        assert limit(0.9) == 2
        assert limit(2.4) == 3  # 2.4 / 0.8 is 3.0000000000000004 in floating point: still 3
        assert limit(0.0, low=2) == 2
        assert limit(100.0, high=6) == 6

    def test_erlang_c_matches_closed_forms(self) -> None:
        assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: an arrival waits with probability ρ
        assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
        assert erlang_c(4, 4.0) == 1.0

    def test_late_share_rises_with_the_rate_up_to_the_full_batch_throughput(self) -> None:
        shares = [late_share(rate, 4, 3.0, 2.0) for rate in (0.0, 0.5, 1.0, 4 / 3)]
        assert shares[0] == 0.0
        assert shares == sorted(shares)
        assert shares[-1] == 1.0

    def test_slo_capacity_is_the_rate_at_which_the_late_share_reaches_its_bound(self) -> None:
        capacity = slo_capacity(4, 3.0, 2.0, late=0.05)
        assert 0 < capacity < 4 / 3
        assert late_share(capacity, 4, 3.0, 2.0) == pytest.approx(0.05, abs=1e-6)
        assert slo_capacity(4, 3.0, 4.0, late=0.05) > capacity  # a longer wait budget takes more load

    def test_the_benchmarks_limit_is_what_its_docstring_states(self) -> None:
        policy = limit_policy(lambda _: 0.0, Settings(slo=2.0, scale=15.0, duration=2700.0, seed=0))
        assert request_seconds(engine_profile()) == pytest.approx(3.05, abs=0.01)
        assert policy.capacity == pytest.approx(0.83, abs=0.005)
        assert policy.lead_s == 50.0 + 0.5 * 15 + 4.0
        assert policy.interval_s == 15.0


class TestKedaTrial:
    def test_the_scaled_object_carries_the_hpa_style_query_and_the_defaults_divided_by_the_scale(
        self,
    ) -> None:
        spec = scaled_object("bench", "http://127.0.0.1:9090", 15.0)["spec"]
        assert (spec["pollingInterval"], spec["cooldownPeriod"]) == (2, 20)
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 20
        assert {p["periodSeconds"] for p in behavior["scaleUp"]["policies"]} == {1}
        trigger = spec["triggers"][0]["metadata"]
        assert trigger["threshold"] == "2"
        assert trigger["query"].startswith('sum(vllm:num_requests_waiting{namespace="bench",')

    def test_timers_that_are_not_whole_seconds_are_refused(self) -> None:
        assert hpa_sync_flag(5.0) == "--horizontal-pod-autoscaler-sync-period=3s"
        with pytest.raises(BenchError, match="divides 15"):
            whole_seconds(15.0, 20.0)  # the old default scale: a 0.75 s sync
        with pytest.raises(BenchError):
            whole_seconds(15.0, 30.0)  # under a second

    def test_the_fleet_file_names_the_engine(self) -> None:
        assert fleet_yaml("keda", "llm-d-inference-sim")["engine"] == "llm-d-inference-sim"


def test_startup_delays_time_each_raise_to_its_first_sample_with_that_many_ready_pods() -> None:
    timeline = [(0.0, 1), (100.0, 3), (300.0, 1), (400.0, 4)]
    readiness = [(t, 1) for t in range(0, 150, 5)] + [(150.0, 3), (300.0, 1), (400.0, 2)]
    # 3 were Ready 50 s after the raise; the raise to 4 was never met.
    assert startup_delays(timeline, readiness) == [50.0]
