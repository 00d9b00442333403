"""The watch-gap check against the real API server: a ModelDeployment deleted (or deleted and created
again) without the operator's watch seeing it is found by listing, in one namespace or in all."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml
from kubernetes import client

from gpufleet.adapters.kube import RestKubeApi
from gpufleet.api.v1alpha1 import API_VERSION, KIND
from gpufleet.planning.observe import Key
from gpufleet.runtime.watch_gaps import WatchGapCheck
from gpufleet.runtime.work_queue import WorkQueue
from tests.conftest import ROOT, Cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def other_namespace(crd: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    crd.kubectl("create", "namespace", name)
    yield name
    crd.kubectl("delete", "namespace", name, "--wait=false", check=False)


def create(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "samples" / "llama-3-70b-a100-spot.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["autoscaling"]["enabled"] = False
    cluster.kubectl("create", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(doc))
    created: dict[str, Any] = cluster.get_json("md", name, "-n", namespace)
    return created


def check(api: client.ApiClient, namespaces: list[str], known: list[dict[str, Any]]) -> dict[Key, str | None]:
    """One check with a queue that knows `known`; what the operator is told: key → new uid or None."""
    told: dict[Key, str | None] = {}

    async def scenario() -> None:
        queue = WorkQueue(lambda key, body: None, workers=1, resync=600)
        for body in known:
            queue.set_body((body["metadata"]["namespace"], body["metadata"]["name"]), body)

        def changed(key: Key, body: Mapping[str, Any] | None) -> None:
            told[key] = None if body is None else body["metadata"]["uid"]

        await WatchGapCheck(RestKubeApi(api), namespaces, queue, changed).once()

    asyncio.run(scenario())
    return told


def test_what_the_watch_missed_is_found_in_one_namespace_or_all(
    crd: Cluster, api: client.ApiClient, namespace: str, other_namespace: str
) -> None:
    kept = create(crd, namespace, "kept")
    gone = create(crd, namespace, "gone")
    again = create(crd, other_namespace, "again")
    crd.kubectl("delete", "md", "gone", "-n", namespace, "--wait=true")
    crd.kubectl("delete", "md", "again", "-n", other_namespace, "--wait=true")
    recreated = create(crd, other_namespace, "again")

    everywhere = check(api, [], [kept, gone, again])
    assert everywhere == {(namespace, "gone"): None, (other_namespace, "again"): recreated["metadata"]["uid"]}
    # Watching one namespace lists that one only: the other's objects are not its business.
    assert check(api, [namespace], [kept, gone]) == {(namespace, "gone"): None}
    assert {
        (m["metadata"]["namespace"], m["kind"])
        for m in RestKubeApi(api).list(API_VERSION, KIND, namespace, "")
    } == {(namespace, KIND)}
