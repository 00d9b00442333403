"""A reconcile in steady state reads from the watch caches: the real API server's audit log shows the
operator's LISTs and WATCHes while it reconciles a model over and over (resync every 2 s), and a watch
cut by an API server restart is resumed and still sees a group deleted by hand."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fleetsim.local import CLUSTER_SCRIPT, OperatorProcess
from fleetsim.prometheus import sum_samples
from tests.conftest import record_fault_figure, wait_until
from tests.integration.conftest import AuditedPlane, service_account_kubeconfig
from tests.integration.test_api_faults import Model

pytestmark = pytest.mark.integration

NAMESPACE = "steady-reads"
ACCOUNT = "operator-steady"
OWNED = ("pods", "deployments", "services", "poddisruptionbudgets")


def requests_by(log: Path, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """The operator's requests received in [since, until], one audit event each."""
    found: dict[str, dict[str, Any]] = {}
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if not event.get("user", {}).get("username", "").endswith(f":{ACCOUNT}"):
            continue
        received = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
        if since <= received <= until:
            found.setdefault(event["auditID"], event)
    return list(found.values())


def status_of_the_model(plane: Any) -> str:
    items = json.loads(plane.kubectl("get", "md", "-n", NAMESPACE, "-o", "json").stdout)["items"]
    return json.dumps(items[0].get("status"), sort_keys=True)


def reconciles(operator: OperatorProcess) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as response:
        return sum_samples(response.read().decode(), "gpufleet_reconciles_total")


def test_steady_state_reconciles_list_nothing_and_every_owned_watch_is_filtered_on_the_server(
    audited: AuditedPlane, tmp_path: Path
) -> None:
    plane = audited.plane
    plane.kubectl("create", "namespace", NAMESPACE)
    config = service_account_kubeconfig(plane, NAMESPACE, ACCOUNT, tmp_path / "operator.kubeconfig")
    operator = OperatorProcess(config, tmp_path / "operator", {"GPUFLEET_RESYNC_SECONDS": "2"})
    operator.start()
    model = Model(plane, NAMESPACE)
    try:
        model.apply(2)
        model.converged(2)
        # Steady: the status settled (two reads a resync apart agree), so what follows is resyncs alone.
        seen: list[str] = []

        def settled() -> bool:
            seen.append(status_of_the_model(plane))
            return len(seen) > 1 and seen[-1] == seen[-2]

        wait_until(settled, timeout=60, interval=2.5, what="the status settled")
        since, first = datetime.now(UTC), reconciles(operator)

        def counted() -> bool:
            # At least five resyncs' worth of time and of reconciles.
            return (datetime.now(UTC) - since).total_seconds() >= 10 and reconciles(operator) >= first + 5

        wait_until(counted, timeout=60, what="five more reconciles")
        until, passes = datetime.now(UTC), reconciles(operator) - first
        model.stop_sampling()  # its reads would fail while the API server restarts

        # The API server restarts: every watch breaks and is taken up again; a group deleted by hand
        # afterwards must still be seen (through the resumed Deployment watch) and restored.
        subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "restart-apiserver", str(audited.state)],
            check=True,
            capture_output=True,
        )
        victim = sorted(model.deployments())[0]
        model.floor = 0  # the deletion is ours
        plane.kubectl("delete", "deploy", victim, "-n", NAMESPACE)
        wait_until(lambda: victim in model.deployments(), timeout=60, what=f"{victim} restored")
        assert operator.alive()
    finally:
        model.stop_sampling()
        operator.stop()

    window = requests_by(audited.audit_log, since, until)
    verbs = Counter((e["verb"], e["objectRef"]["resource"]) for e in window)
    lists = {resource: n for (verb, resource), n in verbs.items() if verb == "list"}
    minutes = (until - since).total_seconds() / 60
    record_fault_figure(
        "steady-state reads",
        f"{passes:.0f} reconciles of one model in {minutes * 60:.0f} s: API requests by verb "
        + ", ".join(f"{verb} {resource} {n}" for (verb, resource), n in sorted(verbs.items()))
        + f"; {len(window) / minutes:.1f} requests per minute",
    )
    assert passes >= 5
    assert not any(lists.get(resource) for resource in OWNED), f"LISTs in steady state: {lists}"

    # Every watch of an owned kind, over the whole run, asked the API server to filter by the label.
    watches = [
        e
        for e in requests_by(audited.audit_log, datetime.min.replace(tzinfo=UTC), datetime.now(UTC))
        if e["verb"] == "watch" and e["objectRef"]["resource"] in OWNED
    ]
    assert {e["objectRef"]["resource"] for e in watches} == set(OWNED)
    for event in watches:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(event["requestURI"]).query)
        assert query.get("labelSelector") == ["gpufleet.io/model-deployment"], event["requestURI"]
