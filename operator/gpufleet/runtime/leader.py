"""Leader election (GPUFLEET_LEADER_ELECTION): only the replica holding the Lease acts.

Every replica watches (its caches stay warm, so a takeover is quick); only the
leader reconciles, autoscales, reads the interruption queue and refreshes
prices. kopf's peering is not used for this: it pauses kopf's own handlers
but not gpufleet's work queue and background loops.

The Lease is written as client-go writes it: created with a POST (the loser of
a race gets 409 AlreadyExists) and renewed or taken with a PUT carrying the
resourceVersion read (the loser gets 409 Conflict). A server-side apply would
not do: it creates or updates whatever is there, so two replicas that both
read "no Lease" would both think they hold it. Whatever a step meets (an API
error, a refused connection, a bug), the thread carries on, and the replica
leads only while its last successful renewal is within the renew deadline,
measured when the failure is seen, after calls that may have blocked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from gpufleet.adapters.kube import KubeError
from gpufleet.planning.lease import (
    RENEW_DEADLINE,
    RETRY_PERIOD,
    lease_action,
    lease_object,
    read_lease,
    released,
)
from gpufleet.runtime import operator_metrics as metrics

log = logging.getLogger("gpufleet.leader")

LEASE_API = "coordination.k8s.io/v1"


class LeaseApi(Protocol):
    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def create(self, obj: dict[str, Any]) -> dict[str, Any]: ...

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]: ...


class Leadership(threading.Event):
    """Whether this replica may act now, asked at each use: an Event whose `is_set` also asks the clock.

    With election, it leads only while its last successful renewal is within the renew deadline as of
    the moment it asks: a flag alone stays set through a pause longer than the lease (SIGSTOP, a frozen
    VM, a long stall), and the replica would act on waking, before its elector thread runs and sees that
    a standby took over. The renew deadline (10 s) is shorter than the lease (15 s) that a standby waits
    out from when it saw the last renewal, so the two never overlap, unless a write is already on the
    wire when the pause begins.
    """

    def __init__(self, clock: Callable[[], datetime]) -> None:
        super().__init__()
        self._clock = clock
        self._renewed: datetime | None = None

    def renewed(self, at: datetime) -> None:
        self._renewed = at

    def held(self) -> bool:
        """The flag alone: the elector won the Lease and has not seen it lost."""
        return super().is_set()

    def is_set(self) -> bool:
        if not self.held():
            return False
        return self._renewed is None or self._clock() - self._renewed <= RENEW_DEADLINE

    def wait(self, timeout: float | None = None) -> bool:
        return super().wait(timeout) and self.is_set()


class LeaderElector:
    def __init__(
        self,
        kube: LeaseApi,
        namespace: str,
        name: str,
        identity: str,
        clock: Callable[[], datetime],
        on_started_leading: Callable[[], None] = lambda: None,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.clock = clock
        self.on_started_leading = on_started_leading
        self.leading = Leadership(clock)
        self.stopped = threading.Event()
        self._last_renewal: datetime | None = None
        # The Lease record last seen (its resourceVersion) and when, on this replica's clock.
        self._seen_version: str | None = None
        self._observed_at: datetime | None = None

    def step(self) -> bool:
        """One attempt to acquire or renew; whether this replica leads afterwards."""
        started = self.clock()
        try:
            live = self.kube.get(LEASE_API, "Lease", self.namespace, self.name)
            lease = read_lease(live) if live is not None else None
            now = self.clock()
            if lease is not None and lease.resource_version != self._seen_version:
                self._seen_version, self._observed_at = lease.resource_version, now
            action = lease_action(lease, self.identity, now, self._observed_at or now)
            if action == "wait":
                self._set(False)
                return False
            wanted = lease_object(self.namespace, self.name, self.identity, started, lease, action)
            written = self.kube.create(wanted) if action == "create" else self.kube.replace(wanted)
            self._seen_version = str((written.get("metadata") or {}).get("resourceVersion", ""))
            # Counted from before the calls: the others count the lease from when they see it change.
            self._observed_at = self._last_renewal = started
            self.leading.renewed(started)
            self._set(True)
        except Exception as error:
            # 409: another replica won the race. Anything else: the API server, the network, or a bug;
            # keep leading only while the last renewal is within the renew deadline, as of now.
            conflict = isinstance(error, KubeError) and error.status == 409
            if not conflict:
                log.warning("leader election: %s: %s", type(error).__name__, error)
            late = self._last_renewal is None or self.clock() - self._last_renewal > RENEW_DEADLINE
            if conflict or late:
                self._set(False)
        return self.leading.is_set()

    def _set(self, leading: bool) -> None:
        if leading and not self.leading.held():
            log.info("%s now leads (Lease %s/%s)", self.identity, self.namespace, self.name)
            self.leading.set()
            metrics.LEADER.set(1)
            self.on_started_leading()
        elif not leading and self.leading.held():
            log.warning("%s no longer leads (Lease %s/%s)", self.identity, self.namespace, self.name)
            self.leading.clear()
            metrics.LEADER.set(0)
        elif not leading:
            metrics.LEADER.set(0)

    def run(self) -> None:
        while not self.stopped.is_set():
            self.step()
            self.stopped.wait(RETRY_PERIOD.total_seconds())

    def release(self) -> None:
        """Step down at shutdown so a standby takes over at once, not after the Lease expires.

        Called once this replica's work has stopped: a standby may act as soon as the holder is cleared.
        """
        self.stopped.set()
        if not self.leading.held():
            return
        self._set(False)
        try:
            live = self.kube.get(LEASE_API, "Lease", self.namespace, self.name)
            if live is not None and read_lease(live).holder == self.identity:
                self.kube.replace(released(self.namespace, self.name, read_lease(live)))
        except Exception:
            log.warning("could not release the Lease; a standby takes over when it expires", exc_info=True)
