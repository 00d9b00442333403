"""The Helm chart offline: lint, render with default and non-default values, schema errors, RBAC, docs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest
import yaml

from gpufleet.config import Settings
from tests.chart.helm import CHART, ROOT, find, helm, render

EVERYTHING = str(CHART.parent.parent / "tests" / "chart" / "values-everything.yaml")


@pytest.fixture(scope="module")
def default() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def everything() -> list[dict[str, Any]]:
    return render("-f", EVERYTHING, namespace="ops")


def _deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = find(objects, "Deployment")
    return deployment


def _env(objects: list[dict[str, Any]]) -> dict[str, Any]:
    container = _deployment(objects)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("values", [[], ["-f", EVERYTHING]], ids=["default", "everything"])
def test_helm_lint_is_clean(values: list[str]) -> None:
    result = helm("lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in result.stdout


def test_default_values_render_the_operator_and_nothing_optional(default: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in default)
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "ServiceAccount",
            "ValidatingWebhookConfiguration",
        ]
    )
    assert _deployment(default)["spec"]["replicas"] == 2


def test_the_pod_is_restricted_and_probes_kopf(default: list[dict[str, Any]]) -> None:
    pod = _deployment(default)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = _env(default)
    assert ports == {"health": 8080, "metrics": 8081, "webhook": 9443}
    assert env["GPUFLEET_HEALTH_PORT"] == "8080"
    # Everything written goes to the emptyDir: the root filesystem is read-only.
    assert env["HOME"] == env["TMPDIR"] == "/tmp"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/gpufleet/webhook-certs"]["readOnly"] is True
    assert {v["name"]: v for v in pod["volumes"]}["tmp"]["emptyDir"]


def test_the_image_user_is_the_pod_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users[-1] == "65532:65532"
    pod = _deployment(render())["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 65532


def test_every_operator_variable_the_chart_sets_is_a_setting_the_operator_reads(
    everything: list[dict[str, Any]],
) -> None:
    known = {f"GPUFLEET_{name.upper()}" for name in Settings.model_fields}
    chart = {name for name in _env(everything) if name.startswith("GPUFLEET_")}
    assert chart - known == set()


QUERY_VALUES = (
    "running",
    "kvCacheUsage",
    "gpuUtilization",
    "migUtilization",
    "reporting",
    "oldestSample",
    "activation",
    "generationTokens",
)


def test_every_operator_setting_can_be_set_from_values() -> None:
    optional = render(
        "-f", EVERYTHING,
        "--set", "spot.awsEndpointUrl=https://sqs.us-east-1.amazonaws.com",
        *[arg for name in QUERY_VALUES for arg in ("--set", f"autoscaling.queries.{name}=up")],
    )  # fmt: skip
    chart = set(_env(optional))
    missing = {f"GPUFLEET_{name.upper()}" for name in Settings.model_fields} - chart
    assert missing == set(), "settings the chart cannot set: add a value, or document why not"


def test_the_settings_render_into_values_the_operator_parses(everything: list[dict[str, Any]]) -> None:
    env = {k: v for k, v in _env(everything).items() if isinstance(v, str) and k.startswith("GPUFLEET_")}
    # extraEnv comes last and wins (GPUFLEET_DRAIN_SECONDS twice); Kubernetes does the same.
    code = (
        "import json, os, sys; from gpufleet.config import Settings; "
        "os.environ.update(json.loads(sys.argv[1])); print(Settings().model_dump_json())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(env)], capture_output=True, text=True, check=True
    )
    settings = json.loads(result.stdout)
    assert settings["namespaces"] == ["ml", "ml-staging"]
    assert settings["capacity_type_label"] == "eks.amazonaws.com/capacityType"
    assert settings["prices"]["NVIDIA-A100-SXM4-80GB"]["spot"] == {"us-east-1a": 1.9, "us-east-1b": 2.05}
    assert settings["interruption_queue_url"].endswith("/gpufleet-interruptions")
    assert settings["query_waiting"].startswith("sum(vllm:num_requests_waiting{kubernetes_namespace=")
    assert settings["webhook_managed"] is False
    assert settings["leader_election"] is True
    assert settings["leader_election_name"] == "gpufleet-ml"


def test_leader_election_and_pod_identity_come_from_the_downward_api(default: list[dict[str, Any]]) -> None:
    env = _env(default)
    assert env["GPUFLEET_LEADER_ELECTION"] == "true"
    assert env["GPUFLEET_LEADER_ELECTION_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["GPUFLEET_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    (lease,) = [r for r in find(default, "Role") if r["metadata"]["name"].endswith("leader-election")]
    assert lease["metadata"]["namespace"] == "gpufleet-system"
    assert lease["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "create", "update"],
        }
    ]


def _grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


NAMESPACED = {
    *{("gpufleet.io", "modeldeployments", v) for v in ("get", "list", "watch", "patch")},
    *{("gpufleet.io", "modeldeployments/status", v) for v in ("get", "patch")},
    *{("gpufleet.io", "modeldeployments/scale", v) for v in ("get", "patch")},
    *{
        (g, r, v)
        for g, r in (
            ("apps", "deployments"),
            ("", "services"),
            ("policy", "poddisruptionbudgets"),
            ("apps", "controllerrevisions"),  # the serving template's history (planning.revisions)
        )
        for v in ("get", "list", "watch", "create", "patch", "delete")
    },
    *{("", "pods", v) for v in ("get", "list", "watch", "delete")},
    ("", "pods/eviction", "create"),
    *{("", "events", v) for v in ("create", "patch")},
    ("", "secrets", "get"),  # a model's credentialsSecret, by name (CredentialsReady)
    # spec.rollout.httpRoute's backend weights (planning.traffic): read and patched, never made
    *{("gateway.networking.k8s.io", "httproutes", v) for v in ("get", "patch")},
}
CLUSTER = {
    *{("", "nodes", v) for v in ("get", "list", "watch", "patch")},
    ("authorization.k8s.io", "subjectaccessreviews", "create"),
    *{("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("get", "list", "watch")},
}


def test_cluster_wide_rbac_is_exactly_what_the_operator_calls(default: list[dict[str, Any]]) -> None:
    (role,) = find(default, "ClusterRole")
    assert _grants(role["rules"]) == NAMESPACED | CLUSTER
    (binding,) = find(default, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "gpufleet", "namespace": "gpufleet-system"}
    ]


def test_watch_namespaces_gives_a_role_per_namespace(everything: list[dict[str, Any]]) -> None:
    (cluster_role,) = find(everything, "ClusterRole")
    namespaces = {("", "namespaces", v) for v in ("get", "list", "watch")}
    assert _grants(cluster_role["rules"]) == CLUSTER | namespaces
    roles = {
        r["metadata"]["namespace"]: r
        for r in find(everything, "Role")
        if "leader" not in r["metadata"]["name"]
    }
    assert set(roles) == {"ml", "ml-staging"}
    for role in roles.values():
        assert _grants(role["rules"]) == NAMESPACED
    bindings = {b["metadata"]["namespace"] for b in find(everything, "RoleBinding")}
    assert bindings == {"ml", "ml-staging", "ops"}  # ops: the leader-election Role


def test_no_role_lists_secrets_or_grants_wildcards_or_admission_configuration() -> None:
    for values in ([], ["-f", EVERYTHING]):
        for role in [o for o in render(*values) if o["kind"] in ("Role", "ClusterRole")]:
            for group, resource, verb in _grants(role["rules"]):
                assert "*" not in (group, resource, verb)
                assert resource != "configmaps"
                assert resource != "secrets" or verb == "get"  # by name only: never list or watch
                assert not group.startswith("admissionregistration")


def test_the_generated_webhook_certificate_matches_the_service(default: list[dict[str, Any]]) -> None:
    from base64 import b64decode

    from cryptography import x509

    (secret,) = find(default, "Secret")
    (webhook,) = find(default, "ValidatingWebhookConfiguration")
    hook = webhook["webhooks"][0]
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    assert hook["clientConfig"]["service"] == {
        "name": "gpufleet",
        "namespace": "gpufleet-system",
        "path": "/validate",
        "port": 443,
    }
    assert hook["name"] == "validate.gpufleet.io"
    assert hook["failurePolicy"] == "Fail"
    certificate = x509.load_pem_x509_certificate(b64decode(secret["data"]["tls.crt"]))
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "gpufleet.gpufleet-system.svc" in names.get_values_for_type(x509.DNSName)


def test_cert_manager_replaces_the_generated_secret(everything: list[dict[str, Any]]) -> None:
    assert find(everything, "Secret") == []
    (certificate,) = find(everything, "Certificate")
    assert certificate["spec"]["issuerRef"] == {
        "name": "platform-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert find(everything, "Issuer") == []
    (webhook,) = find(everything, "ValidatingWebhookConfiguration")
    assert webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "ops/gpufleet-webhook"
    assert "caBundle" not in webhook["webhooks"][0]["clientConfig"]
    selfsigned = render("--set", "webhook.certManager.enabled=true")
    assert [i["spec"] for i in find(selfsigned, "Issuer")] == [{"selfSigned": {}}]


def test_crds_follow_enabled_and_keep() -> None:
    (kept,) = find(render(), "CustomResourceDefinition")
    assert kept["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    (dropped,) = find(render("--set", "crds.keep=false"), "CustomResourceDefinition")
    assert "annotations" not in dropped["metadata"]
    assert find(render("--set", "crds.enabled=false"), "CustomResourceDefinition") == []


def test_monitoring_objects_are_opt_in_and_well_formed(everything: list[dict[str, Any]]) -> None:
    (monitor,) = find(everything, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    (pods,) = find(everything, "PodMonitor")
    assert pods["spec"]["selector"]["matchExpressions"] == [
        {"key": "gpufleet.io/model-deployment", "operator": "Exists"}
    ]
    assert pods["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    assert pods["spec"]["namespaceSelector"] == {"matchNames": ["ml", "ml-staging"]}
    (dashboard,) = find(everything, "ConfigMap")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert json.loads(dashboard["data"]["gpufleet.json"])["uid"] == "gpufleet"
    (rule,) = find(everything, "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert "SpotFallbackActive" not in {a["alert"] for a in alerts}
    assert all(a["labels"]["team"] == "ml-platform" and a["labels"]["severity"] for a in alerts)
    assert all(
        a["annotations"]["runbook_url"] == f"https://runbooks.example.com/gpufleet/{a['alert']}.md"
        for a in alerts
    )


def test_the_vllm_port_the_pod_monitor_scrapes_is_the_one_the_operator_names() -> None:
    from gpufleet.planning.workloads import LABEL_MODEL_DEPLOYMENT, PORT_NAME

    template = (CHART / "templates" / "podmonitor.yaml").read_text()
    assert f"port: {PORT_NAME}\n" in template
    assert f"key: {LABEL_MODEL_DEPLOYMENT}\n" in template


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--set", "replicaCout=3"], "additional properties 'replicaCout' not allowed"),
        (["--set", "webhook.failurePolicy=Sometimes"], "/webhook/failurePolicy"),
        (["--set", "webhook.timeoutSeconds=60"], "maximum: got 60, want 30"),
        (["--set", "operator.capacityTypeLabel=node.kubernetes.io/lifecycle"], "/operator/capacityTypeLabel"),
        (["--set", "watchNamespaces[0]=ML_Team"], "/watchNamespaces/0"),
        (["--set", "spot.prices.A100.spot.z=1"], "missing property 'onDemand'"),
        (["--set", "autoscaling.prometheusUrl=prometheus:9090"], "/autoscaling/prometheusUrl"),
        (["--set", "monitoring.prometheusRule.disabledAlerts[0]=NoSuchAlert"], "value must be one of"),
        (["--set", "image.digest=latest"], "/image/digest"),
        (["--set", "replicaCount=two"], "/replicaCount"),
    ],
)
def test_values_that_break_the_schema_fail_with_the_path_and_reason(
    arguments: list[str], message: str
) -> None:
    result = helm("template", "gpufleet", str(CHART), *arguments, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


def _leaves(values: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in ("resources", "labels"):
            keys.extend(_leaves(value, path + "."))
        else:
            keys.append(path)
    return keys


def test_every_value_is_in_the_schema_and_the_readme() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    readme = (CHART / "README.md").read_text()
    for path in _leaves(values):
        node = schema
        for part in path.split("."):
            assert node.get("additionalProperties") is False, f"{path}: schema object not strict"
            node = node["properties"][part]
        assert f"`{path}`" in readme, f"{path} is not documented in charts/gpufleet/README.md"
    table = readme.split("\n## Values\n", 1)[1]
    documented = set(re.findall(r"^\| `([a-zA-Z_.]+)`", table, re.MULTILINE))
    assert documented == set(_leaves(values)), "README lists values that do not exist"


def test_the_schema_knows_every_alert_by_name() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    rules = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    enum = schema["properties"]["monitoring"]["properties"]["prometheusRule"]["properties"]["disabledAlerts"]
    assert enum["items"]["enum"] == [r["alert"] for g in rules["groups"] for r in g["rules"]]


def test_the_chart_crd_template_is_the_generated_crd() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "chart_crds.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (crd,) = find(render(), "CustomResourceDefinition")
    generated = yaml.safe_load((ROOT / "crds" / "gpufleet.io_modeldeployments.yaml").read_text())
    assert crd["spec"] == generated["spec"]
