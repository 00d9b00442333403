"""Integration fixtures: fake GPU nodes kept Ready by a kubelet stand-in (no pods run on them)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.integration.fleet import FakeKubelet


@pytest.fixture(scope="session")
def fleet(api: client.ApiClient) -> Iterator[FakeKubelet]:
    kubelet = FakeKubelet(api)
    kubelet.start()
    yield kubelet
    kubelet.stop()
