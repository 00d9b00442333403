"""Capacity signals: EventBridge messages from the interruption queue and Node objects → `CapacitySignal`s.

Pure: no I/O, no clock (`now` is an argument). The failover planner consumes the
signals; the runtime's interruption queue loop feeds `parse_message` with SQS
bodies, and its capacity store `node_signals` with Node objects from the watch.

Messages (REFERENCE.md "Spot interruption signals", lines 9-15). EventBridge's
SQS target delivers the event JSON itself as the body; we read
`detail.instance-id`, never the `resources` ARN (its format differs between
event types and documentation pages, REFERENCE.md line 13).
  aws.ec2    "EC2 Spot Instance Interruption Warning"  → interruption; deadline
             time + 120 s (stop/terminate), time itself for "hibernate" (no lead)
  aws.ec2    "EC2 Instance Rebalance Recommendation"   → rebalance (no deadline)
  aws.ec2    "EC2 Instance State-change Notification"  → stopping (stopping,
             shutting-down) / terminated (stopped, terminated); pending/running
             are ignored. States: EC2 user guide, monitoring-instance-state-changes.
  aws.health "AWS Health Event", service EC2, category scheduledChange
             → one scheduled-change per affected instance, deadline detail.startTime.
The Health event's `startTime` is NOT ISO 8601: the AWS Health user guide
(aws-health-events-eventbridge-schema) documents "DoW, DD MMM YYYY HH:MM:SS TZ"
and its samples read "Thu, 27 Aug 2026 13:19:03 GMT" and "Fri, 3 Jun 2022
05:01:10 GMT" (RFC 1123, one-digit days, and weekdays that do not always match
the date). We accept RFC 1123/2822 (weekday ignored) and ISO 8601; a naive time
is taken as UTC. The same guide's instance-retirement sample names the instance
by ARN in `affectedEntities[].entityValue` ("arn:aws:ec2:us-east-1:…:instance/
i-…"), the NTH and Karpenter fixtures by bare id: both are read. Region and
account of a Health event are the impacted ones when given (`detail.eventRegion`,
`detail.affectedAccount`): the envelope's are where the event was delivered.

SNS: an SNS envelope (`{"Type": "Notification", "Message": "…"}`) is rejected as
"foreign", not unwrapped, as Karpenter's interruption controller does (its
parser reads the body as the event). The supported wiring is an EventBridge
rule targeting the queue; through SNS, raw message delivery gives the same body.

Node signals (taint keys from the projects' sources):
  karpenter.sh/disrupted                 Karpenter v1 (kubernetes-sigs/karpenter pkg/apis/v1/taints.go)
  karpenter.sh/disruption=disrupting     Karpenter v1beta1 (before 1.0), same meaning
  aws-node-termination-handler/spot-itn, /rebalance-recommendation,
  /scheduled-maintenance, /asg-lifecycle-termination
                                         aws/aws-node-termination-handler pkg/node/node.go
  node.kubernetes.io/out-of-service      Kubernetes non-graceful node shutdown (NTH sets it
                                         too, with enableOutOfServiceTaint): the node is down
  Ready condition False/Unknown          → not-ready, since lastTransitionTime
The API server writes a taint's `timeAdded` only for NoExecute taints; the
taints above are NoSchedule by default, so their event time is usually `now`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Final, Literal

from gpufleet.api.timestamps import kube_time

SignalKind = Literal[
    "interruption", "rebalance", "stopping", "terminated", "scheduled-change", "disruption", "not-ready"
]
MessageOutcome = Literal["ignored", "unknown", "foreign", "malformed"]

# REFERENCE.md line 10: the interruption notice comes 2 minutes before stop/terminate; hibernate has none.
SPOT_NOTICE: Final = timedelta(seconds=120)

# REFERENCE.md lines 13-14 (EventBridge event sources and detail-types).
SOURCE_EC2: Final = "aws.ec2"
SOURCE_HEALTH: Final = "aws.health"
SPOT_WARNING: Final = "EC2 Spot Instance Interruption Warning"
REBALANCE: Final = "EC2 Instance Rebalance Recommendation"
STATE_CHANGE: Final = "EC2 Instance State-change Notification"
HEALTH_EVENT: Final = "AWS Health Event"
HEALTH_SERVICE: Final = "EC2"
HEALTH_CATEGORY: Final = "scheduledChange"
HANDLED: Final = frozenset(
    {
        (SOURCE_EC2, SPOT_WARNING),
        (SOURCE_EC2, REBALANCE),
        (SOURCE_EC2, STATE_CHANGE),
        (SOURCE_HEALTH, HEALTH_EVENT),
    }
)
# The six documented instance states; None: nothing happens to capacity.
STATE_KINDS: Final[Mapping[str, SignalKind | None]] = {
    "pending": None,
    "running": None,
    "stopping": "stopping",
    "shutting-down": "stopping",
    "stopped": "terminated",
    "terminated": "terminated",
}

# Taints (REFERENCE.md lines 14-15; keys checked in the projects' sources, see the module docstring).
TAINT_KARPENTER_DISRUPTED: Final = "karpenter.sh/disrupted"
TAINT_KARPENTER_DISRUPTION_V1BETA1: Final = "karpenter.sh/disruption"
TAINT_KARPENTER_DISRUPTING_VALUE: Final = "disrupting"
TAINT_NTH_SPOT_ITN: Final = "aws-node-termination-handler/spot-itn"
TAINT_NTH_REBALANCE: Final = "aws-node-termination-handler/rebalance-recommendation"
TAINT_NTH_SCHEDULED_MAINTENANCE: Final = "aws-node-termination-handler/scheduled-maintenance"
TAINT_NTH_ASG_TERMINATION: Final = "aws-node-termination-handler/asg-lifecycle-termination"
TAINT_OUT_OF_SERVICE: Final = "node.kubernetes.io/out-of-service"
TAINT_KINDS: Final[Mapping[str, SignalKind]] = {
    TAINT_KARPENTER_DISRUPTED: "disruption",
    TAINT_NTH_SPOT_ITN: "interruption",
    TAINT_NTH_REBALANCE: "rebalance",
    TAINT_NTH_SCHEDULED_MAINTENANCE: "scheduled-change",
    TAINT_NTH_ASG_TERMINATION: "stopping",
    TAINT_OUT_OF_SERVICE: "terminated",
}

_INSTANCE_ID = re.compile(r"i-[0-9a-z]{1,64}")
_INSTANCE_ARN = re.compile(r"arn:[a-z0-9-]+:ec2:[a-z0-9-]*:[0-9]*:instance/(i-[0-9a-z]{1,64})")
# Cloud providers' AWS form, aws:///<zone>/<instance-id> (REFERENCE.md line 14).
_PROVIDER_ID = re.compile(r"aws:///([a-z]{2}(?:-[a-z0-9]+)+)/(i-[0-9a-z]{1,64})")


@dataclass(frozen=True)
class CapacitySignal:
    """Something is happening (or will) to the capacity under one instance or node."""

    kind: SignalKind
    source: Literal["sqs", "node"]
    # Aware, UTC: the event's "time", the taint's timeAdded, the condition's lastTransitionTime, else `now`.
    event_time: datetime
    # When the capacity goes (see the module docstring); None: no known deadline.
    deadline: datetime | None
    instance_id: str | None = None
    node: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class Rejected:
    """A message that gives no signal, and why (for the log)."""

    outcome: MessageOutcome
    reason: str


class _MalformedError(Exception):
    """Raised inside the parser only; turned into Rejected("malformed", …)."""


def _utc(when: datetime) -> datetime:
    # Naive times are taken as UTC: every time AWS and the API server write is UTC.
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 or RFC 1123/2822 time as an aware UTC datetime; None if it is not one."""
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        return None
    text = value.strip()
    try:
        return _utc(datetime.fromisoformat(text))
    except (ValueError, OverflowError):
        pass
    try:
        # parsedate_to_datetime skips the weekday without checking it against the date.
        return _utc(parsedate_to_datetime(text))
    except (ValueError, TypeError, OverflowError, IndexError):
        return None


