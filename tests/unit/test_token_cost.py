"""Cost per million output tokens per revision (planning/token_cost.py, runtime/token_cost.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpufleet.api.v1alpha1 import ModelDeploymentSpec, RevisionsStatus
from gpufleet.planning.cost import ProductPrices
from gpufleet.planning.observe import ObservedPod
from gpufleet.planning.revisions import ObservedRevision, revision_hash, serving_template
from gpufleet.planning.token_cost import revision_of_pod, token_costs
from gpufleet.planning.workloads import LABEL_MODEL_DEPLOYMENT
from gpufleet.runtime.token_cost import TokenCoster
from tests.unit.fake_kube import FakeKube

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
A100 = "NVIDIA-A100-SXM4-80GB"
# p4de: 8 GPUs at 40.96/h on-demand, 5.12 per GPU-hour.
PRICES = {A100: ProductPrices(on_demand=40.96, gpus_per_instance=8)}

TP4 = ModelDeploymentSpec.model_validate(
    {
        "model": {"uri": "hf://meta-llama/Meta-Llama-3-70B-Instruct"},
        "accelerator": {"gpuProduct": A100, "tensorParallelSize": 4},
    }
)
# The quantized revision: half the GPUs per replica.
TP2 = TP4.model_copy(update={"accelerator": TP4.accelerator.model_copy(update={"tensor_parallel_size": 2})})
OLD = ObservedRevision("m-old", 1, serving_template(TP4))
NEW = ObservedRevision("m-new", 2, serving_template(TP2))
OLD_HASH, NEW_HASH = revision_hash(OLD.template), revision_hash(NEW.template)
REVISIONS = RevisionsStatus.model_validate(
    {
        "current": {"revision": 2, "name": "m-new", "hash": NEW_HASH},
        "stable": {"revision": 1, "name": "m-old", "hash": OLD_HASH},
        "canary": {"revision": 2, "name": "m-new", "hash": NEW_HASH},
        "stableSlot": "a",
    }
)


def pod(name: str, slot: str = "a", revision: str = "", ready: bool = True) -> ObservedPod:
    return ObservedPod(name, "us-east-1a", "on-demand", ready, slot=slot, revision_hash=revision)  # type: ignore[arg-type]


def test_each_revision_is_priced_with_its_own_accelerator_over_its_own_tokens() -> None:
    pods = [pod("s0"), pod("s1"), pod("c0", "b", NEW_HASH)]
    # The stable pods (TP 4, 20.48/h each) make 1000 tokens/s together; the canary (TP 2, 10.24/h) 600.
    figures = token_costs(TP2, pods, {"s0": 500, "s1": 500, "c0": 600}, PRICES, [OLD, NEW], REVISIONS, NOW)
    rows = {row.revision: row for row in figures.revisions}
    assert rows[1].cost_per_hour == pytest.approx(40.96)
    assert rows[1].per_million_output_tokens == pytest.approx(40.96 / 3.6, abs=1e-3)  # 11.38 per million
    assert rows[2].cost_per_hour == pytest.approx(10.24)
    assert rows[2].per_million_output_tokens == pytest.approx(10.24 / 2.16, abs=1e-3)  # 4.74 per million
    assert [row.revision for row in figures.revisions] == [2, 1]
    assert figures.message == ""


def test_a_pod_not_ready_costs_but_makes_no_tokens_and_an_idle_revision_has_no_figure() -> None:
    pods = [pod("s0"), pod("c0", "b", NEW_HASH, ready=False)]
    figures = token_costs(TP2, pods, {"s0": 100, "c0": 50}, PRICES, [OLD, NEW], REVISIONS, NOW)
    canary = next(row for row in figures.revisions if row.revision == 2)
    assert canary.replicas == 1
    assert canary.output_tokens_per_second == 0
    assert canary.per_million_output_tokens is None
    assert "generated no tokens" in figures.message


def test_without_a_price_the_message_says_what_to_set() -> None:
    figures = token_costs(TP4, [pod("s0")], {"s0": 100}, {}, [OLD], REVISIONS, NOW)
    assert figures.revisions[0].cost_per_hour is None
    assert "set GPUFLEET_PRICES" in figures.message


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        (pod("x", "b", "abc"), "abc"),  # labelled: its own
        (pod("x", "a"), OLD_HASH),  # unlabelled in the stable slot: the stable revision
        (pod("x", "b"), ""),  # unlabelled in the other slot, no standby: unknown
    ],
)
def test_which_revision_a_pod_runs(observed: ObservedPod, expected: str) -> None:
    assert revision_of_pod(observed, REVISIONS) == expected


class Tokens:
    def __init__(self, values: dict[str, float]) -> None:
        self.values = values
        self.calls = 0

    def pod_values(self, signal: str, namespace: str, pods: list[str]) -> dict[str, float]:
        assert signal == "generation_tokens"
        self.calls += 1
        return {p: self.values[p] for p in pods if p in self.values}


def model(status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "m", "namespace": "ml", "uid": "u"},
        "spec": TP4.model_dump(mode="json", by_alias=True, exclude_defaults=True),
        "status": status or {},
    }


@pytest.fixture
def kube() -> FakeKube:
    kube = FakeKube()
    kube.objects[("Pod", "ml", "s0")] = {
        "metadata": {"name": "s0", "namespace": "ml", "labels": {LABEL_MODEL_DEPLOYMENT: "m"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    return kube


def test_the_coster_writes_status_token_cost_at_most_every_refresh(kube: FakeKube) -> None:
    tokens = Tokens({"s0": 400})
    coster = TokenCoster(kube, lambda: PRICES, lambda: NOW, refresh_seconds=300)
    assert coster.evaluate(model(), tokens)
    written = kube.last_status["tokenCost"]
    assert written["revisions"][0]["outputTokensPerSecond"] == 400
    assert written["revisions"][0]["perMillionOutputTokens"] == pytest.approx(20.48 / 1.44, abs=1e-3)
    recent = {"tokenCost": {"sampledAt": (NOW - timedelta(seconds=100)).strftime("%Y-%m-%dT%H:%M:%SZ")}}
    assert not coster.evaluate(model(recent), tokens)
    assert tokens.calls == 1


@pytest.mark.parametrize(
    ("prices", "reader", "refresh"), [({}, Tokens({}), 300), (PRICES, None, 300), (PRICES, Tokens({}), 0)]
)
def test_nothing_is_read_without_prices_prometheus_or_when_off(
    kube: FakeKube, prices: dict[str, ProductPrices], reader: Tokens | None, refresh: int
) -> None:
    coster = TokenCoster(kube, lambda: prices, lambda: NOW, refresh_seconds=refresh)
    assert not coster.evaluate(model(), reader)
    assert kube.status_patches == 0
