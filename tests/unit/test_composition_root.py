"""The operator's lifecycle (runtime.composition_root): stopping hands the Lease over last."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import Any

from gpufleet.config import Settings
from gpufleet.planning.observe import Key
from gpufleet.runtime.composition_root import Operator
from tests.unit.fake_kube import FakeKube

BODY = {"metadata": {"namespace": "ml", "name": "m", "uid": "u"}}


class Recorder:
    """Stands in for the leader elector: records when the Lease is released."""

    def __init__(self, order: list[str]) -> None:
        self.order = order

    def release(self) -> None:
        self.order.append("released")


def operator_with_slow_work(order: list[str], started: threading.Event) -> Operator:
    operator = Operator(Settings.defaults(), FakeKube())  # type: ignore[arg-type]
    operator._elector = Recorder(order)  # type: ignore[assignment]
    operator.leading.set()

    def slow_reconcile(key: Key, body: Mapping[str, Any]) -> None:
        started.set()
        time.sleep(0.3)
        order.append("reconciled")

    operator._reconcile = slow_reconcile  # type: ignore[method-assign]
    return operator


def stop_while_working(work_timeout: float | None = None) -> list[str]:
    """Stop the operator while a slow reconcile runs; the order of reconcile end and Lease release."""
    order: list[str] = []
    started = threading.Event()
    operator = operator_with_slow_work(order, started)

    async def scenario() -> None:
        operator.queue.start()
        operator.queue.set_body(("ml", "m"), BODY)
        assert await asyncio.to_thread(started.wait, 5)
        await (operator.stop() if work_timeout is None else operator.stop(work_timeout=work_timeout))

    asyncio.run(scenario())
    return order


def test_the_lease_is_released_only_after_the_work_under_way_finished() -> None:
    # Released first, a standby would act while this replica's last reconcile still wrote.
    assert stop_while_working() == ["reconciled", "released"]


def test_work_that_starts_once_stopping_does_not_act() -> None:
    order: list[str] = []
    operator = operator_with_slow_work(order, threading.Event())
    operator._stopping = True
    operator._work(("ml", "m"), BODY)
    assert operator._evaluate(BODY) is None
    assert order == []


def test_a_stop_waits_only_so_long_for_work_that_hangs() -> None:
    assert stop_while_working(work_timeout=0.05)[0] == "released"  # stepped down after the timeout
