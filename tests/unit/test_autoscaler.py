"""The autoscaler executor: one evaluation against an in-memory API and a scripted metrics reader."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from gpufleet.adapters.serving_metrics import ModelMetrics
from gpufleet.planning.scaling import Decision
from gpufleet.planning.workloads import LABEL_MODEL_DEPLOYMENT
from gpufleet.runtime.autoscaler import NO_PROMETHEUS, Autoscaler, evaluate_all
from gpufleet.runtime.events import QueuedEvents
from tests.unit.fake_kube import FakeKube
from tests.unit.helpers import scaling_timings

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class ScriptedMetrics:
    def __init__(self, **values: float | None) -> None:
        self.values = values
        self.calls: list[tuple[str, str, tuple[str, ...], bool]] = []

    def read(self, namespace: str, model: str, pods: Sequence[str], mig: bool, now: datetime) -> ModelMetrics:
        self.calls.append((namespace, model, tuple(pods), mig))
        return ModelMetrics(
            now,
            self.values.get("waiting"),
            self.values.get("running"),
            self.values.get("kv"),
            self.values.get("gpu"),
            error=None,
        )


def body(replicas: int = 2, status: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "samples" / "llama-3-70b-a100-spot.yaml").read_text())
    doc["metadata"].update(namespace="ml", uid="u", generation=1)
    doc["spec"]["replicas"] = replicas
    doc["status"] = status or {}
    return doc


def with_pods(kube: FakeKube, ready: int, starting: int = 0) -> None:
    for index in range(ready + starting):
        kube.objects[("Pod", "ml", f"p{index}")] = {
            "metadata": {
                "name": f"p{index}",
                "namespace": "ml",
                "labels": {LABEL_MODEL_DEPLOYMENT: "llama-3-70b"},
            },
            "status": {"conditions": [{"type": "Ready", "status": "True" if index < ready else "False"}]},
        }


def test_a_queue_scales_up_through_the_scale_subresource_and_records_state() -> None:
    kube = FakeKube()
    with_pods(kube, ready=2)
    reader = ScriptedMetrics(waiting=40, running=60, kv=0.9, gpu=0.99)
    decision = Autoscaler(kube, reader, clock=lambda: NOW, timings=scaling_timings()).evaluate(body())
    assert decision is not None
    assert decision.replicas > 2
    assert kube.scales == [("llama-3-70b", decision.replicas)]
    assert reader.calls == [("ml", "llama-3-70b", ("p0", "p1"), False)]
    block = kube.last_status["autoscaler"]
    assert (block["active"], block["desiredReplicas"]) == (True, decision.replicas)
    assert block["metrics"]["waiting"] == 40
    assert block["lastScaleTime"] == "2026-11-22T12:00:00Z"
    assert kube.events[-1][1] == "Autoscaled"


def test_without_prometheus_it_holds_and_says_why() -> None:
    kube = FakeKube()
    with_pods(kube, ready=2)
    decision = Autoscaler(kube, None, clock=lambda: NOW, timings=scaling_timings()).evaluate(body(replicas=3))
    assert decision is not None
    assert (decision.replicas, decision.active, decision.reason) == (3, False, "MetricsMissing")
    assert kube.scales == []
    assert NO_PROMETHEUS in kube.last_status["autoscaler"]["message"]


def test_an_unchanged_evaluation_writes_nothing() -> None:
    kube = FakeKube()
    with_pods(kube, ready=2)
    autoscaler = Autoscaler(kube, None, clock=lambda: NOW, timings=scaling_timings())
    autoscaler.evaluate(body())
    patches = kube.status_patches
    autoscaler.clock = lambda: NOW + timedelta(seconds=15)
    autoscaler.evaluate(body(status=kube.stored_status))
    assert kube.status_patches == patches


def _idle_model_evaluated_once() -> tuple[FakeKube, Autoscaler]:
    """Two ready replicas, nothing running or waiting, no GPU metrics; one evaluation done at NOW."""
    kube = FakeKube()
    with_pods(kube, ready=2)
    idle = ScriptedMetrics(waiting=0.0, running=0.0, kv=0.0, gpu=None)
    autoscaler = Autoscaler(kube, idle, clock=lambda: NOW, timings=scaling_timings())
    autoscaler.evaluate(body())
    return kube, autoscaler


def test_an_idle_model_without_gpu_metrics_is_not_rewritten_at_every_evaluation() -> None:
    # No dcgm-exporter (gpuUtilization null) and never scaled (lastScaleTime null): the API server
    # drops both from the stored status, which must still count as unchanged.
    kube, autoscaler = _idle_model_evaluated_once()
    assert kube.stored_status["autoscaler"]["metrics"].get("gpuUtilization") is None
    patches = kube.status_patches
    for seconds in (15, 30, 45):
        autoscaler.clock = lambda seconds=seconds: NOW + timedelta(seconds=seconds)
        autoscaler.evaluate(body(status=kube.stored_status))
    assert kube.status_patches == patches


def test_autoscaling_off_or_an_unreadable_spec_is_left_alone() -> None:
    kube = FakeKube()
    off = body()
    off["spec"]["autoscaling"]["enabled"] = False
    assert Autoscaler(kube, None, clock=lambda: NOW, timings=scaling_timings()).evaluate(off) is None
    broken = body()
    broken["spec"]["accelerator"]["tensorParallelSize"] = 3
    assert Autoscaler(kube, None, clock=lambda: NOW, timings=scaling_timings()).evaluate(broken) is None
    assert (kube.scales, kube.status_patches) == ([], 0)


def test_the_state_survives_a_restart_through_status() -> None:
    kube = FakeKube()
    with_pods(kube, ready=4)
    idle = ScriptedMetrics(waiting=0, running=1, kv=0.05, gpu=0.3)
    first = Autoscaler(kube, idle, clock=lambda: NOW, timings=scaling_timings()).evaluate(body(replicas=4))
    assert first is not None
    assert first.replicas == 4  # lower need, but the scale-down delay has not passed
    status = {"autoscaler": kube.last_status["autoscaler"]}
    later = NOW + timedelta(seconds=301)
    # A new Autoscaler (a restarted operator) reads the history back from status.
    second = Autoscaler(kube, idle, clock=lambda: later, timings=scaling_timings()).evaluate(
        body(replicas=4, status=status)
    )
    assert second is not None
    assert second.replicas == 3
    assert kube.scales == [("llama-3-70b", 3)]


def test_a_schedule_in_the_spec_raises_the_floor_even_without_metrics() -> None:
    kube = FakeKube()
    with_pods(kube, ready=2)
    doc = body()
    # NOW is a Sunday, 12:00 UTC; 13:00 in Berlin.
    doc["spec"]["autoscaling"]["schedules"] = [
        {
            "name": "weekend-peak",
            "days": ["Sun"],
            "start": "12:30",
            "end": "14:00",
            "timeZone": "Europe/Berlin",
            "minReplicas": 5,
        }
    ]
    decision = Autoscaler(kube, None, clock=lambda: NOW, timings=scaling_timings()).evaluate(doc)
    assert decision is not None
    assert decision.replicas == 5
    assert kube.scales == [("llama-3-70b", 5)]


class _Gate:
    """An evaluation that records how many run at once and waits until `release` is set."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.release = threading.Event()

    def __call__(self, doc: Mapping[str, Any]) -> Decision | None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if doc["metadata"]["name"] == "broken":
                raise RuntimeError("Prometheus said no")
            if not self.release.wait(5):
                raise TimeoutError("never released")
            return None
        finally:
            with self.lock:
                self.running -= 1


