"""The spot benchmark's bookkeeping (trial names, the summary against the real NTH, what NTH's log says) and
what fleetsim.nth gives NTH (its chart's permissions, its queue-processor settings), without running it."""

from __future__ import annotations

import sys
from pathlib import Path

from fleetsim.in_cluster import ACCOUNT, PodCredentials
from fleetsim.local import ControlPlane
from fleetsim.nth import NodeTerminationHandler, NthBuild, rbac
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "hack" / "bench"))

from spot import Figures, label, nth_summary, policy_of, slug, summary_lines, trial_names


def test_rounds_interleave_the_policies_and_names_fit_in_a_namespace() -> None:
    names = trial_names(["none", "nth", "ours", "nth+ours"], 2)
    assert names == ["none", "nth", "ours", "nth+ours", "none#2", "nth#2", "ours#2", "nth+ours#2"]
    assert [policy_of(n) for n in names[4:]] == ["none", "nth", "ours", "nth+ours"]
    assert slug("nth+ours#2") == "nth-ours-2"


def test_the_real_handler_is_labelled_as_such_and_ours_is_not() -> None:
    assert label("nth") == "nth(real)"
    assert label("nth+ours#3") == "nth(real)+ours#3"
    assert label("ours") == "ours"


def _figures(failed: int, below: float, cost: float) -> Figures:
    return Figures(failed, below, cost, covered=1, interrupted=2)


def test_the_summary_divides_each_policy_by_the_real_nth_and_gives_the_range_over_rounds() -> None:
    figures = {
        "nth": _figures(10, 0.10, 0.55),
        "ours": _figures(0, 0.01, 0.52),
        "nth#2": _figures(20, 0.20, 0.55),
        "ours#2": _figures(2, 0.03, 0.52),
    }
    lines = summary_lines(figures, rounds=2)
    nth_line = next(line for line in lines if line.startswith("nth(real) "))
    assert "mean failed requests 15.0" in nth_line
    assert "failed 10-20" in nth_line
    ratio = next(line for line in lines if line.startswith("ours / nth(real)"))
    # ours: mean failed 1 against 15, below 2 % against 15 %.
    assert "failed requests 0.07x" in ratio
    assert "replica-seconds below desired 0.13x" in ratio
    assert lines[-1].startswith("spot: failed none=n/a nth=15.0 ours=1.0 nth+ours=n/a")


def test_a_ratio_to_a_zero_is_not_a_number() -> None:
    lines = summary_lines({"nth": _figures(0, 0.0, 0.5), "ours": _figures(3, 0.0, 0.5)}, rounds=1)
    ratio = next(line for line in lines if line.startswith("ours / nth(real)"))
    assert "failed requests n/a (nth 0)" in ratio
    assert "replica-seconds below desired 1x (both 0)" in ratio


# Lines as NTH v1.25.6 logs them (zerolog's console format), from a run of tests/e2e/test_nth_pairing.py.
NTH_LOG = """\
2026/12/04 04:37:32 INF Started watching for interruption events
2026/12/04 04:37:36 WRN Successfully added taint on node node_name=n1 \
taint_key=aws-node-termination-handler/spot-itn
2026/12/04 04:37:36 INF Draining the node node_name=n1
2026/12/04 04:37:36 INF evicting pod ns/p1
2026/12/04 04:37:36 ERR error when evicting pods/"p1" -n "ns" (will retry after 5s): Cannot evict pod as it \
would violate the pod's disruption budget.
2026/12/04 04:37:41 INF evicting pod ns/p1
2026/12/04 04:37:41 INF Node successfully cordoned and drained node_name=n1 reason="Spot Interruption notice"
"""


def test_what_nth_did_is_read_from_its_log(tmp_path: Path) -> None:
    handler = NodeTerminationHandler(
        ControlPlane(tmp_path / "kubeconfig", "kubectl"),
        NthBuild(tmp_path),
        tmp_path,
        queue_url="http://127.0.0.1:1/123456789012/q",
        aws_endpoint="http://127.0.0.1:1",
        region="us-east-1",
    )
    handler.log_path.write_text(NTH_LOG)
    summary = nth_summary(handler)[0]
    assert summary.startswith("taints added: spot-itn 1; drains seen through: 1 (n1)")
    assert "eviction attempts 2, refused by a PodDisruptionBudget 1" in summary
    assert summary.endswith("queue or lookup problems 0")


def test_nth_gets_its_charts_permissions_and_nothing_more() -> None:
    account, role, binding = rbac()
    rules = {
        (rule["apiGroups"][0], resource): set(rule["verbs"])
        for rule in role["rules"]
        for resource in rule["resources"]
    }
    assert rules == {
        ("", "nodes"): {"get", "list", "patch", "update"},
        ("", "pods"): {"get", "list"},
        ("", "pods/eviction"): {"create"},
        ("extensions", "daemonsets"): {"get"},
        ("apps", "daemonsets"): {"get"},
        ("", "events"): {"create", "patch"},
    }
    (subject,) = binding["subjects"]
    assert subject == {
        "kind": "ServiceAccount",
        "name": "aws-node-termination-handler",
        "namespace": "kube-system",
    }
    assert account["kind"] == "ServiceAccount"


def test_nth_runs_in_queue_mode_against_the_local_endpoint_with_pod_credentials_only(tmp_path: Path) -> None:
    handler = NodeTerminationHandler(
        ControlPlane(tmp_path / "kubeconfig", "kubectl"),
        NthBuild(tmp_path),
        tmp_path,
        queue_url="http://127.0.0.1:4566/123456789012/q",
        aws_endpoint="http://127.0.0.1:4566",
        region="us-west-2",
        node_grace_s=6,
    )
    handler.credentials = PodCredentials(tmp_path / "account", "127.0.0.1", "6443")
    env = handler.env()
    assert env["ENABLE_SQS_TERMINATION_DRAINING"] == "true"
    assert env["AWS_ENDPOINT"] == "http://127.0.0.1:4566"
    assert env["QUEUE_URL"].endswith("/q")
    assert env["USE_PROVIDER_ID"] == env["TAINT_NODE"] == env["DELETE_SQS_MSG_IF_NODE_NOT_FOUND"] == "true"
    assert env["CHECK_TAG_BEFORE_DRAINING"] == "false"
    assert env["NODE_TERMINATION_GRACE_PERIOD"] == "6"
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert "KUBECONFIG" not in env
    command = handler.credentials.command(["/bin/nth"])
    assert command[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert ACCOUNT in command[-1]
    assert command[-1].endswith("exec /bin/nth")
