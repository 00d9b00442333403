"""The reconcile executor against an in-memory API: what is written, in which order, and when nothing is.

The decisions are specified by the plan's tests (test_reconcile.py); these check that the runtime carries
them out and remembers its own writes, so a steady state costs no write and a restart no false alarm.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpufleet.adapters.kube import KubeError
from gpufleet.adapters.sqs import QueueMessage
from gpufleet.planning.cost import ProductPrices
from gpufleet.planning.observe import owned_by
from gpufleet.planning.reconcile import ReconcilePlan
from gpufleet.runtime.events import QueuedEvents
from gpufleet.runtime.interruptions import InterruptionConsumer
from gpufleet.runtime.reconciler import Reconciler
from tests.unit.fake_kube import FakeKube
from tests.unit.helpers import database_service, handmade_deployment, reconcile_policy, revision_name, sample
from tests.unit.spot_objects import FakeQueue, instance, node, pod_object, store, warning_body

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def hf_token_secret(**data: str) -> dict[str, Any]:
    """The samples' credentialsSecret (hf-token in namespace ml)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hf-token", "namespace": "ml"},
        "data": data,
    }


@pytest.fixture
def kube() -> FakeKube:
    fake = FakeKube()
    fake.objects[("Secret", "ml", "hf-token")] = hf_token_secret(HF_TOKEN="aGZfeHl6")
    return fake


@pytest.fixture
def reconciler(kube: FakeKube) -> Reconciler:
    return Reconciler(kube, reconcile_policy(), clock=lambda: NOW)


def applied(plan: ReconcilePlan) -> list[str]:
    return [f"{a.obj['kind']}/{a.obj['metadata']['name']}" for a in plan.applies]


def deleted(plan: ReconcilePlan) -> list[str]:
    return [r.name for r in plan.removals]


def drained(plan: ReconcilePlan) -> list[tuple[str, str]]:
    return [(d.pod, d.reason) for d in plan.drains]


def deployments(kube: FakeKube) -> dict[str, int]:
    return {
        name: o["spec"]["replicas"] for (kind, _, name), o in kube.objects.items() if kind == "Deployment"
    }


def test_first_reconcile_applies_groups_service_and_pdb(kube: FakeKube, reconciler: Reconciler) -> None:
    plan = reconciler.reconcile(sample())
    assert deployments(kube) == {"llama-3-70b-us-east-1a-on-demand": 1, "llama-3-70b-us-east-1b-spot": 1}
    assert sorted(applied(plan)) == [
        f"ControllerRevision/{revision_name(sample())}",
        "Deployment/llama-3-70b-us-east-1a-on-demand",
        "Deployment/llama-3-70b-us-east-1b-spot",
        "PodDisruptionBudget/llama-3-70b",
        "Service/llama-3-70b",
    ]
    assert plan.status.patch is not None
    assert kube.last_status["desiredReplicas"] == 2
    assert [e[1] for e in kube.events] == ["NewRevision", "CreatedGroup", "CreatedGroup"]
    # Nothing has rolled out yet: revision 1 is asked for, none is stable.
    assert kube.last_status["revisions"]["current"]["revision"] == 1
    assert "stable" not in kube.last_status["revisions"]


def test_steady_state_reconcile_writes_nothing(kube: FakeKube, reconciler: Reconciler) -> None:
    body = sample()
    for _ in range(2):  # the first status is computed before the Deployments existed
        reconciler.reconcile(body)
        body["status"] = kube.last_status
    applies, patches = len(kube.applies), kube.status_patches
    plan = reconciler.reconcile(body)
    assert applied(plan) == []
    assert (len(kube.applies), kube.status_patches) == (applies, patches)


def test_scaling_adds_and_removes_groups(kube: FakeKube, reconciler: Reconciler) -> None:
    reconciler.reconcile(sample(replicas=5))
    assert len(deployments(kube)) == 5
    plan = reconciler.reconcile(sample(replicas=2))
    assert deployments(kube) == {"llama-3-70b-us-east-1a-on-demand": 1, "llama-3-70b-us-east-1b-spot": 1}
    assert sorted(deleted(plan)) == [
        "llama-3-70b-us-east-1a-spot",
        "llama-3-70b-us-east-1c-on-demand",
        "llama-3-70b-us-east-1c-spot",
    ]
    assert "RemovedGroup" in [e[1] for e in kube.events]