def provider_instance(provider_id: str) -> tuple[str, str] | None:
    """("us-east-1a", "i-0abc") for "aws:///us-east-1a/i-0abc"; None for any other provider id."""
    if not isinstance(provider_id, str):
        return None
    match = _PROVIDER_ID.fullmatch(provider_id)
    return (match.group(1), match.group(2)) if match else None


def _field(event: Mapping[str, Any], key: str, kind: type, *, required: bool) -> Any:
    value = event.get(key)
    if value is None:
        if required:
            raise _MalformedError(f"missing {key!r}")
        return None
    if not isinstance(value, kind):
        raise _MalformedError(f"{key!r} is {type(value).__name__}, not {kind.__name__}")
    return value


def _instance_id(detail: Mapping[str, Any]) -> str:
    value = detail.get("instance-id")
    if not isinstance(value, str):
        raise _MalformedError(
            f"detail.instance-id is {type(value).__name__ if value is not None else 'missing'}"
        )
    if not _INSTANCE_ID.fullmatch(value):
        raise _MalformedError(f"detail.instance-id {value[:40]!r} is not an EC2 instance id")
    return value


def _plus(when: datetime, delta: timedelta) -> datetime:
    try:
        return when + delta
    except OverflowError as error:
        raise _MalformedError(f"time {when.isoformat()} is out of range") from error


