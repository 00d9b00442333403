"""The leader rule over a Lease (planning.lease): who acts, and when a standby takes over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpufleet.planning.lease import LEASE_DURATION, lease_action, lease_object, read_lease

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def test_lease_rule() -> None:
    assert lease_action(None, "a", NOW, NOW) == "create"
    held = read_lease(lease_object("ns", "l", "a", NOW, None, "create"))
    assert lease_action(held, "a", NOW, NOW) == "renew"
    assert lease_action(held, "b", NOW + LEASE_DURATION, NOW) == "wait"
    assert lease_action(held, "b", NOW + LEASE_DURATION + timedelta(seconds=1), NOW) == "take"
    taken = read_lease(lease_object("ns", "l", "b", NOW, held, "take"))
    assert (taken.holder, taken.transitions) == ("b", 1)
    released_ = read_lease({"spec": {"holderIdentity": ""}, "metadata": {}})
    assert lease_action(released_, "b", NOW, NOW) == "take"  # stepped down: no wait


@pytest.mark.parametrize("skew", [timedelta(hours=-1), timedelta(hours=1)])
def test_expiry_is_judged_on_the_local_clock_never_on_the_holders(skew: timedelta) -> None:
    # The holder's clock is an hour off; it renewed just now by its own clock.
    held = read_lease(lease_object("ns", "l", "a", NOW + skew, None, "create"))
    assert lease_action(held, "b", NOW, observed_at=NOW) == "wait"
    assert lease_action(held, "b", NOW + LEASE_DURATION, observed_at=NOW) == "wait"
    assert lease_action(held, "b", NOW + LEASE_DURATION + timedelta(seconds=1), observed_at=NOW) == "take"


@pytest.mark.parametrize("value", [None, "", "garbage"])
def test_unreadable_lease_times_do_not_matter(value: Any) -> None:
    # Expiry comes from observation, so a renewTime that does not read changes nothing.
    lease = read_lease({"spec": {"holderIdentity": "pod-a", "renewTime": value}, "metadata": {}})
    assert lease_action(lease, "pod-b", NOW, observed_at=NOW) == "wait"
    assert lease_action(lease, "pod-b", NOW + timedelta(seconds=16), observed_at=NOW) == "take"