def test_drift_is_reverted_and_reported(kube: FakeKube, reconciler: Reconciler) -> None:
    reconciler.reconcile(sample())
    name = "llama-3-70b-us-east-1b-spot"
    kube.edit("Deployment", "ml", name, lambda o: o["spec"].update(replicas=7))
    plan = reconciler.reconcile(sample())
    assert applied(plan) == [f"Deployment/{name}"]
    assert deployments(kube)[name] == 1
    assert kube.events[-1][1] == "RevertedDrift"


def test_deleted_group_is_restored(kube: FakeKube, reconciler: Reconciler) -> None:
    reconciler.reconcile(sample())
    kube.objects.pop(("Deployment", "ml", "llama-3-70b-us-east-1a-on-demand"))
    reconciler.reconcile(sample())
    assert "llama-3-70b-us-east-1a-on-demand" in deployments(kube)
    assert kube.events[-1][1] == "RestoredGroup"


def test_restart_reapplies_quietly_without_claiming_drift(kube: FakeKube) -> None:
    Reconciler(kube, reconcile_policy(), clock=lambda: NOW).reconcile(sample())
    events = len(kube.events)
    fresh = Reconciler(kube, reconcile_policy(), clock=lambda: NOW)
    fresh.reconcile(sample())
    assert len(kube.events) == events
    assert len(deployments(kube)) == 2


def test_invalid_spec_touches_no_workload(kube: FakeKube, reconciler: Reconciler) -> None:
    reconciler.reconcile(sample())
    before = copy.deepcopy(kube.objects)
    applies = len(kube.applies)
    broken = sample()
    broken["spec"]["accelerator"]["tensorParallelSize"] = 1
    plan = reconciler.reconcile(broken)
    assert not plan.valid
    assert kube.objects == before
    assert len(kube.applies) == applies
    assert kube.deletes == []
    valid = next(c for c in kube.last_status["conditions"] if c["type"] == "Valid")
    assert valid["status"] == "False"
    assert "use tensorParallelSize: 4" in valid["message"]
    assert kube.events[-1][:2] == ("Warning", "InvalidSpec")


def test_replicas_past_max_are_clamped_not_invalid(kube: FakeKube, reconciler: Reconciler) -> None:
    plan = reconciler.reconcile(sample(replicas=20))
    assert plan.valid
    assert sum(deployments(kube).values()) == 12
    limited = next(c for c in kube.last_status["conditions"] if c["type"] == "ScalingLimited")
    assert (limited["status"], limited["reason"]) == ("True", "TooManyReplicas")
    assert ("Warning", "TooManyReplicas") in [e[:2] for e in kube.events]


def test_deployment_owned_by_someone_else_is_left_alone(kube: FakeKube, reconciler: Reconciler) -> None:
    kube.apply(handmade_deployment())
    reconciler.reconcile(sample())
    assert "llama-3-70b-handmade" in deployments(kube)
    assert kube.deletes == []