def _health_instances(detail: Mapping[str, Any]) -> list[str]:
    entities = detail.get("affectedEntities")
    if entities is None:
        return []
    if not isinstance(entities, list):
        raise _MalformedError("detail.affectedEntities is not a list")
    ids: list[str] = []
    for entity in entities:
        if not isinstance(entity, Mapping):
            raise _MalformedError("detail.affectedEntities has an entry that is not an object")
        value = entity.get("entityValue")
        if not isinstance(value, str):
            raise _MalformedError("detail.affectedEntities[].entityValue is not a string")
        if _INSTANCE_ID.fullmatch(value):
            instance = value
        elif match := _INSTANCE_ARN.fullmatch(value):
            instance = match.group(1)
        else:
            continue  # another kind of entity (a volume, a host): not capacity we place on
        if instance not in ids:
            ids.append(instance)
    return ids


def _not_an_event(document: Mapping[str, Any]) -> str:
    if document.get("Type") == "Notification" and "Message" in document:
        return (
            "an SNS envelope, not an EventBridge event: target the queue from the EventBridge rule, "
            "or enable raw message delivery on the SNS subscription"
        )
    if document.get("Event") == "s3:TestEvent":
        return "an S3 test event (s3:TestEvent), not an EventBridge event"
    return "not an EventBridge event (no source or detail-type)"


def _parse(
    body: object, now: datetime, region: str | None, account: str | None, notice: timedelta = SPOT_NOTICE
) -> list[CapacitySignal] | Rejected:
    if not isinstance(body, str):
        raise _MalformedError(f"body is {type(body).__name__}, not str")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise _MalformedError(f"not JSON: {str(error)[:80]}") from None
    if not isinstance(document, dict):
        raise _MalformedError(f"JSON {type(document).__name__}, not an object")
    if "source" not in document and "detail-type" not in document:
        return Rejected("foreign", _not_an_event(document))

    source: str = _field(document, "source", str, required=True)
    detail_type: str = _field(document, "detail-type", str, required=True)
    event_region: str | None = _field(document, "region", str, required=False)
    event_account: str | None = _field(document, "account", str, required=False)
    raw_time = document.get("time")
    event_time = now if raw_time is None else parse_time(raw_time)
    if event_time is None:
        raise _MalformedError(f"'time' {str(raw_time)[:40]!r} is not a timestamp")
    if (source, detail_type) not in HANDLED:
        return Rejected(
            "unknown", f"{source[:60]} {detail_type[:80]!r} is not a capacity event gpufleet handles"
        )
    detail: dict[str, Any] = _field(document, "detail", dict, required=True)

    if source == SOURCE_HEALTH:
        # The impacted region/account, not where the event was delivered (AWS Health schema).
        if isinstance(detail.get("eventRegion"), str):
            event_region = detail["eventRegion"]
        if isinstance(detail.get("affectedAccount"), str):
            event_account = detail["affectedAccount"]
    if region is not None and event_region is not None and event_region != region:
        return Rejected("foreign", f"event for region {event_region[:40]!r}, this queue serves {region!r}")
    if account is not None and event_account is not None and event_account != account:
        return Rejected("foreign", f"event for account {event_account[:40]!r}, this queue serves {account!r}")

    if detail_type == SPOT_WARNING:
        instance = _instance_id(detail)
        action = detail.get("instance-action")
        if action is not None and not isinstance(action, str):
            raise _MalformedError("detail.instance-action is not a string")
        deadline = event_time if action == "hibernate" else _plus(event_time, notice)
        return [
            CapacitySignal(
                "interruption",
                "sqs",
                event_time,
                deadline,
                instance_id=instance,
                detail=f"{SPOT_WARNING} for {instance} ({(action or 'action not given')[:20]})",
            )
        ]
    if detail_type == REBALANCE:
        instance = _instance_id(detail)
        return [
            CapacitySignal(
                "rebalance", "sqs", event_time, None, instance, detail=f"{REBALANCE} for {instance}"
            )
        ]
    if detail_type == STATE_CHANGE:
        instance = _instance_id(detail)
        state = detail.get("state")
        if not isinstance(state, str):
            raise _MalformedError("detail.state is not a string")
        if state.lower() not in STATE_KINDS:
            raise _MalformedError(f"detail.state {state[:30]!r} is not an EC2 instance state")
        kind = STATE_KINDS[state.lower()]
        if kind is None:
            return Rejected("ignored", f"instance {instance} is {state.lower()}")
        return [
            CapacitySignal(
                kind,
                "sqs",
                event_time,
                event_time,
                instance,
                detail=f"EC2 instance {instance} is {state.lower()}",
            )
        ]

    # AWS Health Event
    service = detail.get("service")
    category = detail.get("eventTypeCategory")
    if service != HEALTH_SERVICE or category != HEALTH_CATEGORY:
        about = f"{str(service)[:30]} {str(category)[:30]}"
        return Rejected("ignored", f"AWS Health event for {about}, not {HEALTH_SERVICE} {HEALTH_CATEGORY}")
    raw_start = detail.get("startTime")
    start = None if raw_start is None else parse_time(raw_start)
    if raw_start is not None and start is None:
        raise _MalformedError(f"detail.startTime {str(raw_start)[:40]!r} is not a timestamp")
    instances = _health_instances(detail)
    if not instances:
        return Rejected("ignored", "AWS Health scheduledChange names no EC2 instance")
    code = detail.get("eventTypeCode")
    what = f"AWS Health {code[:60] if isinstance(code, str) else 'scheduled change'}"
    when = f" (starts {kube_time(start)})" if start else ""
    return [
        CapacitySignal(
            "scheduled-change", "sqs", event_time, start, instance, detail=f"{what} for {instance}{when}"
        )
        for instance in instances
    ]


