"""The work queue (runtime.work_queue): one worker per key, a rerun for what came in meanwhile, retries
that back off with jitter under one bucket for all keys."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from gpufleet.adapters.kube import KubeError
from gpufleet.planning.observe import Key
from gpufleet.runtime.work_queue import URGENT, RetryLimiter, WorkQueue

BODY = {"metadata": {"name": "m"}}


def test_back_off_doubles_up_to_the_cap_and_is_jittered_between_half_and_all() -> None:
    least = RetryLimiter(base=0.5, max_backoff=60, jitter=lambda: 0.0)
    most = RetryLimiter(base=0.5, max_backoff=60, jitter=lambda: 0.999999)
    assert [least.delay(n, now=100.0 * n) for n in (1, 2, 3, 9)] == [0.25, 0.5, 1.0, 30.0]
    assert [round(most.delay(n, now=100.0 * n), 3) for n in (1, 2, 3, 9)] == [0.5, 1.0, 2.0, 60.0]
    # A key failing for hours: thousands of failures still wait the cap (2.0 ** 1024 would overflow).
    assert round(most.delay(5000, now=1e6), 3) == 60.0


def test_keys_that_fail_together_spread_out_and_the_bucket_limits_them_all() -> None:
    jitters = iter([0.1, 0.9, 0.5])
    spread = RetryLimiter(jitter=lambda: next(jitters))
    assert len({spread.delay(1, now=0.0) for _ in range(3)}) == 3
    bucket = RetryLimiter(base=0.001, rate=10, burst=3, jitter=lambda: 0.0)
    delays = [bucket.delay(1, now=0.0) for _ in range(5)]  # an outage: five keys fail at once
    assert delays == [0.0005, 0.0005, 0.0005, pytest.approx(0.1), pytest.approx(0.2)]
    assert bucket.delay(1, now=10.0) == 0.0005  # refilled meanwhile


def run_queue(work: Any, steps: Any, retries: RetryLimiter | None = None) -> None:
    async def scenario() -> None:
        queue = WorkQueue(work, workers=4, resync=600, retries=retries)
        queue.start()
        try:
            await steps(queue)
        finally:
            await queue.stop()

    asyncio.run(scenario())


async def until(condition: threading.Event, timeout: float = 5.0) -> None:
    assert await asyncio.to_thread(condition.wait, timeout), "timed out"


def test_a_key_is_never_worked_on_twice_at_once_and_runs_again_for_what_came_meanwhile() -> None:
    running: dict[Key, int] = {}
    most_at_once = 0
    runs: list[Key] = []
    lock, first_started, release, second_done = (
        threading.Lock(),
        threading.Event(),
        threading.Event(),
        threading.Event(),
    )

    def work(key: Key, body: Mapping[str, Any]) -> None:
        nonlocal most_at_once
        with lock:
            running[key] = running.get(key, 0) + 1
            most_at_once = max(most_at_once, running[key])
            runs.append(key)
        first_started.set()
        if len(runs) == 1:
            release.wait(5)
        with lock:
            running[key] -= 1
        if len(runs) == 2:
            second_done.set()

    async def steps(queue: WorkQueue) -> None:
        queue.set_body(("ml", "m"), BODY)
        await until(first_started)
        for _ in range(5):  # events while it runs: one more run, not five, and not in parallel
            queue.enqueue(("ml", "m"))
        release.set()
        await until(second_done)
        await asyncio.sleep(0)

    run_queue(work, steps)
    assert most_at_once == 1
    assert runs == [("ml", "m"), ("ml", "m")]


def test_a_failure_is_retried_and_a_deleted_key_is_not() -> None:
    attempts: list[Key] = []
    retried = threading.Event()

    def work(key: Key, body: Mapping[str, Any]) -> None:
        attempts.append(key)
        if len(attempts) == 1:
            raise ConnectionError("the API server is restarting")
        retried.set()

    async def steps(queue: WorkQueue) -> None:
        queue.set_body(("ml", "m"), BODY)
        await until(retried)
        queue.set_body(("ml", "m"), None)
        queue.enqueue(("ml", "m"))
        assert queue.idle

    run_queue(work, steps, RetryLimiter(base=0.01, jitter=lambda: 0.0))
    assert attempts == [("ml", "m"), ("ml", "m")]


def test_a_429_is_retried_no_sooner_than_its_retry_after() -> None:
    attempts: list[float] = []
    retried = threading.Event()

    def work(key: Key, body: Mapping[str, Any]) -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise KubeError(429, "too many requests (API Priority and Fairness)", retry_after=0.3)
        retried.set()

    async def steps(queue: WorkQueue) -> None:
        queue.set_body(("ml", "m"), BODY)
        await until(retried)

    # The queue's own back-off would retry after 10 ms; the API server asked for 300.
    run_queue(work, steps, RetryLimiter(base=0.01, jitter=lambda: 0.0))
    assert attempts[1] - attempts[0] >= 0.3


def test_a_key_deleted_while_its_reconcile_fails_leaves_no_retry_behind() -> None:
    started, release, done = threading.Event(), threading.Event(), threading.Event()

    def work(key: Key, body: Mapping[str, Any]) -> None:
        started.set()
        release.wait(5)
        done.set()
        raise ConnectionError("the API server is restarting")

    async def steps(queue: WorkQueue) -> None:
        queue.set_body(("ml", "m"), BODY)
        await until(started)
        queue.set_body(("ml", "m"), None)  # deleted while its reconcile runs
        release.set()
        await until(done)
        while not queue.idle:
            await asyncio.sleep(0.001)
        assert (queue._failures, queue.timers, queue.errors) == ({}, 0, 1)

    run_queue(work, steps, RetryLimiter(base=0.01, jitter=lambda: 0.0))


def test_requeues_of_a_key_keep_one_timer_the_soonest_and_a_deleted_key_none() -> None:
    runs: list[Key] = []
    both_ran, woken = threading.Event(), threading.Event()

    def work(key: Key, body: Mapping[str, Any]) -> None:
        runs.append(key)
        if len(runs) == 2:
            both_ran.set()
        if len(runs) == 3:
            woken.set()

    async def settle() -> None:
        for _ in range(3):  # enqueue_after hands over through call_soon_threadsafe
            await asyncio.sleep(0)

    async def steps(queue: WorkQueue) -> None:
        for name in ("a", "b"):
            queue.set_body(("ml", name), BODY)
        await until(both_ran)
        # Each reconcile of a key waiting on a drain deadline asks again, for thousands of passes.
        for index in range(10_000):
            queue.enqueue_after(("ml", "a"), 600 - index * 0.01)
            queue.enqueue_after(("ml", "b"), 600 + index)
        await settle()
        assert queue.timers == 2
        queue.set_body(("ml", "b"), None)
        assert queue.timers == 1
        queue.enqueue_after(("ml", "a"), 0.01)  # sooner than the one waiting: replaces it
        await until(woken)
        await settle()
        assert (runs[2:], queue.timers) == ([("ml", "a")], 0)

    run_queue(work, steps)


def test_a_key_enqueued_from_another_thread_wakes_an_idle_worker() -> None:
    """Informers and kopf's executor call enqueue from their own threads; the loop may be asleep with
    nothing else to wake it (no resync for an hour here)."""
    done = threading.Event()

    async def scenario() -> bool:
        queue = WorkQueue(lambda key, body: done.set(), workers=1, resync=3600)
        queue.start()
        queue.bodies[("ml", "m")] = BODY
        await asyncio.sleep(0.05)  # the worker is waiting on an empty queue

        def later() -> None:
            time.sleep(0.2)  # the loop is asleep by now, waiting for the thread below
            queue.enqueue(("ml", "m"))

        threading.Thread(target=later).start()
        woke = await asyncio.to_thread(done.wait, 5.0)
        await queue.stop()
        return woke

    assert asyncio.run(scenario())


def test_an_urgent_key_goes_before_every_normal_key_already_queued() -> None:
    """A resync queues every model; a spot warning for one of them must not wait behind them all."""
    order: list[Key] = []
    gate = threading.Event()

    def work(key: Key, body: Mapping[str, Any]) -> None:
        if key == ("ml", "first"):
            gate.wait(5)  # holds the only worker while the others queue up
        order.append(key)

    async def scenario() -> None:
        queue = WorkQueue(work, workers=1, resync=3600)
        queue.start()
        keys = [("ml", "first")] + [("ml", f"m{i}") for i in range(5)]
        for key in keys:
            queue.bodies[key] = BODY
        queue.enqueue(keys[0])
        await asyncio.sleep(0.05)  # the worker has taken "first"
        for key in keys[1:]:
            queue.enqueue(key)
        queue.enqueue(("ml", "m3"), URGENT)  # already queued as normal: raised
        gate.set()
        for _ in range(500):
            if len(order) == len(keys):
                break
            await asyncio.sleep(0.01)
        await queue.stop()

    asyncio.run(scenario())
    assert order == [("ml", "first"), ("ml", "m3"), ("ml", "m0"), ("ml", "m1"), ("ml", "m2"), ("ml", "m4")]


def test_a_write_into_a_namespace_being_deleted_is_not_retried_nor_an_error() -> None:
    attempts: list[Key] = []
    other_done = threading.Event()
    terminating = (
        'PATCH /api/v1/namespaces/ml/services/m: 403 Forbidden: {"reason":"Forbidden","details":{"causes":'
        '[{"reason":"NamespaceTerminating","message":"namespace ml is being terminated"}]},"code":403}'
    )

    def work(key: Key, body: Mapping[str, Any]) -> None:
        attempts.append(key)
        if key == ("ml", "m"):
            raise KubeError(403, terminating)
        other_done.set()

    async def steps(queue: WorkQueue) -> None:
        queue.set_body(("ml", "m"), BODY)
        await asyncio.sleep(0.1)  # long past the 10 ms a retry would come after
        queue.set_body(("ok", "n"), BODY)
        await until(other_done)
        assert queue.errors == 0

    run_queue(work, steps, RetryLimiter(base=0.01, jitter=lambda: 0.0))
    assert attempts == [("ml", "m"), ("ok", "n")]
    # Any other 403 is an error, retried: RBAC may be fixed.
    assert not KubeError(403, "services is forbidden: User cannot patch").namespace_terminating
