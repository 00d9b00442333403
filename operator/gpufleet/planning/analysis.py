"""Judging a canary revision on LLM signals against limits and against the stable revision.

The signals are what vLLM 0.34.0's OpenAI server exports: `http_requests_total{handler,status}` from
prometheus-fastapi-instrumentator's defaults (status grouped 2xx/4xx/5xx), and the histograms
`vllm:time_to_first_token_seconds` and `vllm:inter_token_latency_seconds`. The runtime reads each pod's
increase over the window (every request since the step's weight was reached) and adds the pods of each
revision's slot; this judges the sums.

The rules, in order: no series for the canary is NoData and too few requests is Inconclusive (the step
holds: never promote or roll back on no data), unless the canary's errors already exceed maxErrorRate
of minRequests, which fails it before the sample is complete (its error rate at minRequests is then
above the limit whatever the remaining requests answer); any limit broken is Failed, naming the metric, both
revisions' values and the limit; a relative limit that cannot be judged (the stable revision has too
few requests) holds as Inconclusive, unless another limit already failed.

Pure: no I/O; the quantile follows PromQL's histogram_quantile so the figures match a dashboard's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from gpufleet.api.v1alpha1 import (
    Analysis,
    AnalysisStatus,
    ModelDeploymentSpec,
    RevisionFigures,
    Slot,
    Verdict,
)
from gpufleet.planning.observe import stored_status

P95 = 0.95
COMPLETION_HANDLERS = ("/v1/completions", "/v1/chat/completions")


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """PromQL's histogram_quantile over cumulative buckets (upper bound → count): linear interpolation
    inside the bucket the rank falls in; the highest finite bound when it falls in +Inf. None without
    observations."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return bounds[-2] if len(bounds) > 1 else None
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return bounds[-2] if len(bounds) > 1 else None


