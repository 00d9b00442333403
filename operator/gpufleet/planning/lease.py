"""Leader election over a coordination.k8s.io Lease: what a replica should do with the Lease it reads.

Pure; the clock is an argument. The timings are client-go's and
controller-runtime's defaults: a Lease held for 15 s, renewed every 2 s and
given up when it cannot be renewed within 10 s, so a standby takes over about
15 s after the leader dies, at once when it steps down cleanly (it clears the
holder on shutdown).

Expiry is judged as client-go judges it: on the standby's own clock, from when
it first saw the Lease's current record, never from the holder's renewTime.
Clocks of two nodes may differ by more than the lease duration; comparing the
holder's timestamp with the local clock would let a standby take a lease that
is being renewed. A standby that starts therefore waits one lease duration
before it takes over, even from a holder that died long ago.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from gpufleet.api.timestamps import kube_micro_time

LEASE_DURATION = timedelta(seconds=15)
RENEW_DEADLINE = timedelta(seconds=10)
RETRY_PERIOD = timedelta(seconds=2)

Action = Literal["create", "renew", "take", "wait"]


@dataclass(frozen=True)
class LeaseView:
    holder: str
    duration: timedelta
    transitions: int
    acquired: datetime | None
    resource_version: str


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def read_lease(obj: Mapping[str, Any]) -> LeaseView:
    spec = obj.get("spec") or {}
    seconds = spec.get("leaseDurationSeconds")
    duration = timedelta(seconds=seconds) if isinstance(seconds, int) and seconds > 0 else LEASE_DURATION
    transitions = spec.get("leaseTransitions")
    return LeaseView(
        holder=str(spec.get("holderIdentity") or ""),
        duration=duration,
        transitions=transitions if isinstance(transitions, int) and transitions >= 0 else 0,
        acquired=_parse(spec.get("acquireTime")),
        resource_version=str((obj.get("metadata") or {}).get("resourceVersion", "")),
    )


def lease_action(lease: LeaseView | None, me: str, now: datetime, observed_at: datetime) -> Action:
    """What to do with the Lease as read; `observed_at`: when this replica first saw its current record
    (its resourceVersion), on this replica's clock."""
    if lease is None:
        return "create"
    if lease.holder == me:
        return "renew"
    if not lease.holder or now - observed_at > lease.duration:
        return "take"
    return "wait"


def lease_object(
    namespace: str, name: str, me: str, now: datetime, lease: LeaseView | None, action: Action
) -> dict[str, Any]:
    """The Lease to write for `action` (create, renew or take); resourceVersion guards the race."""
    taking = action in ("create", "take")
    acquired = now if taking or lease is None or lease.acquired is None else lease.acquired
    transitions = (lease.transitions if lease else 0) + (1 if action == "take" else 0)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if lease is not None and lease.resource_version:
        metadata["resourceVersion"] = lease.resource_version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": me,
            "leaseDurationSeconds": int(LEASE_DURATION.total_seconds()),
            "acquireTime": kube_micro_time(acquired),
            "renewTime": kube_micro_time(now),
            "leaseTransitions": transitions,
        },
    }


def released(namespace: str, name: str, lease: LeaseView) -> dict[str, Any]:
    """The Lease with no holder, so a standby takes over at once."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": lease.resource_version},
        "spec": {"holderIdentity": "", "leaseTransitions": lease.transitions},
    }
