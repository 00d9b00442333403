"""A real Prometheus for the simulated fleet, fed by file-based service discovery.

The operator reads vLLM and dcgm-exporter metrics through Prometheus on a real
cluster; here the same Prometheus code (Debian's 2.42 build, installed by
`make simdeps` = hack/install-simdeps.sh) scrapes the simulator's endpoints.
Debian's build has no `kubernetes_sd_configs` (ENVIRONMENT.md "Debian's
Prometheus build has NO kubernetes_sd_configs"), so `TargetWriter` plays
kubernetes_sd: it reads pods and nodes from the API server and writes
`file_sd_configs` JSON files with the target labels kube-prometheus-stack's
relabelling gives, so queries written for a real cluster work unchanged:

- job "vllm" (a PodMonitor on a real cluster): one target `<podIP>:<port>`
  per pod that declares a container port named "http" (as gpufleet's
  Deployments do) or has `prometheus.io/scrape: "true"`, with labels
  `namespace`, `pod`, `container` (the container declaring the port, else the
  first one) and `node`. `endpoint`, `service` and the PodMonitor's
  `job="<namespace>/<name>"` are not reproduced: the job is just "vllm", and
  queries should not select on the job.
- job "dcgm" (the dcgm-exporter ServiceMonitor): one target
  `<InternalIP>:9400` per node labelled `fleetsim.gpufleet.io/node=true`, with
  labels `node` and `instance`. It scrapes with `honor_labels: true` so the
  exporter's own `namespace`/`pod`/`container` labels (its Kubernetes pod
  mapping, see fleetsim.dcgm) are kept, not renamed to `exported_pod`; on a
  real cluster the ServiceMonitor needs `honorLabels: true` for the same result.

Only loopback addresses are used (ENVIRONMENT.md: traffic may only go to
127.0.0.0/8 here); targets with any other address are skipped with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

DEBIAN_BINARY = "/usr/bin/prometheus"
VLLM_JOB = "vllm"
DCGM_JOB = "dcgm"
VLLM_TARGETS_FILE = "targets-vllm.json"
DCGM_TARGETS_FILE = "targets-dcgm.json"
# dcgm-exporter's default listen address is :9400 (its Helm chart's metricsPort).
DCGM_PORT = 9400
DEFAULT_METRICS_PORT = 8000
NODE_LABEL = "fleetsim.gpufleet.io/node"
SCRAPE_ANNOTATION = "prometheus.io/scrape"
PORT_ANNOTATION = "prometheus.io/port"
PATH_ANNOTATION = "prometheus.io/path"
METRICS_PORT_NAME = "http"


def find_prometheus() -> str:
    """Path of the `prometheus` binary; RuntimeError naming the fix when it is missing."""
    found = shutil.which("prometheus")
    if found:
        return found
    if os.access(DEBIAN_BINARY, os.X_OK):
        return DEBIAN_BINARY
    raise RuntimeError(
        "the prometheus binary is not installed: run `make simdeps` "
        "(hack/install-simdeps.sh: apt-get install -y --no-install-recommends prometheus)"
    )


def _duration(seconds: float) -> str:
    """A Prometheus duration; milliseconds so that sub-second scrape intervals survive."""
    millis = round(seconds * 1000)
    if millis <= 0:
        raise ValueError(f"duration must be > 0, got {seconds}s")
    return f"{millis}ms"


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def sum_samples(exposition: str, name: str, /, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`, in a /metrics page (0: none)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


class PrometheusServer:
    """Debian's Prometheus as a subprocess, configured for the fleet simulator's two jobs.

    Everything it writes (config, TSDB, log, target files) stays in `workdir`.
    Usable as a context manager.

    Latency to expect (measured here with Debian's 2.42): `/-/ready` answers
    about 0.2 s after start, but the first samples of a target arrive 5-6 real
    seconds after it appears, at start or later: the scrape manager applies
    discovered targets on a fixed 5 s tick (no flag changes it in 2.42). Real
    Prometheus has the same delay with kubernetes_sd; under a SimClock scale of
    10 it is about a simulated minute, so scenarios should not read metrics of a
    pod in its first seconds.
    """

    def __init__(self, workdir: Path, port: int, scrape_interval_s: float = 1.0) -> None:
        self.workdir = Path(workdir)
        self.port = port
        self.scrape_interval_s = scrape_interval_s
        self._process: subprocess.Popen[bytes] | None = None
        _duration(scrape_interval_s)  # fail at construction, not in Prometheus's log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.workdir / "prometheus.yml"

    @property
    def log_file(self) -> Path:
        return self.workdir / "prometheus.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def config(self) -> dict[str, Any]:
        interval = _duration(self.scrape_interval_s)

        def job(name: str, targets_file: str, **extra: Any) -> dict[str, Any]:
            return {
                "job_name": name,
                "metrics_path": "/metrics",
                **extra,
                # file_sd also watches the directory (inotify), so a rename is seen at once;
                # the refresh interval is only a backstop.
                "file_sd_configs": [{"files": [str(self.workdir / targets_file)], "refresh_interval": "5s"}],
            }

        return {
            "global": {
                "scrape_interval": interval,
                # Prometheus rejects a scrape timeout longer than the interval (default 10 s).
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "scrape_configs": [
                job(VLLM_JOB, VLLM_TARGETS_FILE),
                job(DCGM_JOB, DCGM_TARGETS_FILE, honor_labels=True),
            ],
        }

    def start(self, timeout_s: float = 30.0) -> None:
        if self.running:
            raise RuntimeError(f"prometheus is already running on {self.url}")
        binary = find_prometheus()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in (VLLM_TARGETS_FILE, DCGM_TARGETS_FILE):
            if not (self.workdir / name).exists():
                _write_atomically(self.workdir / name, "[]\n")
        self.config_file.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        command = [
            binary,
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            "--storage.tsdb.retention.time=2h",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with self.log_file.open("ab") as out:
            # Own session: a Ctrl-C meant for the simulator's terminal must not kill it
            # before stop() runs; stop() ends it by pid.
            self._process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise RuntimeError(
                    f"prometheus exited with code {code} before it was ready; "
                    f"{self.log_file}:\n{_tail(self.log_file)}"
                )
            if self._ready():
                log.info("prometheus ready on %s (workdir %s)", self.url, self.workdir)
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"prometheus did not answer {self.url}/-/ready within {timeout_s}s; "
                    f"{self.log_file}:\n{_tail(self.log_file)}"
                )
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout_s: float = 10.0, crash: bool = False) -> None:
        """End Prometheus: SIGTERM, or with `crash` SIGKILL (a crash: the samples it holds stay in
        its TSDB without staleness markers, and a restart serves them for its 5-minute lookback)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        if crash:
            process.kill()
            process.wait(timeout=timeout_s)
            return
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)

    def queries_answered(self) -> float:
        """Instant queries this Prometheus has answered, from its own /metrics (it does not scrape itself)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            text = response.read().decode()
        return sum_samples(text, "prometheus_http_requests_total", handler="/api/v1/query")

    def query(self, promql: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Instant query; the `data.result` list of the HTTP API (vectors: `metric` and `value`)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            # Bad PromQL answers 400 with the parser's message in the JSON body.
            body = json.loads(error.read() or b"{}")
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query {promql!r} failed: {body.get('error', body)}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _write_atomically(path: Path, text: str) -> None:
    """Write then rename, so Prometheus never reads a half-written target file."""
    # The temporary name does not match the configured file name, so file_sd ignores it.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _get(obj: Any, *path: str) -> Any:
    """Attribute path through kubernetes client models (or None where a level is missing)."""
    for name in path:
        if obj is None:
            return None
        obj = getattr(obj, name, None)
    return obj


def _pod_target(pod: Any) -> dict[str, Any] | None:
    """The file_sd entry for one pod, or None when it exposes no metrics."""
    ip = _get(pod, "status", "pod_ip")
    if not ip or _get(pod, "status", "phase") in ("Succeeded", "Failed"):
        # prometheus-operator drops finished pods too; a pod without an IP has nothing to scrape.
        return None
    annotations = _get(pod, "metadata", "annotations") or {}
    containers: Sequence[Any] = _get(pod, "spec", "containers") or []
    port: int | None = None
    container_name = containers[0].name if containers else ""
    for container in containers:
        for container_port in container.ports or []:
            if container_port.name == METRICS_PORT_NAME:
                port, container_name = int(container_port.container_port), container.name
                break
        if port is not None:
            break
    if port is None:
        if str(annotations.get(SCRAPE_ANNOTATION, "")).lower() != "true":
            return None
        port = int(annotations.get(PORT_ANNOTATION, DEFAULT_METRICS_PORT))
    namespace, name = pod.metadata.namespace, pod.metadata.name
    if not _is_loopback(ip):
        log.warning("not scraping pod %s/%s: %s is not a loopback address", namespace, name, ip)
        return None
    labels = {
        "namespace": namespace,
        "pod": name,
        "container": container_name,
        "node": _get(pod, "spec", "node_name") or "",
    }
    if PATH_ANNOTATION in annotations:
        labels["__metrics_path__"] = str(annotations[PATH_ANNOTATION])
    return {"targets": [_host_port(ip, port)], "labels": labels}


def _node_target(node: Any) -> dict[str, Any] | None:
    name = node.metadata.name
    addresses = _get(node, "status", "addresses") or []
    ip = next((a.address for a in addresses if a.type == "InternalIP"), None)
    if not ip:
        return None
    if not _is_loopback(ip):
        log.warning("not scraping node %s: %s is not a loopback address", name, ip)
        return None
    address = _host_port(ip, DCGM_PORT)
    return {"targets": [address], "labels": {"node": name, "instance": address}}


class TargetWriter:
    """Writes the file_sd target files from the API server's pods and nodes (kubernetes_sd's job)."""

    def __init__(self, core_v1_api: Any, workdir: Path) -> None:
        self.api = core_v1_api
        self.workdir = Path(workdir)

    def targets(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(pod target groups, node target groups), sorted so that unchanged fleets give unchanged files."""
        pods = self.api.list_pod_for_all_namespaces().items
        nodes = self.api.list_node(label_selector=f"{NODE_LABEL}=true").items
        pod_groups = [g for g in map(_pod_target, pods) if g is not None]
        node_groups = [g for g in map(_node_target, nodes) if g is not None]
        pod_groups.sort(key=lambda g: (g["labels"]["namespace"], g["labels"]["pod"]))
        node_groups.sort(key=lambda g: str(g["labels"]["node"]))
        return pod_groups, node_groups

    def write(self) -> tuple[int, int]:
        """Rewrite both files (only when their content changed); returns (pod targets, node targets)."""
        pod_groups, node_groups = self.targets()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name, groups in ((VLLM_TARGETS_FILE, pod_groups), (DCGM_TARGETS_FILE, node_groups)):
            path = self.workdir / name
            text = json.dumps(groups, indent=1, sort_keys=True) + "\n"
            with contextlib.suppress(OSError):
                if path.read_text() == text:
                    continue
            _write_atomically(path, text)
        return len(pod_groups), len(node_groups)

    async def run(self, interval_s: float = 1.0) -> None:
        """Rewrite every `interval_s` real seconds until cancelled; API errors are logged and retried.

        Discovery is infrastructure, not part of the simulated story, so the
        interval is in real seconds (kubernetes_sd reacts within about a second).
        """
        while True:
            try:
                # The kubernetes client blocks; keep the event loop (exporters, load) responsive.
                await asyncio.to_thread(self.write)
            except Exception:  # CancelledError is a BaseException: cancelling still stops the loop
                log.exception("writing Prometheus targets failed; retrying in %ss", interval_s)
            await asyncio.sleep(interval_s)
