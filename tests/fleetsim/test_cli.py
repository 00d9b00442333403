"""`python -m fleetsim` stops what it started when it is terminated, not only when it ends."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A stand-in for a run: asyncio.run of a task whose cleanup must happen (as Simulation.run stops
# its operator, Prometheus and moto), inside a `with` whose exit must happen (as control_plane
# stops the control plane).
RUN = """
import asyncio, contextlib, sys
from fleetsim.__main__ import unwind_on_termination

@contextlib.contextmanager
def plane():
    try:
        yield
    finally:
        print("plane stopped", flush=True)

async def simulation():
    try:
        print("running", flush=True)
        await asyncio.sleep(60)
    finally:
        await asyncio.sleep(0)
        print("simulation stopped", flush=True)

unwind_on_termination()
with plane():
    asyncio.run(simulation())
"""


@pytest.mark.parametrize("termination", [signal.SIGTERM, signal.SIGHUP])
def test_termination_unwinds_the_simulation_and_the_control_plane(termination: signal.Signals) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "hack"), str(ROOT / "operator")])}
    with subprocess.Popen(
        [sys.executable, "-c", RUN], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as process:
        assert process.stdout is not None
        # Wait for the run to be under way, with a deadline: a child that never prints must not hang CI.
        ready, _, _ = select.select([process.stdout], [], [], 20)
        if not ready:
            process.kill()
        assert ready, "the child never started its run"
        assert process.stdout.readline() == "running\n"
        process.send_signal(termination)
        out, err = process.communicate(timeout=20)
    assert out.splitlines() == ["simulation stopped", "plane stopped"], err
    assert process.returncode == 128 + termination