def test_a_reconcile_keeps_the_doomed_replica_until_its_replacement_is_ready_then_drains_it() -> None:
    kube, s = FakeKube(), store()
    clock = [NOW]
    reconciler = Reconciler(
        kube,
        reconcile_policy(),
        clock=lambda: clock[0],
        capacity=s,
        prices={"NVIDIA-A100-SXM4-80GB": A100},
    )
    capacity = {
        "zones": ["us-east-1a", "us-east-1b", "us-east-1c"],
        "onDemandReplicas": 1,
        "spotPercent": 100,
    }
    body = sample(replicas=3, capacity=capacity)  # us-east-1a on-demand, 1b spot, 1c spot
    reconciler.reconcile(body)
    assert deployments(kube) == {
        "llama-3-70b-us-east-1a-on-demand": 1,
        "llama-3-70b-us-east-1b-spot": 1,
        "llama-3-70b-us-east-1c-spot": 1,
    }
    for zone, capacity in (("us-east-1a", "on-demand"), ("us-east-1b", "spot"), ("us-east-1c", "spot")):
        s.update_node(node(f"n-{zone}", zone, capacity), NOW)
        kube.objects[("Pod", "ml", f"p-{zone}")] = pod_object(f"p-{zone}", zone, capacity, f"n-{zone}")
    consumer = InterruptionConsumer(FakeQueue([]), s, lambda key: None, lambda: NOW)
    consumer.handle(QueueMessage("m", "r", warning_body(instance("n-us-east-1b"))))

    body["status"] = kube.last_status
    plan = reconciler.reconcile(body)
    # spot in 1b cools down: the replacement goes to 1a spot, the doomed replica keeps serving
    assert deployments(kube) == {
        "llama-3-70b-us-east-1a-on-demand": 1,
        "llama-3-70b-us-east-1a-spot": 1,
        "llama-3-70b-us-east-1b-spot": 1,
        "llama-3-70b-us-east-1c-spot": 1,
    }
    assert drained(plan) == []
    assert plan.requeue_after == pytest.approx(60)
    status = kube.last_status
    assert status["spot"]["interruptionsHandled"] == 1
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["SpotInterrupted"] == ("True", "SpotInterruption")
    assert conditions["ZoneDegraded"] == ("True", "SpotCoolingDown")
    assert status["cost"]["perHour"] > 0
    assert any(reason == "SpotInterruption" for _, reason, _ in kube.events)

    # the replacement is ready
    kube.objects[("Pod", "ml", "p-new")] = pod_object("p-new", "us-east-1a", "spot", "n-us-east-1a")
    body["status"] = kube.last_status
    clock[0] = NOW + timedelta(seconds=20)
    plan = reconciler.reconcile(body)
    assert drained(plan) == [("p-us-east-1b", "replaced")]
    assert kube.evictions == ["p-us-east-1b"]  # through the eviction API: the PDB holds
    assert "Pod/p-us-east-1b" not in kube.deletes
    assert "llama-3-70b-us-east-1b-spot" not in deployments(kube)
    interrupted = next(c for c in kube.last_status["conditions"] if c["type"] == "SpotInterrupted")
    assert interrupted["status"] == "True"
    assert "1 draining now" in interrupted["message"]
    # once the drained pod is gone, the interruption is over
    body["status"] = kube.last_status
    reconciler.reconcile(body)
    conditions = {c["type"]: (c["status"], c["reason"]) for c in kube.last_status["conditions"]}
    assert conditions["SpotInterrupted"] == ("False", "NoneInProgress")


def doomed_fleet(refuse: bool) -> tuple[FakeKube, Reconciler, dict[str, Any], list[datetime]]:
    """Two spot replicas in 1b and 1c; 1b's node warned at NOW; the PDB refuses evictions if asked."""
    kube, s = FakeKube(), store()
    clock = [NOW]
    reconciler = Reconciler(kube, reconcile_policy(), clock=lambda: clock[0], capacity=s)
    capacity = {"zones": ["us-east-1b", "us-east-1c"], "onDemandReplicas": 0, "spotPercent": 100}
    body = sample(replicas=2, capacity=capacity)
    reconciler.reconcile(body)
    for zone in ("us-east-1b", "us-east-1c"):
        s.update_node(node(f"n-{zone}", zone, "spot"), NOW)
        kube.objects[("Pod", "ml", f"p-{zone}")] = pod_object(f"p-{zone}", zone, "spot", f"n-{zone}")
    if refuse:
        kube.refuse_evictions.add("p-us-east-1b")
    InterruptionConsumer(FakeQueue([]), s, lambda key: None, lambda: NOW).handle(
        QueueMessage("m", "r", warning_body(instance("n-us-east-1b")))
    )
    body["status"] = kube.last_status
    reconciler.reconcile(body)
    kube.objects[("Pod", "ml", "p-new")] = pod_object("p-new", "us-east-1c", "spot", "n-us-east-1c")
    body["status"] = kube.last_status
    return kube, reconciler, body, clock


