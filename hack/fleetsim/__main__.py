"""`python -m fleetsim run SCENARIO`: run a scenario and print its summary.

Without --kubeconfig it starts a local control plane (hack/cluster.sh) for the
run and stops it afterwards, also when it is interrupted (Ctrl-C) or terminated
(SIGTERM, SIGHUP). --live shows a terminal view (rich) while it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from fleetsim.local import control_plane
from fleetsim.scenario import Scenario, load_scenario
from fleetsim.sim import Simulation, Snapshot, Summary


def live_view(snapshot: Snapshot, title: str) -> Group:
    replicas = Table(title=f"{title}: t={snapshot.elapsed:.0f}s (simulated)", expand=False)
    for column in ("zone", "capacity", "pods", "ready"):
        replicas.add_column(column)
    for (zone, capacity), (pods, ready) in sorted(snapshot.replicas.items()):
        replicas.add_row(zone or "-", capacity, str(pods), str(ready))
    signals = Table(show_header=False)
    signals.add_row("queue depth (vllm:num_requests_waiting)", _fmt(snapshot.queue_depth))
    signals.add_row("running (vllm:num_requests_running)", _fmt(snapshot.running))
    signals.add_row("answered requests per second", f"{snapshot.ok_per_second:.1f}")
    signals.add_row("requests sent / ok / errors", f"{snapshot.sent} / {snapshot.ok} / {snapshot.errors}")
    signals.add_row("nodes", ", ".join(f"{k}: {v}" for k, v in sorted(snapshot.nodes.items())) or "-")
    events = Table(title="events", show_header=False)
    for line in snapshot.events[-8:]:
        events.add_row(line)
    return Group(replicas, signals, events)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def summary_tables(summary: Summary) -> list[Table]:
    tables = []
    if summary.load is not None:
        load = Table(title=f"{summary.scenario}: load")
        load.add_column("figure")
        load.add_column("value", justify="right")
        for name, value in summary.load.table():
            load.add_row(name, value)
        tables.append(load)
    usage = Table(title="replica-seconds (simulated)")
    for column in ("zone", "capacity", "replica-s", "ready replica-s"):
        usage.add_column(column)
    for zone, capacity, total, ready in summary.accounting.rows():
        usage.add_row(zone or "-", capacity, f"{total:.0f}", f"{ready:.0f}")
    tables.append(usage)
    cost = Table(title="GPU-hours and cost")
    cost.add_column("capacity")
    cost.add_column("GPU-hours", justify="right")
    cost.add_column("cost (USD)", justify="right")
    for capacity, seconds in sorted(summary.accounting.gpu_seconds.items()):
        cost.add_row(capacity, f"{seconds / 3600:.1f}", f"{summary.accounting.cost[capacity]:.2f}")
    cost.add_row("total", f"{summary.accounting.gpu_hours:.1f}", f"{summary.accounting.total_cost:.2f}")
    tables.append(cost)
    return tables


def unwind_on_termination() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every `finally` stops what it started.

    By default they end Python at once: the control plane, Prometheus, moto and the operator that
    the run started would be left behind. SystemExit goes through asyncio.run, which cancels the
    simulation's tasks (their cleanup runs), and then through control_plane's `finally`.
    """

    def exit_by(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    for termination in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(termination, exit_by)


def run(args: argparse.Namespace) -> int:
    console = Console()
    scenario = load_scenario(Path(args.scenario))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fleetsim-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with control_plane(Path(args.kubeconfig) if args.kubeconfig else None, workdir / "cluster") as plane:
            return _run(console, scenario, plane.kubeconfig, plane.kubectl_path, workdir, args.live)
    except (RuntimeError, ValueError) as error:
        console.print(f"[red]fleetsim: {error}[/]")
        return 1


def _run(
    console: Console, scenario: Scenario, kubeconfig: Path, kubectl: str, workdir: Path, live: bool
) -> int:
    console.print(f"[bold]{scenario.name}[/]: {scenario.description.strip()}")
    console.print(f"time scale {scenario.time_scale:g}x; logs in {workdir}")
    if live:
        with Live(console=console, refresh_per_second=4) as view:
            simulation = Simulation(
                scenario,
                kubeconfig,
                workdir,
                kubectl=kubectl,
                on_tick=lambda s: view.update(live_view(s, scenario.name)),
            )
            summary = asyncio.run(simulation.run())
    else:
        summary = asyncio.run(Simulation(scenario, kubeconfig, workdir, kubectl=kubectl).run())
    for line in summary.events:
        console.print(line)
    for table in summary_tables(summary):
        console.print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleetsim", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_cmd = commands.add_parser("run", help="run a scenario file")
    run_cmd.add_argument("scenario", help="scenario YAML (see hack/scenarios/)")
    run_cmd.add_argument("--kubeconfig", help="use this control plane instead of starting one")
    run_cmd.add_argument("--workdir", help="where logs and state go (default: a new temp folder)")
    run_cmd.add_argument("--live", action="store_true", help="show a live terminal view")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    unwind_on_termination()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
