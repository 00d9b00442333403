"""aws-node-termination-handler (hack/install-nth.sh) beside the local control plane, in queue-processor mode.

What NTH's Helm chart sets up for its queue-processor Deployment, done here with one plain process, for the
spot benchmark's `nth` and `nth+ours` policies (hack/bench/spot.py) and the e2e test of NTH beside gpufleet
(tests/e2e/test_nth_pairing.py):

- a ServiceAccount, and a ClusterRole and ClusterRoleBinding with the rules the chart grants
  (config/helm/aws-node-termination-handler/templates/clusterrole.yaml at v1.25.6): nodes get, list, patch,
  update; pods list, get; pods/eviction create; daemonsets get (apps and extensions); events create, patch
  (the chart adds those with `emitKubernetesEvents`, which is on here so that what NTH did shows as Events);
- the process with that account's credentials only (fleetsim.in_cluster): NTH calls `rest.InClusterConfig()`
  and nothing else;
- the queue-processor settings: the simulation's moto SQS queue and moto EC2 (NTH maps an event's instance
  id to a node with EC2 DescribeInstances, then, with USE_PROVIDER_ID, finds the Node whose spec.providerID
  is `aws:///<zone>/<instance-id>`, the placement zone and id moto returns, which is what fleetsim's nodes
  carry); TAINT_NODE (the `aws-node-termination-handler/spot-itn` taint gpufleet reads,
  gpufleet.planning.capacity_signals); CHECK_TAG_BEFORE_DRAINING off (fleetsim's instances carry no
  `aws-node-termination-handler/managed` tag); DELETE_SQS_MSG_IF_NODE_NOT_FOUND; dummy keys.

NTH's own timers are compiled in and not scaled by a simulation's clock (v1.25.6,
cmd/node-termination-handler.go): every monitor runs every 2 s (`time.Tick(2 * time.Second)`; an SQS
receive long-polls up to 20 s, pkg/monitor/sqsevent/sqs-monitor.go, so a message is picked up when it
arrives), the event loop every 1 s (`time.NewTicker(1 * time.Second)`); its drain is kubectl's drain helper
(k8s.io/kubectl v0.30.4 pkg/drain/drain.go) which retries an eviction refused by a PodDisruptionBudget (429)
every 5 s and polls for the pods' deletion every 1 s. The drain's overall timeout is NTH's
NODE_TERMINATION_GRACE_PERIOD (default 120 s), which a caller scales (`node_grace_s`).

aws-sdk-go v1 (v1.55.4, which NTH v1.25.6 uses) against moto 5: SQS through the JSON protocol
(ReceiveMessage with a SentTimestamp attribute and every message attribute, DeleteMessage), EC2
DescribeInstances; checked by tests/e2e/test_nth_pairing.py end to end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from fleetsim.cloud import DUMMY_CREDENTIALS, require_loopback
from fleetsim.in_cluster import PodCredentials, pod_credentials
from fleetsim.local import ROOT, ControlPlane, free_port, run_install_script, stop_process

INSTALL_SCRIPT = ROOT / "hack" / "install-nth.sh"
NAME = "aws-node-termination-handler"
NAMESPACE = "kube-system"  # where the chart's README installs it
# NTH needs a NODE_NAME even in queue mode (pkg/config/config.go panics without one); there it only names
# the reporting host of its Events, the node the handler itself runs on.
HANDLER_NODE = "nth-queue-processor"
# NTH's compiled-in timers (see above), in real seconds, for callers that print them.
QUEUE_POLL_S = 2.0
EVENT_LOOP_S = 1.0
EVICTION_RETRY_S = 5.0
# What NTH's taint on a node warned of a spot interruption is called (pkg/node/node.go, v1.25.6).
SPOT_ITN_TAINT = "aws-node-termination-handler/spot-itn"
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Log lines that say what NTH did or could not do (its human-readable zerolog format: "<time> <LVL> <msg>").
_ACTION = re.compile(
    r"Node successfully cordoned|Draining the node|evicting pod|[Ii]nterruption event|There was a problem|"
    r"Unable to taint|node .* not found| ERR | WRN ",
)


@dataclass(frozen=True)
class NthBuild:
    """What hack/install-nth.sh leaves in ~/.cache/gpufleet/nth-<version>/."""

    root: Path

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "node-termination-handler"


def install(timeout: float = 60 * 60) -> NthBuild:
    """Build NTH once (`make nth`), or find the cached build at once."""
    return NthBuild(run_install_script(INSTALL_SCRIPT, timeout))


def rbac(namespace: str = NAMESPACE, name: str = NAME) -> list[dict[str, Any]]:
    """The ServiceAccount, ClusterRole and ClusterRoleBinding of NTH's chart (v1.25.6), events included."""

    def rule(group: str, resources: list[str], verbs: list[str]) -> dict[str, Any]:
        return {"apiGroups": [group], "resources": resources, "verbs": verbs}

    labels = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/managed-by": "gpufleet-fleetsim"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": labels},
            "rules": [
                rule("", ["nodes"], ["get", "list", "patch", "update"]),
                rule("", ["pods"], ["list", "get"]),
                rule("", ["pods/eviction"], ["create"]),
                rule("extensions", ["daemonsets"], ["get"]),
                rule("apps", ["daemonsets"], ["get"]),
                rule("", ["events"], ["create", "patch"]),
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


class NodeTerminationHandler:
    """NTH in queue-processor mode against `plane` and a moto server, until `stop()` (or `with` ends)."""

    def __init__(
        self,
        plane: ControlPlane,
        build: NthBuild,
        workdir: Path,
        *,
        queue_url: str,
        aws_endpoint: str,
        region: str,
        node_grace_s: int = 120,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.plane = plane
        self.build = build
        self.workdir = workdir
        self.queue_url = queue_url
        self.aws_endpoint = require_loopback(aws_endpoint)
        self.region = region
        self.node_grace_s = max(1, node_grace_s)
        self.extra_env = dict(extra_env or {})
        # NTH's probes server binds every interface (":<port>"): a port free there.
        self.probes_port = free_port("0.0.0.0")
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.credentials: PodCredentials | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "nth.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]

    def actions(self) -> list[str]:
        """NTH's log lines about cordons, drains, evictions, taints and problems, in order."""
        return [line.strip() for line in self.log_text().splitlines() if _ACTION.search(line)]

    def env(self) -> dict[str, str]:
        assert self.credentials is not None
        # Nothing of this machine's AWS or proxy settings may reach it: endpoint and keys are explicit.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AWS_") and k not in _PROXY_VARIABLES and k != "KUBECONFIG"
        }
        env.update(
            self.credentials.env(),
            HOME=str(self.workdir),  # no ~/.kube/config or ~/.aws to fall back on
            AWS_ACCESS_KEY_ID=DUMMY_CREDENTIALS["aws_access_key_id"],
            AWS_SECRET_ACCESS_KEY=DUMMY_CREDENTIALS["aws_secret_access_key"],
            AWS_SESSION_TOKEN=DUMMY_CREDENTIALS["aws_session_token"],
            AWS_CONFIG_FILE="/dev/null",
            AWS_SHARED_CREDENTIALS_FILE="/dev/null",
            AWS_EC2_METADATA_DISABLED="true",
            AWS_REGION=self.region,
            AWS_ENDPOINT=self.aws_endpoint,
            QUEUE_URL=self.queue_url,
            ENABLE_SQS_TERMINATION_DRAINING="true",  # queue-processor mode (also turns IMDS off)
            NODE_NAME=HANDLER_NODE,
            USE_PROVIDER_ID="true",
            TAINT_NODE="true",
            CHECK_TAG_BEFORE_DRAINING="false",
            DELETE_SQS_MSG_IF_NODE_NOT_FOUND="true",
            EMIT_KUBERNETES_EVENTS="true",
            NODE_TERMINATION_GRACE_PERIOD=str(self.node_grace_s),
            ENABLE_PROBES_SERVER="true",
            PROBES_SERVER_PORT=str(self.probes_port),
            LOG_LEVEL="info",
        )
        env.update(self.extra_env)
        return env

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _healthy(self) -> bool:
        try:
            with _NO_PROXY.open(f"http://127.0.0.1:{self.probes_port}/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def _wait(self, probe: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not probe():
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"NTH exited ({self._process.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"NTH: timed out after {timeout}s waiting for {what}\n{self.log_tail()}")
            time.sleep(0.2)

    def start(self, timeout: float = 60.0) -> Self:
        if self._process is not None:
            return self
        if not self.build.binary.is_file():
            raise RuntimeError(f"no NTH binary at {self.build.binary}: run `make nth`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.plane.kubectl(
            "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac()})
        )
        self.credentials = pod_credentials(self.plane, NAMESPACE, NAME, self.workdir / "account")
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self.credentials.command([str(self.build.binary)]),
            env=self.env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self._wait(
                lambda: "has started successfully" in self.log_text() and self._healthy(),
                timeout,
                "its start",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: NTH leaves its event loop and waits for drains in progress; killed after `timeout`."""
        process, self._process = self._process, None
        stop_process(process, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
