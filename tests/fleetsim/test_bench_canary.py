"""The canary benchmark's pure parts: the trial's inputs with the operator's timers scaled, the modelled
alert and human, the figures computed from samples, and the summary. Nothing here starts a fleet."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from fleetsim.loadgen import arrival_times, parse_trace
from fleetsim.pools import Fleet
from fleetsim.scenario import parse_scenario
from gpufleet.api.v1alpha1 import ModelDeploymentSpec
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "hack" / "bench"))

from canary import (
    BAD_IMAGE,
    CANARY_SERVICE,
    GOOD_IMAGE,
    MODEL,
    ROUTE,
    AlertRule,
    Figures,
    Sample,
    Settings,
    alert_fires_at,
    alert_rule,
    analysis_interval_floor,
    arrivals,
    bad_serving,
    canary_window,
    capacity_per_replica,
    engine_profile,
    expected_canary_failures,
    expected_failures,
    fleet_yaml,
    http_route,
    human_revert_at,
    image_patch,
    integrate_gpu_seconds,
    label,
    model_deployment,
    operator_timers,
    policy_of,
    prometheus_seconds,
    replica_share_percent,
    requests_between,
    round_of,
    route_weights,
    routed_between,
    scenario_document,
    slug,
    summary_lines,
    timeline,
    timer_lines,
    trial_names,
)

RULE = AlertRule(threshold=0.01, window_s=300.0, for_s=600.0)


class TestTrials:
    def test_rounds_interleave_the_policies_and_names_fit_in_a_namespace(self) -> None:
        names = trial_names(["ours", "all-at-once", "all-at-once+human"], 2)
        assert names == [
            "ours",
            "all-at-once",
            "all-at-once+human",
            "ours#2",
            "all-at-once#2",
            "all-at-once+human#2",
        ]
        assert [policy_of(n) for n in names[3:]] == ["ours", "all-at-once", "all-at-once+human"]
        assert round_of("all-at-once+human#2") == 2
        assert slug("all-at-once+human#2") == "all-at-once-human-2"

    def test_the_human_is_labelled_as_modelled(self) -> None:
        assert "modelled" in label("all-at-once+human")
        assert label("ours") == "ours"
        assert label("ours+route") == "ours+route"
        assert slug("ours+route#2") == "ours-route-2"


class TestScaledTimers:
    def test_every_operator_facing_duration_is_divided_by_the_scale(self) -> None:
        timers = operator_timers(10)
        assert timers.pauses == (60, 180)
        assert timers.interval == 6
        assert not timers.interval_clamped
        assert timers.sweep == pytest.approx(1.5)  # GPUFLEET_AUTOSCALE_INTERVAL_SECONDS' 15 s

    def test_the_analysis_interval_is_clamped_at_the_api_minimum_and_the_run_says_so(self) -> None:
        assert analysis_interval_floor() == 5
        assert operator_timers(12).interval == 5
        assert not operator_timers(12).interval_clamped
        timers = operator_timers(15)
        assert timers.interval == 5
        assert timers.interval_clamped
        assert timers.interval_simulated(15) == 75
        assert any("CLAMPED" in line for line in timer_lines(15))
        assert not any("CLAMPED" in line for line in timer_lines(10))


class TestInputs:
    def test_ours_carries_the_scaled_rollout_and_the_baselines_none(self) -> None:
        settings = Settings(scale=10)
        ours = model_deployment("ours", settings)
        rollout = ours["spec"]["rollout"]
        assert rollout["steps"] == [{"weight": 10, "pauseSeconds": 60}, {"weight": 50, "pauseSeconds": 180}]
        assert rollout["analysis"] == {"intervalSeconds": 6, "minRequests": 100}
        for policy in ("all-at-once", "all-at-once+human"):
            baseline = model_deployment(policy, settings)
            assert "rollout" not in baseline["spec"]
            # Everything else is the same ModelDeployment.
            assert baseline["spec"] == {k: v for k, v in ours["spec"].items() if k != "rollout"}
        assert ours["spec"]["engine"]["image"] == GOOD_IMAGE
        assert ours["spec"]["replicas"] == 4
        assert ours["spec"]["autoscaling"] == {"enabled": False}

    def test_ours_route_is_ours_plus_the_routes_name(self) -> None:
        settings = Settings(scale=10)
        ours, routed = model_deployment("ours", settings), model_deployment("ours+route", settings)
        assert routed["spec"]["rollout"] == {**ours["spec"]["rollout"], "httpRoute": {"name": ROUTE}}
        assert {k: v for k, v in routed["spec"].items() if k != "rollout"} == {
            k: v for k, v in ours["spec"].items() if k != "rollout"
        }

    def test_the_route_points_its_one_rule_at_the_models_service(self) -> None:
        route = http_route("ns")
        assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
        assert route["kind"] == "HTTPRoute"
        assert route["metadata"] == {"name": ROUTE, "namespace": "ns"}
        assert route["spec"]["rules"] == [{"backendRefs": [{"name": MODEL, "port": 8000}]}]
        assert route["spec"]["parentRefs"]
        assert route_weights(route) == {MODEL: 1}  # no weight: the API's default of 1
        written = {
            "spec": {
                "rules": [
                    {
                        "backendRefs": [
                            {"name": f"{MODEL}-a", "weight": 90},
                            {"name": CANARY_SERVICE, "weight": 10},
                        ]
                    }
                ]
            }
        }
        assert route_weights(written) == {f"{MODEL}-a": 90, CANARY_SERVICE: 10}
        assert route_weights({}) == {}

    def test_the_specs_pass_the_api_validation(self) -> None:
        for policy in ("ours", "ours+route", "all-at-once"):
            ModelDeploymentSpec.model_validate(model_deployment(policy, Settings(scale=15))["spec"])

    def test_the_scenario_declares_the_bad_build_and_scales_the_sweep(self, tmp_path: Path) -> None:
        settings = Settings(scale=10, error_share=0.3)
        document = scenario_document("ours#2", settings, tmp_path / "f.yaml", tmp_path / "m.json", "ns")
        scenario = parse_scenario(document, ROOT)
        assert scenario.builds[BAD_IMAGE].error_share == 0.3
        assert GOOD_IMAGE not in scenario.builds
        assert scenario.operator_env == {"GPUFLEET_AUTOSCALE_INTERVAL_SECONDS": "1.5"}
        assert scenario.events == []  # the trial sends the patches itself
        assert image_patch(BAD_IMAGE) == {"engine": {"image": BAD_IMAGE}}

    def test_the_fleet_has_one_on_demand_node_per_zone_named_after_the_trial(self) -> None:
        fleet = Fleet.model_validate(fleet_yaml("all-at-once+human#2"))
        assert [(p.zone, p.capacity_type, p.count) for p in fleet.pools] == [
            ("us-east-1a", "on-demand", 1),
            ("us-east-1b", "on-demand", 1),
        ]
        assert all(p.name.startswith("all-at-once-human-2-") for p in fleet.pools)

    def test_the_load_is_a_share_of_the_replicas_capacity(self) -> None:
        capacity = capacity_per_replica(engine_profile())
        assert 1.2 < capacity < 1.35  # ~1.28 requests/s: autoscale.py's and engines.py's figure
        assert Settings(replicas=4, load=0.5).rate == pytest.approx(2 * capacity)

    def test_the_arrivals_are_the_load_generators_own(self) -> None:
        mine = arrivals(2.5, 600, 7)
        assert mine == list(
            arrival_times(parse_trace({"kind": "constant", "rate": 2.5}), 600, random.Random(7))
        )
        assert mine == arrivals(2.5, 600, 7)
        assert 1300 < len(mine) < 1700


def _load(t_end: float, errors_from: float, errors_until: float = float("inf")) -> list[Sample]:
    """Every 10 s: 10 requests, and from `errors_from` until `errors_until` one of them a 5xx (10 %)."""
    samples = []
    failed = 0
    for t in range(0, int(t_end) + 1, 10):
        if errors_from < t <= errors_until:
            failed += 1
        samples.append(Sample(float(t), 4, 4, 0, sent=t, failed_5xx=failed))
    return samples


class TestModelledAlert:
    def test_the_chart_rule_is_read_from_its_expression_and_for(self) -> None:
        document = """
