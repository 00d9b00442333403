"""Executes reconcile plans: list → plan (gpufleet.planning.reconcile) → execute → write status.

Holds only what is safe to lose: what it applied last per object (so a live
object that is exactly that is not applied again) and the status it wrote last
(the watch may not show it yet). A restart costs one no-op apply per object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from gpufleet.adapters.kube import KubeApi
from gpufleet.api.v1alpha1 import API_VERSION, KIND
from gpufleet.planning.cost import ProductPrices
from gpufleet.planning.observe import Key, key_of, version_of
from gpufleet.planning.reconcile import (
    CapacitySnapshot,
    Observed,
    ReconcilePlan,
    ReconcilePolicy,
    Remembered,
    names_to_look_up,
    plan_reconcile,
)
from gpufleet.planning.workloads import selector_string
from gpufleet.runtime.capacity_store import CapacityStore
from gpufleet.runtime.events import post_event


class Reconciler:
    def __init__(
        self,
        kube: KubeApi,
        policy: ReconcilePolicy,
        clock: Callable[[], datetime],
        capacity: CapacityStore | None = None,
        prices: Mapping[str, ProductPrices] | None = None,
    ) -> None:
        self.kube = kube
        self.policy = policy
        self.clock = clock
        self.capacity = capacity
        # Read on every reconcile, so a price refresh (a new mapping assigned here) takes effect.
        self.prices: Mapping[str, ProductPrices] = prices or {}
        self._applied: dict[Key, dict[tuple[str, str], tuple[str, str]]] = {}
        self._statuses: dict[Key, dict[str, Any]] = {}

    def reconcile(self, body: Mapping[str, Any]) -> ReconcilePlan:
        key = key_of(body)
        namespace, selector = key[0], selector_string(key[1])
        now = self.clock()
        remembered = Remembered(dict(self._applied.get(key, {})), self._statuses.get(key))
        observed = Observed(
            body=body,
            pods=self.kube.list("v1", "Pod", namespace, selector),
            deployments=self.kube.list("apps/v1", "Deployment", namespace, selector),
            capacity=self.capacity.snapshot(now) if self.capacity else CapacitySnapshot(),
            prices=self.prices,
            remembered=remembered,
            looked_up={
                (ref.kind, ref.name): self.kube.get(ref.api_version, ref.kind, namespace, ref.name)
                for ref in names_to_look_up(body, remembered.applied)
            },
        )
        plan = plan_reconcile(observed, self.policy, now)
        self.execute(body, plan)
        return plan

    def execute(self, body: Mapping[str, Any], plan: ReconcilePlan) -> None:
        namespace = plan.key[0]
        applied = self._applied.setdefault(plan.key, {})
        for drain in plan.drains:
            self.kube.delete("v1", "Pod", namespace, drain.pod)
        for event in plan.events:
            post_event(self.kube, body, event, self.clock())
        for write in plan.applies:
            result = self.kube.apply(write.obj)
            applied[(write.obj["kind"], write.obj["metadata"]["name"])] = (
                write.template_hash,
                version_of(result),
            )
            if write.event is not None:
                post_event(self.kube, body, write.event, self.clock())
        for removal in plan.removals:
            self.kube.delete(removal.api_version, removal.kind, namespace, removal.name)
            applied.pop((removal.kind, removal.name), None)
            post_event(self.kube, body, removal.event, self.clock())
        if plan.status.patch is not None:
            self.kube.patch_status(API_VERSION, KIND, namespace, plan.key[1], plan.status.patch)
            self._statuses[plan.key] = plan.status.stored_form
            for event in plan.status.events:
                post_event(self.kube, body, event, self.clock())

    def applied_version(self, key: Key, kind: str, name: str) -> str | None:
        """The version of the object that gpufleet's own last apply produced, if remembered."""
        remembered = self._applied.get(key, {}).get((kind, name))
        return remembered[1] if remembered else None

    def forget(self, key: Key) -> None:
        """Drop everything remembered of a deleted ModelDeployment."""
        self._statuses.pop(key, None)
        self._applied.pop(key, None)

    def invalidate(self, key: Key, kind: str, name: str) -> None:
        """An owned object changed outside a reconcile: apply it again on the next pass."""
        self._applied.get(key, {}).pop((kind, name), None)
