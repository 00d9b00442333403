"""The operator behind a TCP fault proxy (Toxiproxy, built from the Go module proxy) in front of the API
server of its own control plane: latency, connections reset, the API server unreachable while the model
changes, a group is deleted and etcd is compacted past the operator's watch position (so its watches cannot
resume where they were: kopf lists again, on a 410 Gone or after the failed connection). Through all of it
the operator removes no serving capacity, and it converges once the fault ends.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from fleetsim.local import ControlPlane, OperatorProcess
from fleetsim.prometheus import sum_samples
from fleetsim.toxiproxy import ToxiproxyServer
from tests.conftest import ROOT, record_fault_figure, wait_until
from tests.e2e.scrape import metric
from tests.integration.conftest import AuditedPlane, service_account_kubeconfig

pytestmark = pytest.mark.integration

NAMESPACE = "api-faults"
MODEL = "llama-3-70b"


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
    return metric(operator.metrics_port, "gpufleet_reconciles_total", result="error")


class Model:
    """The sample 70B model in `namespace`, without autoscaling, and the replicas of its Deployments as
    the API server holds them (read as the admin, outside any fault), sampled for drops below a floor."""

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        self.plane, self.namespace = plane, namespace
        self.floor = 0
        self.below: list[int] = []  # samples under the floor
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def deployments(self) -> dict[str, int]:
        out = self.plane.kubectl("get", "deploy", "-n", self.namespace, "-o", "json").stdout
        return {d["metadata"]["name"]: d["spec"]["replicas"] for d in json.loads(out)["items"]}

    def apply(self, replicas: int) -> None:
        doc = yaml.safe_load((ROOT / "samples" / "llama-3-70b-a100-spot.yaml").read_text())
        doc["spec"]["autoscaling"]["enabled"] = False
        doc["spec"]["replicas"] = replicas
        self.plane.kubectl("apply", "-n", self.namespace, "-f", "-", stdin=yaml.safe_dump(doc))

    def scale(self, replicas: int) -> None:
        patch = json.dumps({"spec": {"replicas": replicas}})
        self.plane.kubectl("patch", "md", MODEL, "-n", self.namespace, "--type=merge", "-p", patch)

    def converged(self, replicas: int, timeout: float = 60) -> None:
        """Wait for `replicas` in the Deployments; from then on, fewer is a drop below the floor."""
        wait_until(
            lambda: sum(self.deployments().values()) == replicas, timeout=timeout, what=f"{replicas} replicas"
        )
        self.floor = replicas
        if not self._sampler.is_alive():
            self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.3):
            total = sum(self.deployments().values())
            if total < self.floor:
                self.below.append(total)

    def stop_sampling(self) -> None:
        self._stop.set()


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
    model = Model(plane, NAMESPACE)
    try:
        model.apply(2)
        model.converged(2)

        # 1. Slow API server: 300 ms ± 100 each way.
        toxiproxy.add("apiserver", "slow-down", "latency", "downstream", latency=300, jitter=100)
        toxiproxy.add("apiserver", "slow-up", "latency", "upstream", latency=300, jitter=100)
        model.scale(3)
        model.converged(3)
        toxiproxy.remove("apiserver", "slow-down")
        toxiproxy.remove("apiserver", "slow-up")

        # 2. Every connection reset as it opens: calls fail, the queue backs off, nothing is removed.
        toxiproxy.add("apiserver", "resets", "reset_peer", "downstream", timeout=0)
        model.scale(4)
        wait_until(lambda: failed_calls(operator) > 0, timeout=30, what="the operator's calls failing")
        toxiproxy.remove("apiserver", "resets")
        model.converged(4)

        # 3. Unreachable while the model changes, a group is deleted, and etcd is compacted past the
        #    operator's watch position: it cannot resume its watches and must list again.
        toxiproxy.enable("apiserver", False)
        model.scale(5)
        victim = sorted(model.deployments())[0]
        model.floor = 0  # the deletion below is ours, not the operator's
        plane.kubectl("delete", "deploy", victim, "-n", NAMESPACE)
        compact_etcd(ports(audited.state)["ETCD_PORT"])
        toxiproxy.enable("apiserver", True)
        model.converged(5, timeout=90)
        assert victim in model.deployments()  # restored
        assert operator.alive()
    finally:
        model.stop_sampling()
        operator.stop()
    record_fault_figure(
        "API server faults",
        "latency 300±100 ms, connections reset, unreachable while etcd was compacted past its watch: "
        f"capacity below the last converged count in {len(model.below)} samples; converged after each",
    )
    assert model.below == []


PRIORITY_LEVEL = {
    "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
    "kind": "PriorityLevelConfiguration",
    "metadata": {"name": "gpufleet-tiny"},
    "spec": {
        "type": "Limited",
        # One share of the server's concurrency (a few seats), none borrowed or lent, no queue: what
        # does not fit is refused at once with a 429.
        "limited": {
            "nominalConcurrencyShares": 1,
            "lendablePercent": 0,
            "borrowingLimitPercent": 0,
            "limitResponse": {"type": "Reject"},
        },
    },
}


def flow_schema(name: str, namespace: str, account: str) -> dict[str, object]:
    """`account`'s every request into the tiny level; one schema per account, so that the API server's
    count of refusals by schema tells whose requests were refused."""
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": name},
        "spec": {
            "priorityLevelConfiguration": {"name": "gpufleet-tiny"},
            "matchingPrecedence": 500,  # before the built-in service-accounts schema (9000)
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "serviceAccount": {"name": account, "namespace": namespace},
                        }
                    ],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "namespaces": ["*"],
                            "clusterScope": True,
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }


class SeatHog:
    """A client in the operator's priority level that LISTs a large collection and reads none of it.

    The API server's handler blocks writing the answer into a full socket, and holds its seat in API
    Priority and Fairness until the client hangs up: a noisy neighbour that leaves the level no seat.
    """

    def __init__(self, port: int, token: str, path: str, hold_seconds: float = 5.0) -> None:
        self.port, self.path, self.hold_seconds = port, path, hold_seconds
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Accept: application/json\r\n\r\n"
        ).encode()
        self.context = ssl.create_default_context()
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE
        self.stop = threading.Event()
        self.admitted = 0
        self.refused = 0

    def _once(self) -> None:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        raw.settimeout(10)
        try:
            raw.connect(("127.0.0.1", self.port))
            with self.context.wrap_socket(raw) as conn:
                conn.sendall(self.request)
                status = conn.recv(16)
                if b" 429 " in status:
                    self.refused += 1
                    self.stop.wait(0.05)
                    return
                self.admitted += 1
                self.stop.wait(self.hold_seconds)
        except OSError:
            self.stop.wait(0.1)
        finally:
            raw.close()

    def run(self) -> None:
        while not self.stop.is_set():
            self._once()


def apiserver_metric(plane: ControlPlane, name: str, **labels: str) -> float:
    """The sum of the API server's own samples of `name` that carry `labels`."""
    return sum_samples(plane.kubectl("get", "--raw", "/metrics").stdout, name, **labels)


