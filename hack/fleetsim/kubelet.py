"""The simulated kubelet of every simulated GPU node, in one asyncio process.

For nodes it owns it renews the Lease and the Ready condition (otherwise the
real node lifecycle controller taints them NotReady after ~40 s and evicts).
For pods the real scheduler bound to those nodes it does what a kubelet and
vLLM would: pull the image, load the weights (delays from the model's size
and source, REFERENCE.md), then start a simulated vLLM server on the pod's
loopback IP and mark the pod Ready. Init containers run first, one after
the other, as the kubelet runs them: the pod stays Pending and not Initialized
until each has exited 0, and a failed one is restarted after the kubelet's
crash back-off; the AWS CLI's `aws s3 sync` really copies from the
simulation's S3 into the pod's emptyDir, where vLLM's start-up check looks for
the LoRA adapters (containers.py). vLLM that cannot start (the model does not
fit, an adapter does not load) leaves the pod crash-looping. A pod whose vLLM
image is a faulty build (`builds`, fleetsim.builds) gets that build's slower
engine or share of failed requests, or never becomes Ready. On deletion it
honours preStop (vLLM keeps serving), then sends the engine SIGTERM: with
--shutdown-timeout it drains (new requests get 503) until in-flight requests finish, the timeout or
the grace period ends; without it in-flight requests are cut, as real vLLM
aborts them. Then it completes the deletion. A node that
disappears takes its pods with it, abruptly, as a reclaimed spot instance does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import shutil
import socket
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from fleetsim.builds import Build
from fleetsim.clock import SimClock
from fleetsim.containers import (
    BACKOFF_INITIAL_SECONDS,
    BACKOFF_MAX_SECONDS,
    INIT_START_SECONDS,
    ContainerConfigError,
    Outcome,
    PodVolumes,
    decode_secret,
    lora_load_error,
    resolve_env,
    run_init_container,
)
from fleetsim.dcgm import DcgmExporter, GpuSample
from fleetsim.llmd_sim import LlmdSimServer
from fleetsim.models import gpu_model_name
from fleetsim.params import KubeletParams
from fleetsim.podspec import GIB, PodPlan, load_seconds, plan_pod
from fleetsim.vllm_model import EngineConfigError, EngineProfile, profile_for, weights_bytes
from fleetsim.vllm_server import VllmServer

log = logging.getLogger("fleetsim.kubelet")

NODE_LABEL = "fleetsim.gpufleet.io/node"
START_GRACE_SECONDS = 10.0  # real seconds a cancelled engine start may take to finish binding
DCGM_PORT = 9400


def termination_message_from_log(log: str) -> str:
    """What the kubelet makes of a failed container's log under FallbackToLogsOnError: its last 80 lines,
    at most 2 KiB of them (pkg/kubelet/container/runtime.go, MaxContainerTerminationMessageLog*, v1.36.3)."""
    tail = "\n".join(log.splitlines()[-80:])
    return tail.encode()[-2048:].decode("utf-8", errors="ignore")


class Server(Protocol):
    draining: bool
    refuse_scrapes: bool

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def start_draining(self) -> None: ...
    def gpu_utilization(self) -> float: ...
    def in_flight(self) -> int: ...


ServerFactory = Callable[[str, int, str, EngineProfile, SimClock, Sequence[str]], Server]


def _default_server(
    host: str, port: int, name: str, profile: EngineProfile, clock: SimClock, loras: Sequence[str]
) -> Server:
    return VllmServer(host, port, name, profile, clock, lora_names=loras)


def server_factory_for(engine: str) -> ServerFactory:
    """What runs in vLLM pods for a fleet file's `engine:` (fleetsim.pools.ENGINES)."""
    if engine == "llm-d-inference-sim":
        return LlmdSimServer.factory
    if engine == "fleetsim":
        return _default_server
    raise ValueError(f"unknown engine {engine!r}")


