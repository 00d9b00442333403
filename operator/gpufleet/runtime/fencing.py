"""Every write of the reconciler, the autoscaler and the interruption consumer asks, just before it is
sent, whether this replica still leads (runtime.leader.Leadership asks the clock, not only a flag).

A replica paused past its lease (SIGSTOP, a frozen VM) wakes with work in its hands: a reconcile half
done, a message half handled. Its next write is refused here instead of landing after the standby has
taken over. Reads pass: a standby keeps its view current. The Lease itself is written by the elector on
the plain client, and the webhook's access reviews too, which every replica serves.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from gpufleet.adapters.kube import KubeApi, KubeError


class NotLeadingError(KubeError):
    def __init__(self, what: str) -> None:
        super().__init__(0, f"{what} refused: this replica does not lead (a pause outlived its lease?)")


class FencedKube:
    def __init__(self, kube: KubeApi, leads: Callable[[], bool]) -> None:
        self._kube = kube
        self._leads = leads

    def _check(self, what: str) -> None:
        if not self._leads():
            raise NotLeadingError(what)

    def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str
    ) -> list[dict[str, Any]]:
        return self._kube.list(api_version, kind, namespace, label_selector)

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._kube.get(api_version, kind, namespace, name)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._check(f"apply of {obj['kind']} {obj['metadata']['name']}")
        return self._kube.apply(obj)

    def patch(
        self, api_version: str, kind: str, namespace: str | None, name: str, merge_patch: dict[str, Any]
    ) -> dict[str, Any]:
        self._check(f"patch of {kind} {name}")
        return self._kube.patch(api_version, kind, namespace, name, merge_patch)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self._check(f"delete of {kind} {name}")
        self._kube.delete(api_version, kind, namespace, name)

    def evict(self, namespace: str, pod: str) -> bool:
        self._check(f"eviction of pod {pod}")
        return self._kube.evict(namespace, pod)

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        self._check(f"status of {kind} {name}")
        self._kube.patch_status(api_version, kind, namespace, name, status)

    def create_event(
        self, involved: dict[str, Any], event_type: str, reason: str, message: str, now: datetime
    ) -> None:
        self._check(f"event {reason}")
        self._kube.create_event(involved, event_type, reason, message, now)

    def patch_scale(self, api_version: str, kind: str, namespace: str, name: str, replicas: int) -> None:
        self._check(f"scale of {kind} {name}")
        self._kube.patch_scale(api_version, kind, namespace, name, replicas)

    def flush_events(self, timeout: float) -> bool:
        return self._kube.flush_events(timeout)
