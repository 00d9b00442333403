"""The interruption queue consumer: SQS messages → capacity signals on nodes → reconciles of their models.

Several long polls at once (each with Karpenter's parameters, REFERENCE.md), so
a backlog of thousands of messages is read in seconds, and deleted ten at a
time (DeleteMessageBatch). A message is deleted only once what it says is
durable or proven irrelevant:
- a signal for a node of this cluster is recorded on the Node (annotation, and
  a NoSchedule taint when the node is going: runtime.node_records) and in the
  CapacityStore; the reconciler persists it in each affected model's status;
- a malformed, unknown or foreign message is logged and counted;
- a message for an instance that is not a node of this cluster ("no-node":
  another cluster, or a node already gone) is counted. The store is primed
  from the API server before the first receive, so "no node" is known, not
  merely not yet seen.
A message whose record fails (the API server down or refusing) is not deleted:
SQS shows it again after the visibility timeout. A receive or delete that fails
marks the queue down (gpufleet_interruption_queue_up 0) and backs off; node
taints keep driving failover meanwhile.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from gpufleet.adapters.sqs import QueueMessage
from gpufleet.planning.capacity_signals import Rejected, parse_message
from gpufleet.planning.failover import Doom
from gpufleet.planning.observe import Key
from gpufleet.runtime import operator_metrics as metrics
from gpufleet.runtime.capacity_store import CapacityStore
from gpufleet.runtime.work_queue import jittered_backoff

log = logging.getLogger("gpufleet.interruptions")

# A warning gives two minutes: once the queue answers again it must be read within seconds, not a minute.
MAX_BACKOFF_SECONDS = 10.0
FIRST_BACKOFF_SECONDS = 1.0  # doubled per failure in a row, up to max_backoff_seconds


class Queue(Protocol):
    region: str
    account: str | None

    def receive(
        self, wait_seconds: int = 20, max_messages: int = 10, visibility_timeout: int = 20
    ) -> list[QueueMessage]: ...

    def delete_batch(self, receipt_handles: list[str]) -> list[str]: ...


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
        record: Callable[[Doom], None] | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.jitter = jitter
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
        self._preparing = threading.Lock()
        # Writes a signal where it survives this process (the Node); raises when it cannot.
        self.record = record
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
            doom = self.store.record_cloud(signal)
            if doom is None:
                log.info("interruption queue: %s: no node of this cluster has that instance", signal.detail)
                metrics.INTERRUPTION_EVENTS.labels(source="sqs", type=signal.kind, outcome="no-node").inc()
                continue
            models = self.store.models_on(doom.node)
            log.warning(
                "interruption queue: %s: node %s (%s, %s) hosts %d model(s)",
                signal.detail,
                doom.node,
                doom.zone,
                doom.capacity_type,
                len(models),
            )
            metrics.INTERRUPTION_EVENTS.labels(source="sqs", type=signal.kind, outcome="handled").inc()
            outcome = "handled"
            for key in models:
                self.enqueue(key)  # acted on from memory now, whether or not the record below succeeds
            if self.record is not None:
                self.record(doom)
        return outcome

    def poll_once(self) -> int:
        """One long poll; the number of messages handled. Raises when the queue cannot be read."""
        messages = self.queue.receive(
            wait_seconds=self.wait_seconds, visibility_timeout=self.visibility_seconds
        )
        metrics.INTERRUPTION_QUEUE_UP.set(1)
        metrics.INTERRUPTION_QUEUE_LAST_RECEIVE.set(time.time())
        done = []
        for message in messages:
            try:
                self.handle(message)
            except Exception:
                # Not recorded anywhere durable: left in the queue, it comes back after the visibility
                # timeout. (What cannot be parsed is rejected by handle, never raised: no poison loop.)
                metrics.INTERRUPTION_EVENTS.labels(source="sqs", type="unrecorded", outcome="retried").inc()
                log.exception(
                    "interruption queue: message %s not recorded; it stays queued", message.message_id
                )
                continue
            done.append(message.receipt_handle)
        for start in range(0, len(done), 10):
            failed = self.queue.delete_batch(done[start : start + 10])
            if failed:
                # Recorded already: shown again, it is recorded again (a no-op) and deleted then.
                log.warning("interruption queue: %d message(s) not deleted; they come back", len(failed))
        return len(messages)

    def _prepare_once(self) -> None:
        with self._preparing:  # several pollers start together; one primes the store for all
            if not self.prepared and self.prepare is not None:
                self.prepare()
                self.prepared = True

    def run(self) -> None:
        """Poll until stopped; failures back off exponentially (jittered) up to `max_backoff`."""
        failures = 0
        while not self.stopped.is_set():
            if self.leading is not None and not self.leading.wait(1.0):
                continue
            try:
                self._prepare_once()
                self.poll_once()
                failures = 0
            except Exception:
                failures += 1
                # Jittered: pollers that failed together do not all call again at the same instant.
                delay = jittered_backoff(failures, FIRST_BACKOFF_SECONDS, self.max_backoff, self.jitter())
                metrics.INTERRUPTION_QUEUE_UP.set(0)
                metrics.INTERRUPTION_QUEUE_ERRORS.inc()
                log.exception(
                    "interruption queue unreachable (attempt %d); retrying in %.0fs", failures, delay
                )
                self.stopped.wait(delay)
