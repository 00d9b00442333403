"""One simulated fleet per test session, on the shared control plane, driven by the real operator.

Time runs 50x: a 70B replica's ~5 simulated minutes of image pull and weight
loading take ~7 real seconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetsim.background import BackgroundSimulation
from fleetsim.scenario import parse_scenario
from fleetsim.sim import Simulation
from tests.conftest import E2E_FLEET, E2E_SPOT_NOTICE_SECONDS, E2E_TIME_SCALE, ROOT, Cluster, OperatorProcess

HERE = Path(__file__).resolve().parent
# Unique per session: a reused control plane may still be deleting an earlier run's namespace.
NAMESPACE = f"fleetsim-e2e-{uuid.uuid4().hex[:6]}"
MODEL = "llama-3-70b-west"


@pytest.fixture(scope="session")
def sim(
    operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackgroundSimulation]:
    cluster: Cluster = operator.cluster
    cluster.kubectl("create", "namespace", NAMESPACE)
    scenario = parse_scenario(
        {
            "name": "e2e",
            "timeScale": E2E_TIME_SCALE,
            "params": {"cloud": {"spotNoticeSeconds": E2E_SPOT_NOTICE_SECONDS}},
            "duration": 60,
            "fleet": str(E2E_FLEET),
            "namespace": NAMESPACE,
            "apply": [str(HERE / "llama-3-70b-west.yaml")],
            # tests/e2e/test_canary.py's bad builds (fleetsim.builds); every other image runs as built.
            "builds": {
                "vllm/vllm-openai:v0.34.0-errors": {"errorShare": 0.2},
                "vllm/vllm-openai:v0.34.0-slow": {"prefillSlowdown": 3.0},
                "vllm/vllm-openai:v0.34.0-stuck": {"neverReady": True},
            },
        },
        ROOT,
    )
    simulation = Simulation(
        scenario,
        cluster.kubeconfig,
        tmp_path_factory.mktemp("fleetsim"),
        kubectl=cluster.kubectl_path,
        run_operator=False,
        prometheus_port=operator.prometheus_port,
        moto_port=operator.moto_port,
    )
    background = BackgroundSimulation(simulation)
    try:
        background.start()
        yield background
    finally:
        background.stop()
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
