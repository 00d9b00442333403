"""A model's pods in the e2e simulation, as the simulated kubelet holds them."""

from __future__ import annotations

from typing import Any

from fleetsim.background import BackgroundSimulation

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
