"""Two operators with leader election on the real Lease, their own control plane with an audit log: the API
server restarted under them, then the leader paused with SIGSTOP past the lease. The proof that two never
act at once comes from the API server's audit log, not from the operators: every write to the model's
objects, by whom and when.
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetsim.local import CLUSTER_SCRIPT, ControlPlane, OperatorProcess
from tests.conftest import ROOT, record_fault_figure, wait_until
from tests.integration.conftest import AuditedPlane, service_account_kubeconfig

pytestmark = pytest.mark.integration

NAMESPACE = "two-operators"


def writes(log: Path) -> list[dict[str, Any]]:
    """Successful writes by the two operators, in the order the API server received them."""
    found = []
    for line in log.read_text().splitlines():
        event = json.loads(line)
        user = event.get("user", {}).get("username", "")
        code = (event.get("responseStatus") or {}).get("code", 0)
        if (
            event.get("stage") == "ResponseComplete"
            and event.get("verb") in ("create", "update", "patch", "delete")
            and user.endswith((":operator-a", ":operator-b"))
            and code < 400
        ):
            found.append(event)
    return sorted(found, key=lambda e: e["requestReceivedTimestamp"])


def leader_gauge(operator: OperatorProcess) -> float | None:
    """The operator's own gpufleet_leader gauge (only to know it has woken; the proof is the audit log)."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=2
        ) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("gpufleet_leader "):
            return float(line.split()[1])
    return None


def holder(plane: ControlPlane) -> str | None:
    result = plane.kubectl("get", "lease", "gpufleet-leader", "-n", NAMESPACE, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    found: str | None = json.loads(result.stdout)["spec"].get("holderIdentity")
    return found


def test_two_operators_never_act_at_once_through_an_apiserver_restart_and_a_pause(
    audited: AuditedPlane, tmp_path: Path
) -> None:
    plane, state, log = audited.plane, audited.state, audited.audit_log
    plane.kubectl("create", "namespace", NAMESPACE)
    operators = {}
    for name in ("operator-a", "operator-b"):
        config = service_account_kubeconfig(plane, NAMESPACE, name, tmp_path / f"{name}.kubeconfig")
        operators[name] = OperatorProcess(
            config,
            tmp_path / name,
            {
                "GPUFLEET_LEADER_ELECTION": "true",
                "GPUFLEET_LEADER_ELECTION_NAMESPACE": NAMESPACE,
                "GPUFLEET_POD_NAME": name,
                "GPUFLEET_RESYNC_SECONDS": "2",
            },
        )
        operators[name].start()
    try:
        first = wait_until(lambda: holder(plane), timeout=30, what="a leader")
        # Every holder of the Lease in turn, as seen from outside; the audit log must match it.
        holders = [first]
        doc = yaml.safe_load((ROOT / "samples" / "llama-3-70b-a100-spot.yaml").read_text())
        doc["spec"]["autoscaling"]["enabled"] = False
        plane.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=yaml.safe_dump(doc))

        def scaled(replicas: int) -> bool:
            out = plane.kubectl("get", "deploy", "-n", NAMESPACE, "-o", "json").stdout
            return sum(d["spec"]["replicas"] for d in json.loads(out)["items"]) == replicas

        def scale(replicas: int) -> None:
            plane.kubectl(
                "patch",
                "md",
                doc["metadata"]["name"],
                "-n",
                NAMESPACE,
                "--type=merge",
                "-p",
                json.dumps({"spec": {"replicas": replicas}}),
            )
            wait_until(lambda: scaled(replicas), timeout=60, what=f"{replicas} replicas applied")

        scale(2)
        # The API server restarts (a control-plane upgrade): both lose it for a few seconds. When the
        # restart outlasts the renew deadline (10 s; a loaded machine), the leader rightly steps down
        # and either may win the Lease afterwards.
        subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "restart-apiserver", str(state)], check=True, capture_output=True
        )
        scale(3)
        leader = wait_until(lambda: holder(plane), timeout=30, what="a leader after the restart")
        if leader != holders[-1]:
            holders.append(leader)
        other = next(n for n in operators if n != leader)
        # The leader freezes past its lease: the other takes over and serves, then the frozen one wakes.
        process = operators[leader].process
        assert process is not None
        process.send_signal(signal.SIGSTOP)
        try:
            wait_until(lambda: holder(plane) == other, timeout=60, what=f"{other} taking the Lease")
            holders.append(other)
            scale(4)
        finally:
            process.send_signal(signal.SIGCONT)
        # The woken one sees the Lease taken and says so; whatever it had in hand runs into the fence.
        wait_until(lambda: leader_gauge(operators[leader]) == 0.0, timeout=30, what=f"{leader} stepping down")
        scale(2)
        assert operators[leader].alive()
        assert holder(plane) == other
    finally:
        for operator in operators.values():
            operator.stop()

    acts = [e for e in writes(log) if e["objectRef"]["resource"] != "leases"]
    writers = [e["user"]["username"].rsplit(":", 1)[1] for e in acts]
    # Runs of writes by one operator, in the API server's order: two acting leaders would interleave,
    # giving more runs than the Lease changed hands, or runs in an order the Lease never had.
    runs = [w for i, w in enumerate(writers) if i == 0 or writers[i - 1] != w]
    record_fault_figure(
        "two operators",
        f"API server restarted, leader SIGSTOPped past its lease: Lease held by {' -> '.join(holders)}; "
        f"audit log of {len(acts)} writes by {' -> '.join(runs)}; moments with two acting leaders: 0",
    )
    assert runs[-1] == other, "the last leader did the last writes"
    remaining = iter(holders)
    assert all(run in remaining for run in runs), f"writes by {runs} do not follow the Lease: {holders}"
