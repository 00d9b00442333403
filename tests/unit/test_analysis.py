"""Canary analysis (planning/analysis.py): quantiles as PromQL computes them, verdicts, when it is due."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpufleet.api.v1alpha1 import Analysis
from gpufleet.planning.analysis import (
    PodCounts,
    RevisionCounts,
    add_pods,
    analysis_due,
    histogram_quantile,
    judge,
)

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
INF = math.inf


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # 100 observations: 50 ≤ 0.1 s, 90 ≤ 0.5 s, all ≤ 1 s. Rank 95 falls in (0.5, 1]: 0.5 + 0.5 * 5/10.
        (0.95, {0.1: 50, 0.5: 90, 1.0: 100, INF: 100}, 0.75),
        (0.5, {0.1: 50, 0.5: 90, 1.0: 100, INF: 100}, 0.1),
        # The first bucket interpolates from 0, as PromQL does for positive bounds.
        (0.5, {1.0: 10, INF: 10}, 0.5),
        # Beyond the highest finite bound: that bound (PromQL cannot know more).
        (0.95, {0.1: 10, 0.5: 20, INF: 100}, 0.5),
        (0.95, {INF: 0}, None),  # no observations
        (0.95, {0.5: 10}, None),  # no +Inf bucket: not a histogram PromQL would answer for
        (0.95, {}, None),
    ],
)
def test_histogram_quantile_matches_promql(
    q: float, buckets: dict[float, float], expected: float | None
) -> None:
    assert histogram_quantile(q, buckets) == expected


def counts(requests: float, errors: float = 0.0, ttft: float = 0.2, itl: float = 0.03) -> RevisionCounts:
    """`requests` requests, each with its TTFT and ITL inside the bucket whose upper bound is given."""
    return RevisionCounts(
        requests,
        errors,
        {ttft: requests, INF: requests},
        {itl: requests * 100, INF: requests * 100},
    )


SETTINGS = Analysis.model_validate({})  # 1 % errors, 1.5x TTFT and ITL, 100 requests


@pytest.mark.parametrize(
    ("canary", "stable", "verdict", "words"),
    [
        pytest.param(None, counts(500), "NoData", ("no metrics for the canary",), id="no series"),
        pytest.param(counts(40), counts(500), "Inconclusive", ("40 of 100",), id="too few requests"),
        pytest.param(counts(200), counts(500), "Passed", ("200 canary requests",), id="as good as stable"),
        pytest.param(
            counts(200, errors=40),
            counts(500),
            "Failed",
            ("error rate 20.0 % on the canary (stable 0.0 %), limit 1.0 %",),
            id="20 % errors",
        ),
        pytest.param(counts(200, errors=1), counts(500), "Passed", (), id="0.5 % errors is within 1 %"),
        # Before the minimum sample: 1 % of 100 requests is one error; a second breaks it for good.
        pytest.param(
            counts(12, errors=2),
            counts(500),
            "Failed",
            ("error rate 16.7 % on the canary (stable 0.0 %), limit 1.0 %", "2 errors in its first 12"),
            id="error budget of the minimum sample spent",
        ),
        pytest.param(counts(12, errors=1), counts(500), "Inconclusive", ("12 of 100",), id="one error holds"),
        # increase() extrapolates: one error read as 1.3 is one error, not a spent budget.
        pytest.param(
            counts(12, errors=1.3), counts(500), "Inconclusive", ("12 of 100",), id="extrapolated one"
        ),
        pytest.param(counts(12, errors=1.6), counts(500), "Failed", ("2 errors",), id="extrapolated two"),
        pytest.param(
            counts(200, ttft=0.4),
            counts(500, ttft=0.2),
            "Failed",
            ("TTFT p95 0.380 s on the canary, 2.00x the stable revision's 0.190 s, limit 1.5x",),
            id="2x TTFT",
        ),
        pytest.param(
            counts(200, itl=0.09),
            counts(500, itl=0.03),
            "Failed",
            ("inter-token latency p95", "limit 1.5x"),
            id="3x ITL",
        ),
        pytest.param(
            counts(200),
            counts(30),
            "Inconclusive",
            ("no stable figure to compare with", "holding the step"),
            id="stable too quiet to compare",
        ),
        pytest.param(
            counts(200, errors=40),
            None,
            "Failed",
            ("error rate 20.0 % on the canary (stable no data)",),
            id="errors fail even without a stable figure",
        ),
    ],
)
def test_verdicts(
    canary: RevisionCounts | None, stable: RevisionCounts | None, verdict: str, words: tuple[str, ...]
) -> None:
    judgement = judge(SETTINGS, canary, stable)
    assert judgement.verdict == verdict
    for word in words:
        assert word in judgement.message


def test_absolute_limits_and_turning_the_relative_ones_off() -> None:
    strict = Analysis.model_validate({"maxTTFTSeconds": 0.1, "maxTTFTRatio": None, "maxITLRatio": None})
    judgement = judge(strict, counts(200, ttft=0.2), None)
    assert judgement.verdict == "Failed"
    assert "TTFT p95 0.190 s on the canary (stable no data), limit 0.1 s" in judgement.message
    assert judge(strict, counts(200, ttft=0.05), None).verdict == "Passed"


def test_figures_of_both_revisions_are_reported() -> None:
    judgement = judge(SETTINGS, counts(200, errors=40), counts(500))
    assert judgement.canary is not None
    assert judgement.stable is not None
    assert (judgement.canary.requests, judgement.canary.error_rate) == (200, 0.2)
    assert judgement.stable.ttft_p95_seconds == pytest.approx(0.19)


def test_pods_of_a_revision_add_up() -> None:
    a = PodCounts(10, 1, {0.5: 10, INF: 10}, {})
    b = PodCounts(30, 0, {0.5: 20, 1.0: 30, INF: 30}, {})
    total = add_pods([a, b])
    assert total is not None
    assert (total.requests, total.errors) == (40, 1)
    assert total.ttft == {0.5: 30, 1.0: 30, INF: 40}
    assert add_pods([]) is None


def body(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "m", "namespace": "ml"},
        "spec": {"model": {"uri": "hf://org/m"}, "rollout": {"steps": [{"weight": 50}], "analysis": {}}},
        "status": {"revisions": {"current": {"revision": 2, "name": "m-2"}, "stableSlot": "a"}, **status},
    }


ROLLOUT = {
    "revision": 2,
    "step": 1,
    "steps": 1,
    "phase": "Paused",
    "targetWeight": 50,
    "weightReachedAt": "2026-12-04T11:58:00Z",
}


def test_due_once_the_weight_is_reached_over_the_time_since() -> None:
    request = analysis_due(body(rollout=ROLLOUT), NOW)
    assert request is not None
    assert (request.revision, request.step, request.canary_slot, request.stable_slot) == (2, 1, "b", "a")
    assert request.window_seconds == 120


@pytest.mark.parametrize(
    ("changes", "after", "due"),
    [
        ({}, timedelta(), True),
        (
            {
                "analysis": {
                    "revision": 2,
                    "step": 1,
                    "verdict": "Passed",
                    "checkedAt": "2026-12-04T11:59:30Z",
                }
            },
            timedelta(),
            False,
        ),
        (
            {
                "analysis": {
                    "revision": 2,
                    "step": 1,
                    "verdict": "Passed",
                    "checkedAt": "2026-12-04T11:59:30Z",
                }
            },
            timedelta(seconds=31),
            True,
        ),
        (
            {
                "analysis": {
                    "revision": 2,
                    "step": 1,
                    "verdict": "Failed",
                    "checkedAt": "2026-12-04T11:00:00Z",
                }
            },
            timedelta(),
            False,
        ),
        (
            {
                "analysis": {
                    "revision": 1,
                    "step": 1,
                    "verdict": "Passed",
                    "checkedAt": "2026-12-04T11:59:59Z",
                }
            },
            timedelta(),
            True,
        ),
        ({"rollout": {**ROLLOUT, "weightReachedAt": None}}, timedelta(), False),
        ({"rollout": {**ROLLOUT, "phase": "Aborted"}}, timedelta(), False),
    ],
    ids=[
        "first",
        "judged 30 s ago",
        "an interval later",
        "already failed",
        "another revision",
        "not at weight",
        "aborted",
    ],
)
def test_when_a_judgement_is_due(changes: dict[str, Any], after: timedelta, due: bool) -> None:
    status = {"rollout": ROLLOUT, **changes}
    assert (analysis_due(body(**status), NOW + after) is not None) == due


def test_no_analysis_without_the_setting_or_with_an_invalid_spec() -> None:
    plain = body(rollout=ROLLOUT)
    del plain["spec"]["rollout"]["analysis"]
    assert analysis_due(plain, NOW) is None
    broken = body(rollout=ROLLOUT)
    broken["spec"]["replicas"] = "many"
    assert analysis_due(broken, NOW) is None


@pytest.mark.parametrize(
    ("max_error_rate", "min_requests", "errors", "verdict"),
    [
        (0.01, 100, 1, "Inconclusive"),  # budget 1 error
        (0.01, 100, 2, "Failed"),
        (0.05, 100, 5, "Inconclusive"),  # budget 5
        (0.05, 100, 6, "Failed"),
        (0.01, 30, 1, "Failed"),  # budget 0.3: any error breaks 1 % of 30
        (0.0, 100, 1, "Failed"),
    ],
)
def test_the_error_budget_of_the_minimum_sample(
    max_error_rate: float, min_requests: int, errors: int, verdict: str
) -> None:
    settings = Analysis.model_validate({"maxErrorRate": max_error_rate, "minRequests": min_requests})
    assert judge(settings, counts(10, errors=errors), counts(500)).verdict == verdict
