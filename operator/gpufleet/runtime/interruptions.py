"""The interruption queue consumer: SQS messages → capacity signals on nodes → reconciles of their models.

One long poll at a time (Karpenter's parameters, REFERENCE.md). Every message
is deleted once read: a signal is recorded in the CapacityStore (the
reconciler persists it in each affected model's status), and a malformed,
unknown, foreign or irrelevant message is logged and counted. A message for an
instance that is not a node of this cluster is counted as "no-node" and
deleted too: another cluster or a node already gone. A receive or delete that
fails marks the queue down (gpufleet_interruption_queue_up 0) and backs off;
node taints keep driving failover meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from gpufleet.adapters.sqs import QueueMessage
from gpufleet.planning.capacity_signals import Rejected, parse_message
from gpufleet.planning.observe import Key
from gpufleet.runtime import operator_metrics as metrics
from gpufleet.runtime.capacity_store import CapacityStore

log = logging.getLogger("gpufleet.interruptions")

MAX_BACKOFF_SECONDS = 60.0


class Queue(Protocol):
    region: str
    account: str | None

    def receive(
        self, wait_seconds: int = 20, max_messages: int = 10, visibility_timeout: int = 20
    ) -> list[QueueMessage]: ...

    def delete(self, receipt_handle: str) -> None: ...


class InterruptionConsumer:
    def __init__(
        self,
        queue: Queue,
        store: CapacityStore,
        enqueue: Callable[[Key], None],
        clock: Callable[[], datetime],
        max_backoff_seconds: float = MAX_BACKOFF_SECONDS,
        leading: threading.Event | None = None,
        wait_seconds: int = 20,
        visibility_seconds: int = 20,
        prepare: Callable[[], None] | None = None,
    ) -> None:
        self.wait_seconds = wait_seconds
        self.visibility_seconds = visibility_seconds
        self.notice = store.notice
        self.max_backoff = max_backoff_seconds
        # Only the leader reads: a standby would delete messages the leader never sees.
        self.leading = leading
        self.queue = queue
        self.store = store
        self.enqueue = enqueue
        self.clock = clock
        # Run once, successfully, before the first receive: fills the store with the nodes and pods the
        # watches may not have delivered yet, so a warning read at startup finds its node.
        self.prepare = prepare
        self.prepared = prepare is None
        self.stopped = threading.Event()

    def handle(self, message: QueueMessage) -> str:
        """Record one message's signals; the outcome label it was counted under."""
        parsed = parse_message(
            message.body,
            now=self.clock(),
            region=self.queue.region,
            account=self.queue.account,
            notice=self.notice,
        )
        if isinstance(parsed, Rejected):
            log.warning(
                "interruption queue: %s message %s: %s", parsed.outcome, message.message_id, parsed.reason
            )
            metrics.INTERRUPTION_EVENTS.labels(source="sqs", type="unparsed", outcome=parsed.outcome).inc()
            return parsed.outcome
        outcome = "no-node"
        for signal in parsed:
            node = self.store.record_cloud(signal)
            if node is None:
                log.info("interruption queue: %s: no node of this cluster has that instance", signal.detail)
                metrics.INTERRUPTION_EVENTS.labels(source="sqs", type=signal.kind, outcome="no-node").inc()
                continue
            models = self.store.models_on(node.name)
            log.warning(
                "interruption queue: %s: node %s (%s, %s) hosts %d model(s)",
                signal.detail,
                node.name,
                node.zone,
                node.capacity_type,
                len(models),
            )
            metrics.INTERRUPTION_EVENTS.labels(source="sqs", type=signal.kind, outcome="handled").inc()
            outcome = "handled"
            for key in models:
                self.enqueue(key)
        return outcome

    def poll_once(self) -> int:
        """One long poll; the number of messages handled. Raises when the queue cannot be read."""
        messages = self.queue.receive(
            wait_seconds=self.wait_seconds, visibility_timeout=self.visibility_seconds
        )
        metrics.INTERRUPTION_QUEUE_UP.set(1)
        metrics.INTERRUPTION_QUEUE_LAST_RECEIVE.set(time.time())
        for message in messages:
            try:
                self.handle(message)
            finally:
                # Handled or not, a message is never retried: a bad one would come back forever.
                self.queue.delete(message.receipt_handle)
        return len(messages)

    def run(self) -> None:
        """Poll until stopped; failures back off exponentially up to a minute."""
        failures = 0
        while not self.stopped.is_set():
            if self.leading is not None and not self.leading.wait(1.0):
                continue
            try:
                if not self.prepared and self.prepare is not None:
                    self.prepare()
                    self.prepared = True
                self.poll_once()
                failures = 0
            except Exception:
                failures += 1
                delay = min(self.max_backoff, 2.0 ** (failures - 1))
                metrics.INTERRUPTION_QUEUE_UP.set(0)
                metrics.INTERRUPTION_QUEUE_ERRORS.inc()
                log.exception(
                    "interruption queue unreachable (attempt %d); retrying in %.0fs", failures, delay
                )
                self.stopped.wait(delay)
