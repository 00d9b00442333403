"""Scale mode's one /metrics page: vLLM's names, the labels the operator's fleet-wide queries group by,
and each model's load split over its serving replicas."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from fleetsim.clock import SimClock
from fleetsim.scale_fleet import ScaleMetrics, ScaleReplica
from fleetsim.scale_model import Workload
from fleetsim.vllm_model import profile_for
from gpufleet.adapters.serving_metrics import MODEL_LABELS

PROFILE = profile_for("Meta-Llama-3-8B-Instruct", 1, "NVIDIA-A100-SXM4-80GB")


def metrics_with(replicas: dict[str, str], rate: float) -> ScaleMetrics:
    metrics = ScaleMetrics(SimClock(1.0), Workload(), port=1)
    for pod, model in replicas.items():
        replica = ScaleReplica(metrics, "ns", pod, "node-1", model, PROFILE)
        metrics.replicas[replica.pod_key] = replica
    metrics.rates = {("ns", m): (lambda _t: rate) for m in set(replicas.values())}
    metrics.start_load()
    return metrics


def series(page: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def test_every_replica_has_the_three_gauges_with_the_labels_the_queries_group_by() -> None:
    metrics = metrics_with({"a-0": "a", "a-1": "a", "b-0": "b"}, rate=2.0)
    metrics.advance(10.0)
    found = series(metrics.vllm_page())
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert sorted(labels["pod"] for labels, _ in found[name]) == ["a-0", "a-1", "b-0"]
        for labels, _ in found[name]:
            assert all(labels.get(label) for label in MODEL_LABELS)
            assert labels["container"] == "vllm"


def test_a_model_load_is_split_over_its_serving_replicas_and_a_draining_one_gets_none() -> None:
    metrics = metrics_with({"a-0": "a", "a-1": "a", "a-2": "a"}, rate=6.0)
    metrics.replicas[("ns", "a-2")].start_draining()
    metrics.advance(30.0)
    running = {
        labels["pod"]: value for labels, value in series(metrics.vllm_page())["vllm:num_requests_running"]
    }
    one = metrics.replicas[("ns", "a-0")].fluid.steady(3.0).running
    assert running["a-0"] == running["a-1"]
    assert abs(running["a-0"] - one) <= 0.01 * one
    assert running["a-2"] == 0
