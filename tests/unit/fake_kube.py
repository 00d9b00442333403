"""An in-memory KubeApi for reconcile tests: counts writes, bumps generations like the API server."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from gpufleet.adapters.kube import KubeError
from gpufleet.planning.merge_patch import as_stored


def merge(live: Any, patch: Any) -> Any:
    """RFC 7386: objects merge member by member, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(live) if isinstance(live, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.applies: list[str] = []
        self.deletes: list[str] = []
        self.status_patches = 0
        self.scales: list[tuple[str, int]] = []
        self.events: list[tuple[str, str, str]] = []
        self.evictions: list[str] = []
        self.patches: list[str] = []
        self.refuse_evictions: set[str] = set()  # pods whose PDB allows no disruption now (429)
        self._version = 0

    def _bump(self, obj: dict[str, Any]) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)

    def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str
    ) -> list[dict[str, Any]]:
        """Objects of `kind` in `namespace` (None: all) matching `key=value`, `key` (exists) or ""."""
        key, equals, value = label_selector.partition("=")

        def selected(labels: dict[str, str]) -> bool:
            if not label_selector:
                return True
            return labels.get(key) == value if equals else key in labels

        return [
            copy.deepcopy(o)
            for (k, ns, _), o in sorted(self.objects.items())
            if k == kind and namespace in (None, ns) and selected(o["metadata"].get("labels", {}))
        ]

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        found = self.objects.get((kind, namespace or "", name))
        return copy.deepcopy(found) if found is not None else None

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        self.applies.append(f"{obj['kind']}/{meta['name']}")
        live = self.objects.get(key)
        new = copy.deepcopy(obj)
        generation = 1
        if live is not None:
            generation = live["metadata"].get("generation", 1)
            if live.get("spec") != new.get("spec"):
                generation += 1
            new["status"] = live.get("status", {})
        new["metadata"]["generation"] = generation
        self._bump(new)
        self.objects[key] = new
        return copy.deepcopy(new)

    def patch(
        self, api_version: str, kind: str, namespace: str | None, name: str, merge_patch: dict[str, Any]
    ) -> dict[str, Any]:
        """A merge patch, refused (409) like the API server's when its resourceVersion is stale."""
        key = (kind, namespace or "", name)
        live = self.objects.get(key)
        if live is None:
            raise KubeError(404, f"{kind} {name} not found")
        wanted = (merge_patch.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != live["metadata"].get("resourceVersion"):
            raise KubeError(409, f"{kind} {name}: the object has been modified")
        self.patches.append(f"{kind}/{name}")
        merged = merge(live, merge_patch)
        self._bump(merged)
        self.objects[key] = merged
        return copy.deepcopy(merged)

    def edit(self, kind: str, namespace: str, name: str, change: Any) -> None:
        """Someone else changes an object (kubectl edit): spec changes bump the generation."""
        obj = self.objects[(kind, namespace, name)]
        change(obj)
        obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
        self._bump(obj)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.deletes.append(f"{kind}/{name}")
        self.objects.pop((kind, namespace, name), None)

    def evict(self, namespace: str, pod: str) -> bool:
        if pod in self.refuse_evictions:
            return False
        self.evictions.append(pod)
        self.objects.pop(("Pod", namespace, pod), None)
        return True

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        self.status_patches += 1
        self.last_status = copy.deepcopy(status)

    @property
    def stored_status(self) -> dict[str, Any]:
        """The last status patch as the API server keeps it: a merge patch's null members delete."""
        result: dict[str, Any] = as_stored(self.last_status)
        return result

    def patch_scale(self, api_version: str, kind: str, namespace: str, name: str, replicas: int) -> None:
        self.scales.append((name, replicas))

    def create_event(
        self, involved: dict[str, Any], event_type: str, reason: str, message: str, now: datetime
    ) -> None:
        self.events.append((event_type, reason, message))

    def flush_events(self, timeout: float) -> bool:
        return True
