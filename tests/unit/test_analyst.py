"""The canary analyst (runtime/analysis.py): pods by revision, one judgement written to status.analysis.

The API is the in-memory FakeKube; Prometheus is a scripted reader of per-pod figures (the queries
themselves run against a real Prometheus in the integration and e2e tests)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from gpufleet.adapters.serving_metrics import PodFigures
from gpufleet.planning.workloads import LABEL_MODEL_DEPLOYMENT, LABEL_REVISION_HASH, LABEL_SLOT
from gpufleet.runtime.analysis import NO_PROMETHEUS, CanaryAnalyst, PodFiguresReader
from tests.unit.fake_kube import FakeKube

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
INF = math.inf


def model() -> dict[str, Any]:
    return {
        "metadata": {"name": "m", "namespace": "ml"},
        "spec": {
            "model": {"uri": "hf://org/m"},
            "rollout": {"steps": [{"weight": 50, "pauseSeconds": 600}], "analysis": {"minRequests": 10}},
        },
        "status": {
            "revisions": {
                "current": {"revision": 2, "name": "m-h2", "hash": "h2"},
                "canary": {"revision": 2, "name": "m-h2", "hash": "h2"},
                "stableSlot": "a",
            },
            "rollout": {
                "revision": 2,
                "step": 1,
                "steps": 1,
                "phase": "Paused",
                "targetWeight": 50,
                "weightReachedAt": "2026-12-04T11:55:00Z",
            },
        },
    }


def add_pod(kube: FakeKube, name: str, slot: str = "a", revision: str = "") -> None:
    labels = {LABEL_MODEL_DEPLOYMENT: "m"}
    if slot == "b":
        labels[LABEL_SLOT] = "b"
    if revision:
        labels[LABEL_REVISION_HASH] = revision
    kube.objects[("Pod", "ml", name)] = {
        "metadata": {"name": name, "namespace": "ml", "labels": labels},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def figures(requests: float, errors: float = 0, ttft: float = 0.2) -> PodFigures:
    return PodFigures(
        requests, errors, {ttft: requests, INF: requests}, {0.03: requests * 50, INF: requests * 50}
    )


def scripted(answer: dict[str, PodFigures], seen: list[tuple[str, list[str], float]]) -> PodFiguresReader:
    def read(namespace: str, pods: list[str], window: float) -> dict[str, PodFigures]:
        seen.append((namespace, sorted(pods), window))
        return answer

    return read


@pytest.fixture
def kube() -> FakeKube:
    kube = FakeKube()
    add_pod(kube, "stable-0")
    add_pod(kube, "stable-1")
    add_pod(kube, "canary-0", "b", "h2")
    add_pod(kube, "old-canary", "b", "h1")  # a replaced canary's pod, still in the slot
    return kube


def test_the_canary_is_judged_on_its_own_pods_since_the_weight_was_reached(kube: FakeKube) -> None:
    seen: list[tuple[str, list[str], float]] = []
    answer = {
        "stable-0": figures(100),
        "stable-1": figures(100),
        "canary-0": figures(50, errors=10),
        "old-canary": figures(1000),  # would dilute the error rate if it counted
    }
    status = CanaryAnalyst(kube, scripted(answer, seen), lambda: NOW).evaluate(model())
    assert status is not None
    assert status.verdict == "Failed"
    assert "error rate 20.0 % on the canary (stable 0.0 %), limit 1.0 %" in status.message
    assert seen == [("ml", ["canary-0", "old-canary", "stable-0", "stable-1"], 300.0)]
    written = kube.last_status["analysis"]
    assert (written["revision"], written["step"], written["verdict"]) == (2, 1, "Failed")
    assert written["canary"]["requests"] == 50
    assert written["stable"]["requests"] == 200
    assert written["windowSeconds"] == 300


@pytest.mark.parametrize(
    ("reader", "words"),
    [
        (None, NO_PROMETHEUS),
        ("raise", "Prometheus: ConnectionError: refused"),
        ("empty", "no metrics for the canary"),
    ],
)
def test_missing_metrics_hold_the_step(kube: FakeKube, reader: str | None, words: str) -> None:
    def failing(namespace: str, pods: list[str], window: float) -> dict[str, PodFigures]:
        raise ConnectionError("refused")

    read = {None: None, "raise": failing, "empty": scripted({}, [])}[reader]
    status = CanaryAnalyst(kube, read, lambda: NOW).evaluate(model())
    assert status is not None
    assert status.verdict == "NoData"
    assert words in status.message


def test_nothing_is_read_or_written_when_no_judgement_is_due(kube: FakeKube) -> None:
    seen: list[tuple[str, list[str], float]] = []
    body = model()
    body["status"]["analysis"] = {
        "revision": 2,
        "step": 1,
        "verdict": "Passed",
        "checkedAt": "2026-12-04T11:59:50Z",
    }
    assert CanaryAnalyst(kube, scripted({}, seen), lambda: NOW).evaluate(body) is None
    assert seen == []
    assert kube.status_patches == 0
