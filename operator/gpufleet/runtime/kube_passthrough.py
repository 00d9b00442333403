"""A KubeApi that hands every call to another: the base of the wrappers that change one or two calls
(runtime.events queues Events, runtime.cached_kube serves lists from watch caches)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gpufleet.adapters.kube import KubeApi


class KubePassthrough:
    def __init__(self, kube: KubeApi) -> None:
        self._kube = kube

    def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str
    ) -> list[dict[str, Any]]:
        return self._kube.list(api_version, kind, namespace, label_selector)

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._kube.get(api_version, kind, namespace, name)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self._kube.apply(obj)

    def patch(
        self, api_version: str, kind: str, namespace: str | None, name: str, merge_patch: dict[str, Any]
    ) -> dict[str, Any]:
        return self._kube.patch(api_version, kind, namespace, name, merge_patch)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self._kube.delete(api_version, kind, namespace, name)

    def evict(self, namespace: str, pod: str) -> bool:
        return self._kube.evict(namespace, pod)

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        self._kube.patch_status(api_version, kind, namespace, name, status)

    def create_event(
        self, involved: dict[str, Any], event_type: str, reason: str, message: str, now: datetime
    ) -> None:
        self._kube.create_event(involved, event_type, reason, message, now)

    def patch_scale(self, api_version: str, kind: str, namespace: str, name: str, replicas: int) -> None:
        self._kube.patch_scale(api_version, kind, namespace, name, replicas)

    def flush_events(self, timeout: float) -> bool:
        return self._kube.flush_events(timeout)
