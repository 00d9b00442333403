"""Timestamps as gpufleet writes and reads them in Kubernetes objects.

Kubernetes `Time` fields are RFC 3339 in UTC with whole seconds
(`2026-11-22T12:00:00Z`); the Lease's `MicroTime` fields keep microseconds.
Times gpufleet reads back from its own status must carry a zone: a naive one
was not written by gpufleet, and guessing its zone could shift a cooldown or
a deadline by hours.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, PlainSerializer


def kube_time(moment: datetime) -> str:
    """A Kubernetes `Time`: UTC, whole seconds, `Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("a timestamp without a time zone was not written by gpufleet")
    return moment


# A datetime field of the API models: read only with its zone, written as a Kubernetes `Time`.
KubeTime = Annotated[
    datetime, AfterValidator(_aware), PlainSerializer(kube_time, return_type=str, when_used="json")
]


def kube_micro_time(moment: datetime) -> str:
    """A Kubernetes `MicroTime` (Lease acquire and renew times)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_kube_time(value: Any) -> datetime:
    """An RFC 3339 time with its zone; ValueError for anything else."""
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {value!r}")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {value!r}")
    return parsed
