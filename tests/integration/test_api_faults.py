"""The operator behind a TCP fault proxy (Toxiproxy, built from the Go module proxy) in front of the API
server of its own control plane: latency, connections reset, the API server unreachable while the model
changes, a group is deleted and etcd is compacted past the operator's watch position (so its watches cannot
resume where they were: kopf lists again, on a 410 Gone or after the failed connection). Through all of it
the operator removes no serving capacity, and it converges once the fault ends.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fleetsim.local import OperatorProcess
from fleetsim.toxiproxy import ToxiproxyServer
from tests.conftest import ROOT, record_fault_figure, wait_until
from tests.integration.conftest import AuditedPlane, service_account_kubeconfig

pytestmark = pytest.mark.integration

NAMESPACE = "api-faults"
MODEL = "llama-3-70b"


@pytest.fixture(scope="module")
def toxiproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToxiproxyServer]:
    built = subprocess.run(
        ["bash", str(ROOT / "hack" / "install-toxiproxy.sh")], capture_output=True, text=True, check=False
    )
    if built.returncode != 0:
        pytest.fail(f"hack/install-toxiproxy.sh failed:\n{built.stderr[-3000:]}", pytrace=False)
    binary = Path(built.stdout.strip().splitlines()[-1])
    with ToxiproxyServer(binary, tmp_path_factory.mktemp("toxiproxy") / "toxiproxy.log") as server:
        yield server


def ports(state: Path) -> dict[str, int]:
    pairs = (line.split("=", 1) for line in (state / "ports.env").read_text().split())
    return {key: int(value) for key, value in pairs}


def compact_etcd(etcd_port: int) -> int:
    """Compact etcd to its current revision (its gRPC gateway): older watch positions are gone (410)."""

    def call(path: str, body: dict[str, object]) -> dict[str, object]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{etcd_port}{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            request, timeout=10
        ) as response:
            result: dict[str, object] = json.loads(response.read())
            return result

    key = base64.b64encode(b"/").decode()
    header = call(
        "/v3/kv/range", {"key": key, "range_end": base64.b64encode(b"0").decode(), "count_only": True}
    )
    revision = int(header["header"]["revision"])  # type: ignore[index]
    call("/v3/kv/compaction", {"revision": revision, "physical": True})
    return revision


def failed_calls(operator: OperatorProcess) -> float:
    """Reconciles that failed, from the operator's own /metrics (reached directly, not through the proxy)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('gpufleet_reconciles_total{result="error"}')
    )


def test_latency_resets_and_an_unreachable_apiserver_remove_nothing_and_converge(
    audited: AuditedPlane, toxiproxy: ToxiproxyServer, tmp_path: Path
) -> None:
    plane = audited.plane
    plane.kubectl("create", "namespace", NAMESPACE)
    listen = toxiproxy.proxy("apiserver", f"127.0.0.1:{ports(audited.state)['APISERVER_PORT']}")
    config = yaml.safe_load(
        service_account_kubeconfig(
            plane, NAMESPACE, "operator-faults", tmp_path / "direct.kubeconfig"
        ).read_text()
    )
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{listen}"
    (tmp_path / "proxied.kubeconfig").write_text(yaml.safe_dump(config))
    operator = OperatorProcess(
        tmp_path / "proxied.kubeconfig",
        tmp_path / "operator",
        {"GPUFLEET_NAMESPACES": json.dumps([NAMESPACE]), "GPUFLEET_RESYNC_SECONDS": "5"},
    )
    operator.start()

    def deployments() -> dict[str, int]:
        out = plane.kubectl("get", "deploy", "-n", NAMESPACE, "-o", "json").stdout
        return {d["metadata"]["name"]: d["spec"]["replicas"] for d in json.loads(out)["items"]}

    def converged(replicas: int, timeout: float = 60) -> None:
        wait_until(
            lambda: sum(deployments().values()) == replicas, timeout=timeout, what=f"{replicas} replicas"
        )

    def scale(replicas: int) -> None:
        plane.kubectl(
            "patch",
            "md",
            MODEL,
            "-n",
            NAMESPACE,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"replicas": replicas}}),
        )

    lowest: list[int] = []
    floor = [0]
    watching = threading.Event()

    def watch_capacity() -> None:
        while not watching.wait(0.3):
            total = sum(deployments().values())
            if total < floor[0]:
                lowest.append(total)

    doc = yaml.safe_load((ROOT / "samples" / "llama-3-70b-a100-spot.yaml").read_text())
    doc["spec"]["autoscaling"]["enabled"] = False
    doc["spec"]["replicas"] = 2
    try:
        plane.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=yaml.safe_dump(doc))
        converged(2)
        floor[0] = 2
        sampler = threading.Thread(target=watch_capacity, daemon=True)
        sampler.start()

        # 1. Slow API server: 300 ms ± 100 each way.
        toxiproxy.add("apiserver", "slow-down", "latency", "downstream", latency=300, jitter=100)
        toxiproxy.add("apiserver", "slow-up", "latency", "upstream", latency=300, jitter=100)
        scale(3)
        converged(3)
        floor[0] = 3
        toxiproxy.remove("apiserver", "slow-down")
        toxiproxy.remove("apiserver", "slow-up")

        # 2. Every connection reset as it opens: calls fail, the queue backs off, nothing is removed.
        toxiproxy.add("apiserver", "resets", "reset_peer", "downstream", timeout=0)
        scale(4)
        wait_until(lambda: failed_calls(operator) > 0, timeout=30, what="the operator's calls failing")
        toxiproxy.remove("apiserver", "resets")
        converged(4)
        floor[0] = 4

        # 3. Unreachable while the model changes, a group is deleted, and etcd is compacted past the
        #    operator's watch position: it cannot resume its watches and must list again.
        toxiproxy.enable("apiserver", False)
        scale(5)
        victim = sorted(deployments())[0]
        floor[0] = 0  # the deletion below is ours, not the operator's
        plane.kubectl("delete", "deploy", victim, "-n", NAMESPACE)
        compact_etcd(ports(audited.state)["ETCD_PORT"])
        toxiproxy.enable("apiserver", True)
        converged(5, timeout=90)
        assert victim in deployments()  # restored
        assert operator.alive()
    finally:
        watching.set()
        operator.stop()
    record_fault_figure(
        "API server faults",
        "latency 300±100 ms, connections reset, unreachable while etcd was compacted past its watch: "
        f"capacity below the last converged count in {len(lowest)} samples; converged after each",
    )
    assert lowest == []
