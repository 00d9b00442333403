"""The Helm chart on the local control plane, and the operator running as the chart's ServiceAccount.

`helm install` creates everything but running pods (there is no kubelet for the
operator's own pods here). The operator process then runs locally with a token
of the chart's ServiceAccount and the environment the chart's Deployment gives
it, and serves a ModelDeployment from admission to deletion on the simulated
fleet: so the RBAC is enough. The negative checks show it is no broader.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from fleetsim.background import BackgroundSimulation
from fleetsim.local import OperatorProcess as LocalOperator
from fleetsim.local import free_port
from gpufleet.adapters.certs import ensure_self_signed
from tests.chart.helm import CHART, helm
from tests.conftest import Cluster, OperatorProcess, wait_until

pytestmark = pytest.mark.e2e

MD_LABEL = "gpufleet.io/model-deployment"
# A webhook configuration the API server never calls: nothing routes to a Service's ClusterIP here
# (no kube-proxy), so the chart's webhook is checked for its objects and certificate, not for calls.
NEVER = '{"matchLabels":{"gpufleet.io/e2e-webhook":"never"}}'


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    service_account: str
    fullname: str

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def _install(cluster: Cluster, release: Release, *values: str) -> None:
    helm(
        "install",
        release.name,
        str(CHART),
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--namespace",
        release.namespace,
        # The session's `crd` fixture applied the same CRD with kubectl; the chart adopts it.
        "--take-ownership",
        *values,
    )


def _uninstall(cluster: Cluster, release: Release) -> None:
    helm(
        "uninstall",
        release.name,
        "--kubeconfig",
        str(cluster.kubeconfig),
        "-n",
        release.namespace,
        check=False,
    )
    cluster.kubectl("delete", "namespace", release.namespace, "--wait=false", check=False)


def _new_release(cluster: Cluster, prefix: str) -> Release:
    suffix = uuid.uuid4().hex[:6]
    name = f"{prefix}-{suffix}"
    release = Release(name, f"{prefix}-system-{suffix}", f"{name}-gpufleet", f"{name}-gpufleet")
    # Pod Security admission enforces the restricted standard: a pod spec that breaks it is never created.
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": release.namespace,
                    "labels": {
                        "pod-security.kubernetes.io/enforce": "restricted",
                        "pod-security.kubernetes.io/enforce-version": "latest",
                    },
                },
            }
        ),
    )
    return release


@pytest.fixture(scope="module")
def release(operator: OperatorProcess) -> Iterator[Release]:
    """The chart with default values, except: operator pods kept off every node, short test timers."""
    cluster = operator.cluster
    installed = _new_release(cluster, "gf")
    try:
        _install(
            cluster,
            installed,
            "--set",
            "nodeSelector.gpufleet\\.io/e2e=no-such-node",
            "--set-json",
            f"webhook.namespaceSelector={NEVER}",
            "--set",
            f"autoscaling.prometheusUrl=http://127.0.0.1:{operator.prometheus_port}",
            "--set",
            "autoscaling.intervalSeconds=2",
            "--set",
            "operator.unschedulableAfterSeconds=5",
            "--set",
            "operator.resyncSeconds=10",
        )
        yield installed
    finally:
        _uninstall(cluster, installed)


def _secret_data(cluster: Cluster, release: Release) -> dict[str, str]:
    data: dict[str, str] = cluster.get_json(
        "secret", f"{release.fullname}-webhook-tls", "-n", release.namespace
    )["data"]
    return data


def test_the_chart_installs_pods_that_pass_the_restricted_pod_security_standard(
    operator: OperatorProcess, release: Release
) -> None:
    cluster = operator.cluster

    def pods() -> list[dict[str, Any]] | None:
        found = cluster.get_json(
            "pods", "-n", release.namespace, "-l", f"app.kubernetes.io/instance={release.name}"
        )["items"]
        return found if len(found) == 2 else None

    # Two replicas created means admission (PodSecurity restricted) let the pod spec through.
    created = wait_until(pods, timeout=60, what="two operator pods admitted")
    container = created[0]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert created[0]["spec"]["serviceAccountName"] == release.service_account
    crd = cluster.get_json("crd", "modeldeployments.gpufleet.io")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release.name


def test_the_webhook_certificate_is_generated_once_and_kept_across_upgrades(
    operator: OperatorProcess, release: Release
) -> None:
    cluster = operator.cluster
    before = _secret_data(cluster, release)
    certificate = x509.load_pem_x509_certificate(base64.b64decode(before["tls.crt"]))
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{release.fullname}.{release.namespace}.svc" in names.get_values_for_type(x509.DNSName)
    authority = x509.load_pem_x509_certificate(base64.b64decode(before["ca.crt"]))
    assert certificate.issuer == authority.subject

    helm(
        "upgrade",
        release.name,
        str(CHART),
        "--kubeconfig",
        str(cluster.kubeconfig),
        "-n",
        release.namespace,
        "--reuse-values",
    )
    after = _secret_data(cluster, release)
    assert after == before, "helm upgrade generated a new certificate instead of reusing the Secret"
    webhook = cluster.get_json("validatingwebhookconfiguration", release.fullname)["webhooks"][0]
    assert webhook["clientConfig"]["caBundle"] == before["ca.crt"]
    assert webhook["clientConfig"]["service"] == {
        "name": release.fullname,
        "namespace": release.namespace,
        "path": "/validate",
        "port": 443,
    }


def _can(cluster: Cluster, user: str, verb: str, resource: str, namespace: str | None) -> bool:
    scope = ["-n", namespace] if namespace else []
    resource, _, subresource = resource.partition("/")  # can-i reads "kind/x" as an object named x
    if subresource:
        scope.append(f"--subresource={subresource}")
    result = cluster.kubectl("auth", "can-i", verb, resource, *scope, "--as", user, check=False)
    return result.stdout.strip() == "yes"


# (verb, resource, namespace: "release" = the release's, "other" = any other, None = cluster scope)
ALLOWED = [
    ("watch", "modeldeployments.gpufleet.io", "other"),
    ("patch", "modeldeployments.gpufleet.io/status", "other"),
    ("patch", "modeldeployments.gpufleet.io/scale", "other"),
    ("create", "deployments.apps", "other"),
    ("delete", "services", "other"),
    ("patch", "poddisruptionbudgets.policy", "other"),
    ("delete", "pods", "other"),
    ("create", "pods/eviction", "other"),  # a serving replica on a going node leaves as kubectl drain does
    ("create", "events", "other"),
    ("watch", "nodes", None),
    ("patch", "nodes", None),  # an SQS warning is recorded on its node before the message is deleted
    ("create", "subjectaccessreviews.authorization.k8s.io", None),  # the webhook's reference check
    ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("update", "leases.coordination.k8s.io", "release"),
    ("get", "secrets", "other"),  # a model's credentialsSecret, by name (CredentialsReady)
]
DENIED = [
    ("list", "secrets", "other"),  # never enumerated nor cached: only the one a model names
    ("watch", "secrets", "other"),
    ("list", "secrets", None),
    ("list", "configmaps", "other"),
    ("delete", "nodes", None),
    ("create", "pods", "other"),
    ("create", "pods/exec", "other"),
    ("delete", "modeldeployments.gpufleet.io", "other"),
    ("create", "modeldeployments.gpufleet.io", "other"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io", None),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
    ("create", "serviceaccounts/token", "release"),
    ("update", "leases.coordination.k8s.io", "other"),
    # gpufleet writes with server-side apply and merge patches; the Lease alone is written with PUT.
    ("update", "deployments.apps", "other"),
    ("patch", "leases.coordination.k8s.io", "release"),
    ("update", "leases.coordination.k8s.io", "kube-node-lease"),
    ("list", "namespaces", None),
]


def _scope(release: Release, namespace: str | None, other: str) -> str | None:
    return {"release": release.namespace, "other": other}.get(namespace or "", namespace)


def test_the_service_account_may_do_what_the_operator_does_and_nothing_else(
    operator: OperatorProcess, release: Release, namespace: str
) -> None:
    cluster = operator.cluster
    wrong_allowed = [
        (verb, resource, scope)
        for verb, resource, scope in ALLOWED
        if not _can(cluster, release.user, verb, resource, _scope(release, scope, namespace))
    ]
    wrongly_granted = [
        (verb, resource, scope)
        for verb, resource, scope in DENIED
        if _can(cluster, release.user, verb, resource, _scope(release, scope, namespace))
    ]
    assert wrong_allowed == [], "the operator needs these"
    assert wrongly_granted == [], "the operator does not need these"


def _token_kubeconfig(cluster: Cluster, release: Release, path: Path) -> Path:
    """A kubeconfig with a short-lived token of the release's ServiceAccount (TokenRequest)."""
    token = cluster.kubectl(
        "create", "token", release.service_account, "-n", release.namespace, "--duration=1h"
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    admin["users"] = [{"name": "operator", "user": {"token": token}}]
    for context in admin["contexts"]:
        context["context"]["user"] = "operator"
    path.write_text(yaml.safe_dump(admin))
    return path


def test_the_service_account_token_reads_what_it_may_and_is_refused_the_rest(
    operator: OperatorProcess, release: Release, namespace: str, tmp_path: Path
) -> None:
    cluster = operator.cluster
    config = str(_token_kubeconfig(cluster, release, tmp_path / "kubeconfig"))
    whoami = cluster.kubectl("--kubeconfig", config, "auth", "whoami", "-o", "json")
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == release.user
    secrets = cluster.kubectl("--kubeconfig", config, "get", "secrets", "-n", release.namespace, check=False)
    assert secrets.returncode != 0
    assert "Forbidden" in secrets.stderr
    assert cluster.kubectl("--kubeconfig", config, "get", "nodes").returncode == 0
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "rbac-check"},
        "spec": {"holderIdentity": "test", "leaseDurationSeconds": 15},
    }
    created = cluster.kubectl(
        "--kubeconfig", config, "create", "-n", release.namespace, "-f", "-", stdin=json.dumps(lease)
    )
    assert created.returncode == 0
    elsewhere = cluster.kubectl(
        "--kubeconfig", config, "create", "-n", namespace, "-f", "-", stdin=json.dumps(lease), check=False
    )
    assert "Forbidden" in elsewhere.stderr