def test_a_drain_the_pdb_refuses_lowers_no_count_and_is_retried() -> None:
    kube, reconciler, body, clock = doomed_fleet(refuse=True)
    before = deployments(kube)
    clock[0] = NOW + timedelta(seconds=20)
    plan = reconciler.reconcile(body)
    assert [d.pod for d in plan.refused_drains] == ["p-us-east-1b"]
    assert plan.drains == ()
    assert ("Pod", "ml", "p-us-east-1b") in kube.objects
    # the 1b Deployment keeps its count: lowering it would let the ReplicaSet remove some other pod
    assert deployments(kube)["llama-3-70b-us-east-1b-spot"] == before["llama-3-70b-us-east-1b-spot"]
    assert plan.requeue_after == pytest.approx(5)
    # the PDB allows it now: the next pass drains it and lowers the count
    kube.refuse_evictions.clear()
    body["status"] = kube.last_status
    plan = reconciler.reconcile(body)
    assert kube.evictions == ["p-us-east-1b"]
    assert "llama-3-70b-us-east-1b-spot" not in deployments(kube)


def test_at_the_deadline_a_refused_eviction_becomes_a_delete() -> None:
    kube, reconciler, body, clock = doomed_fleet(refuse=True)
    del kube.objects[("Pod", "ml", "p-new")]  # no replacement: only the deadline drains it
    clock[0] = NOW + timedelta(seconds=61)
    plan = reconciler.reconcile(body)
    assert [(d.pod, d.reason) for d in plan.drains] == [("p-us-east-1b", "deadline")]
    assert "Pod/p-us-east-1b" in kube.deletes
    assert any(reason == "EvictionOverridden" for _, reason, _ in kube.events)


def test_status_members_that_went_away_are_deleted_and_an_invalid_spec_leaves_spot_and_cost_alone() -> None:
    kube, s = FakeKube(), store()
    reconciler = Reconciler(kube, reconcile_policy(), clock=lambda: NOW, capacity=s)
    body = sample()
    # As a restarted operator finds it: a fallback that has ended since, and a price no longer known.
    body["status"] = {
        "spot": {"interruptionsHandled": 1, "fallbackSince": "2026-11-22T11:00:00Z"},
        "cost": {"currency": "USD", "perHour": 41.2, "message": "old"},
    }
    reconciler.reconcile(body)
    assert kube.last_status["spot"]["fallbackSince"] is None
    assert "fallbackSince" not in kube.stored_status["spot"]
    assert kube.last_status["cost"]["perHour"] is None
    assert kube.stored_status["spot"]["interruptionsHandled"] == 1

    broken = sample()
    broken["spec"]["accelerator"]["tensorParallelSize"] = 1
    broken["status"] = kube.stored_status
    reconciler.reconcile(broken)
    assert "spot" not in kube.last_status
    assert "cost" not in kube.last_status


A100 = ProductPrices(on_demand=27.45, gpus_per_instance=8, spot={"a": 11.8, "b": 12.6}, instance_type="p4de")


def test_pods_are_drained_before_any_count_is_lowered_and_events_follow_their_writes(kube: FakeKube) -> None:
    calls: list[str] = []
    for name in ("delete", "apply", "patch_status", "create_event"):
        original = getattr(kube, name)

        def recorded(*args: object, _name: str = name, _original: object = original) -> object:
            calls.append(_name)
            return _original(*args)  # type: ignore[operator]

        setattr(kube, name, recorded)
    Reconciler(kube, reconcile_policy(), clock=lambda: NOW).reconcile(sample())
    # the revision, then two Deployments, each followed by its event, then the Service and PDB, then status
    assert calls == [
        *("apply", "create_event") * 3,
        *("apply", "apply", "patch_status"),
    ]


def test_an_event_that_cannot_be_posted_does_not_fail_the_reconcile(kube: FakeKube) -> None:
    def refuse(*_: object) -> None:
        raise ConnectionError("events API down")

    kube.create_event = refuse  # type: ignore[method-assign]
    plan = Reconciler(kube, reconcile_policy(), clock=lambda: NOW).reconcile(sample())
    assert len(plan.applies) == 5
    assert kube.status_patches == 1


def test_a_forgotten_object_is_applied_again(kube: FakeKube, reconciler: Reconciler) -> None:
    reconciler.reconcile(sample())
    body = sample()
    body["status"] = kube.last_status
    assert reconciler.reconcile(body).applies == ()
    reconciler.invalidate(("ml", "llama-3-70b"), "Service", "llama-3-70b")
    assert applied(reconciler.reconcile(body)) == ["Service/llama-3-70b"]
    reconciler.forget(("ml", "llama-3-70b"))
    assert reconciler.applied_version(("ml", "llama-3-70b"), "Service", "llama-3-70b") is None


