"""A model's pods in the e2e simulation, as the simulated kubelet holds them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fleetsim.background import BackgroundSimulation
from fleetsim.gateway import HTTPRouteRouter
from fleetsim.loadgen import LoadGenerator, parse_trace, ready_endpoints
from tests.conftest import OperatorProcess

MD_LABEL = "gpufleet.io/model-deployment"


def model_pods(sim: BackgroundSimulation, model: str) -> list[dict[str, Any]]:
    return [p for p in sim.simulation._pods() if p["metadata"]["labels"].get(MD_LABEL) == model]


def serving(pod: dict[str, Any]) -> bool:
    """Ready and not terminating: what a client can reach."""
    if pod["metadata"].get("deletionTimestamp"):
        return False
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])
    )


def _constant(
    sim: BackgroundSimulation,
    model: str,
    endpoints: Callable[[], list[str]] | HTTPRouteRouter,
    rate: float,
    prompt_tokens: int,
    max_tokens: int,
    **options: Any,
) -> LoadGenerator:
    return LoadGenerator(
        endpoints,
        model,
        parse_trace({"kind": "constant", "rate": rate}),
        sim.simulation.clock,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        **options,
    )


def constant_load(
    sim: BackgroundSimulation,
    namespace: str,
    model: str,
    rate: float = 2,
    prompt_tokens: int = 256,
    max_tokens: int = 32,
    **options: Any,
) -> LoadGenerator:
    """Requests at `rate` per simulated second to the model's ready endpoints, as its clients would send."""
    core = sim.simulation.core

    def endpoints() -> list[str]:
        return ready_endpoints(core, namespace, model)

    return _constant(sim, model, endpoints, rate, prompt_tokens, max_tokens, **options)


def routed_load(
    sim: BackgroundSimulation,
    namespace: str,
    model: str,
    route: str,
    rate: float = 2,
    prompt_tokens: int = 256,
    max_tokens: int = 32,
    **options: Any,
) -> LoadGenerator:
    """As `constant_load`, through a gateway that routes by the HTTPRoute `route` (fleetsim.gateway): each
    request goes to a backend Service by the route's weights; the report's `routed` holds each one's share.
    The test asks for the `gateway_api_crds` fixture too (the HTTPRoute CRD on the same control plane)."""
    router = HTTPRouteRouter(sim.simulation.custom, sim.simulation.core, namespace, route)
    return _constant(sim, model, router, rate, prompt_tokens, max_tokens, **options)


def model_deployment(sim: BackgroundSimulation, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = sim.simulation.custom.get_namespaced_custom_object(
        "gpufleet.io", "v1alpha1", namespace, "modeldeployments", name
    )
    return found


def apply_sample(operator: OperatorProcess, sample: Path, name: str, namespace: str) -> None:
    """One of the e2e manifests under another name, applied with the operator running."""
    if not operator.alive():
        operator.start()
    doc = yaml.safe_load(sample.read_text())
    doc["metadata"]["name"] = name
    operator.cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(doc))
