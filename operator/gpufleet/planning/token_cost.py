"""Cost per million output tokens, per revision: the figure a migration from a paid API rests on.

Each revision's live replicas are priced as the reconcile prices them (planning.cost, with that
revision's own accelerator: a quantized revision on half the GPUs costs half), and divided by the
tokens its ready replicas generated per second (the rate of vLLM's `vllm:generation_tokens_total`,
read per pod). A pod belongs to the revision its `gpufleet.io/revision-hash` label names; a pod
without one is of its slot's revision (the stable one, or the warm standby in the other slot).

Pure: the runtime passes pods, per-pod token rates, prices, the history and the time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from gpufleet.api.v1alpha1 import (
    ModelDeploymentSpec,
    RevisionsStatus,
    RevisionTokenCost,
    TokenCostStatus,
)
from gpufleet.planning.cost import ProductPrices, estimate_for
from gpufleet.planning.observe import ObservedPod
from gpufleet.planning.revisions import ObservedRevision, pod_label_hash, spec_of_revision

WINDOW_SECONDS = 300  # the rate's window in the default query
SECONDS_PER_HOUR = 3600
PER_MILLION = 1_000_000


def revision_of_pod(pod: ObservedPod, revisions: RevisionsStatus | None) -> str:
    """The hash of the revision a pod runs ("" when it cannot be told)."""
    if pod.revision_hash:
        return pod.revision_hash
    if revisions is None:
        return ""
    if pod.slot == revisions.stable_slot:
        return revisions.stable.hash if revisions.stable else revisions.current.hash
    return revisions.standby.hash if revisions.standby else ""


def token_costs(
    spec: ModelDeploymentSpec,
    pods: Sequence[ObservedPod],
    tokens_per_second: Mapping[str, float],
    prices: Mapping[str, ProductPrices],
    history: Sequence[ObservedRevision],
    revisions: RevisionsStatus | None,
    now: datetime,
) -> TokenCostStatus:
    by_hash: dict[str, list[ObservedPod]] = {}
    for pod in pods:
        if not pod.terminating:
            by_hash.setdefault(revision_of_pod(pod, revisions), []).append(pod)
    known = {pod_label_hash(r.template): r for r in history}
    rows: list[RevisionTokenCost] = []
    currency, missing = "USD", []
    for digest, members in sorted(by_hash.items()):
        found = known.get(digest)
        revision_spec = (spec_of_revision(spec, found) if found else None) or spec
        estimate = estimate_for(revision_spec, [(p.zone, p.capacity_type) for p in members], prices)
        currency = estimate.currency
        tokens = sum(tokens_per_second.get(p.name, 0.0) for p in members if p.ready)
        per_million = None
        if estimate.per_hour is not None and tokens > 0:
            per_million = estimate.per_hour / (tokens * SECONDS_PER_HOUR) * PER_MILLION
        elif estimate.per_hour is None:
            missing.append(estimate.message)
        rows.append(
            RevisionTokenCost(
                revision=found.revision if found else None,
                hash=digest,
                replicas=len(members),
                output_tokens_per_second=round(tokens, 3),
                cost_per_hour=None if estimate.per_hour is None else round(estimate.per_hour, 4),
                per_million_output_tokens=None if per_million is None else round(per_million, 4),
            )
        )
    rows.sort(key=lambda row: (row.revision is None, -(row.revision or 0)))
    message = "; ".join(dict.fromkeys(missing))
    if not message and any(row.per_million_output_tokens is None for row in rows):
        message = "a revision generated no tokens in the window: no cost per token for it"
    return TokenCostStatus(
        sampled_at=now, window_seconds=WINDOW_SECONDS, currency=currency, revisions=rows, message=message
    )
