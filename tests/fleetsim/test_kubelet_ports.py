"""A pod removed while its engine is starting releases its port before its address is reused.

Seen in a CI run of the kill story: deleted pods' listeners outlived them, and later pods
given the same loopback address crash-looped on "address already in use".
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Sequence
from typing import Any

from kubernetes import client

from fleetsim.clock import SimClock
from fleetsim.kubelet import SimKubelet, SimNode, SimPod, listening_addresses
from fleetsim.params import KubeletParams
from fleetsim.podspec import PodPlan
from fleetsim.vllm_model import EngineProfile

PORT = 8000


class SlowStartingServer:
    """Binds its port at once, then takes a while longer to be ready (as vLLM's start does)."""

    draining = False
    refuse_scrapes = False

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(lambda r, w: None, self.host, self.port)
        await asyncio.sleep(0.3)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def start_draining(self) -> None:
        self.draining = True

    def gpu_utilization(self) -> float:
        return 0.0

    def in_flight(self) -> int:
        return 0


def _factory(
    host: str, port: int, name: str, profile: EngineProfile, clock: SimClock, loras: Sequence[str]
) -> SlowStartingServer:
    return SlowStartingServer(host, port)


def _free_pod_address() -> str:
    in_use = listening_addresses()
    while True:
        address = f"127.2.{random.randrange(200, 250)}.{random.randrange(2, 250)}"
        if address not in in_use:
            return address


async def _remove_while_starting() -> tuple[str, bool, bool]:
    kubelet = SimKubelet(client.ApiClient(), SimClock(scale=1000.0), KubeletParams(), server_factory=_factory)

    async def no_status(pod: SimPod, status: dict[str, Any]) -> None:
        return None

    kubelet._patch_pod_status = no_status  # type: ignore[method-assign]  # no API server here
    kubelet.nodes["n"] = SimNode("n", "127.1.0.2", "NVIDIA-H100-80GB-HBM3", [], 81920, image_cached=True)
    plan = PodPlan(
        model_id="meta-llama/Meta-Llama-3-8B-Instruct",
        served_name="llama",
        tensor_parallel_size=1,
        max_model_len=8192,
        dtype_bytes=2,
        gpu_memory_utilization=0.9,
        max_num_seqs=None,
        gpu_resource="nvidia.com/gpu",
        gpu_count=1,
        lora_names=(),
        source="pvc",
        prestop_seconds=0,
        grace_seconds=30,
        port=PORT,
    )
    address = _free_pod_address()
    pod = SimPod("uid-1", "ns", "p", "n", address, plan)
    kubelet.pods[pod.uid] = pod
    pod.task = asyncio.get_running_loop().create_task(kubelet._start(pod, {"spec": {"containers": []}}))
    for _ in range(500):  # until the port is bound (the weights load first)
        if address in listening_addresses():
            break
        await asyncio.sleep(0.01)
    bound = address in listening_addresses()
    await kubelet._forget(pod, delete=False)
    return address, bound, address in listening_addresses()


def test_a_pod_removed_while_starting_releases_its_port() -> None:
    address, bound, still_listening = asyncio.run(_remove_while_starting())
    assert bound, "the simulated engine never bound its port"
    assert not still_listening, f"{address}:{PORT} is still held by a pod that is gone"
    with socket.socket() as again:  # the next pod given this address can bind it
        again.bind((address, PORT))