groups:
  - name: gpufleet.serving
    rules:
      - alert: ModelErrorRateHigh
        expr: |
          sum by (namespace) (rate(http_requests_total{status="5xx"}[5m]))
          /
          sum by (namespace) (rate(http_requests_total[5m]))
          > 0.01
        for: 10m
"""
        assert alert_rule(document) == RULE
        assert prometheus_seconds("30s") == 30
        assert prometheus_seconds("1h") == 3600
        with pytest.raises(ValueError, match="duration"):
            prometheus_seconds("1h30m")

    def test_it_fires_once_the_share_over_the_window_has_held_for_the_whole_for(self) -> None:
        # At 110 s: 1 error in 110 requests (0.9 %); at 120 s: 2 in 120 (1.7 %): pending from 120.
        assert alert_fires_at(_load(2000, errors_from=100), RULE) == 720
        assert human_revert_at(720) == 1020  # then 5 minutes to patch the spec back

    def test_a_condition_that_lapses_before_the_for_is_over_never_fires(self) -> None:
        # Errors stop at 400 s: the share over the last 300 s falls under 1 % before 720 s.
        assert alert_fires_at(_load(2000, errors_from=100, errors_until=400), RULE) is None

    def test_no_errors_no_alert(self) -> None:
        assert alert_fires_at(_load(2000, errors_from=10_000), RULE) is None


class TestFigures:
    def test_gpu_seconds_hold_each_sample_until_the_next(self) -> None:
        samples = [Sample(0, 4, 4, 0), Sample(100, 5, 4, 0), Sample(200, 4, 4, 0)]
        assert integrate_gpu_seconds(samples, 300) == 4 * 100 + 5 * 100 + 4 * 100

    def test_expected_failures_weigh_each_request_by_the_bad_share_of_ready_replicas(self) -> None:
        samples = [Sample(0, 4, 4, 0), Sample(10, 5, 5, 1), Sample(20, 4, 4, 1), Sample(30, 4, 4, 0)]
        sent = [5.0, 12.0, 15.0, 22.0, 25.0, 29.0, 35.0]
        # 2 requests at 1/5, 3 at 1/4, the rest on good replicas only.
        assert expected_failures(samples, sent, 0.2) == pytest.approx(0.2 * (2 / 5 + 3 / 4))

    def test_the_canary_window_runs_from_its_first_ready_replica_to_the_abort(self) -> None:
        samples = [
            Sample(0, 4, 4, 0),
            Sample(650, 5, 4, 0, phase="Progressing"),
            Sample(700, 5, 5, 1, phase="Paused", weight=20),
            Sample(705, 4, 4, 1, phase="Paused", weight=25),
            Sample(900, 4, 3, 0, phase="Aborted"),
        ]
        assert canary_window(samples) == (700, 900)
        assert canary_window(samples[:4]) == (700, None)
        assert canary_window(samples[:2]) is None
        assert bad_serving(samples).first == 700
        assert bad_serving(samples).last == 705
        assert (bad_serving(samples).peak, bad_serving(samples).peak_of) == (1, 4)
        assert timeline(samples[:3]) == "0s:0/4/4 650s:0/4/5[Progressing] 700s:1/5/5[Paused]"

    def test_the_replica_share_is_the_highest_bad_share_of_the_ready_replicas(self) -> None:
        samples = [Sample(0, 4, 4, 0), Sample(5, 5, 5, 1), Sample(10, 4, 4, 1), Sample(15, 4, 0, 0)]
        assert replica_share_percent(samples) == 25
        assert replica_share_percent([Sample(0, 0, 0, 0)]) == 0

    def test_routed_between_takes_the_running_counts_of_the_samples_in_force(self) -> None:
        samples = [
            Sample(0, 4, 4, 0, routed=0, routed_canary=0),
            Sample(10, 5, 5, 1, routed=100, routed_canary=2),
            Sample(20, 5, 5, 1, routed=200, routed_canary=12),
            Sample(30, 4, 4, 0, routed=300, routed_canary=22),
            Sample(40, 4, 4, 0, routed=400, routed_canary=22),
        ]
        assert routed_between(samples, 10, 30) == (20, 200)
        assert routed_between(samples, 12, 35) == (20, 200)  # the samples at or before each end
        assert routed_between(samples, -5, 100) == (22, 400)

    def test_expected_canary_failures_are_share_times_error_share_times_requests(self) -> None:
        sent = [float(t) for t in range(0, 1000)]
        requests = requests_between(sent, 700, 900)
        assert requests == 200  # [700, 900)
        assert expected_canary_failures(25, 0.2, requests) == pytest.approx(10.0)


class TestSummary:
    def test_means_ratios_and_ranges_over_rounds(self) -> None:
        figures = {
            "ours": Figures(9000, 30, 4.02, rollback_s=250),
            "ours+route": Figures(9000, 15, 4.02, rollback_s=500),
            "all-at-once": Figures(9000, 1500, 4.05),
            "all-at-once+human": Figures(9000, 500, 4.10),
            "ours#2": Figures(9000, 40, 4.04, rollback_s=270),
            "ours+route#2": Figures(9000, 15, 4.02, rollback_s=520),
            "all-at-once#2": Figures(9000, 1500, 4.05),
            "all-at-once+human#2": Figures(9000, 520, 4.10),
        }
        lines = summary_lines(figures)
        ours = next(line for line in lines if line.startswith("ours: "))
        assert "failed requests 35.0 (30.0-40.0 over 2 rounds)" in ours
        assert "patch to rollback 260 s (250-270 over 2 rounds)" in ours
        ratio = next(line for line in lines if line.startswith("ours / all-at-once: "))
        assert "failed requests 0.023 (0.020-0.027 over 2 rounds)" in ratio
        human = next(line for line in lines if line.startswith(f"ours / {label('all-at-once+human')}: "))
        assert "failed requests 0.069" in human
        routed = next(line for line in lines if line.startswith("ours+route: "))
        assert "patch to rollback 510 s (500-520 over 2 rounds)" in routed
        assert "failed requests 2.333" in next(
            line for line in lines if line.startswith("ours / ours+route: ")
        )
        assert "failed requests 0.010" in next(
            line for line in lines if line.startswith("ours+route / all-at-once: ")
        )
        assert any(line.startswith(f"ours+route / {label('all-at-once+human')}: ") for line in lines)
        assert not any(line.startswith("all-at-once / ") for line in lines)
        assert lines[-1] == (
            "canary: failed ours=35.0 ours+route=15.0 all-at-once=1500.0 all-at-once+human=510.0 "
            "gpu_hours ours=4.030 ours+route=4.020 all-at-once=4.050 all-at-once+human=4.100"
        )

    def test_a_ratio_to_zero_is_not_a_number_and_a_policy_not_run_is_na(self) -> None:
        lines = summary_lines({"ours": Figures(100, 3, 1.0, None), "all-at-once": Figures(100, 0, 1.0)})
        ratio = next(line for line in lines if line.startswith("ours / all-at-once: "))
        assert "failed requests n/a" in ratio
        assert "GPU-hours 1.000" in ratio
        ours = next(line for line in lines if line.startswith("ours: "))
        assert "patch to rollback n/a s, not rolled back in 1 of 1" in ours
        assert "all-at-once+human=n/a" in lines[-1]
        assert "ours+route=n/a" in lines[-1]
