"""Before the interruption queue is read, the operator lists nodes and its pods from the real API server,
so a warning read at startup finds its node (issue: warnings lost at restart)."""

from __future__ import annotations

import pytest
from kubernetes import client

from gpufleet.adapters.kube import RestKubeApi
from gpufleet.config import Settings
from gpufleet.planning.capacity_signals import provider_instance
from gpufleet.runtime.composition_root import Operator
from tests.integration.fleet import TEST_FLEET, FakeKubelet

pytestmark = pytest.mark.integration


def test_a_fresh_operator_knows_every_node_by_its_instance_before_reading_the_queue(
    api: client.ApiClient, fleet: FakeKubelet
) -> None:
    operator = Operator(Settings.defaults(), RestKubeApi(api))
    assert operator.capacity.zones() == set()  # no watch has run
    operator.prime_capacity()
    for fake in TEST_FLEET:
        located = provider_instance(fake.manifest()["spec"]["providerID"])  # type: ignore[index]
        assert located is not None
        node = operator.capacity.node_for_instance(located[1])
        assert node is not None, fake.name
        assert (node.name, node.zone, node.capacity_type) == (fake.name, fake.zone, fake.capacity_type)
