"""Leader election against the real API server: the races a fake would answer kindly.

Two replicas that both read "no Lease" must not both lead, and a replica that read a Lease before the
holder renewed it must not take it. The API server's answers decide, not our fake's.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client

from gpufleet.adapters.kube import KubeError, RestKubeApi
from gpufleet.planning.lease import lease_object, read_lease
from gpufleet.runtime.leader import LeaderElector
from tests.conftest import Cluster

pytestmark = pytest.mark.integration

NAME = "gpufleet-leader"


def elector(kube: Any, namespace: str, me: str, clock: list[datetime]) -> LeaderElector:
    return LeaderElector(kube, namespace, NAME, me, lambda: clock[0])


class StaleReads(RestKubeApi):
    """Reads the Lease as it was before another replica wrote it (its watch or its GET lagged)."""

    def __init__(self, api: client.ApiClient, before_answer: Any) -> None:
        super().__init__(api)
        self.before_answer = before_answer

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        seen = super().get(api_version, kind, namespace, name)
        self.before_answer()
        return seen


def test_two_replicas_that_both_read_no_lease_do_not_both_lead(
    cluster: Cluster, api: client.ApiClient, namespace: str
) -> None:
    clock = [datetime.now(UTC)]
    first = elector(RestKubeApi(api), namespace, "pod-a", clock)
    # pod-b reads "no Lease", then pod-a creates it before pod-b writes.
    second = elector(StaleReads(api, first.step), namespace, "pod-b", clock)
    assert not second.step()
    assert first.leading.is_set()
    lease = cluster.get_json("lease", NAME, "-n", namespace)
    assert lease["spec"]["holderIdentity"] == "pod-a"


def test_a_takeover_based_on_a_stale_read_is_refused(
    cluster: Cluster, api: client.ApiClient, namespace: str
) -> None:
    clock = [datetime.now(UTC)]
    first = elector(RestKubeApi(api), namespace, "pod-a", clock)
    assert first.step()
    reads = StaleReads(api, lambda: None)
    second = elector(reads, namespace, "pod-b", clock)
    assert not second.step()  # pod-b sees pod-a's record and waits
    clock[0] += timedelta(seconds=16)  # pod-a looks dead to pod-b by now...
    reads.before_answer = first.step  # ...but renews between pod-b's read and its write
    assert not second.step()
    assert first.leading.is_set()
    lease = cluster.get_json("lease", NAME, "-n", namespace)
    assert lease["spec"]["holderIdentity"] == "pod-a"


def test_why_not_server_side_apply_a_second_create_overwrites(api: client.ApiClient, namespace: str) -> None:
    # Why the elector creates with POST: an apply of a Lease that does not exist yet carries no
    # resourceVersion, so a second replica's "create" silently takes the first one's Lease. (An apply
    # that carries a stale resourceVersion is refused, as a PUT is: seen on this API server, v1.36.)
    kube, now = RestKubeApi(api), datetime.now(UTC)
    first = kube.apply(lease_object(namespace, "applied", "pod-a", now, None, "create"))
    second = kube.apply(lease_object(namespace, "applied", "pod-b", now, None, "create"))
    assert second["spec"]["holderIdentity"] == "pod-b"
    with pytest.raises(KubeError) as stale:
        kube.apply(lease_object(namespace, "applied", "pod-c", now, read_lease(first), "take"))
    assert stale.value.status == 409
    kube.create(lease_object(namespace, "created", "pod-a", now, None, "create"))
    with pytest.raises(KubeError) as refused:
        kube.create(lease_object(namespace, "created", "pod-b", now, None, "create"))
    assert refused.value.status == 409