def _chart_environment(cluster: Cluster, release: Release, pod_name: str) -> dict[str, str]:
    """The operator container's environment as the chart's Deployment sets it, downward API resolved."""
    deployment = cluster.get_json("deployment", release.fullname, "-n", release.namespace)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    fields = {"metadata.namespace": release.namespace, "metadata.name": pod_name}
    env: dict[str, str] = {}
    for variable in container["env"]:
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            env[variable["name"]] = fields[variable["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


MODEL = "llama-3-8b-helm"
MANIFEST = {
    "apiVersion": "gpufleet.io/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": MODEL},
    "spec": {
        "model": {
            "uri": "hf://meta-llama/Meta-Llama-3-8B-Instruct",
            "parameterCount": 8.03e9,
            "maxModelLen": 4096,
        },
        "accelerator": {"gpuProduct": "NVIDIA-A100-SXM4-80GB", "tensorParallelSize": 1},
        "replicas": 1,
        "minReplicas": 1,
        "maxReplicas": 3,
        "capacity": {"zones": ["us-west-2c"], "spotPercent": 0},
    },
}


def _ready_pods(cluster: Cluster, namespace: str) -> int:
    pods = cluster.get_json("pods", "-n", namespace, "-l", f"{MD_LABEL}={MODEL}")["items"]
    return sum(
        1
        for pod in pods
        if not pod["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod.get("status", {}).get("conditions", [])
        )
    )


def test_the_operator_serves_a_model_deployment_with_the_chart_service_account(
    operator: OperatorProcess,
    sim: BackgroundSimulation,
    release: Release,
    namespace: str,
    tmp_path: Path,
) -> None:
    cluster = operator.cluster
    pod_name = f"{release.fullname}-local"
    env = _chart_environment(cluster, release, pod_name)
    assert env["GPUFLEET_WEBHOOK_MANAGED"] == "false"
    assert env["GPUFLEET_LEADER_ELECTION"] == "true"
    # Here instead of in a pod: free local ports, and a webhook on loopback with a certificate for
    # 127.0.0.1, registered by a copy of the chart's webhook configuration pointing there (the
    # session operator's own registration is emptied by kopf when it stops).
    for name in ("GPUFLEET_HEALTH_PORT", "GPUFLEET_METRICS_PORT"):
        env.pop(name)
    certs = tmp_path / "webhook-certs"
    certificate, _key = ensure_self_signed(certs, ["127.0.0.1"])
    port = free_port()
    env.update(
        GPUFLEET_WEBHOOK_LISTEN_ADDRESS="127.0.0.1",
        GPUFLEET_WEBHOOK_PORT=str(port),
        GPUFLEET_WEBHOOK_CERT_DIR=str(certs),
        HOME=str(tmp_path),
        TMPDIR=str(tmp_path),
    )
    webhook = cluster.get_json("validatingwebhookconfiguration", release.fullname)
    local = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": f"{release.fullname}-local"},
        "webhooks": [
            {
                **{k: v for k, v in hook.items() if k not in ("clientConfig", "namespaceSelector")},
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}{hook['clientConfig']['service']['path']}",
                    "caBundle": base64.b64encode(certificate.read_bytes()).decode(),
                },
            }
            for hook in webhook["webhooks"]
        ],
    }
    process = LocalOperator(
        _token_kubeconfig(cluster, release, tmp_path / "kubeconfig"), tmp_path / "op", env
    )
    operator.stop()
    try:
        process.start()
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(local))

        def holder() -> str | None:
            lease = cluster.kubectl(
                "get", "lease", env["GPUFLEET_LEADER_ELECTION_NAME"], "-n", release.namespace,
                "-o", "jsonpath={.spec.holderIdentity}", check=False,
            )  # fmt: skip
            return lease.stdout.strip() or None

        # The chart's leader election: the Lease in the release namespace, held under the pod's name.
        assert wait_until(holder, timeout=30, what="the leader Lease") == pod_name
        # Admission goes through this process's webhook: a bad spec is refused with the CLI's rules.
        bad = {**MANIFEST, "spec": {**MANIFEST["spec"], "minReplicas": 5}}
        denied = cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(bad), check=False)
        assert denied.returncode != 0
        assert "validate.gpufleet.io" in denied.stderr
        cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(MANIFEST))

        def owned() -> bool:
            deployments = cluster.get_json("deployments", "-n", namespace, "-l", f"{MD_LABEL}={MODEL}")[
                "items"
            ]
            service = cluster.kubectl("get", "service", MODEL, "-n", namespace, check=False).returncode == 0
            pdb = cluster.kubectl("get", "pdb", MODEL, "-n", namespace, check=False).returncode == 0
            return len(deployments) == 1 and service and pdb

        wait_until(owned, timeout=30, what="the Deployment, Service and PDB")
        wait_until(
            lambda: _ready_pods(cluster, namespace) == 1, timeout=120, interval=0.5, what="1 ready pod"
        )

        def status(replicas: int) -> bool:
            md = cluster.get_json("md", MODEL, "-n", namespace)
            return md.get("status", {}).get("readyReplicas") == replicas

        wait_until(lambda: status(1), timeout=30, what="status.readyReplicas 1")
        cluster.kubectl("scale", "md", MODEL, "-n", namespace, "--replicas=2")
        wait_until(
            lambda: _ready_pods(cluster, namespace) == 2, timeout=120, interval=0.5, what="2 ready pods"
        )
        wait_until(lambda: status(2), timeout=30, what="status.readyReplicas 2")
        reasons = cluster.kubectl(
            "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={MODEL}",
            "-o", "jsonpath={.items[*].reason}",
        ).stdout.split()  # fmt: skip
        assert "CreatedGroup" in reasons

        # A credentialsSecret that does not exist: the chart's `get` on Secrets lets the operator tell
        # (not Unknown), and the condition and a Warning name it; once created, it is found.
        with_secret = copy.deepcopy(MANIFEST)
        with_secret["spec"]["model"]["credentialsSecret"] = "hf-token"
        cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(with_secret))

        def credentials() -> str | None:
            md = cluster.get_json("md", MODEL, "-n", namespace)
            found = [c for c in md.get("status", {}).get("conditions", []) if c["type"] == "CredentialsReady"]
            return f"{found[0]['status']} {found[0]['reason']}" if found else None

        wait_until(lambda: credentials() == "False SecretNotFound", timeout=30, what="SecretNotFound")
        cluster.kubectl(
            "create", "secret", "generic", "hf-token", "-n", namespace, "--from-literal=HF_TOKEN=hf_test"
        )
        cluster.kubectl("annotate", "md", MODEL, "-n", namespace, "e2e/poke=1")  # reconcile now
        wait_until(lambda: credentials() == "True SecretFound", timeout=30, what="SecretFound")
        warnings = cluster.kubectl(
            "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={MODEL}",
            "-o", "jsonpath={.items[*].reason}",
        ).stdout.split()  # fmt: skip
        assert "SecretNotFound" in warnings

        cluster.kubectl("delete", "md", MODEL, "-n", namespace)

        def gone() -> bool:
            left = cluster.get_json("deployments,services,pdb", "-n", namespace, "-l", f"{MD_LABEL}={MODEL}")
            return not left["items"]

        wait_until(gone, timeout=60, what="the owned objects deleted")
        assert process.alive()
        log = process.log.read_text(errors="replace")
        refused = [line for line in log.splitlines() if "Forbidden" in line or " 403" in line]
        assert refused == [], "the chart's ServiceAccount was refused:\n" + "\n".join(refused[:10])
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", local["metadata"]["name"], check=False)
        process.stop()
        operator.start()


