"""Leader election (GPUFLEET_LEADER_ELECTION): only the replica holding the Lease acts.

Every replica watches (its caches stay warm, so a takeover is quick); only the
leader reconciles, autoscales, reads the interruption queue and refreshes
prices. kopf's peering is not used for this: it pauses kopf's own handlers
but not gpufleet's work queue and background loops.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from gpufleet.adapters.kube import KubeError, RestKubeApi
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


class LeaderElector:
    def __init__(
        self,
        kube: RestKubeApi,
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
        self.leading = threading.Event()
        self.stopped = threading.Event()
        self._last_renewal: datetime | None = None

    def step(self) -> bool:
        """One attempt to acquire or renew; whether this replica leads afterwards."""
        now = self.clock()
        try:
            live = self.kube.get("coordination.k8s.io/v1", "Lease", self.namespace, self.name)
            lease = read_lease(live) if live is not None else None
            action = lease_action(lease, self.identity, now)
            if action != "wait":
                self.kube.apply(lease_object(self.namespace, self.name, self.identity, now, lease, action))
                self._last_renewal = now
                self._set(True)
            else:
                self._set(False)
        except KubeError as error:
            # A conflict is another replica winning the race; anything else is the API server.
            # Keep leading only while the last renewal is within the renew deadline.
            if error.status != 409:
                log.warning("leader election: %s", error)
            if self._last_renewal is None or now - self._last_renewal > RENEW_DEADLINE or error.status == 409:
                self._set(False)
        return self.leading.is_set()

    def _set(self, leading: bool) -> None:
        if leading and not self.leading.is_set():
            log.info("%s now leads (Lease %s/%s)", self.identity, self.namespace, self.name)
            self.leading.set()
            metrics.LEADER.set(1)
            self.on_started_leading()
        elif not leading and self.leading.is_set():
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
        """Step down at shutdown so a standby takes over at once, not after the Lease expires."""
        self.stopped.set()
        if not self.leading.is_set():
            return
        self._set(False)
        try:
            live = self.kube.get("coordination.k8s.io/v1", "Lease", self.namespace, self.name)
            if live is not None and read_lease(live).holder == self.identity:
                self.kube.apply(released(self.namespace, self.name, read_lease(live)))
        except KubeError:
            log.warning("could not release the Lease; a standby takes over when it expires", exc_info=True)
