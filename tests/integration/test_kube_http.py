"""RestKubeApi over adapters.kube_http (what the operator process uses) against the real API server:
the same answers as through the kubernetes client, errors with their status, and a watch's events."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from gpufleet.adapters.kube import ClientHttp, KubeError, RestKubeApi, load_http
from gpufleet.adapters.kube_http import KubeHttp
from tests.conftest import Cluster

pytestmark = pytest.mark.integration


def service(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": {"gpufleet.io/model-deployment": name}},
        "spec": {"ports": [{"port": 8000}], "selector": {"app": name}},
    }


def test_the_operators_transport_is_urllib3_for_the_test_clusters_kubeconfig(cluster: Cluster) -> None:
    assert isinstance(load_http(str(cluster.kubeconfig)), KubeHttp)


def test_reads_writes_and_errors_match_the_kubernetes_client(
    cluster: Cluster, namespace: str, api: Any
) -> None:
    ours = RestKubeApi(load_http(str(cluster.kubeconfig)))
    theirs = RestKubeApi(ClientHttp(api))
    applied = ours.apply(service(namespace, "a"))
    assert applied["metadata"]["managedFields"][0]["manager"] == "gpufleet"
    for kube in (ours, theirs):
        found = kube.get("v1", "Service", namespace, "a")
        assert found is not None
        assert found["metadata"]["uid"] == applied["metadata"]["uid"]
        assert kube.get("v1", "Service", namespace, "missing") is None
        assert [
            s["metadata"]["name"]
            for s in kube.list("v1", "Service", namespace, "gpufleet.io/model-deployment")
        ] == ["a"]
        with pytest.raises(KubeError) as conflict:
            kube.create(service(namespace, "a"))
        assert conflict.value.status == 409
        with pytest.raises(KubeError) as invalid:
            kube.apply({**service(namespace, "b"), "spec": {"ports": [{"port": -1}]}})
        assert invalid.value.status == 422
        assert "spec.ports[0].port" in str(invalid.value)


def test_a_watch_delivers_changes_from_the_lists_version(cluster: Cluster, namespace: str) -> None:
    kube = RestKubeApi(load_http(str(cluster.kubeconfig)))
    listing = kube.list_at("v1", "Service", namespace, "gpufleet.io/model-deployment")
    seen: list[tuple[str, str]] = []

    def watch() -> None:
        for event in kube.watch(
            "v1", "Service", namespace, "gpufleet.io/model-deployment", listing.resource_version, 5
        ):
            if event["type"] != "BOOKMARK":
                seen.append((event["type"], event["object"]["metadata"]["name"]))

    watcher = threading.Thread(target=watch)
    watcher.start()
    kube.apply(service(namespace, "w"))
    kube.delete("v1", "Service", namespace, "w")
    watcher.join(timeout=60)  # the API server ends the watch after its 5 s timeout
    assert not watcher.is_alive()
    assert seen == [("ADDED", "w"), ("DELETED", "w")]
