"""The leader rule over a Lease (planning.lease): who acts, and when a standby takes over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpufleet.planning.lease import LEASE_DURATION, lease_action, lease_object, read_lease

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def test_lease_rule() -> None:
    assert lease_action(None, "a", NOW) == "create"
    held = read_lease(lease_object("ns", "l", "a", NOW, None, "create"))
    assert lease_action(held, "a", NOW) == "renew"
    assert lease_action(held, "b", NOW + LEASE_DURATION) == "wait"
    assert lease_action(held, "b", NOW + LEASE_DURATION + timedelta(seconds=1)) == "take"
    taken = read_lease(lease_object("ns", "l", "b", NOW, held, "take"))
    assert (taken.holder, taken.transitions) == ("b", 1)


@pytest.mark.parametrize("value", [None, "", "garbage"])
def test_unreadable_lease_times_count_as_expired(value: Any) -> None:
    lease = read_lease({"spec": {"holderIdentity": "pod-a", "renewTime": value}, "metadata": {}})
    assert lease_action(lease, "pod-b", NOW) == "take"
