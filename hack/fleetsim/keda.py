"""KEDA (hack/install-keda.sh) beside the local control plane: its operator and metrics server on loopback.

What KEDA's Helm chart sets up in a cluster, done here with plain processes, for the e2e test that lets KEDA
and the real HPA scale a ModelDeployment (tests/e2e/test_keda.py) and for benchmarks:

- KEDA's CRDs, from the module it was built from, and the namespace `keda`;
- one CA and one certificate (openssl) for the operator's gRPC metrics service and the metrics API server,
  which talk mutual TLS (the chart's generated `kedaorg-certs`); its SANs are the operator's gRPC authority
  `keda-operator.keda.svc.cluster.local` and the metrics server's Service name, which the aggregator checks;
- `keda-operator`: the ScaledObject controller (it makes the HPA) and the gRPC service that evaluates
  triggers (the Prometheus query); leader election off, certificate rotation off, every listener on
  127.0.0.1;
- `keda-adapter`: the metrics API server for `external.metrics.k8s.io`, which the HPA in
  kube-controller-manager calls through kube-apiserver's aggregation layer (hack/cluster.sh turns it on);
- the APIService `v1beta1.external.metrics.k8s.io` with the CA as `caBundle`, pointing at a Service of type
  ExternalName (`localhost`, the adapter's port): nothing routes ClusterIPs here (no kube-proxy).

`stop()` deletes the ScaledObjects first, while the operator still runs to take its finalizer off and delete
their HPAs, and then the APIService: an aggregated API that no longer answers breaks discovery for every
client of the control plane (namespace deletion and the garbage collector stop with it).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from fleetsim.local import ROOT, ControlPlane, free_port, run_install_script

INSTALL_SCRIPT = ROOT / "hack" / "install-keda.sh"
NAMESPACE = "keda"
OPERATOR_SERVICE = "keda-operator"
METRICS_SERVICE = "keda-metrics-apiserver"
# What the adapter names in its TLS handshake with the operator's gRPC service, as in a cluster.
GRPC_AUTHORITY = f"{OPERATOR_SERVICE}.{NAMESPACE}.svc.cluster.local"
API_SERVICE = "v1beta1.external.metrics.k8s.io"
# Nothing may send KEDA's traffic elsewhere: Prometheus, the API server and the adapter are on loopback.
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class KedaBuild:
    """What hack/install-keda.sh leaves in ~/.cache/gpufleet/keda-<version>/."""

    root: Path

    @property
    def operator(self) -> Path:
        return self.root / "bin" / "keda-operator"

    @property
    def adapter(self) -> Path:
        return self.root / "bin" / "keda-adapter"

    @property
    def crds(self) -> Path:
        return self.root / "crds"

    def crd_names(self) -> list[str]:
        """From the files' names, <group>_<plural>.yaml: scaledobjects.keda.sh, ..."""
        return [".".join(reversed(path.stem.split("_", 1))) for path in sorted(self.crds.glob("*.yaml"))]


def install(timeout: float = 60 * 60) -> KedaBuild:
    """Build KEDA once (10-15 minutes on 2 cores; `make keda`), or find the cached build at once."""
    return KedaBuild(run_install_script(INSTALL_SCRIPT, timeout))


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], capture_output=True, check=True, timeout=60)