def listening_addresses() -> set[str]:
    """IPv4 addresses something on this machine listens on (/proc/net/tcp, state 0A = LISTEN)."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":
                address = fields[1].split(":")[0]  # little-endian hex
                found.add(str(ipaddress.IPv4Address(bytes.fromhex(address)[::-1])))
    return found


class AddressBook:
    """Loopback addresses: nodes in 127.1.0.0/16, pods in 127.2.0.0/16 (nothing else may be used)."""

    def __init__(self, offset: int | None = None) -> None:
        self._free: dict[str, list[ipaddress.IPv4Address]] = {}
        # Another simulator on this machine (a test run, the demo, a benchmark) uses the same
        # ranges against another control plane. reserve_addresses_in_use skips what it already
        # listens on, not what it takes later: each simulator also starts at a random place in the
        # ranges, so two rarely meet.
        start = random.randrange(0, 32768) if offset is None else offset
        self._next = {
            "node": int(ipaddress.IPv4Address("127.1.0.2")) + start,
            "pod": int(ipaddress.IPv4Address("127.2.0.2")) + start,
        }
        self._limit = {
            "node": int(ipaddress.IPv4Address("127.1.255.254")),
            "pod": int(ipaddress.IPv4Address("127.2.255.254")),
        }

        self._reserved: set[str] = set()

    def reserve(self, addresses: Sequence[str]) -> None:
        """Never hand out these (held by objects this simulator did not create)."""
        self._reserved.update(addresses)

    def take(self, kind: str) -> str:
        # Fresh addresses first: a returned one is reused only when the range is spent, so a
        # pod's address is not handed on while anything of the old pod may still hold it.
        while self._next[kind] <= self._limit[kind]:
            address = str(ipaddress.IPv4Address(self._next[kind]))
            self._next[kind] += 1
            if address not in self._reserved:
                return address
        free = self._free.setdefault(kind, [])
        if free:
            return str(free.pop(0))
        raise RuntimeError(f"no loopback {kind} address left")

    def give_back(self, kind: str, address: str) -> None:
        self._free.setdefault(kind, []).append(ipaddress.IPv4Address(address))


@dataclass
class Device:
    index: int
    uuid: str
    mig_profile: str | None
    gpu_instance_id: int | None
    pod_uid: str | None = None


@dataclass
class SimPod:
    uid: str
    namespace: str
    name: str
    node: str
    ip: str
    plan: PodPlan | None
    devices: list[Device] = field(default_factory=list)
    server: Server | None = None
    task: asyncio.Task[None] | None = None
    terminating: bool = False
    weights_gib: float = 0.0
    # What each init container wrote in its latest run (what `kubectl logs -c NAME` would show).
    logs: dict[str, str] = field(default_factory=dict)
    # A build that never becomes ready (fleetsim.builds): the port its vLLM bound and never listens on.
    held_socket: socket.socket | None = None


@dataclass
class SimNode:
    name: str
    ip: str
    product: str
    devices: list[Device]
    memory_mib: int
    exporter: DcgmExporter | None = None
    image_cached: bool = False


def _devices(node: dict[str, Any]) -> list[Device]:
    allocatable: dict[str, str] = node["status"]["allocatable"]
    name = node["metadata"]["name"]
    for resource, amount in allocatable.items():
        if resource.startswith("nvidia.com/mig-"):
            profile = resource.removeprefix("nvidia.com/mig-")
            return [Device(i, f"MIG-{name}-{i}", profile, i) for i in range(int(amount))]
    count = int(allocatable.get("nvidia.com/gpu", "0"))
    return [Device(i, f"GPU-{name}-{i}", None, None) for i in range(count)]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SimKubelet:
    def __init__(
        self,
        api: client.ApiClient,
        clock: SimClock,
        params: KubeletParams | None = None,
        addresses: AddressBook | None = None,
        server_factory: ServerFactory = _default_server,
        poll_seconds: float = 0.5,
        volumes_root: Path | None = None,
        builds: Mapping[str, Build] | None = None,
    ) -> None:
        self.core = client.CoreV1Api(api)
        # Faulty builds by the exact image of a pod's vLLM container (a scenario's `builds`).
        self.builds: dict[str, Build] = dict(builds or {})
        # Pods' volumes and containers' scratch space, one directory per pod (a temporary one if not given).
        self._volumes_root = volumes_root
        self._own_volumes_root = False
        self.leases = client.CoordinationV1Api(api)
        self.clock = clock
        self.params = params or KubeletParams()
        self.addresses = addresses or AddressBook()
        self.server_factory = server_factory
        self.poll_seconds = poll_seconds
        self.nodes: dict[str, SimNode] = {}
        self.pods: dict[str, SimPod] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def reserve_addresses_in_use(self) -> None:
        """Skip loopback addresses that pods and nodes already in the cluster hold (a reused control
        plane may keep an earlier run's objects), so no two scrape targets share an address, and
        those something on this machine listens on (another simulator), where a bind would fail."""
        pods = json.loads(self.core.list_pod_for_all_namespaces(_preload_content=False).data)["items"]
        nodes = json.loads(self.core.list_node(_preload_content=False).data)["items"]
        taken = [p.get("status", {}).get("podIP", "") for p in pods]
        taken += [a["address"] for n in nodes for a in n.get("status", {}).get("addresses", [])]
        taken += listening_addresses()
        self.addresses.reserve([a for a in taken if a.startswith("127.")])

    # ---- nodes -------------------------------------------------------------------------------

    async def add_node(self, manifest: dict[str, Any], ip: str) -> SimNode:
        """Register a Node built from a pool with InternalIP `ip` (from self.addresses) and keep it Ready."""
        name = manifest["metadata"]["name"]
        labels = manifest["metadata"].setdefault("labels", {})
        labels[NODE_LABEL] = "true"
        try:
            await asyncio.to_thread(self.core.create_node, manifest)
        except ApiException as error:
            if error.status != 409:
                raise
        # Node status is a subresource: capacity, addresses and conditions go there.
        await asyncio.to_thread(self.core.patch_node_status, name, {"status": manifest["status"]})
        node = SimNode(
            name=name,
            ip=ip,
            product=labels.get("nvidia.com/gpu.product", ""),
            devices=_devices(manifest),
            memory_mib=int(labels.get("nvidia.com/gpu.memory", "81920")),
        )

        def samples() -> list[GpuSample]:
            return self._gpu_samples(node)

        node.exporter = DcgmExporter(ip, DCGM_PORT, name, samples)
        await node.exporter.start()
        self.nodes[name] = node
        await self._heartbeat(node)
        return node

    async def remove_node(self, name: str) -> None:
        """The instance is gone: its pods die with it and the Node object is deleted."""
        node = self.nodes.pop(name, None)
        for pod in [p for p in self.pods.values() if p.node == name]:
            await self._forget(pod, delete=True)
        with contextlib.suppress(ApiException):
            await asyncio.to_thread(self.core.delete_node, name)
        if node is not None:
            if node.exporter is not None:
                await node.exporter.stop()
            self.addresses.give_back("node", node.ip)

    async def _heartbeat(self, node: SimNode) -> None:
        stamp = _now()
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "fleetsim kubelet is posting ready status",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }
        await asyncio.to_thread(self.core.patch_node_status, node.name, {"status": {"conditions": [ready]}})
        lease = {
            "metadata": {"name": node.name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": node.name, "leaseDurationSeconds": 40, "renewTime": datetime.now(UTC)},
        }
        try:
            await asyncio.to_thread(self.leases.patch_namespaced_lease, node.name, "kube-node-lease", lease)
        except ApiException as error:
            if error.status != 404:
                raise
            await asyncio.to_thread(self.leases.create_namespaced_lease, "kube-node-lease", lease)

    async def _heartbeats(self) -> None:
        # Leases are real-time objects (the node lifecycle controller is not simulated): never scaled.
        while True:
            for node in list(self.nodes.values()):
                try:
                    await self._heartbeat(node)
                except ApiException as error:
                    log.warning("heartbeat of %s failed: %s", node.name, error.reason)
            await asyncio.sleep(min(self.params.heartbeat_seconds, 10.0))

    # ---- pods ----------------------------------------------------------------------------------

    def _gpu_samples(self, node: SimNode) -> list[GpuSample]:
        samples = []
        per_device_mib = node.memory_mib
        for device in node.devices:
            pod = self.pods.get(device.pod_uid or "")
            utilization = pod.server.gpu_utilization() if pod and pod.server else 0.0
            used = int(per_device_mib * 0.9) if pod and pod.server else 0
            samples.append(
                GpuSample(
                    gpu=device.index,
                    uuid=device.uuid,
                    model_name=gpu_model_name(node.product),
                    utilization=utilization,
                    fb_used_mib=used,
                    fb_free_mib=per_device_mib - used,
                    power_w=90.0 + 310.0 * utilization,
                    mig_profile=device.mig_profile,
                    gpu_instance_id=device.gpu_instance_id,
                    namespace=pod.namespace if pod else None,
                    pod=pod.name if pod else None,
                    container="vllm" if pod else None,
                )
            )
        return samples

    def _allocate(self, node: SimNode, plan: PodPlan | None, uid: str) -> list[Device]:
        if plan is None or plan.gpu_count == 0:
            return []
        wanted_mig = plan.mig_profile
        free = [d for d in node.devices if d.pod_uid is None and d.mig_profile == wanted_mig]
        chosen = free[: plan.gpu_count]
        for device in chosen:
            device.pod_uid = uid
        return chosen

    async def _patch_pod_status(self, pod: SimPod, status: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(
                self.core.patch_namespaced_pod_status, pod.name, pod.namespace, {"status": status}
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def _conditions(self, ready: bool) -> list[dict[str, str]]:
        stamp = _now()
        state = "True" if ready else "False"
        return [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp},
            {"type": "Initialized", "status": "True", "lastTransitionTime": stamp},
            {"type": "ContainersReady", "status": state, "lastTransitionTime": stamp},
            {"type": "Ready", "status": state, "lastTransitionTime": stamp},
        ]

    async def _run_pod(self, pod: SimPod, raw: dict[str, Any]) -> None:
        node = self.nodes[pod.node]
        containers = raw["spec"].get("containers", [])
        running_status: dict[str, Any] = {
            "phase": "Running",
            "podIP": pod.ip,
            "podIPs": [{"ip": pod.ip}],
            "hostIP": node.ip,
            "hostIPs": [{"ip": node.ip}],
            "startTime": _now(),
            "conditions": self._conditions(False),
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "started": True,
                    "state": {"running": {"startedAt": _now()}},
                }
                for c in containers
            ],
        }
        if raw.get("spec", {}).get("initContainers"):
            # Init containers first, in order (s3:// adapters are copied by them); the pod's containers start
            # once every one has exited 0.
            finished = await self._run_init_containers(pod, raw, running_status)
            if finished is None:
                return  # restartPolicy Never: the pod has failed
            running_status["initContainerStatuses"] = finished
            for status in running_status["containerStatuses"]:
                status["state"] = {"running": {"startedAt": _now()}}
        await self._patch_pod_status(pod, running_status)
        if pod.plan is not None:
            if not node.image_cached:
                await self.clock.sleep(self.params.image_pull_seconds)
                node.image_cached = True
            weights = weights_bytes(pod.plan.model_id, pod.plan.dtype_bytes)
            await self.clock.sleep(load_seconds(weights, pod.plan.source, self.params))
            try:
                profile = profile_for(
                    pod.plan.model_id,
                    tensor_parallel_size=max(1, pod.plan.tensor_parallel_size),
                    gpu_product=node.product,
                    mig_profile=pod.plan.mig_profile,
                    dtype_bytes=pod.plan.dtype_bytes,
                    gpu_memory_utilization=pod.plan.gpu_memory_utilization,
                    max_model_len=pod.plan.max_model_len,
                    max_num_seqs=pod.plan.max_num_seqs,
                    kv_cache_dtype_bytes=pod.plan.kv_cache_dtype_bytes,
                    speculative_method=pod.plan.speculative_method,
                    num_speculative_tokens=pod.plan.num_speculative_tokens,
                    draft_model_id=pod.plan.draft_model_id,
                    max_loras=pod.plan.max_loras,
                    max_lora_rank=pod.plan.max_lora_rank,
                )
            except EngineConfigError as error:
                # vLLM exits at start-up when the model does not fit; the pod crash-loops.
                await self._patch_pod_status(pod, self._crash_loop(running_status, str(error)))
                log.warning("pod %s/%s: vLLM would not start: %s", pod.namespace, pod.name, error)
                return
            # Then it loads the --lora-modules adapters and exits if one does not load (containers.py).
            lora_error = self._lora_error(pod, raw)
            if lora_error is not None:
                await self._patch_pod_status(pod, self._crash_loop(running_status, lora_error))
                log.warning("pod %s/%s: vLLM would not start: %s", pod.namespace, pod.name, lora_error)
                return
            build = self.builds.get(pod.plan.image)
            if build is not None:
                profile = build.engine_profile(profile)
                if build.never_ready:
                    self._never_ready(pod, raw)
                    return
            server = self.server_factory(
                pod.ip, pod.plan.port, pod.plan.served_name, profile, self.clock, pod.plan.lora_names
            )
            if build is not None and build.error_share:
                if isinstance(server, VllmServer):
                    # One seeded stream per pod: the same pod name fails the same requests of a sequence.
                    server.fail_requests(build.error_share, seed=f"{pod.namespace}/{pod.name}")
                else:
                    log.warning(
                        "pod %s/%s: errorShare of build %s is not simulated by %s",
                        pod.namespace,
                        pod.name,
                        pod.plan.image,
                        type(server).__name__,
                    )
            starting = asyncio.ensure_future(server.start())
            try:
                await asyncio.shield(starting)
            except asyncio.CancelledError:
                # A cancel inside start() can land after the port is bound and before anything
                # holds the server: let it finish, then release the port, or the next pod given
                # this address cannot bind.
                await asyncio.wait([starting], timeout=START_GRACE_SECONDS)
                starting.cancel()  # a start that hangs is given up rather than the kubelet with it
                await server.stop()
                raise
            pod.server = server
        ready_status = {
            "conditions": self._conditions(True),
            "containerStatuses": [{**s, "ready": True} for s in running_status["containerStatuses"]],
        }
        await self._patch_pod_status(pod, ready_status)

    def _never_ready(self, pod: SimPod, raw: dict[str, Any]) -> None:
        """A build whose engine never comes up: the pod stays Running and not Ready, its port refuses.

        vLLM 0.34.0 binds its port before it builds the engine and listens only once the engine is up
        (setup_server → create_server_socket binds without listen, and its uvicorn server's startup calls
        sock.listen, both in vllm/entrypoints/launchers/launcher.py; that server starts in build_and_serve,
        inside build_async_engine_client, vllm/entrypoints/launchers/api_server/entry.py): until then every
        connection, /health and /metrics included, is refused. The kubelet's startup probe therefore fails
        on every period. What a kubelet then does, kill the container after failureThreshold failures and
        restart it with the crash back-off, is not simulated (probes are not run here): the pod stays
        Running, not Ready, with no restarts.
        """
        assert pod.plan is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((pod.ip, pod.plan.port))
        except OSError:
            sock.close()
            raise
        pod.held_socket = sock
        vllm = next(c for c in raw["spec"]["containers"] if c.get("command", [])[:2] == ["vllm", "serve"])
        probe = vllm.get("startupProbe") or {}
        budget = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3) if probe else None
        log.warning(
            "pod %s/%s: build %s never becomes ready (its port refuses connections)%s",
            pod.namespace,
            pod.name,
            pod.plan.image,
            f"; a kubelet would restart it after its startup probe's {budget} s (not simulated)"
            if budget
            else "",
        )

    @staticmethod
    def _crash_loop(running: dict[str, Any], message: str) -> dict[str, Any]:
        waiting = {"waiting": {"reason": "CrashLoopBackOff", "message": message[:1024]}}
        return {
            "containerStatuses": [
                {**s, "ready": False, "started": False, "restartCount": 1, "state": waiting}
                for s in running["containerStatuses"]
            ]
        }

    # ---- init containers and volumes ---------------------------------------------------------------

    def _pod_dir(self, uid: str) -> Path:
        if self._volumes_root is None:
            self._volumes_root = Path(tempfile.mkdtemp(prefix="fleetsim-pods-"))
            self._own_volumes_root = True
        return self._volumes_root / uid

    def _lookup(self, namespace: str) -> Callable[[str, str], Mapping[str, str] | None]:
        """Secrets and ConfigMaps from the API server, as the kubelet reads them for env (in a thread)."""

        def lookup(kind: str, name: str) -> Mapping[str, str] | None:
            try:
                if kind == "secret":
                    return decode_secret(self.core.read_namespaced_secret(name, namespace).data)
                found: Mapping[str, str] = self.core.read_namespaced_config_map(name, namespace).data or {}
                return found
            except ApiException as error:
                if error.status == 404:
                    return None
                raise

        return lookup

    @staticmethod
    def _waiting(container: Mapping[str, Any], reason: str, restarts: int = 0) -> dict[str, Any]:
        return {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "ready": False,
            "restartCount": restarts,
            "started": False,
            "state": {"waiting": {"reason": reason}},
        }

    def _initializing(self, running: dict[str, Any], inits: list[dict[str, Any]]) -> dict[str, Any]:
        """The pod's status while init containers run: Pending, not Initialized, its containers waiting."""
        stamp = _now()
        incomplete = [
            s["name"] for s in inits if (s["state"].get("terminated") or {}).get("exitCode", None) != 0
        ]
        unready = [s["name"] for s in running["containerStatuses"]]
        not_ready = f"containers with unready status: [{' '.join(unready)}]"
        conditions = [
            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": stamp},
            {
                "type": "Initialized",
                "status": "False",
                "reason": "ContainersNotInitialized",
                "message": f"containers with incomplete status: [{' '.join(incomplete)}]",
                "lastTransitionTime": stamp,
            },
            {
                "type": "Ready",
                "status": "False",
                "reason": "ContainersNotReady",
                "message": not_ready,
                "lastTransitionTime": stamp,
            },
            {
                "type": "ContainersReady",
                "status": "False",
                "reason": "ContainersNotReady",
                "message": not_ready,
                "lastTransitionTime": stamp,
            },
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp},
        ]
        containers = [
            self._waiting({"name": s["name"], "image": s["image"]}, "PodInitializing")
            for s in running["containerStatuses"]
        ]
        return {
            **{k: v for k, v in running.items() if k not in ("conditions", "containerStatuses")},
            "phase": "Pending",
            "conditions": conditions,
            "containerStatuses": containers,
            "initContainerStatuses": inits,
        }

    async def _run_init_containers(
        self, pod: SimPod, raw: dict[str, Any], running: dict[str, Any]
    ) -> list[dict[str, Any]] | None:
        """Run the pod's init containers one after the other, as the kubelet does.

        Each must exit 0 before the next starts; the pod is Pending and not Initialized meanwhile
        (`kubectl get pods` shows Init:N/M, Init:Error, Init:CrashLoopBackOff). A failed one is restarted
        after the crash back-off (10 s doubling to 5 min, in simulated time) for restartPolicy Always or
        OnFailure, every Deployment's pod; with Never the pod fails. A Secret or key it needs that is missing
        is CreateContainerConfigError until it appears. Returns the init containers' final statuses, or
        None if the pod failed.
        """
        spec = raw["spec"]
        inits: list[dict[str, Any]] = spec["initContainers"]
        statuses = [self._waiting(c, "PodInitializing") for c in inits]
        volumes = await asyncio.to_thread(PodVolumes.of, self._pod_dir(pod.uid), spec)
        lookup = self._lookup(pod.namespace)
        for index, container in enumerate(inits):
            name = container["name"]
            restarts = 0
            backoff = BACKOFF_INITIAL_SECONDS
            last: dict[str, Any] | None = None
            while True:
                try:
                    env = await asyncio.to_thread(resolve_env, container, pod.namespace, lookup)
                except ContainerConfigError as error:
                    statuses[index] = self._waiting(container, "CreateContainerConfigError", restarts)
                    statuses[index]["state"]["waiting"]["message"] = str(error)
                    await self._patch_pod_status(pod, self._initializing(running, statuses))
                    await self.clock.sleep(BACKOFF_INITIAL_SECONDS)
                    continue
                started = _now()
                statuses[index] = self._waiting(container, "", restarts) | {
                    "started": True,
                    "state": {"running": {"startedAt": started}},
                    **({"lastState": last} if last else {}),
                }
                await self._patch_pod_status(pod, self._initializing(running, statuses))
                await self.clock.sleep(INIT_START_SECONDS)
                scratch = self._pod_dir(pod.uid) / "containers" / f"{name}-{restarts}"
                outcome: Outcome = await asyncio.to_thread(
                    run_init_container, container, env, volumes, scratch
                )
                await asyncio.to_thread(shutil.rmtree, scratch, True)  # its own filesystem goes with it
                if outcome.bytes_copied:
                    await self.clock.sleep(outcome.bytes_copied / GIB / self.params.s3_gib_per_second)
                pod.logs[name] = outcome.log
                terminated = {
                    "exitCode": outcome.exit_code,
                    "reason": "Completed" if outcome.exit_code == 0 else "Error",
                    "startedAt": started,
                    "finishedAt": _now(),
                }
                if (
                    outcome.exit_code != 0
                    and container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
                ):
                    terminated["message"] = termination_message_from_log(outcome.log)
                statuses[index] = {
                    **statuses[index],
                    "ready": outcome.exit_code == 0,
                    "started": False,
                    "state": {"terminated": terminated},
                }
                if outcome.exit_code == 0:
                    break
                log.warning(
                    "pod %s/%s: init container %s exited %d: %s",
                    pod.namespace,
                    pod.name,
                    name,
                    outcome.exit_code,
                    outcome.log.strip()[-500:],
                )
                if spec.get("restartPolicy", "Always") == "Never":
                    failed = self._initializing(running, statuses)
                    failed["phase"] = "Failed"
                    await self._patch_pod_status(pod, failed)
                    return None
                await self._patch_pod_status(pod, self._initializing(running, statuses))  # Init:Error
                last = {"terminated": terminated}
                shown = f"{backoff:g}s" if backoff < 60 else f"{int(backoff // 60)}m{int(backoff % 60)}s"
                who = f"container={name} pod={pod.name}_{pod.namespace}({pod.uid})"
                message = f"back-off {shown} restarting failed {who}"
                statuses[index] = {
                    **self._waiting(container, "CrashLoopBackOff", restarts),
                    "lastState": last,
                }
                statuses[index]["state"]["waiting"]["message"] = message
                await self._patch_pod_status(pod, self._initializing(running, statuses))
                await self.clock.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                restarts += 1
        return statuses

    def _lora_error(self, pod: SimPod, raw: dict[str, Any]) -> str | None:
        """Why vLLM would fail to load one of its --lora-modules adapters at start-up, or None."""
        plan = pod.plan
        if plan is None or not plan.lora_paths:
            return None
        spec = raw["spec"]
        vllm = next(c for c in spec.get("containers", []) if c.get("command", [])[:2] == ["vllm", "serve"])
        volumes = PodVolumes.of(self._pod_dir(pod.uid), spec)
        for name, path in zip(plan.lora_names, plan.lora_paths, strict=True):
            error = lora_load_error(name, path, volumes, vllm.get("volumeMounts") or [], plan.max_lora_rank)
            if error is not None:
                return error
        return None

    async def _terminate(self, pod: SimPod) -> None:
        """preStop (still serving), then SIGTERM: drain if vLLM was given --shutdown-timeout, else abort.

        The grace period counts from the deletion and covers the hook and the drain, as the kubelet's
        does. Without --shutdown-timeout (vLLM's default 0, and every release before v0.18.0) SIGTERM
        aborts what is in flight: _forget stops the server, which cuts those connections.
        """
        plan = pod.plan
        if pod.task is not None and not pod.task.done():
            pod.task.cancel()  # still starting: nothing to drain
        elif pod.server is not None and plan is not None:
            await self.clock.sleep(min(plan.prestop_seconds, plan.grace_seconds))
            spent = min(plan.prestop_seconds, plan.grace_seconds)
            # gpufleet's preStop for older releases: wait, bounded, until nothing runs or waits. The
            # server keeps accepting meanwhile, as vLLM does before SIGTERM.
            bound = min(plan.prestop_idle_wait_seconds, plan.grace_seconds - spent)
            spent += await self._wait_idle(pod, bound)
            # The node may have gone during the preStop, taking the server with it (_forget).
            server = pod.server
            # An engine that drains on SIGTERM whatever its flags (llm-d-inference-sim) says for how long.
            drain = getattr(server, "sigterm_drain_seconds", plan.shutdown_timeout_seconds)
            if server is not None and drain > 0:
                server.start_draining()  # new requests (and vLLM's /health) get 503
                await self._wait_idle(pod, min(drain, plan.grace_seconds - spent))
        await self._forget(pod, delete=True)

    async def _wait_idle(self, pod: SimPod, bound: float) -> float:
        """Simulated seconds waited, polling each second, until the pod's engine is idle or gone."""
        waited = 0.0
        while waited < bound and pod.server is not None and pod.server.in_flight() > 0:
            await self.clock.sleep(1.0)
            waited += 1.0
        return waited

    async def _forget(self, pod: SimPod, delete: bool) -> None:
        if pod.task is not None and not pod.task.done():
            pod.task.cancel()
            await asyncio.wait([pod.task])  # its port is released before its address is given back
        if pod.server is not None:
            await pod.server.stop()
            pod.server = None
        if pod.held_socket is not None:
            pod.held_socket.close()
            pod.held_socket = None
        for device in pod.devices:
            device.pod_uid = None
        if self._volumes_root is not None:
            # emptyDir volumes and containers' files go with the pod.
            await asyncio.to_thread(shutil.rmtree, self._volumes_root / pod.uid, True)
        if self.pods.pop(pod.uid, None) is not None:
            self.addresses.give_back("pod", pod.ip)
        if delete:
            with contextlib.suppress(ApiException):
                await asyncio.to_thread(
                    self.core.delete_namespaced_pod, pod.name, pod.namespace, grace_period_seconds=0
                )

    async def sync_pods(self) -> None:
        response = await asyncio.to_thread(self.core.list_pod_for_all_namespaces, _preload_content=False)
        seen: set[str] = set()
        for raw in json.loads(response.data)["items"]:
            meta, spec = raw["metadata"], raw.get("spec", {})
            node_name = spec.get("nodeName")
            if node_name not in self.nodes:
                continue
            uid = meta["uid"]
            seen.add(uid)
            known = self.pods.get(uid)
            if meta.get("deletionTimestamp"):
                if known is None:
                    with contextlib.suppress(ApiException):
                        await asyncio.to_thread(
                            self.core.delete_namespaced_pod,
                            meta["name"],
                            meta["namespace"],
                            grace_period_seconds=0,
                        )
                elif not known.terminating:
                    known.terminating = True
                    asyncio.get_running_loop().create_task(self._terminate(known))
                continue
            if known is not None:
                continue
            plan = plan_pod(raw)
            sim_pod = SimPod(
                uid, meta["namespace"], meta["name"], node_name, self.addresses.take("pod"), plan
            )
            sim_pod.devices = self._allocate(self.nodes[node_name], plan, uid)
            self.pods[uid] = sim_pod
            sim_pod.task = asyncio.get_running_loop().create_task(self._start(sim_pod, raw))
        for uid in [u for u in self.pods if u not in seen and not self.pods[u].terminating]:
            await self._forget(self.pods[uid], delete=False)

    async def _start(self, pod: SimPod, raw: dict[str, Any]) -> None:
        try:
            await self._run_pod(pod, raw)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s/%s failed to start", pod.namespace, pod.name)

    async def _pod_loop(self) -> None:
        while True:
            try:
                await self.sync_pods()
            except Exception:
                log.exception("pod sync failed")
            await asyncio.sleep(self.poll_seconds)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeats()), loop.create_task(self._pod_loop())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # The simulated instances end with the simulation: their Nodes leave the cluster too
        # (and the pod garbage collector removes what was bound to them).
        for name in list(self.nodes):
            await self.remove_node(name)
        if self._own_volumes_root and self._volumes_root is not None:
            await asyncio.to_thread(shutil.rmtree, self._volumes_root, True)
            self._volumes_root = None
