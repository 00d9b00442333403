"""fleetsim.prometheus and fleetsim.dcgm without a cluster or a real Prometheus: the config, file_sd
targets from (fake) API objects, and dcgm-exporter's exposition text, parsed by prometheus_client."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import (
    V1Container,
    V1ContainerPort,
    V1Node,
    V1NodeAddress,
    V1NodeList,
    V1NodeStatus,
    V1ObjectMeta,
    V1Pod,
    V1PodList,
    V1PodSpec,
    V1PodStatus,
)
from prometheus_client.parser import text_string_to_metric_families

from fleetsim import prometheus
from fleetsim.dcgm import DcgmExporter, GpuSample, render
from fleetsim.prometheus import (
    DCGM_TARGETS_FILE,
    VLLM_TARGETS_FILE,
    PrometheusServer,
    TargetWriter,
    find_prometheus,
)

# --- finding and starting Prometheus -----------------------------------------------------------------


def test_a_missing_binary_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(prometheus.shutil, "which", lambda name: None)
    monkeypatch.setattr(prometheus, "DEBIAN_BINARY", str(tmp_path / "absent"))
    with pytest.raises(
        RuntimeError, match=r"make simdeps.*apt-get install -y --no-install-recommends prometheus"
    ):
        find_prometheus()


def test_the_binary_on_path_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prometheus.shutil, "which", lambda name: f"/opt/bin/{name}")
    assert find_prometheus() == "/opt/bin/prometheus"


def test_config_has_the_two_file_sd_jobs(tmp_path: Path) -> None:
    server = PrometheusServer(tmp_path, 19090, scrape_interval_s=0.5)
    assert server.url == "http://127.0.0.1:19090"
    config = server.config()
    assert config["global"]["scrape_interval"] == config["global"]["scrape_timeout"] == "500ms"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"vllm", "dcgm"}
    assert jobs["vllm"]["file_sd_configs"][0]["files"] == [str(tmp_path / VLLM_TARGETS_FILE)]
    assert jobs["dcgm"]["file_sd_configs"][0]["files"] == [str(tmp_path / DCGM_TARGETS_FILE)]
    assert jobs["vllm"]["metrics_path"] == jobs["dcgm"]["metrics_path"] == "/metrics"
    # the exporter's namespace/pod/container labels must survive the scrape
    assert jobs["dcgm"]["honor_labels"] is True
    assert "honor_labels" not in jobs["vllm"]
    assert "kubernetes_sd_configs" not in yaml.safe_dump(config)


def test_a_zero_scrape_interval_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duration must be > 0"):
        PrometheusServer(tmp_path, 19090, scrape_interval_s=0)


def test_a_prometheus_that_dies_reports_its_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A stand-in binary that fails as Prometheus does on a busy port: the error carries the log tail."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fake = tmp_path / "prometheus"
    fake.write_text(
        f'#!/bin/sh\necho "args: $*"\necho "listen tcp 127.0.0.1:{port}: bind: address already in use"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(prometheus.shutil, "which", lambda name: str(fake))
    server = PrometheusServer(tmp_path / "work", port)
    with pytest.raises(RuntimeError, match=r"exited with code 0 before it was ready") as error:
        server.start(timeout_s=10)
    message = str(error.value)
    assert "address already in use" in message
    for flag in (
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=2h",
        f"--config.file={tmp_path / 'work' / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'work' / 'data'}",
    ):
        assert flag in message
    assert not server.running
    # empty target files exist before the first TargetWriter.write, so Prometheus starts clean
    assert json.loads((tmp_path / "work" / VLLM_TARGETS_FILE).read_text()) == []
    server.stop()  # idempotent


# --- targets -----------------------------------------------------------------------------------------


def pod(
    name: str,
    ip: str | None = "127.0.1.1",
    ports: dict[str, int] | None = None,
    annotations: dict[str, str] | None = None,
    phase: str = "Running",
    namespace: str = "llm",
) -> V1Pod:
    container_ports = [V1ContainerPort(name=n, container_port=p) for n, p in (ports or {}).items()]
    return V1Pod(
        metadata=V1ObjectMeta(name=name, namespace=namespace, annotations=annotations),
        spec=V1PodSpec(
            node_name="gpu-a-1",
            containers=[V1Container(name="sidecar"), V1Container(name="vllm", ports=container_ports)],
        ),
        status=V1PodStatus(pod_ip=ip, phase=phase),
    )


def node(name: str, ip: str | None, labelled: bool = True) -> V1Node:
    addresses = [V1NodeAddress(type="Hostname", address=name)]
    if ip:
        addresses.append(V1NodeAddress(type="InternalIP", address=ip))
    labels = {"fleetsim.gpufleet.io/node": "true"} if labelled else {}
    return V1Node(metadata=V1ObjectMeta(name=name, labels=labels), status=V1NodeStatus(addresses=addresses))


class FakeCoreV1:
    """The two CoreV1Api calls TargetWriter makes, over real kubernetes client models."""

    def __init__(self, pods: list[V1Pod], nodes: list[V1Node]) -> None:
        self.pods = pods
        self.nodes = nodes
        self.failures = 0

    def list_pod_for_all_namespaces(self) -> V1PodList:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("API server unreachable")
        return V1PodList(items=self.pods)

    def list_node(self, label_selector: str = "") -> V1NodeList:
        key, _, value = label_selector.partition("=")
        return V1NodeList(items=[n for n in self.nodes if (n.metadata.labels or {}).get(key) == value])


def fleet() -> FakeCoreV1:
    return FakeCoreV1(
        [
            pod("vllm-b", ip="127.0.1.2", ports={"http": 8000}),
            pod("vllm-a", ip="127.0.1.1", ports={"http": 8000}),
            pod(
                "annotated",
                ip="127.0.1.3",
                annotations={"prometheus.io/scrape": "true", "prometheus.io/port": "9000"},
                namespace="other",
            ),
            pod(
                "with-path",
                ip="127.0.1.4",
                annotations={"prometheus.io/scrape": "true", "prometheus.io/path": "/m"},
            ),
            pod("pending", ip=None, ports={"http": 8000}),
            pod("no-metrics", ip="127.0.1.5", ports={"grpc": 9000}),
            pod("finished", ip="127.0.1.6", ports={"http": 8000}, phase="Succeeded"),
            pod("routable", ip="10.1.2.3", ports={"http": 8000}),
        ],
        [
            node("gpu-b-1", "127.0.2.2"),
            node("gpu-a-1", "127.0.2.1"),
            node("no-ip", None),
            node("control-plane", "127.0.0.1", labelled=False),
            node("routable", "192.168.1.1"),
        ],
    )


def test_targets_carry_the_labels_kubernetes_sd_relabelling_gives(tmp_path: Path) -> None:
    writer = TargetWriter(fleet(), tmp_path)
    assert writer.write() == (4, 2)
    pods = json.loads((tmp_path / VLLM_TARGETS_FILE).read_text())
    assert pods == [  # sorted by namespace and name, so an unchanged fleet gives an unchanged file
        {
            "targets": ["127.0.1.1:8000"],
            "labels": {"namespace": "llm", "pod": "vllm-a", "container": "vllm", "node": "gpu-a-1"},
        },
        {
            "targets": ["127.0.1.2:8000"],
            "labels": {"namespace": "llm", "pod": "vllm-b", "container": "vllm", "node": "gpu-a-1"},
        },
        {
            "targets": ["127.0.1.4:8000"],
            "labels": {
                "namespace": "llm",
                "pod": "with-path",
                "container": "sidecar",
                "node": "gpu-a-1",
                "__metrics_path__": "/m",
            },
        },
        {
            "targets": ["127.0.1.3:9000"],
            "labels": {"namespace": "other", "pod": "annotated", "container": "sidecar", "node": "gpu-a-1"},
        },
    ]
    nodes = json.loads((tmp_path / DCGM_TARGETS_FILE).read_text())
    assert nodes == [
        {"targets": ["127.0.2.1:9400"], "labels": {"node": "gpu-a-1", "instance": "127.0.2.1:9400"}},
        {"targets": ["127.0.2.2:9400"], "labels": {"node": "gpu-b-1", "instance": "127.0.2.2:9400"}},
    ]


def test_files_are_replaced_atomically_and_only_on_change(tmp_path: Path) -> None:
    api = fleet()
    writer = TargetWriter(api, tmp_path)
    writer.write()
    inode = os.stat(tmp_path / VLLM_TARGETS_FILE).st_ino
    writer.write()
    assert os.stat(tmp_path / VLLM_TARGETS_FILE).st_ino == inode  # unchanged: not rewritten
    api.pods = api.pods[:1]
    assert writer.write() == (1, 2)
    # a rename puts a new inode in place; a reader never sees a half-written file
    assert os.stat(tmp_path / VLLM_TARGETS_FILE).st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([VLLM_TARGETS_FILE, DCGM_TARGETS_FILE])


def test_run_rewrites_until_cancelled_and_survives_api_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api = fleet()
    api.failures = 1
    writer = TargetWriter(api, tmp_path)

    async def scenario() -> None:
        task = asyncio.create_task(writer.run(interval_s=0.01))
        for _ in range(500):
            await asyncio.sleep(0.01)
            if (tmp_path / VLLM_TARGETS_FILE).exists():
                break
        api.pods = []
        # The next rewrite empties the file; wait for it rather than for a fixed time.
        for _ in range(500):
            await asyncio.sleep(0.01)
            if json.loads((tmp_path / VLLM_TARGETS_FILE).read_text()) == []:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.ERROR, logger="fleetsim.prometheus"):
        asyncio.run(scenario())
    assert "writing Prometheus targets failed" in caplog.text
    assert json.loads((tmp_path / VLLM_TARGETS_FILE).read_text()) == []


# --- dcgm-exporter -----------------------------------------------------------------------------------

WHOLE = GpuSample(
    gpu=0,
    uuid="GPU-0f5b3a4e-1111-2222-3333-444455556666",
    utilization=0.42,
    fb_used_mib=72000,
    fb_free_mib=9920,
    power_w=312.5,
    namespace="llm",
    pod="llama-70b-abc",
    container="vllm",
)
MIG = GpuSample(
    gpu=1,
    uuid="GPU-7a7a7a7a-1111-2222-3333-444455556666",
    utilization=0.5,
    fb_used_mib=30000,
    fb_free_mib=10000,
    power_w=150,
    mig_profile="3g.40gb",
    gpu_instance_id=2,
)
FIELDS = {
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_XID_ERRORS",
}


def samples_by_metric(text: str) -> dict[str, list[Any]]:
    families = list(text_string_to_metric_families(text))  # fails on malformed exposition text
    assert all(f.type == "gauge" for f in families)
    return {f.name: f.samples for f in families}


def test_a_whole_gpu_allocated_to_a_pod() -> None:
    text = render([WHOLE], "gpu-a-1")
    metrics = samples_by_metric(text)
    assert set(metrics) == FIELDS
    values = {name: samples[0].value for name, samples in metrics.items()}
    assert values == {
        "DCGM_FI_DEV_GPU_UTIL": 42,  # percent
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE": 0.42,  # ratio
        "DCGM_FI_DEV_FB_USED": 72000,
        "DCGM_FI_DEV_FB_FREE": 9920,
        "DCGM_FI_DEV_POWER_USAGE": 312.5,
        "DCGM_FI_DEV_XID_ERRORS": 0,
    }
    assert metrics["DCGM_FI_DEV_GPU_UTIL"][0].labels == {
        "gpu": "0",
        "UUID": WHOLE.uuid,
        "device": "nvidia0",
        "modelName": "NVIDIA A100-SXM4-80GB",
        "Hostname": "gpu-a-1",
        "container": "vllm",
        "namespace": "llm",
        "pod": "llama-70b-abc",
    }
    assert "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).\n# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n" in text
    assert "GPU_I_PROFILE" not in text


def test_a_mig_slice_has_no_gpu_util_and_carries_its_instance() -> None:
    text = render([WHOLE, MIG], "gpu-a-1")
    metrics = samples_by_metric(text)
    assert [s.labels["gpu"] for s in metrics["DCGM_FI_DEV_GPU_UTIL"]] == ["0"]  # REFERENCE.md: not for MIG
    mig = [s for s in metrics["DCGM_FI_PROF_GR_ENGINE_ACTIVE"] if "GPU_I_ID" in s.labels]
    assert len(mig) == 1
    assert mig[0].value == 0.5
    assert mig[0].labels == {
        "gpu": "1",
        "UUID": MIG.uuid,
        "device": "nvidia1",
        "modelName": "NVIDIA A100-SXM4-80GB",
        "GPU_I_PROFILE": "3g.40gb",
        "GPU_I_ID": "2",
        "Hostname": "gpu-a-1",
    }
    # a node with MIG slices only prints no GPU_UTIL family at all
    assert "DCGM_FI_DEV_GPU_UTIL" not in render([MIG], "gpu-a-1")
    assert set(samples_by_metric(render([MIG], "n"))) == FIELDS - {"DCGM_FI_DEV_GPU_UTIL"}


def test_label_values_are_escaped() -> None:
    text = render([GpuSample(gpu=0, uuid="GPU-0", model_name='odd "name"\\x')], "n")
    labels = samples_by_metric(text)["DCGM_FI_DEV_FB_FREE"][0].labels
    assert labels["modelName"] == 'odd "name"\\x'


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"utilization": 1.5}, "utilization must be within 0-1"),
        ({"mig_profile": "1g.10gb"}, "mig_profile and gpu_instance_id are set together"),
        ({"namespace": "llm", "pod": "p"}, "namespace, pod and container are set together"),
        ({"power_w": -1}, "must be >= 0"),
    ],
)
def test_inconsistent_samples_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GpuSample(gpu=0, uuid="GPU-0", **fields)


def test_the_exporter_serves_current_values_over_http() -> None:
    readings = [WHOLE]

    async def scenario() -> tuple[str, str, str]:
        exporter = DcgmExporter("127.0.0.1", 0, "gpu-a-1", lambda: readings)
        await exporter.start()
        try:
            assert exporter.port != 0

            def scrape() -> tuple[str, str]:
                with urllib.request.urlopen(exporter.url, timeout=5) as response:
                    return response.headers["Content-Type"], response.read().decode()

            content_type, first = await asyncio.to_thread(scrape)
            readings[0] = GpuSample(gpu=0, uuid=WHOLE.uuid, utilization=0.9)
            _, second = await asyncio.to_thread(scrape)
        finally:
            await exporter.stop()
        return content_type, first, second

    content_type, first, second = asyncio.run(scenario())
    assert content_type.startswith("text/plain; version=0.0.4")
    assert samples_by_metric(first)["DCGM_FI_DEV_GPU_UTIL"][0].value == 42
    assert samples_by_metric(second)["DCGM_FI_DEV_GPU_UTIL"][0].value == 90


def test_the_exporter_listens_on_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        DcgmExporter("10.0.0.1", 9400, "n", list)