def rejected(plane: ControlPlane, flow_schema: str) -> float:
    """Requests API Priority and Fairness refused (429) that `flow_schema` matched."""
    return apiserver_metric(plane, "apiserver_flowcontrol_rejected_requests_total", flow_schema=flow_schema)


def test_real_429s_from_priority_and_fairness_delay_the_operator_and_remove_nothing(
    audited: AuditedPlane, tmp_path: Path
) -> None:
    plane, namespace = audited.plane, "apf-faults"
    plane.kubectl("create", "namespace", namespace)
    kubeconfig = service_account_kubeconfig(
        plane, namespace, "operator-apf", tmp_path / "operator.kubeconfig"
    )
    plane.kubectl("create", "serviceaccount", "noisy-neighbour", "-n", namespace)
    plane.kubectl(
        "create",
        "clusterrolebinding",
        "noisy-neighbour",
        "--clusterrole=view",
        f"--serviceaccount={namespace}:noisy-neighbour",
    )
    neighbour_token = plane.kubectl("create", "token", "noisy-neighbour", "-n", namespace).stdout.strip()
    # 160 ConfigMaps of 64 KiB: a 10 MiB answer, far more than the socket buffers hold.
    bulk = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"bulk-{i}"},
            "data": {"blob": "x" * 65536},
        }
        for i in range(160)
    ]
    plane.kubectl(
        "create",
        "-n",
        namespace,
        "-f",
        "-",
        stdin=yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": bulk}),
    )
    objects = [
        PRIORITY_LEVEL,
        flow_schema("gpufleet-operator", namespace, "operator-apf"),
        flow_schema("noisy-neighbour", namespace, "noisy-neighbour"),
    ]
    plane.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
    operator = OperatorProcess(
        kubeconfig,
        tmp_path / "operator",
        {"GPUFLEET_NAMESPACES": json.dumps([namespace]), "GPUFLEET_RESYNC_SECONDS": "5"},
    )
    neighbours = [
        SeatHog(
            ports(audited.state)["APISERVER_PORT"],
            neighbour_token,
            f"/api/v1/namespaces/{namespace}/configmaps",
        )
        for _ in range(6)
    ]
    threads = [threading.Thread(target=hog.run, daemon=True) for hog in neighbours]
    model = Model(plane, namespace)
    operator.start()
    try:
        model.apply(2)
        model.converged(2)
        refused_before = rejected(plane, "gpufleet-operator")
        try:
            for thread in threads:
                thread.start()
            wait_until(
                lambda: sum(h.admitted for h in neighbours) >= 3, timeout=30, what="the level's seats taken"
            )
            model.scale(4)
            wait_until(
                lambda: rejected(plane, "gpufleet-operator") > refused_before,
                timeout=60,
                what="the operator's requests refused by API Priority and Fairness",
            )
            # Ten more seconds under the fault, the capacity floor sampled meanwhile.
            held_until = time.monotonic() + 10
            wait_until(lambda: not operator.alive() or time.monotonic() > held_until, timeout=15, what="10 s")
            assert operator.alive()
            refused = rejected(plane, "gpufleet-operator") - refused_before
            seats = apiserver_metric(
                plane, "apiserver_flowcontrol_nominal_limit_seats", priority_level="gpufleet-tiny"
            )
        finally:
            for hog in neighbours:
                hog.stop.set()
            for thread in threads:
                thread.join(timeout=15)
        model.converged(4)
    finally:
        model.stop_sampling()
        operator.stop()
        plane.kubectl(
            "delete", "-f", "-", "--ignore-not-found", stdin=yaml.safe_dump_all(objects), check=False
        )
    record_fault_figure(
        "API server faults",
        f"API Priority and Fairness (the operator's level of {seats:.0f} seats held by a neighbour): "
        f"{refused:.0f} of the operator's requests refused with 429 (the API server's count); "
        f"capacity below the last converged count in {len(model.below)} samples; converged after",
    )
    assert model.below == []
