"""The interruption queue: SQS long polling with boto3 (bodies parsed by planning.capacity_signals).

Parameters are Karpenter's interruption controller's (REFERENCE.md line 14):
10 messages, 20 s wait, 20 s visibility. A message is deleted by the caller
once handled (or rejected for good), so one the operator crashes on comes back
after the visibility timeout.

Credentials come only from boto3's default chain (environment, web identity /
IRSA, instance profile); this module takes no keys. Errors are botocore's and
propagate: the handler loop counts them and backs off.

Region (resolve_region, also used for the spot price history): an explicit one,
else the queue URL's (https://sqs.<region>.amazonaws.com/<account>/<name>, also
the legacy <region>.queue.amazonaws.com form and the .cn partition), else
AWS_REGION / AWS_DEFAULT_REGION. The account is the URL's first
path segment when it is 12 digits, which also holds for local endpoints (moto).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

# SQS limits (ReceiveMessage API reference): WaitTimeSeconds 0-20, MaxNumberOfMessages 1-10,
# VisibilityTimeout 0-43200.
MAX_WAIT_SECONDS: Final = 20
MAX_MESSAGES: Final = 10
MAX_VISIBILITY_SECONDS: Final = 43200

# The read timeout must outlast the longest long poll, or every empty poll would end in a timeout.
CLIENT_CONFIG: Final = Config(
    connect_timeout=5,
    read_timeout=MAX_WAIT_SECONDS + 10,
    retries={"total_max_attempts": 3, "mode": "standard"},
)

_HOST = re.compile(
    r"(?:sqs(?:-fips)?\.(?P<region>[a-z]{2}(?:-[a-z0-9]+)+)|(?P<legacy>[a-z]{2}(?:-[a-z0-9]+)+)\.queue)"
    r"\.amazonaws\.com(?:\.cn)?"
)
_ACCOUNT = re.compile(r"\d{12}")


@dataclass(frozen=True)
class QueueMessage:
    message_id: str
    receipt_handle: str
    body: str


def parse_queue_url(queue_url: str) -> tuple[str | None, str | None]:
    """(region, account) from an SQS queue URL; either is None where the URL does not say."""
    parts = urlsplit(queue_url)
    match = _HOST.fullmatch((parts.hostname or "").lower())
    region = (match.group("region") or match.group("legacy")) if match else None
    segments = [s for s in parts.path.split("/") if s]
    account = segments[0] if len(segments) == 2 and _ACCOUNT.fullmatch(segments[0]) else None
    return region, account


def resolve_region(explicit: str | None, queue_url: str | None) -> str | None:
    """The AWS region gpufleet talks to; None when nothing names one."""
    from_url = parse_queue_url(queue_url)[0] if queue_url else None
    return (
        explicit or from_url or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    )


class InterruptionQueue:
    """Receive and delete messages of one SQS queue."""

    def __init__(
        self,
        queue_url: str,
        region: str | None = None,
        endpoint_url: str | None = None,
        client: Any = None,
    ) -> None:
        if not queue_url:
            raise ValueError("the interruption queue URL is empty (GPUFLEET_INTERRUPTION_QUEUE_URL)")
        url_region, self.account = parse_queue_url(queue_url)
        if region and url_region and region != url_region:
            # The client talks to its region's endpoint: the queue would not be found there.
            raise ValueError(
                f"GPUFLEET_AWS_REGION is {region!r} but the queue URL {queue_url!r} is in {url_region!r}"
            )
        resolved = resolve_region(region, queue_url)
        if not resolved:
            raise ValueError(
                f"no AWS region for the interruption queue {queue_url!r}: the URL does not name one "
                "and neither GPUFLEET_AWS_REGION nor AWS_REGION / AWS_DEFAULT_REGION is set; "
                "set GPUFLEET_AWS_REGION"
            )
        self.queue_url = queue_url
        self.region: str = resolved
        self.endpoint_url = endpoint_url
        self._client = client or boto3.session.Session(region_name=resolved).client(
            "sqs", endpoint_url=endpoint_url, config=CLIENT_CONFIG
        )

    def receive(
        self, wait_seconds: int = 20, max_messages: int = 10, visibility_timeout: int = 20
    ) -> list[QueueMessage]:
        """One long poll: up to `max_messages`, waiting up to `wait_seconds` for the first."""
        if not 0 <= wait_seconds <= MAX_WAIT_SECONDS:
            raise ValueError(f"wait_seconds must be 0-{MAX_WAIT_SECONDS}, not {wait_seconds}")
        if not 1 <= max_messages <= MAX_MESSAGES:
            raise ValueError(f"max_messages must be 1-{MAX_MESSAGES}, not {max_messages}")
        if not 0 <= visibility_timeout <= MAX_VISIBILITY_SECONDS:
            raise ValueError(
                f"visibility_timeout must be 0-{MAX_VISIBILITY_SECONDS}, not {visibility_timeout}"
            )
        response = self._client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=visibility_timeout,
        )
        return [
            QueueMessage(
                message_id=str(message.get("MessageId", "")),
                receipt_handle=str(message["ReceiptHandle"]),
                body=str(message.get("Body", "")),
            )
            for message in response.get("Messages", [])
            if message.get("ReceiptHandle")  # without one it cannot be deleted; SQS always sends it
        ]

    def delete_batch(self, receipt_handles: list[str]) -> list[str]:
        """Delete up to 10 messages in one call (DeleteMessageBatch); the handles SQS did not delete."""
        if not 1 <= len(receipt_handles) <= MAX_MESSAGES:
            raise ValueError(f"a batch holds 1-{MAX_MESSAGES} messages, not {len(receipt_handles)}")
        response = self._client.delete_message_batch(
            QueueUrl=self.queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(receipt_handles)],
        )
        return [receipt_handles[int(f["Id"])] for f in response.get("Failed", [])]
