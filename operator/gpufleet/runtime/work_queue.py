"""A work queue of ModelDeployment keys, as controller-runtime has.

Watch events of a ModelDeployment and of everything it owns only enqueue its
key; workers reconcile each key with the latest body. A key is never worked
on by two workers at once, a key enqueued while in progress runs once more
afterwards, failures are retried with exponential back-off, and every key is
re-checked every `resync` seconds so nothing depends on an event arriving.

Retries are jittered and share one token bucket, as controller-runtime's
default rate limiter does: when the API server goes away, hundreds of failed
keys do not come back in step, nor faster than the bucket lets them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from gpufleet.adapters.kube import KubeError
from gpufleet.planning.observe import Key

log = logging.getLogger("gpufleet.queue")

# Per key: 0.5 s doubling up to a minute. For all keys together: 10 retries a second, bursts of 100
# (controller-runtime's bucket).
RETRY_BASE_SECONDS = 0.5
RETRY_MAX_SECONDS = 60.0
RETRY_RATE_PER_SECOND = 10.0
RETRY_BURST = 100


def jittered_backoff(failures: int, base: float, cap: float, jitter: float) -> float:
    """`base` doubled per failure after the first, capped, then between half and all of it (`jitter` in
    [0, 1)), so that what failed together does not all try again at the same instant."""
    # The exponent is bounded: 2.0 ** 1024 overflows, and hours of failures reach that many.
    return min(cap, base * 2.0 ** min(failures - 1, 60)) * (0.5 + 0.5 * jitter)


class RetryLimiter:
    """When a failed key may run again: its exponential back-off, jittered, or later if the shared
    bucket is empty."""

    def __init__(
        self,
        base: float = RETRY_BASE_SECONDS,
        max_backoff: float = RETRY_MAX_SECONDS,
        rate: float = RETRY_RATE_PER_SECOND,
        burst: int = RETRY_BURST,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.base, self.max_backoff, self.rate, self.burst = base, max_backoff, rate, burst
        self.jitter = jitter  # uniform in [0, 1)
        self._tokens = float(burst)
        self._stamp: float | None = None

    def delay(self, failures: int, now: float) -> float:
        jittered = jittered_backoff(failures, self.base, self.max_backoff, self.jitter())
        return max(jittered, self._reserve(now))

    def _reserve(self, now: float) -> float:
        """Take a token; how long until it is really there (0: at once)."""
        if self._stamp is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


URGENT = 0
NORMAL = 1


def _running_on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False  # a thread without a loop


class WorkQueue:
    def __init__(
        self,
        work: Callable[[Key, Mapping[str, Any]], object],
        workers: int,
        resync: float,
        retries: RetryLimiter | None = None,
    ) -> None:
        self._work = work
        self._workers = workers
        self._resync = resync
        self._retries = retries or RetryLimiter()
        self.bodies: dict[Key, Mapping[str, Any]] = {}
        self.received_at: dict[Key, float] = {}  # time.monotonic() of each key's last body
        # (priority, arrival, key): URGENT before NORMAL, then first come first served. A key raised to
        # URGENT while queued as NORMAL is queued again; the stale entry is skipped when it comes up.
        self._queue: asyncio.PriorityQueue[tuple[int, int, Key]] = asyncio.PriorityQueue()
        self._arrivals = 0
        self._queued: dict[Key, int] = {}  # key → the priority it is queued at
        self._running: set[Key] = set()
        self._dirty: dict[Key, int] = {}  # running keys asked for again, at that priority
        self._failures: dict[Key, int] = {}
        # One timer per key (a retry or a requeue_after), the soonest asked for: each reconcile of a key
        # waiting on a drain deadline asks again, and a timer per ask would pile up until the deadline.
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reconciles = 0
        self.errors = 0

    def set_body(self, key: Key, body: Mapping[str, Any] | None) -> None:
        """Remember the latest body (None: deleted) and enqueue the key."""
        if body is None:
            # Everything kept per key goes with it (a failure noted by a reconcile that was running
            # meanwhile is not kept either: see _worker), so deleted keys leave nothing behind.
            self.bodies.pop(key, None)
            self.received_at.pop(key, None)
            self._failures.pop(key, None)
            timer = self._timers.pop(key, None)
            if timer is not None:
                timer.cancel()
            return
        self.bodies[key] = body
        self.received_at[key] = time.monotonic()
        self.enqueue(key)

    def enqueue(self, key: Key, priority: int = NORMAL) -> None:
        """Look at `key` soon; from any thread. Watch events arrive on informer and kopf executor threads,
        and an asyncio queue touched from those would neither be safe nor wake the waiting workers.

        URGENT (a capacity signal: a spot warning, a node going) goes before every NORMAL key: with
        hundreds of models, a resync queues them all, and a warning behind them would wait past its
        deadline."""
        loop = self._loop
        if loop is not None and not _running_on(loop):
            loop.call_soon_threadsafe(self._enqueue_now, key, priority)
        else:
            self._enqueue_now(key, priority)

    def _enqueue_now(self, key: Key, priority: int = NORMAL) -> None:
        if key not in self.bodies:
            return
        if key in self._running:
            self._dirty[key] = min(priority, self._dirty.get(key, priority))
        elif priority < self._queued.get(key, priority + 1):
            self._queued[key] = priority
            self._arrivals += 1
            self._queue.put_nowait((priority, self._arrivals, key))

    def enqueue_after(self, key: Key, delay: float) -> None:
        """Look at `key` again in `delay` seconds (a drain deadline); from the event loop's thread or not."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._enqueue_later, key, delay)

    def _enqueue_later(self, key: Key, delay: float) -> None:
        """On the loop: wake `key` in `delay` seconds unless a timer of its wakes it sooner. Dropping the
        later wake-up is safe: the sooner one reconciles the key, which asks again for what it still needs
        (a failure schedules its retry), and a deleted key needs nothing."""
        if key not in self.bodies:
            return
        loop = asyncio.get_running_loop()
        pending = self._timers.get(key)
        if pending is not None and not pending.cancelled():
            if pending.when() <= loop.time() + delay:
                return
            pending.cancel()
        self._timers[key] = loop.call_later(delay, self._timer_fired, key)

    def _timer_fired(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.enqueue(key)

    @property
    def timers(self) -> int:
        """Wake-ups pending (at most one per key)."""
        return len(self._timers)

    @property
    def depth(self) -> int:
        return len(self._queued)

    @property
    def idle(self) -> bool:
        return not (self._queued or self._running or self._dirty)

    def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._worker(i)) for i in range(self._workers)]
        self._tasks.append(loop.create_task(self._resync_loop()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self._resync)
            for key in list(self.bodies):
                self.enqueue(key)

    async def _worker(self, number: int) -> None:
        while True:
            priority, _, key = await self._queue.get()
            if self._queued.get(key) != priority:
                continue  # queued again at a higher priority, and taken from there (or already run)
            del self._queued[key]
            body = self.bodies.get(key)
            if body is None:
                continue
            self._running.add(key)
            try:
                await asyncio.to_thread(self._work, key, body)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if isinstance(error, KubeError) and error.namespace_terminating:
                    # Its namespace is going, and the ModelDeployment with it: no retry, no error; the
                    # resync looks again should the deletion stall.
                    log.info("reconcile of %s/%s stopped: its namespace is being deleted", *key)
                    self._failures.pop(key, None)
                    continue
                self.errors += 1
                if key not in self.bodies:
                    # Deleted while this reconcile ran: no retry, and no failure count left behind.
                    log.exception("reconcile of %s/%s failed; it was deleted meanwhile", *key)
                    continue
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                delay = self._retries.delay(failures, time.monotonic())
                if isinstance(error, KubeError) and error.retry_after is not None:
                    delay = max(delay, error.retry_after)  # the API server said how long to stay away
                log.exception(
                    "reconcile of %s/%s failed (attempt %d); retrying in %.1fs", *key, failures, delay
                )
                self._enqueue_later(key, delay)
            finally:
                self.reconciles += 1
                self._running.discard(key)
                if key in self._dirty:
                    self.enqueue(key, self._dirty.pop(key))