def _sweep(names: Sequence[str], workers: int, gate: _Gate) -> dict[tuple[str, str], Any]:
    bodies = {("ml", name): {"metadata": {"namespace": "ml", "name": name}} for name in names}

    async def run() -> dict[tuple[str, str], Any]:
        with ThreadPoolExecutor(max_workers=workers) as executor:
            sweep = asyncio.ensure_future(evaluate_all(bodies, gate, executor))
            # Let every worker take one evaluation before any finishes.
            deadline = asyncio.get_running_loop().time() + 5
            while gate.running < min(workers, len(names)) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.001)
            gate.release.set()
            return await sweep

    return asyncio.run(run())


def test_a_sweep_evaluates_as_many_at_once_as_the_executor_has_workers() -> None:
    gate = _Gate()
    results = _sweep([f"m{i}" for i in range(12)], workers=4, gate=gate)
    assert gate.most == 4
    assert list(results) == [("ml", f"m{i}") for i in range(12)]
    assert all(result is None for result in results.values())


def test_a_failed_evaluation_is_that_models_result_and_the_others_complete() -> None:
    gate = _Gate()
    results = _sweep(["a", "broken", "c"], workers=2, gate=gate)
    assert isinstance(results[("ml", "broken")], RuntimeError)
    assert results[("ml", "a")] is None
    assert results[("ml", "c")] is None


def test_an_empty_sweep_returns_nothing() -> None:
    assert _sweep([], workers=2, gate=_Gate()) == {}