@dataclass(frozen=True)
class PodCounts:
    """One pod's increases over the window, as Prometheus answered them."""

    requests: float = 0.0  # completion requests answered, any status
    errors: float = 0.0  # of them 5xx
    ttft: Mapping[float, float] = field(default_factory=dict)  # bucket bound → count
    itl: Mapping[float, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RevisionCounts:
    requests: float
    errors: float
    ttft: Mapping[float, float]
    itl: Mapping[float, float]

    def figures(self) -> RevisionFigures:
        return RevisionFigures(
            requests=round(self.requests, 1),
            error_rate=_rounded(self.errors / self.requests) if self.requests > 0 else None,
            ttft_p95_seconds=_rounded(histogram_quantile(P95, self.ttft)),
            itl_p95_seconds=_rounded(histogram_quantile(P95, self.itl)),
        )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def add_pods(pods: Sequence[PodCounts]) -> RevisionCounts | None:
    """A revision's counts: its pods' summed; None when no pod has any series (missing data)."""
    if not pods:
        return None

    def summed(key: str) -> dict[float, float]:
        total: dict[float, float] = {}
        for pod in pods:
            for bound, count in getattr(pod, key).items():
                total[bound] = total.get(bound, 0.0) + count
        return total

    return RevisionCounts(
        sum(p.requests for p in pods), sum(p.errors for p in pods), summed("ttft"), summed("itl")
    )


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    message: str
    canary: RevisionFigures | None
    stable: RevisionFigures | None


def _percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def _seconds(value: float | None) -> str:
    return "no data" if value is None else f"{value:.3f} s"


def _error_budget_spent(
    settings: Analysis, canary: RevisionCounts, stable_figures: RevisionFigures | None
) -> str:
    """Why the canary fails before its minimum sample is complete ("" when it does not): its errors
    already exceed `maxErrorRate` of `minRequests`, so the minimum sample's error rate breaks the limit
    whatever its remaining requests answer. Each error costs a user; waiting for the rest of the sample
    would only add more. Counts are rounded: increase() extrapolates, and one error read as 1.3 must
    not count as two."""
    errors = math.floor(canary.errors + 0.5)
    budget = settings.max_error_rate * settings.min_requests
    if errors <= budget:
        return ""
    stable_rate = stable_figures.error_rate if stable_figures else None
    stable_text = "no data" if stable_rate is None else _percent(stable_rate)
    return (
        f"error rate {_percent(canary.errors / canary.requests)} on the canary (stable {stable_text}), "
        f"limit {_percent(settings.max_error_rate)}: {errors} errors in its first "
        f"{canary.requests:.0f} requests already break it for the minimum {settings.min_requests}"
    )


def judge(settings: Analysis, canary: RevisionCounts | None, stable: RevisionCounts | None) -> Judgement:
    stable_figures = stable.figures() if stable else None
    if canary is None:
        return Judgement("NoData", "no metrics for the canary's pods: holding the step", None, stable_figures)
    figures = canary.figures()
    if canary.requests < settings.min_requests:
        spent = _error_budget_spent(settings, canary, stable_figures)
        if spent:
            return Judgement("Failed", spent, figures, stable_figures)
        message = f"{canary.requests:.0f} of {settings.min_requests} canary requests so far: holding the step"
        return Judgement("Inconclusive", message, figures, stable_figures)
    stable_judged = stable is not None and stable.requests >= settings.min_requests
    failures: list[str] = []
    unknown: list[str] = []
    rate = canary.errors / canary.requests
    stable_rate = stable_figures.error_rate if stable_figures else None
    if rate > settings.max_error_rate:
        stable_text = "no data" if stable_rate is None else _percent(stable_rate)
        failures.append(
            f"error rate {_percent(rate)} on the canary (stable {stable_text}), "
            f"limit {_percent(settings.max_error_rate)}"
        )
    for name, value, other, absolute, ratio in (
        (
            "TTFT p95",
            figures.ttft_p95_seconds,
            stable_figures.ttft_p95_seconds if stable_figures else None,
            settings.max_ttft_seconds,
            settings.max_ttft_ratio,
        ),
        (
            "inter-token latency p95",
            figures.itl_p95_seconds,
            stable_figures.itl_p95_seconds if stable_figures else None,
            settings.max_itl_seconds,
            settings.max_itl_ratio,
        ),
    ):
        if value is None:
            if absolute is not None or ratio is not None:
                unknown.append(f"{name}: no data for the canary")
            continue
        if absolute is not None and value > absolute:
            failures.append(
                f"{name} {_seconds(value)} on the canary (stable {_seconds(other)}), limit {absolute:g} s"
            )
        if ratio is None:
            continue
        if not stable_judged or other is None or other <= 0:
            unknown.append(f"{name}: no stable figure to compare with")
        elif value > ratio * other:
            failures.append(
                f"{name} {_seconds(value)} on the canary, {value / other:.2f}x the stable revision's "
                f"{_seconds(other)}, limit {ratio:g}x"
            )
    if failures:
        return Judgement("Failed", "; ".join(failures), figures, stable_figures)
    if unknown:
        return Judgement("Inconclusive", "; ".join(unknown) + ": holding the step", figures, stable_figures)
    return Judgement(
        "Passed", f"{canary.requests:.0f} canary requests within every limit", figures, stable_figures
    )


@dataclass(frozen=True)
class AnalysisRequest:
    """A judgement that is due: of which revision and step, over how many seconds, which slots."""

    settings: Analysis
    revision: int
    step: int
    window_seconds: float  # since the step's weight was reached
    canary_slot: Slot
    stable_slot: Slot
    canary_hash: str = ""  # the canary revision's pod label; "" when status does not say

    def is_canary(self, slot: Slot, revision_hash: str) -> bool:
        return slot == self.canary_slot and (not self.canary_hash or revision_hash == self.canary_hash)


def analysis_due(body: Mapping[str, Any], now: datetime) -> AnalysisRequest | None:
    """The judgement due for a ModelDeployment now, or None: no analysis asked for, no canary at its
    weight, already rolled back, or judged less than an interval ago at the same step."""
    try:
        spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return None  # an invalid spec is never acted on; the reconcile reports it
    settings = spec.rollout.analysis
    status = stored_status(body.get("status"))
    rollout, revisions = status.rollout, status.revisions
    if settings is None or rollout is None or revisions is None or rollout.phase == "Aborted":
        return None
    reached = rollout.weight_reached_at
    if reached is None or now <= reached:
        return None
    last = status.analysis
    same_step = last is not None and (last.revision, last.step) == (rollout.revision, rollout.step)
    if same_step and last is not None:
        recent = (now - last.checked_at).total_seconds() < settings.interval_seconds
        if last.verdict == "Failed" or recent:
            return None
    canary: Slot = "a" if revisions.stable_slot == "b" else "b"
    return AnalysisRequest(
        settings,
        rollout.revision,
        rollout.step,
        (now - reached).total_seconds(),
        canary,
        revisions.stable_slot,
        revisions.canary.hash if revisions.canary else "",
    )


def judgement_status(request: AnalysisRequest, judgement: Judgement, now: datetime) -> AnalysisStatus:
    return AnalysisStatus(
        revision=request.revision,
        step=request.step,
        verdict=judgement.verdict,
        checked_at=now,
        window_seconds=round(request.window_seconds, 1),
        canary=judgement.canary,
        stable=judgement.stable,
        message=judgement.message,
    )
