"""Executes reconcile plans: list → plan (gpufleet.planning.reconcile) → execute → write status.

Holds only what is safe to lose: what it applied last per object (so a live
object that is exactly that is not applied again) and the status it wrote last
(the watch may not show it yet). A restart costs one no-op apply per object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from gpufleet.adapters.kube import KubeApi, KubeError
from gpufleet.api.v1alpha1 import API_VERSION, KIND
from gpufleet.planning.cost import ProductPrices
from gpufleet.planning.credentials import SecretLookup
from gpufleet.planning.observe import Key, key_of, owned_by, version_of
from gpufleet.planning.reconcile import (
    CapacitySnapshot,
    Drain,
    ObjectRef,
    Observed,
    ReconcilePlan,
    ReconcilePolicy,
    Remembered,
    names_to_look_up,
    plan_reconcile,
    route_name,
)
from gpufleet.planning.report import EventView
from gpufleet.planning.traffic import ROUTE_API_VERSION, ROUTE_KIND, RouteLookup
from gpufleet.planning.workloads import selector_string
from gpufleet.runtime.capacity_store import CapacityStore
from gpufleet.runtime.events import post_event

# A PDB-refused drain is asked again this soon (kubectl drain retries every 5 s).
EVICTION_RETRY_SECONDS = 5.0
# A route write refused as stale (someone edited the HTTPRoute since it was read) is tried again this soon.
ROUTE_RETRY_SECONDS = 1.0
# The longest a reconcile waits for its capacity Events to be posted before it writes status.
EVENT_FLUSH_SECONDS = 5.0
# A credentials Secret found is checked again after this; entries not used for SECRET_FORGET go.
SECRET_RECHECK = timedelta(minutes=1)
SECRET_FORGET = timedelta(minutes=10)


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
        self._foreign: dict[Key, set[ObjectRef]] = {}  # objects of our names that belong to others
        self._route_retry: set[Key] = set()  # models whose route write was refused: reconcile again soon
        # (namespace, name) of a credentials Secret → when it was looked up, and what was found.
        self._secrets: dict[tuple[str, str], tuple[datetime, SecretLookup]] = {}

    def reconcile(self, body: Mapping[str, Any]) -> ReconcilePlan:
        key = key_of(body)
        namespace, selector = key[0], selector_string(key[1])
        now = self.clock()
        remembered = Remembered(dict(self._applied.get(key, {})), self._statuses.get(key))
        foreign = self._foreign.get(key, set())
        observed = Observed(
            body=body,
            pods=self.kube.list("v1", "Pod", namespace, selector),
            deployments=self.kube.list("apps/v1", "Deployment", namespace, selector),
            revisions=self.kube.list("apps/v1", "ControllerRevision", namespace, selector),
            capacity=self.capacity.snapshot(now) if self.capacity else CapacitySnapshot(),
            prices=self.prices,
            remembered=remembered,
            looked_up={
                (ref.kind, ref.name): self.kube.get(ref.api_version, ref.kind, namespace, ref.name)
                for ref in names_to_look_up(body, remembered.applied, sorted(foreign, key=str))
            },
            secret=self._credentials(namespace, body),
            route=self._route(namespace, body, remembered.status),
        )
        plan = plan_reconcile(observed, self.policy, now)
        # Foreign objects that are gone or ours now need no more looking up.
        foreign -= {r for r in foreign if not _foreign(observed.looked_up.get((r.kind, r.name)), body)}
        known_foreign = len(self._foreign.get(key, ()))
        refused = self.execute(body, plan)
        if len(self._foreign.get(key, ())) > known_foreign:
            plan = replace(plan, requeue_after=0.0)  # report the conflict now, not at the next resync
        if key in self._route_retry:
            self._route_retry.discard(key)
            plan = replace(
                plan, requeue_after=min(ROUTE_RETRY_SECONDS, plan.requeue_after or ROUTE_RETRY_SECONDS)
            )
        if refused:
            plan = replace(
                plan,
                drains=tuple(d for d in plan.drains if d not in refused),
                refused_drains=refused,
                requeue_after=min(EVICTION_RETRY_SECONDS, plan.requeue_after or EVICTION_RETRY_SECONDS),
            )
        return plan

    def _route(
        self, namespace: str, body: Mapping[str, Any], written_status: Mapping[str, Any] | None
    ) -> RouteLookup | None:
        """spec.rollout.httpRoute, read on every pass that names one: it is the user's object, edited
        outside gpufleet (a GitOps sync may set its weights back), so no cache would be right for long."""
        name = route_name(body, written_status)
        if not name:
            return None
        try:
            return RouteLookup(name, self.kube.get(ROUTE_API_VERSION, ROUTE_KIND, namespace, name))
        except KubeError as error:
            # The weights stay as they are and the rollout falls back to replica ratio, reported as
            # TrafficRouted=False: no Gateway API CRDs (404 on the resource), or no RBAC for it (403).
            reason = (
                "the operator may not get HTTPRoutes (403): the chart's RBAC grants it"
                if error.status == 403
                else str(error)[:200]
            )
            return RouteLookup(name, None, error=reason)

    def _credentials(self, namespace: str, body: Mapping[str, Any]) -> SecretLookup | None:
        """The credentials Secret's key names (its values are dropped here), for CredentialsReady.

        A GET by name on every reconcile of a model that has one: the chart grants `get` on Secrets and
        no list or watch, so the operator cannot enumerate Secrets, and a cache of them would hold
        every Secret's values in its memory."""
        model = (body.get("spec") or {}).get("model") or {}
        name = model.get("credentialsSecret")
        if not isinstance(name, str) or not name:
            return None
        now = self.clock()
        remembered = self._secrets.get((namespace, name))
        if remembered is not None:
            checked, lookup = remembered
            # A Secret found is looked at again a minute later, one missing at every pass: a steady
            # reconcile makes no request for it, and the fix of a missing one shows at once.
            if lookup.found and now - checked < SECRET_RECHECK:
                return lookup
        lookup = self._look_up_secret(namespace, name)
        self._secrets = {k: v for k, v in self._secrets.items() if now - v[0] < SECRET_FORGET}
        self._secrets[(namespace, name)] = (now, lookup)
        return lookup

    def _look_up_secret(self, namespace: str, name: str) -> SecretLookup:
        try:
            secret = self.kube.get("v1", "Secret", namespace, name)
        except KubeError as error:
            # Unknown, and nothing is held back: an install without the chart's Secret rule (403), or
            # an API error, which must not stop a reconcile that may be moving replicas off a node.
            reason = "the operator may not get Secrets (403)" if error.status == 403 else str(error)[:200]
            return SecretLookup(name, None, error=reason)
        if secret is None:
            return SecretLookup(name, False)
        keys = {*(secret.get("data") or {}), *(secret.get("stringData") or {})}
        return SecretLookup(name, True, frozenset(keys))

    def execute(self, body: Mapping[str, Any], plan: ReconcilePlan) -> tuple[Drain, ...]:
        """Carry the plan out; the drains the PDB refused (retried on the next pass)."""
        namespace = plan.key[0]
        applied = self._applied.setdefault(plan.key, {})
        refused = self._drain(body, plan)
        held = {d.deployment for d in refused}
        found_taken = False
        for event in plan.events:
            post_event(self.kube, body, event, self.clock())
        if plan.events and plan.status.patch is not None:
            # Capacity events (a warning acted on) are recorded as handled in the status: posted first,
            # a kill between the two repeats them rather than losing them (at least once).
            self.kube.flush_events(EVENT_FLUSH_SECONDS)
        if plan.route is not None:
            # Before the applies: a weight going to 0 lands before that slot's Service changes pods (a
            # newer canary), and a weight going up is on a Service applied in an earlier pass.
            self._write_route(body, namespace, plan)
        for write in plan.applies:
            if write.obj["kind"] == "Deployment" and write.obj["metadata"]["name"] in held:
                continue  # its lowered count would remove another pod than the one the PDB kept
            if write.check_owner and self._taken(body, plan.key, write.obj):
                found_taken = True
                continue
            result = self.kube.apply(write.obj)
            applied[(write.obj["kind"], write.obj["metadata"]["name"])] = (
                write.template_hash,
                version_of(result),
            )
            if write.event is not None:
                post_event(self.kube, body, write.event, self.clock())
        for removal in plan.removals:
            if removal.kind == "Deployment" and removal.name in held:
                continue  # deleting it would take the pod the PDB kept with it
            self.kube.delete(removal.api_version, removal.kind, namespace, removal.name)
            applied.pop((removal.kind, removal.name), None)
            if removal.event is not None:
                post_event(self.kube, body, removal.event, self.clock())
        # A pass that found one of its names taken wrote less than its status says (a revision it did
        # not create, a group it did not apply): the next pass, at once, plans around it and writes it.
        if plan.status.patch is not None and not found_taken:
            self.kube.patch_status(API_VERSION, KIND, namespace, plan.key[1], plan.status.patch)
            self._statuses[plan.key] = plan.status.stored_form
            for event in plan.status.events:
                post_event(self.kube, body, event, self.clock())
        return refused

    def _write_route(self, body: Mapping[str, Any], namespace: str, plan: ReconcilePlan) -> None:
        """Write the backend weights. A route edited since it was read (409), or gone (404), is left
        alone: the next pass reads it again, which this asks for now. Any other refusal (a 403 without
        the chart's RBAC, an API error) is reported and tried again the same way, and never stops the
        rest of the pass: the Deployments it applies may be moving replicas off a node."""
        assert plan.route is not None
        try:
            self.kube.patch(ROUTE_API_VERSION, ROUTE_KIND, namespace, plan.route.name, plan.route.patch)
        except KubeError as error:
            self._route_retry.add(plan.key)
            if error.status in (404, 409):
                return
            post_event(
                self.kube,
                body,
                EventView(
                    "Warning",
                    "HTTPRouteWriteFailed",
                    f"Could not write the backend weights of HTTPRoute {plan.route.name}: {str(error)[:300]}",
                ),
                self.clock(),
            )

    def _taken(self, body: Mapping[str, Any], key: Key, obj: Mapping[str, Any]) -> bool:
        """Whether an object of that name exists and is not this ModelDeployment's: then it is left alone,
        remembered, and the next pass (right away) reports it as Degraded ObjectConflict."""
        meta = obj["metadata"]
        existing = self.kube.get(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        if not _foreign(existing, body):
            return False
        self._foreign.setdefault(key, set()).add(ObjectRef(obj["apiVersion"], obj["kind"], meta["name"]))
        return True

    def _drain(self, body: Mapping[str, Any], plan: ReconcilePlan) -> tuple[Drain, ...]:
        """Drain the plan's pods; those the PDB kept (to retry)."""
        namespace = plan.key[0]
        refused: list[Drain] = []
        for drain in plan.drains:
            if not drain.evict:
                self.kube.delete("v1", "Pod", namespace, drain.pod)
            elif self.kube.evict(namespace, drain.pod):
                continue
            elif drain.reason == "deadline":
                # The cloud takes the node at the deadline whatever the PDB says: a graceful delete now
                # lets in-flight requests finish, which being killed with the node would not.
                self.kube.delete("v1", "Pod", namespace, drain.pod)
                post_event(
                    self.kube,
                    body,
                    EventView(
                        "Warning",
                        "EvictionOverridden",
                        f"Deleted pod {drain.pod}: its PodDisruptionBudget refused the eviction, and its "
                        "node is reclaimed at the deadline",
                    ),
                    self.clock(),
                )
            else:
                refused.append(drain)
        return tuple(refused)

    def applied_version(self, key: Key, kind: str, name: str) -> str | None:
        """The version of the object that gpufleet's own last apply produced, if remembered."""
        remembered = self._applied.get(key, {}).get((kind, name))
        return remembered[1] if remembered else None

    def forget(self, key: Key) -> None:
        """Drop everything remembered of a deleted ModelDeployment."""
        self._statuses.pop(key, None)
        self._foreign.pop(key, None)
        self._applied.pop(key, None)

    def invalidate(self, key: Key, kind: str, name: str) -> None:
        """An owned object changed outside a reconcile: apply it again on the next pass."""
        self._applied.get(key, {}).pop((kind, name), None)


def _foreign(existing: Mapping[str, Any] | None, body: Mapping[str, Any]) -> bool:
    return existing is not None and not owned_by(existing, body["metadata"]["uid"])