def test_with_watch_namespaces_the_permissions_are_per_namespace(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    scoped = _new_release(cluster, "gfns")
    try:
        _install(
            cluster,
            scoped,
            "--set",
            f"watchNamespaces[0]={namespace}",
            "--set",
            "crds.enabled=false",
            "--set",
            "webhook.enabled=false",
            "--set",
            "replicaCount=0",
        )
        assert _can(cluster, scoped.user, "patch", "deployments.apps", namespace)
        assert _can(cluster, scoped.user, "watch", "modeldeployments.gpufleet.io", namespace)
        assert not _can(cluster, scoped.user, "patch", "deployments.apps", "default")
        assert not _can(cluster, scoped.user, "watch", "modeldeployments.gpufleet.io", None)
        assert not _can(cluster, scoped.user, "list", "pods", None)
        # Secrets only in the watched namespaces, where its models' credentialsSecrets are.
        assert _can(cluster, scoped.user, "get", "secrets", namespace)
        assert not _can(cluster, scoped.user, "get", "secrets", "default")
        # Cluster-scoped reads it still needs: nodes, and namespaces (kopf resolves the list).
        assert _can(cluster, scoped.user, "watch", "nodes", None)
        assert _can(cluster, scoped.user, "list", "namespaces", None)
        assert cluster.kubectl("get", "crd", "modeldeployments.gpufleet.io", check=False).returncode == 0
    finally:
        _uninstall(cluster, scoped)
