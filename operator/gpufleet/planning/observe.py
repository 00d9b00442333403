"""Objects as the API server returns them (plain dicts) → the records the planners read.

Every planner that looks at a model's pods reads them through `observe_pod`,
so the reconcile, its status and the autoscaler count ready, starting and
terminating pods alike. What an object says that the operator did not write
(a hand-edited status, an unknown capacity type) is read defensively: the
worst outcome of a misread is holding, never removing capacity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from gpufleet.api.timestamps import parse_kube_time
from gpufleet.api.v1alpha1 import ModelDeploymentStatus, Slot
from gpufleet.planning.placement import CapacityType
from gpufleet.planning.workloads import (
    LABEL_CAPACITY_TYPE,
    LABEL_MODEL_DEPLOYMENT,
    LABEL_REVISION_HASH,
    LABEL_SLOT,
    LABEL_ZONE,
)

# (namespace, name) of a ModelDeployment: the key of the work queue, the caches and the metrics.
Key = tuple[str, str]


@dataclass(frozen=True)
class ObservedPod:
    """What the planners need of one pod of the ModelDeployment."""

    name: str
    zone: str
    capacity_type: CapacityType
    ready: bool
    terminating: bool = False
    template_hash: str = ""
    unschedulable_since: datetime | None = None
    unschedulable_message: str = ""
    node: str = ""  # spec.nodeName; "" while unscheduled
    # Not ready, and a container of it keeps failing: what the kubelet says of it; "" otherwise.
    failing: str = ""
    slot: Slot = "a"  # the Deployment slot it belongs to (planning.rollout)
    revision_hash: str = ""  # its revision's hash, on canary pods; "" when unlabelled


@dataclass(frozen=True)
class ObservedDeployment:
    name: str
    replicas: int
    updated_replicas: int
    ready_replicas: int
    generation: int
    observed_generation: int
    # The Deployment controller gave up waiting for progress (Progressing=False, ProgressDeadlineExceeded).
    deadline_exceeded: bool = False


# Waiting reasons that do not pass by themselves: the pod's spec or its image is wrong.
CONFIG_ERRORS = frozenset(
    {
        "CreateContainerConfigError",
        "CreateContainerError",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
    }
)
# Restarts before a crashing container counts as failing: one restart is a hiccup, two is a pattern.
FAILING_RESTARTS = 2
_MESSAGE_CHARS = 300  # of the kubelet's message and the last exit's termination message, each


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj["metadata"]
    return (meta["namespace"], meta["name"])


def owner_key(obj: Mapping[str, Any]) -> Key | None:
    """The ModelDeployment an object carries the label of, or None."""
    meta = obj.get("metadata", {})
    return owner_key_of(meta.get("namespace"), meta.get("labels") or {})


def owner_key_of(namespace: str | None, labels: Mapping[str, str]) -> Key | None:
    """The same from a namespace and labels (as kopf hands them to a watch handler)."""
    owner = labels.get(LABEL_MODEL_DEPLOYMENT)
    return (namespace, owner) if namespace and owner else None


def observe_pod(pod: Mapping[str, Any]) -> ObservedPod:
    meta, status = pod.get("metadata", {}), pod.get("status", {})
    labels = meta.get("labels", {})
    conditions = {c.get("type"): c for c in status.get("conditions", [])}
    ready = conditions.get("Ready", {}).get("status") == "True"
    scheduled = conditions.get("PodScheduled", {})
    unschedulable = scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
    capacity: CapacityType = "spot" if labels.get(LABEL_CAPACITY_TYPE) == "spot" else "on-demand"
    return ObservedPod(
        name=meta.get("name", ""),
        zone=labels.get(LABEL_ZONE, ""),
        capacity_type=capacity,
        ready=ready,
        terminating=meta.get("deletionTimestamp") is not None
        or status.get("phase") in ("Succeeded", "Failed"),
        unschedulable_since=_unschedulable_since(scheduled) if unschedulable else None,
        unschedulable_message=scheduled.get("message", "") if unschedulable else "",
        node=(pod.get("spec") or {}).get("nodeName") or "",
        failing="" if ready else _failing(status),
        slot="b" if labels.get(LABEL_SLOT) == "b" else "a",
        revision_hash=str(labels.get(LABEL_REVISION_HASH, "")),
    )


def _failing(status: Mapping[str, Any]) -> str:
    """The first (init) container that keeps failing, as `kubectl describe` would tell it."""
    for kind, key in (("init container", "initContainerStatuses"), ("container", "containerStatuses")):
        for container in status.get(key) or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = str(waiting.get("reason", ""))
            restarts = int(container.get("restartCount") or 0)
            last = (container.get("lastState") or {}).get("terminated") or {}
            crashing = restarts >= FAILING_RESTARTS and (bool(last) or reason == "CrashLoopBackOff")
            if reason not in CONFIG_ERRORS and not crashing:
                continue
            text = f"{kind} {container.get('name')}: {reason or 'restarting'}"
            if waiting.get("message"):
                text += f" ({str(waiting['message'])[:_MESSAGE_CHARS]})"
            if last:
                text += f", {restarts} restarts, last exit {last.get('exitCode')}"
                tail = str(last.get("message") or "").strip()
                if tail:
                    text += f": {tail[-_MESSAGE_CHARS:]}"
            return text
    return ""


def _unschedulable_since(scheduled: Mapping[str, Any]) -> datetime | None:
    since = scheduled.get("lastTransitionTime")
    return parse_kube_time(since) if since else None


def observe_deployment(deployment: Mapping[str, Any]) -> ObservedDeployment:
    meta, spec, status = deployment["metadata"], deployment.get("spec", {}), deployment.get("status", {})
    return ObservedDeployment(
        name=meta["name"],
        replicas=int(spec.get("replicas", 0)),
        updated_replicas=int(status.get("updatedReplicas", 0)),
        ready_replicas=int(status.get("readyReplicas", 0)),
        generation=int(meta.get("generation", 0)),
        observed_generation=int(status.get("observedGeneration", 0)),
        deadline_exceeded=any(
            c.get("type") == "Progressing"
            and c.get("status") == "False"
            and c.get("reason") == "ProgressDeadlineExceeded"
            for c in status.get("conditions") or []
        ),
    )


def version_of(obj: Mapping[str, Any]) -> str:
    """What changes when someone changes the object: its generation, else its resourceVersion.

    A PDB's status is rewritten by the disruption controller on every pod change, which must not
    count as a change, so the generation wins where the kind has one; Services have none.
    """
    meta = obj.get("metadata", {})
    generation = meta.get("generation")
    return f"g{generation}" if generation is not None else f"rv{meta.get('resourceVersion', '')}"


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences", []))


def stored_status(raw: Any) -> ModelDeploymentStatus:
    """The status as stored; a member that does not read (edited by hand, an older shape) is left out.

    Left out means unknown: the spot state starts empty (cooldowns are rebuilt by the next signals),
    the autoscaler's history starts over (which never scales down), a condition's clock restarts.
    """
    if not isinstance(raw, Mapping):
        return ModelDeploymentStatus()
    try:
        return ModelDeploymentStatus.model_validate(raw)
    except ValidationError:
        pass
    readable: dict[str, Any] = {}
    for name, value in raw.items():
        try:
            ModelDeploymentStatus.model_validate({name: value})
        except ValidationError:
            continue
        readable[name] = value
    return ModelDeploymentStatus.model_validate(readable)


def missed_by_the_watch(
    known: Mapping[Key, Mapping[str, Any]], listed: Sequence[Mapping[str, Any]], settled: Iterable[Key]
) -> tuple[set[Key], dict[Key, Mapping[str, Any]]]:
    """What a fresh list of ModelDeployments shows that the watch did not deliver.

    A watch that reconnects after its resourceVersion expired (410 Gone) does not replay deletions: a
    ModelDeployment deleted in the gap would stay known, and every resync would apply Deployments owned
    by a dead UID that the garbage collector deletes again. Returns the keys to forget (known, not
    listed) and the bodies to replace (listed under a known name with another UID: deleted and
    created again). Only `settled` keys count, those whose last watch event came before the list
    began: one created or changed since is newer than the list and must not be undone by it.
    """
    stable = set(settled)
    listed_by_key = {key_of(body): body for body in listed}
    gone = {key for key in known if key in stable and key not in listed_by_key}
    replaced = {
        key: body
        for key, body in listed_by_key.items()
        if key in stable
        and key in known
        and body.get("metadata", {}).get("uid") != known[key].get("metadata", {}).get("uid")
    }
    return gone, replaced
