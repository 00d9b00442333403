"""Executes the cost-per-token reading: due? → pods, history, token rates → status.tokenCost.

It runs in the serving-metrics sweep beside the autoscaler and the canary analyst, at most every
GPUFLEET_TOKEN_COST_REFRESH_SECONDS per model (each write is a watch event and a reconcile). It
writes only `status.tokenCost`; the reconcile leaves that member alone. No Prometheus, no prices or
an error reading them: nothing is written, and the member keeps its last reading with its time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from gpufleet.adapters.kube import KubeApi
from gpufleet.api.v1alpha1 import API_VERSION, KIND, ModelDeploymentSpec
from gpufleet.planning.cost import ProductPrices
from gpufleet.planning.observe import observe_pod, stored_status
from gpufleet.planning.revisions import observe_revisions
from gpufleet.planning.token_cost import token_costs
from gpufleet.planning.workloads import selector_string

log = logging.getLogger("gpufleet")


class PodValues(Protocol):
    def pod_values(self, signal: str, namespace: str, pods: list[str]) -> dict[str, float]: ...


class TokenCoster:
    def __init__(
        self,
        kube: KubeApi,
        prices: Callable[[], Mapping[str, ProductPrices]],
        clock: Callable[[], datetime],
        refresh_seconds: int,
    ) -> None:
        self.kube = kube
        self.prices = prices
        self.clock = clock
        self.refresh_seconds = refresh_seconds

    def due(self, body: Mapping[str, Any], now: datetime) -> bool:
        if self.refresh_seconds <= 0 or not self.prices():
            return False
        last = stored_status(body.get("status")).token_cost
        return last is None or (now - last.sampled_at).total_seconds() >= self.refresh_seconds

    def evaluate(self, body: Mapping[str, Any], reader: PodValues | None) -> bool:
        """Read and write the model's cost per token if due; whether it was written."""
        now = self.clock()
        if reader is None or not self.due(body, now):
            return False
        try:
            spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return False
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        pods = [observe_pod(p) for p in self.kube.list("v1", "Pod", namespace, selector_string(name))]
        if not pods:
            return False
        tokens = reader.pod_values("generation_tokens", namespace, [p.name for p in pods])
        history = observe_revisions(
            self.kube.list("apps/v1", "ControllerRevision", namespace, selector_string(name)), meta["uid"]
        )
        status = stored_status(body.get("status"))
        figures = token_costs(spec, pods, tokens, self.prices(), history, status.revisions, now)
        self.kube.patch_status(API_VERSION, KIND, namespace, name, {"tokenCost": figures.to_json()})
        return True