def test_an_api_server_that_refuses_mid_plan_leaves_nothing_lost_and_the_next_reconcile_finishes(
    kube: FakeKube, reconciler: Reconciler
) -> None:
    original, calls = kube.apply, []

    def refuse_the_third(obj: dict[str, object]) -> dict[str, object]:
        calls.append(obj)
        if len(calls) == 3:  # the revision, one Deployment, then refused
            raise KubeError(503, "the API server is restarting")
        return original(obj)

    kube.apply = refuse_the_third  # type: ignore[method-assign]
    with pytest.raises(KubeError):
        reconciler.reconcile(sample())
    assert deployments(kube) == {"llama-3-70b-us-east-1a-on-demand": 1}  # nothing removed, nothing else
    assert kube.status_patches == 0  # no status claims what was not done
    kube.apply = original  # type: ignore[method-assign]
    plan = reconciler.reconcile(sample())
    assert applied(plan) == [
        "Deployment/llama-3-70b-us-east-1b-spot",
        "Service/llama-3-70b",
        "PodDisruptionBudget/llama-3-70b",
    ]
    # one per group and one for the revision, no repeat
    assert [e[1] for e in kube.events] == ["NewRevision", "CreatedGroup", "CreatedGroup"]
    assert kube.status_patches == 1


def test_status_the_watch_has_not_shown_yet_is_not_taken_back(kube: FakeKube) -> None:
    store_ = store()
    reconciler = Reconciler(kube, reconcile_policy(), clock=lambda: NOW, capacity=store_)
    body = sample()
    for zone, kind in (("us-east-1a", "on-demand"), ("us-east-1b", "spot")):
        store_.update_node(node(f"n-{zone}", zone, kind), NOW)
        kube.objects[("Pod", "ml", f"p-{zone}")] = pod_object(f"p-{zone}", zone, kind, f"n-{zone}")
    consumer = InterruptionConsumer(FakeQueue([]), store_, lambda key: None, lambda: NOW)
    consumer.handle(QueueMessage("m", "r", warning_body(instance("n-us-east-1b"))))
    reconciler.reconcile(body)
    assert kube.last_status["spot"]["interruptionsHandled"] == 1
    # The watch still delivers the body without that status: what this operator wrote last is the
    # newer state, so the interruption is neither forgotten nor counted a second time.
    reconciler.reconcile(body)
    assert kube.stored_status["spot"]["interruptionsHandled"] == 1
    assert [d["node"] for d in kube.stored_status["spot"]["doomedNodes"]] == ["n-us-east-1b"]
    assert [e[1] for e in kube.events].count("SpotInterruption") == 1


def test_objects_of_the_models_name_are_looked_up_only_until_written(
    kube: FakeKube, reconciler: Reconciler
) -> None:
    looked: list[str] = []
    original = kube.get

    def get(api_version: str, kind: str, namespace: str, name: str) -> dict[str, object] | None:
        looked.append(f"{kind}/{name}")
        return original(api_version, kind, namespace, name)

    kube.get = get  # type: ignore[method-assign]
    body = sample()
    reconciler.reconcile(body)
    created = sorted(f"Deployment/{name}" for name in deployments(kube))
    # The credentials Secret is read by name (CredentialsReady; no watch on Secrets), and once found
    # not again within a minute: a steady reconcile makes no request for it.
    secret = "Secret/hf-token"
    # A new ControllerRevision's name is looked up as a new Deployment's is (never taken over).
    first = [
        "Service/llama-3-70b",
        "PodDisruptionBudget/llama-3-70b",
        secret,
        f"ControllerRevision/{revision_name(body)}",
        *created,
    ]
    assert looked == first
    body["status"] = kube.last_status
    reconciler.reconcile(body)
    assert looked == first