def parse_message(
    body: str,
    *,
    now: datetime,
    region: str | None = None,
    account: str | None = None,
    notice: timedelta = SPOT_NOTICE,
) -> list[CapacitySignal] | Rejected:
    """Signals in one SQS message body, or why there are none. Never raises on any body.

    `region`/`account`: the queue's; an event for another one is "foreign" (None: not checked).
    `notice`: warning to reclaim (AWS: 2 minutes; GPUFLEET_SPOT_NOTICE_SECONDS).
    """
    try:
        return _parse(body, _utc(now), region, account, notice)
    except _MalformedError as error:
        return Rejected("malformed", str(error))
    except (RecursionError, ValueError, TypeError, OverflowError) as error:
        # The contract is "never raises"; the checks above should leave nothing to reach here.
        return Rejected("malformed", f"unreadable message ({type(error).__name__})")


def _node_time(value: object, now: datetime) -> datetime:
    return parse_time(value) or now


def node_signals(
    node: Mapping[str, Any], *, now: datetime, notice: timedelta = SPOT_NOTICE
) -> list[CapacitySignal]:
    """Signals a Node object carries: the taints in the module docstring and a Ready condition not True.

    Tolerant: a field of the wrong type is read as absent, so a half-written object gives what it can.
    """
    now = _utc(now)
    if not isinstance(node, Mapping):
        return []
    metadata = node.get("metadata")
    spec = node.get("spec")
    status = node.get("status")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    spec = spec if isinstance(spec, Mapping) else {}
    status = status if isinstance(status, Mapping) else {}
    name = metadata.get("name") if isinstance(metadata.get("name"), str) else None
    provider_id = spec.get("providerID")
    located = provider_instance(provider_id) if isinstance(provider_id, str) else None
    instance = located[1] if located else None
    label = name or instance or "unnamed node"

    signals: list[CapacitySignal] = []
    taints = spec.get("taints")
    for taint in taints if isinstance(taints, list) else []:
        if not isinstance(taint, Mapping) or not isinstance(taint.get("key"), str):
            continue
        key: str = taint["key"]
        kind = TAINT_KINDS.get(key)
        if (
            key == TAINT_KARPENTER_DISRUPTION_V1BETA1
            and taint.get("value") == TAINT_KARPENTER_DISRUPTING_VALUE
        ):
            kind = "disruption"
        if kind is None:
            continue
        added = _node_time(taint.get("timeAdded"), now)
        deadline: datetime | None
        if kind == "interruption":
            try:
                deadline = added + notice
            except OverflowError:  # a timeAdded in year 9999
                deadline = added
        elif kind in ("stopping", "terminated"):
            deadline = added
        else:
            deadline = None
        signals.append(
            CapacitySignal(
                kind, "node", added, deadline, instance, name, detail=f"node {label} has taint {key}"
            )
        )

    conditions = status.get("conditions")
    for condition in conditions if isinstance(conditions, list) else []:
        if not isinstance(condition, Mapping) or condition.get("type") != "Ready":
            continue
        ready = condition.get("status")
        if ready in ("False", "Unknown"):
            since = _node_time(condition.get("lastTransitionTime"), now)
            reason = condition.get("reason")
            why = f" ({reason[:60]})" if isinstance(reason, str) and reason else ""
            signals.append(
                CapacitySignal(
                    "not-ready",
                    "node",
                    since,
                    None,
                    instance,
                    name,
                    detail=f"node {label} Ready={ready}{why}",
                )
            )
        break  # one Ready condition; a duplicate would be the API server's bug
    return signals