def test_a_member_the_new_state_lacks_is_deleted_once_and_then_nothing_is_written() -> None:
    # An ended panic leaves no panicUntil in the new state; a merge patch without a null for it
    # would keep the old one stored, and every later evaluation would differ and write again.
    kube, autoscaler = _idle_model_evaluated_once()
    stored = kube.stored_status
    stored["autoscaler"]["state"]["panicUntil"] = "2026-11-22T11:59:00Z"  # a panic that has ended
    patches = kube.status_patches
    autoscaler.clock = lambda: NOW + timedelta(seconds=15)
    autoscaler.evaluate(body(status=stored))
    assert kube.status_patches == patches + 1
    assert kube.last_status["autoscaler"]["state"]["panicUntil"] is None
    autoscaler.clock = lambda: NOW + timedelta(seconds=30)
    autoscaler.evaluate(body(status=kube.stored_status))
    assert kube.status_patches == patches + 1


class KilledError(Exception):
    """The operator SIGKILLed: nothing after this point is written."""


class KilledAfterOneWrite(FakeKube):
    """The first of the evaluation's writes lands; the process dies before the next one."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def _one_write(self) -> None:
        self.writes += 1
        if self.writes > 1:
            raise KilledError

    def patch_scale(self, api_version: str, kind: str, namespace: str, name: str, replicas: int) -> None:
        self._one_write()
        super().patch_scale(api_version, kind, namespace, name, replicas)

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        self._one_write()
        super().patch_status(api_version, kind, namespace, name, status)

    def create_event(
        self, involved: dict[str, Any], event_type: str, reason: str, message: str, now: datetime
    ) -> None:
        self._one_write()
        super().create_event(involved, event_type, reason, message, now)


def evaluate_and_store(kube: FakeKube, md: dict[str, Any], at: datetime) -> None:
    """One evaluation; what reached the API server is kept in `md` (spec.replicas and status)."""
    with_pods(kube, ready=md["spec"]["replicas"])
    idle = ScriptedMetrics(waiting=0, running=0, kv=0.02, gpu=0.03)
    try:
        Autoscaler(kube, idle, clock=lambda: at, timings=scaling_timings()).evaluate(md)
    finally:
        if kube.scales:
            md["spec"]["replicas"] = kube.scales[-1][1]
        if kube.status_patches:
            md["status"] = {**md.get("status", {}), **kube.stored_status}


def test_a_kill_between_the_autoscalers_writes_never_removes_two_replicas_in_one_step() -> None:
    # Idle at 4 replicas (minimum 2): find the evaluation that takes the first replica away.
    md = body(replicas=4)
    at = NOW
    while True:
        before = copy.deepcopy(md)
        evaluate_and_store(FakeKube(), md, at)
        if md["spec"]["replicas"] < 4:
            break
        at += timedelta(seconds=15)
        assert at < NOW + timedelta(hours=1), "the idle model never scaled down"
    # That evaluation again, killed after its first write; the restarted operator evaluates 2 s later.
    md = before
    with contextlib.suppress(KilledError):
        evaluate_and_store(KilledAfterOneWrite(), md, at)
    evaluate_and_store(FakeKube(), md, at + timedelta(seconds=2))
    assert md["spec"]["replicas"] >= 3, "two replicas removed within one scale-down step"
    # ... and the scale-down goes on to the minimum after the restart.
    later = at + timedelta(seconds=2)
    while md["spec"]["replicas"] > md["spec"]["minReplicas"]:
        later += timedelta(seconds=15)
        evaluate_and_store(FakeKube(), md, later)
        assert later < at + timedelta(hours=1), "the scale-down stopped after the kill"


class HeldEvents(FakeKube):
    """An API server that takes Events but answers them only once `answer` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = threading.Event()

    def create_event(
        self, involved: dict[str, Any], event_type: str, reason: str, message: str, now: datetime
    ) -> None:
        self.answer.wait(5)
        super().create_event(involved, event_type, reason, message, now)


def test_an_evaluations_event_never_delays_it() -> None:
    kube = HeldEvents()
    with_pods(kube, ready=2)
    events = QueuedEvents(kube)
    events.start()
    reader = ScriptedMetrics(waiting=40, running=60, kv=0.9, gpu=0.99)
    try:
        decision = Autoscaler(events, reader, clock=lambda: NOW, timings=scaling_timings()).evaluate(body())
        assert decision is not None
        assert kube.scales == [("llama-3-70b", decision.replicas)]  # done, the Event still unanswered
        assert kube.events == []
    finally:
        kube.answer.set()
    assert events.stop(5)
    assert [reason for _, reason, _ in kube.events] == ["Autoscaled"]


def test_the_autoscaler_keeps_nothing_per_model_deployment() -> None:
    # Its state is in each status.autoscaler, so a deleted ModelDeployment leaves nothing to forget.
    kube = FakeKube()
    autoscaler = Autoscaler(kube, None, clock=lambda: NOW, timings=scaling_timings())
    before = copy.copy(vars(autoscaler))
    template = body()
    for index in range(1000):
        md = copy.deepcopy(template)
        md["metadata"]["name"] = f"model-{index}"
        autoscaler.evaluate(md)
    assert vars(autoscaler) == before