def make_certificates(folder: Path) -> Path:
    """ca.crt, tls.crt and tls.key in `folder`, the layout both KEDA components read from --cert-dir."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = folder / "ca.key", folder / "ca.crt"
    key, csr, crt, ext = folder / "tls.key", folder / "tls.csr", folder / "tls.crt", folder / "tls.ext"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "365",
        "-subj",
        "/CN=gpufleet-keda-ca",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_crt),
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={OPERATOR_SERVICE}",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    names = [
        GRPC_AUTHORITY,
        f"{OPERATOR_SERVICE}.{NAMESPACE}.svc",
        f"{METRICS_SERVICE}.{NAMESPACE}.svc",  # what the aggregator checks for the APIService's Service
        f"{METRICS_SERVICE}.{NAMESPACE}.svc.cluster.local",
        "localhost",
    ]
    ext.write_text(
        "subjectAltName=" + ",".join([*(f"DNS:{n}" for n in names), "IP:127.0.0.1"]) + "\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"  # the same pair serves and calls (mutual TLS)
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "365",
        "-extfile",
        str(ext),
        "-out",
        str(crt),
    )
    return folder


class Keda:
    """KEDA's operator and metrics API server against `plane`, until `stop()` (or the `with` block ends)."""

    def __init__(self, plane: ControlPlane, build: KedaBuild, workdir: Path) -> None:
        self.plane = plane
        self.build = build
        self.workdir = workdir
        self.certs = workdir / "certs"
        # Each port is free when picked but not held, so the kernel may hand the same one out twice (CI
        # once saw the adapter's /metrics land on the gRPC port): picked until all five differ.
        ports: list[int] = []
        while len(ports) < 5:
            # The adapter's own /metrics listener (the last) binds every interface (":<port>").
            port = free_port("0.0.0.0" if len(ports) == 4 else "127.0.0.1")
            if port not in ports:
                ports.append(port)
        (
            self.grpc_port,
            self.operator_metrics_port,
            self.operator_health_port,
            self.adapter_port,
            self.adapter_metrics_port,
        ) = ports
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.log(name)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARIABLES}
        env.update(
            KUBECONFIG=str(self.plane.kubeconfig),
            WATCH_NAMESPACE="",  # every namespace
            POD_NAMESPACE=NAMESPACE,
            KEDA_CLUSTER_OBJECT_NAMESPACE=NAMESPACE,
        )
        return env

    def operator_command(self) -> list[str]:
        return [
            str(self.build.operator),
            "--leader-elect=false",
            f"--cert-dir={self.certs}",
            "--enable-cert-rotation=false",
            f"--metrics-bind-address=127.0.0.1:{self.operator_metrics_port}",
            f"--health-probe-bind-address=127.0.0.1:{self.operator_health_port}",
            f"--metrics-service-bind-address=127.0.0.1:{self.grpc_port}",
        ]

    def adapter_command(self) -> list[str]:
        kubeconfig = str(self.plane.kubeconfig)
        return [
            str(self.build.adapter),
            f"--secure-port={self.adapter_port}",
            "--bind-address=127.0.0.1",
            f"--cert-dir={self.certs}",  # the adapter's gRPC client reads ca.crt, tls.crt, tls.key from here
            f"--tls-cert-file={self.certs / 'tls.crt'}",
            f"--tls-private-key-file={self.certs / 'tls.key'}",
            f"--lister-kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--metrics-service-address=127.0.0.1:{self.grpc_port}",
            f"--metrics-service-grpc-authority={GRPC_AUTHORITY}",
            f"--port={self.adapter_metrics_port}",
        ]

    def _spawn(self, name: str, command: list[str]) -> None:
        out = self.log(name).open("ab")
        self._logs.append(out)
        self._processes[name] = subprocess.Popen(
            command, env=self._env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return bool(self._processes) and all(p.poll() is None for p in self._processes.values())

    def _wait(self, probe: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not probe():
            for name, process in self._processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited ({process.returncode}):\n{self.log_tail(name)}")
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {name}\n{self.log_tail(name)}" for name in self._processes)
                raise RuntimeError(f"KEDA: timed out after {timeout}s waiting for {what}\n{tails}")
            time.sleep(0.25)

    def _operator_ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.operator_health_port}/readyz"
            with _NO_PROXY.open(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def api_service_available(self) -> bool:
        found = self.plane.kubectl("get", "apiservice", API_SERVICE, "-o", "json", check=False)
        if found.returncode != 0:
            return False
        conditions = json.loads(found.stdout).get("status", {}).get("conditions") or []
        return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)

    def _established(self, crd: str) -> bool:
        found = self.plane.kubectl("get", "crd", crd, "-o", "json", check=False)
        if found.returncode != 0:
            return False
        conditions = (json.loads(found.stdout).get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    def _apply(self, *documents: dict[str, object]) -> None:
        self.plane.kubectl(
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(documents)}),
        )

    def _routing(self) -> tuple[dict[str, object], dict[str, object]]:
        service: dict[str, object] = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": METRICS_SERVICE, "namespace": NAMESPACE},
            "spec": {
                "type": "ExternalName",
                "externalName": "localhost",
                "ports": [{"name": "https", "port": self.adapter_port, "targetPort": self.adapter_port}],
            },
        }
        api_service: dict[str, object] = {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": API_SERVICE},
            "spec": {
                "group": "external.metrics.k8s.io",
                "version": "v1beta1",
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
                "service": {"name": METRICS_SERVICE, "namespace": NAMESPACE, "port": self.adapter_port},
                "caBundle": base64.b64encode((self.certs / "ca.crt").read_bytes()).decode(),
            },
        }
        return service, api_service

    def start(self, timeout: float = 120.0) -> Self:
        if self._processes:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        make_certificates(self.certs)
        self.plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(self.build.crds))
        # Polled, not `kubectl wait`: that fails on a CRD just created whose status.conditions is still null.
        self._wait(lambda: all(map(self._established, self.build.crd_names())), 60, "KEDA's CRDs Established")
        self._apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        try:
            self._spawn("keda-operator", self.operator_command())
            self._wait(self._operator_ready, timeout, "keda-operator /readyz")
            self._spawn("keda-adapter", self.adapter_command())
            self._apply(*self._routing())
            self._wait(self.api_service_available, timeout, f"APIService {API_SERVICE} Available")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._processes:
            if self.alive():
                # KEDA takes its finalizer off and deletes its HPAs while it still runs.
                self.plane.kubectl(
                    "delete",
                    "scaledobjects.keda.sh",
                    "--all",
                    "--all-namespaces",
                    "--wait=true",
                    "--timeout=60s",
                    check=False,
                )
            self.plane.kubectl("delete", "apiservice", API_SERVICE, "--ignore-not-found", check=False)
            self.plane.kubectl(
                "delete", "service", METRICS_SERVICE, "-n", NAMESPACE, "--ignore-not-found", check=False
            )
        for process in self._processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self._processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self._processes.clear()
        for out in self._logs:
            out.close()
        self._logs.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
