"""What the planners tell people: Events to post and condition verdicts to write.

Plain data; the runtime posts the Events and the status planner turns the
verdicts into metav1.Conditions (with their transition times).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class EventView:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class ConditionView:
    type: str
    ok: bool
    reason: str
    message: str