def test_a_users_deployment_of_a_groups_name_is_never_taken_and_is_reported(
    kube: FakeKube, reconciler: Reconciler
) -> None:
    reconciler.reconcile(sample())
    names = sorted(deployments(kube))
    theirs = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": names[0], "namespace": "ml", "uid": "their-uid", "labels": {"app": "theirs"}},
        "spec": {"replicas": 3, "template": {"metadata": {"labels": {"app": "theirs"}}}},
    }
    fresh = FakeKube()
    fresh.objects[("Deployment", "ml", names[0])] = copy.deepcopy(theirs)
    other = Reconciler(fresh, reconcile_policy(), clock=lambda: NOW)
    body = sample()
    plan = other.reconcile(body)
    assert fresh.objects[("Deployment", "ml", names[0])] == theirs  # not applied over
    assert plan.requeue_after == 0.0  # reported at once, by the next pass (this one wrote less)
    assert fresh.status_patches == 0
    again = other.reconcile(body)
    assert again.requeue_after == 10.0  # looked at again soon: its going away makes no event of ours
    degraded = next(c for c in fresh.last_status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert degraded["reason"] == "ObjectConflict"
    assert f"Deployment ml/{names[0]} exists" in degraded["message"]
    assert fresh.objects[("Deployment", "ml", names[0])] == theirs
    # its owner renames theirs away: the group is created on the next pass
    del fresh.objects[("Deployment", "ml", names[0])]
    body["status"] = fresh.last_status
    other.reconcile(body)
    assert owned_by(fresh.objects[("Deployment", "ml", names[0])], "uid-1")


def test_a_revision_name_someone_else_holds_is_not_reported_as_the_current_revision() -> None:
    body = sample()
    taken = revision_name(body)
    theirs = {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {"name": taken, "namespace": "ml", "uid": "their-uid", "labels": {"app": "theirs"}},
        "data": {"note": "not ours"},
        "revision": 7,
    }
    kube = FakeKube()
    kube.objects[("Secret", "ml", "hf-token")] = hf_token_secret(HF_TOKEN="aGZfeHl6")
    kube.objects[("ControllerRevision", "ml", taken)] = copy.deepcopy(theirs)
    reconciler = Reconciler(kube, reconcile_policy(), clock=lambda: NOW)
    first = reconciler.reconcile(body)
    assert kube.objects[("ControllerRevision", "ml", taken)] == theirs
    # That pass planned the name it then found taken: a status naming it would describe a write not made.
    assert kube.status_patches == 0
    assert first.requeue_after == 0.0
    reconciler.reconcile(body)
    current = kube.last_status["revisions"]["current"]
    assert current["name"] == f"{taken}-2"
    assert owned_by(kube.objects[("ControllerRevision", "ml", f"{taken}-2")], "uid-1")
    assert kube.objects[("ControllerRevision", "ml", taken)] == theirs


def test_a_foreign_service_is_left_exactly_as_it_was(kube: FakeKube, reconciler: Reconciler) -> None:
    foreign = database_service()
    kube.objects[("Service", "ml", "llama-3-70b")] = copy.deepcopy(foreign)
    for _ in range(2):
        reconciler.reconcile(sample())
    assert kube.objects[("Service", "ml", "llama-3-70b")] == foreign
    assert "Service/llama-3-70b" not in kube.deletes


def test_capacity_events_are_posted_before_the_status_that_records_them_handled() -> None:
    """Events go through a queue of their own (runtime.events), but a warning acted on is posted before
    the status counts it: a kill between the two then repeats the Event instead of losing it."""
    order: list[str] = []

    class Recording(FakeKube):
        def create_event(
            self, involved: dict[str, Any], event_type: str, reason: str, message: str, now: datetime
        ) -> None:
            super().create_event(involved, event_type, reason, message, now)
            order.append(f"event {reason}")

        def patch_status(
            self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
        ) -> None:
            super().patch_status(api_version, kind, namespace, name, status)
            order.append("status")

    kube, s = Recording(), store()
    events = QueuedEvents(kube)
    events.start()
    try:
        reconciler = Reconciler(events, reconcile_policy(), clock=lambda: NOW, capacity=s)
        capacity = {"zones": ["us-east-1a", "us-east-1b"], "onDemandReplicas": 1, "spotPercent": 100}
        body = sample(replicas=2, capacity=capacity)
        reconciler.reconcile(body)
        for zone, kind in (("us-east-1a", "on-demand"), ("us-east-1b", "spot")):
            s.update_node(node(f"n-{zone}", zone, kind), NOW)
            kube.objects[("Pod", "ml", f"p-{zone}")] = pod_object(f"p-{zone}", zone, kind, f"n-{zone}")
        consumer = InterruptionConsumer(FakeQueue([]), s, lambda key: None, lambda: NOW)
        consumer.handle(QueueMessage("m", "r", warning_body(instance("n-us-east-1b"))))
        body["status"] = kube.last_status
        order.clear()
        reconciler.reconcile(body)
    finally:
        events.stop(5.0)
    assert kube.last_status["spot"]["interruptionsHandled"] == 1
    assert order.index("event SpotInterruption") < order.index("status")


def credentials_condition_of(kube: FakeKube) -> dict[str, Any]:
    (condition,) = [c for c in kube.last_status["conditions"] if c["type"] == "CredentialsReady"]
    return dict(condition)


def test_a_missing_credentials_secret_is_reported_by_name_with_a_warning(
    kube: FakeKube, reconciler: Reconciler
) -> None:
    del kube.objects[("Secret", "ml", "hf-token")]
    reconciler.reconcile(sample())
    condition = credentials_condition_of(kube)
    assert (condition["status"], condition["reason"]) == ("False", "SecretNotFound")
    assert "Secret hf-token does not exist" in condition["message"]
    assert "HF_TOKEN" in condition["message"]
    warnings = [e for e in kube.events if e[0] == "Warning"]
    assert [e[1] for e in warnings] == ["SecretNotFound"]


def test_a_missing_key_names_the_secret_and_the_key(kube: FakeKube, reconciler: Reconciler) -> None:
    kube.objects[("Secret", "ml", "hf-token")] = hf_token_secret(token="aGZfeHl6")
    reconciler.reconcile(sample())
    condition = credentials_condition_of(kube)
    assert (condition["status"], condition["reason"]) == ("False", "SecretKeyMissing")
    assert condition["message"] == "Secret hf-token has no key HF_TOKEN"
    assert ("Warning", "SecretKeyMissing") in [(e[0], e[1]) for e in kube.events]


def test_the_secret_found_with_its_key_is_ready_and_its_values_are_not_kept(
    kube: FakeKube, reconciler: Reconciler
) -> None:
    plan = reconciler.reconcile(sample())
    condition = credentials_condition_of(kube)
    assert (condition["status"], condition["reason"]) == ("True", "SecretFound")
    assert "aGZfeHl6" not in repr(plan)


def test_a_secret_the_operator_may_not_read_is_unknown_and_blocks_nothing(
    kube: FakeKube, reconciler: Reconciler
) -> None:
    original = kube.get

    def get(api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if kind == "Secret":
            raise KubeError(403, "forbidden")
        return original(api_version, kind, namespace, name)

    kube.get = get  # type: ignore[method-assign]
    reconciler.reconcile(sample())
    condition = credentials_condition_of(kube)
    assert (condition["status"], condition["reason"]) == ("Unknown", "SecretNotChecked")
    assert len(deployments(kube)) == 2


def test_an_api_error_reading_the_secret_holds_back_no_other_work(kube: FakeKube) -> None:
    """The credentials check is a report: a failed GET of the Secret (a 500, a timeout) must not fail
    the reconcile, which may be moving replicas off a node that is going."""
    original = kube.get

    def get(api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if kind == "Secret":
            raise KubeError(500, "etcdserver: request timed out")
        return original(api_version, kind, namespace, name)

    kube.get = get  # type: ignore[method-assign]
    Reconciler(kube, reconcile_policy(), clock=lambda: NOW).reconcile(sample())
    assert len(deployments(kube)) == 2
    assert credentials_condition_of(kube)["status"] == "Unknown"


def test_a_secret_found_is_looked_at_again_after_a_minute(kube: FakeKube) -> None:
    clock = [NOW]
    reconciler = Reconciler(kube, reconcile_policy(), clock=lambda: clock[0])
    body = sample()
    reconciler.reconcile(body)
    del kube.objects[("Secret", "ml", "hf-token")]
    body["status"] = kube.last_status
    reconciler.reconcile(body)
    assert credentials_condition_of(kube)["status"] == "True"  # within the minute: not looked at
    clock[0] = NOW + timedelta(seconds=61)
    body["status"] = kube.last_status
    reconciler.reconcile(body)
    assert credentials_condition_of(kube)["reason"] == "SecretNotFound"


def routed_sample() -> dict[str, Any]:
    return sample(rollout={"steps": [{"weight": 10, "pauseSeconds": 60}], "httpRoute": {"name": "chat"}})


def slot_route(version: str = "5") -> dict[str, Any]:
    """The route as an earlier operator left it: at the slot Services (none of whose pods run now)."""
    refs = [
        {"group": "", "kind": "Service", "name": f"llama-3-70b-{s}", "port": 8000, "weight": 50} for s in "ab"
    ]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "chat", "namespace": "ml", "resourceVersion": version},
        "spec": {"rules": [{"backendRefs": refs}]},
    }


def test_a_route_write_refused_as_stale_is_retried_a_second_later(kube: FakeKube) -> None:
    kube.objects[("HTTPRoute", "ml", "chat")] = slot_route()
    original = kube.patch

    def edited_in_between(*args: Any) -> dict[str, Any]:
        kube.objects[("HTTPRoute", "ml", "chat")]["metadata"]["resourceVersion"] = "6"  # a GitOps sync
        return original(*args)

    kube.patch = edited_in_between  # type: ignore[method-assign]
    reconciler = Reconciler(kube, reconcile_policy(), clock=lambda: NOW)
    plan = reconciler.reconcile(routed_sample())
    assert plan.route is not None
    assert plan.requeue_after == 1.0
    assert kube.patches == []
    kube.patch = original  # type: ignore[method-assign]
    reconciler.reconcile(routed_sample())
    # No pod of the stable slot carries its label: the rule goes back to the model's Service (every pod).
    refs = kube.objects[("HTTPRoute", "ml", "chat")]["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["weight"]) for r in refs] == [("llama-3-70b", 1)]
    assert kube.patches == ["HTTPRoute/chat"]  # once: the refused write was not counted


def test_a_route_the_operator_may_not_read_is_reported_and_nothing_is_written(kube: FakeKube) -> None:
    original = kube.get

    def forbidden(api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        if kind == "HTTPRoute":
            raise KubeError(403, "httproutes.gateway.networking.k8s.io is forbidden")
        return original(api_version, kind, namespace, name)

    kube.get = forbidden  # type: ignore[method-assign]
    reconciler = Reconciler(kube, reconcile_policy(), clock=lambda: NOW)
    plan = reconciler.reconcile(routed_sample())
    assert plan.route is None
    condition = {c["type"]: c for c in kube.stored_status["conditions"]}["TrafficRouted"]
    assert (condition["status"], condition["reason"]) == ("False", "HTTPRouteUnreadable")
    assert "403" in condition["message"]
    assert ("Warning", "HTTPRouteUnreadable") in {(e[0], e[1]) for e in kube.events}
    # The model is served all the same: its Deployments, Service and slot Services are applied.
    assert {"Service/llama-3-70b", "Service/llama-3-70b-a", "Service/llama-3-70b-b"} <= set(kube.applies)


def test_a_route_write_the_api_server_refuses_is_reported_and_the_rest_of_the_pass_goes_on(
    kube: FakeKube,
) -> None:
    kube.objects[("HTTPRoute", "ml", "chat")] = slot_route()

    def forbidden(*args: Any) -> dict[str, Any]:
        raise KubeError(403, 'httproutes.gateway.networking.k8s.io "chat" is forbidden: cannot patch')

    kube.patch = forbidden  # type: ignore[method-assign]
    reconciler = Reconciler(kube, reconcile_policy(), clock=lambda: NOW)
    plan = reconciler.reconcile(routed_sample())
    assert plan.requeue_after == 1.0
    assert ("Warning", "HTTPRouteWriteFailed") in {(e[0], e[1]) for e in kube.events}
    # The Deployments, the Service and the slot Services were applied all the same.
    assert {"Deployment/llama-3-70b-us-east-1a-on-demand", "Service/llama-3-70b-a"} <= set(kube.applies)
