"""Two engines, one trace: fleetsim's vLLM model against llm-d-inference-sim on a fixed fleet.

    python hack/bench/engines.py [--duration 600] [--time-scale 1] [--replicas 2] [--seed 7]
                                 [--engines fleetsim,llm-d-inference-sim] [--kubeconfig PATH]

One control plane; one trial per engine, each a fresh simulated fleet (fleetsim: a node, vLLM pods,
Prometheus, moto, a gpufleet operator) in a fresh namespace, with the fleet file's `engine:` set to the
engine. The same ModelDeployment (Llama 3 8B on one A100, --max-num-seqs=4, a fixed number of replicas,
autoscaling off) and the same load (a diurnal curve with a burst, Poisson arrivals with one seed, 256 prompt
and 256 output tokens, streamed) go to both. llm-d-inference-sim's latencies are calibrated from fleetsim's
engine profile for that model and GPU (hack/fleetsim/llmd_sim.py, `calibrate`).

Per engine it prints TTFT p50/p95 and e2e latency p50/p95 (client side, simulated seconds), time per
output token, throughput, and the queue depth over time (sum of vllm:num_requests_waiting in Prometheus,
sampled every SAMPLE_S simulated seconds); then the ratio llm-d-inference-sim / fleetsim of each figure.
It never asserts: this is a benchmark. llm-d-inference-sim sleeps whole milliseconds, so the default time
scale is 1 (real time); above ~2 its ~11 ms inter-token latency rounds coarsely and this script says so.
See hack/bench/README.md ("Two engines").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from benchkit import BenchError, fleet_in_namespace, log, or_failure, require_operator_alive, run_trials
from kubernetes import client

from fleetsim.clock import SimClock
from fleetsim.llmd_sim import MIN_ACCURATE_ITL_REAL_S, calibrate, resolution_simulated_s
from fleetsim.loadgen import LoadGenerator, LoadReport, SumTrace, parse_trace, percentile, ready_endpoints
from fleetsim.local import ROOT, ControlPlane
from fleetsim.pools import ENGINES
from fleetsim.scenario import parse_scenario
from fleetsim.sim import Simulation
from fleetsim.vllm_model import EngineProfile, profile_for
from gpufleet.api.v1alpha1 import GROUP, VERSION

MODEL = "llama-3-8b"
MODEL_ID = "meta-llama/Meta-Llama-3-8B-Instruct"
GPU = "NVIDIA-A100-SXM4-80GB"
REGION, ZONE = "us-east-1", "us-east-1a"
MAX_NUM_SEQS = 4
MAX_MODEL_LEN = 4096
PROMPT_TOKENS = MAX_TOKENS = 256
# The trace, requests/s, as a share of the fleet's capacity at a full batch (fleetsim's engine: ~1.28
# requests/s per replica for 256 + 256 tokens at a batch of 4): a quiet start and end, a busy middle, and a
# burst past capacity on the way down, where queues form and the engines' queueing can differ.
LOW_SHARE, HIGH_SHARE = 0.2, 0.8
BURST_AT, BURST_LENGTH, BURST_SHARE = 0.6, 0.1, 0.6  # of the duration; extra share of capacity
QUEUED_TTFT_S = 0.5  # a first token later than this waited for a slot
SAMPLE_S = 5.0  # simulated seconds between two reads of the queue in Prometheus
READY_METRICS_TIMEOUT = 90.0  # real seconds


@dataclass(frozen=True)
class Settings:
    duration: float
    scale: float
    replicas: int
    seed: int


def engine_profile() -> EngineProfile:
    return profile_for(MODEL_ID, 1, GPU, max_model_len=MAX_MODEL_LEN, max_num_seqs=MAX_NUM_SEQS)


def capacity_per_replica(profile: EngineProfile) -> float:
    """Requests/s one replica serves at a full batch on fleetsim's engine: MAX_NUM_SEQS requests every
    prefill + MAX_TOKENS decode steps of a full batch (derived from the profile)."""
    step = profile.decode_step_s(MAX_NUM_SEQS, MAX_NUM_SEQS * (PROMPT_TOKENS + MAX_TOKENS // 2))
    prefill = MAX_NUM_SEQS * PROMPT_TOKENS / profile.prefill_tokens_per_s
    return MAX_NUM_SEQS / (MAX_TOKENS * step + prefill)


def trace(settings: Settings) -> SumTrace:
    capacity = capacity_per_replica(engine_profile()) * settings.replicas
    duration = settings.duration
    diurnal = {
        "kind": "diurnal",
        "min": LOW_SHARE * capacity,
        "max": HIGH_SHARE * capacity,
        "period": duration,
    }
    burst = {
        "kind": "burst",
        "base": 0,
        "peak": BURST_SHARE * capacity,
        "at": BURST_AT * duration,
        "duration": BURST_LENGTH * duration,
    }
    return SumTrace((parse_trace(diurnal), parse_trace(burst)))


def fleet_yaml(engine: str, label: str) -> dict[str, Any]:
    return {
        "engine": engine,
        "region": REGION,
        "pools": [
            {
                "name": f"{label}-od",
                "instance_type": "p4de.24xlarge",
                "zone": ZONE,
                "capacity_type": "on-demand",
                "count": 1,
                "max_count": 1,
            }
        ],
    }


def model_deployment(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL},
        "spec": {
            "model": {"uri": f"hf://{MODEL_ID}", "parameterCount": 8.03e9, "maxModelLen": MAX_MODEL_LEN},
            "engine": {"args": [f"--max-num-seqs={MAX_NUM_SEQS}"]},
            "accelerator": {"gpuProduct": GPU, "tensorParallelSize": 1},
            "replicas": replicas,
            "minReplicas": replicas,
            "maxReplicas": replicas,
            "autoscaling": {"enabled": False},
        },
    }


# --- figures ---------------------------------------------------------------------------------------------


@dataclass
class EngineResult:
    engine: str
    report: LoadReport
    ttfts: list[float]
    queue: list[tuple[float, float, float]]  # (simulated s since the load started, waiting, running)
    window_s: float

    def figures(self) -> dict[str, float | None]:
        report = self.report
        waiting = [w for _, w, _ in self.queue]
        p50_e2e, p50_ttft = report.latency_p50, report.ttft_p50
        tpot = (
            (p50_e2e - p50_ttft) / (MAX_TOKENS - 1) if p50_e2e is not None and p50_ttft is not None else None
        )
        return {
            "TTFT p50 (s)": percentile(self.ttfts, 50),
            "TTFT p95 (s)": percentile(self.ttfts, 95),
            # Alone, a 256-token prompt's first token comes in ~0.04 s on either engine: later ones queued.
            f"share of requests with TTFT > {QUEUED_TTFT_S:g} s": (
                sum(1 for t in self.ttfts if t > QUEUED_TTFT_S) / len(self.ttfts) if self.ttfts else None
            ),
            "e2e latency p50 (s)": p50_e2e,
            "e2e latency p90 (s)": report.latency_p90,
            "time per output token (ms, from the p50s)": tpot * 1000 if tpot is not None else None,
            "throughput (output tokens/s)": report.tokens / self.window_s if self.window_s else None,
            "completed requests/s": report.ok / self.window_s if self.window_s else None,
            "queue depth mean (waiting, all replicas)": sum(waiting) / len(waiting) if waiting else None,
            "queue depth max": max(waiting) if waiting else None,
        }


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def report_lines(result: EngineResult) -> list[str]:
    report = result.report
    errors = ", ".join(f"{kind}: {n}" for kind, n in sorted(report.errors.items())) or "none"
    lines = [f"{result.engine}: {report.sent} sent, {report.ok} answered; errors: {errors}"]
    lines += [f"{result.engine} {name}: {_value(value)}" for name, value in result.figures().items()]
    series = " ".join(f"{t:.0f}s:{w:.0f}/{r:.0f}" for t, w, r in result.queue)
    lines.append(f"{result.engine} queue over time (waiting/running, simulated s): {series}")
    return lines


def comparison_lines(results: dict[str, EngineResult]) -> list[str]:
    if set(results) != set(ENGINES):
        return []
    ours, theirs = results["fleetsim"].figures(), results["llm-d-inference-sim"].figures()
    lines = ["llm-d-inference-sim / fleetsim, per figure (1.00 = agree):"]
    for name, mine in ours.items():
        other = theirs[name]
        ratio = "n/a" if mine in (None, 0) or other is None else f"{other / mine:.2f}"
        lines.append(f"  {name}: {_value(other)} / {_value(mine)} = {ratio}")
    return lines


def caveat_lines(settings: Settings) -> list[str]:
    clock = SimClock(settings.scale)
    calibration = calibrate(engine_profile())
    itl_real = clock.real(calibration.inter_token_s)
    lines = [
        f"caveat: time scale {settings.scale:g}; llm-d-inference-sim sleeps whole milliseconds, a step of "
        f"{resolution_simulated_s(clock) * 1000:g} ms simulated at this scale",
        f"caveat: calibration from fleetsim's profile of {MODEL_ID} on {GPU}: prefill overhead "
        f"{calibration.prefill_overhead_s * 1000:.2f} ms + "
        f"{calibration.prefill_per_token_s * 1e6:.1f} us per prompt token, inter-token latency "
        f"{calibration.inter_token_s * 1000:.2f} ms, load factor "
        f"{calibration.time_factor_under_load:.4f} at {MAX_NUM_SEQS} running, KV cache "
        f"{calibration.kv_cache_blocks} blocks",
        f"caveat: fixed fleet of {settings.replicas} replicas (autoscaling off); capacity "
        f"{capacity_per_replica(engine_profile()):.2f} requests/s per replica on fleetsim's engine",
        "caveat: queue depth is Prometheus's sum of vllm:num_requests_waiting, scraped every 1 s real",
    ]
    if itl_real < MIN_ACCURATE_ITL_REAL_S:
        lines.append(
            f"caveat: the inter-token latency is {itl_real * 1000:.2f} ms real at this scale: "
            "llm-d-inference-sim's figures are coarse (lower --time-scale)"
        )
    return lines


# --- one trial -------------------------------------------------------------------------------------------


class Trial:
    def __init__(self, cp: ControlPlane, engine: str, settings: Settings, workdir: Path) -> None:
        self.cp = cp
        self.engine = engine
        self.settings = settings
        self.label = "llmd" if engine == "llm-d-inference-sim" else engine
        self.workdir = workdir / self.label
        self.namespace = f"bench-engines-{self.label}-{uuid.uuid4().hex[:6]}"
        self.selector = f'namespace="{self.namespace}",model_name="{MODEL}"'

    def _query(self, simulation: Simulation, promql: str) -> float | None:
        result = simulation.prometheus.query(promql)
        return float(result[0]["value"][1]) if result else None

    async def _sample(
        self, simulation: Simulation, started: float, queue: list[tuple[float, float, float]]
    ) -> None:
        clock = simulation.clock
        while True:
            try:
                waiting = await asyncio.to_thread(
                    self._query, simulation, f"sum(vllm:num_requests_waiting{{{self.selector}}})"
                )
                running = await asyncio.to_thread(
                    self._query, simulation, f"sum(vllm:num_requests_running{{{self.selector}}})"
                )
                if waiting is not None and running is not None:
                    queue.append((clock.now() - started, waiting, running))
            except Exception as error:
                log(f"{self.engine}: reading the queue failed: {error}")
            await clock.sleep(SAMPLE_S)

    async def drive(self, simulation: Simulation) -> EngineResult:
        settings, clock = self.settings, simulation.clock
        load = LoadGenerator(
            lambda: ready_endpoints(simulation.core, self.namespace, MODEL),
            MODEL,
            trace(settings),
            clock,
            prompt_tokens=PROMPT_TOKENS,
            max_tokens=MAX_TOKENS,
            seed=settings.seed,
        )
        queue: list[tuple[float, float, float]] = []
        started = clock.now()
        sampler = asyncio.get_running_loop().create_task(self._sample(simulation, started, queue))
        try:
            report = await load.run(settings.duration)
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        return EngineResult(self.engine, report, load.ttfts(), queue, settings.duration)

    def _wait_metrics(self, simulation: Simulation) -> None:
        """Until Prometheus has every replica's gauges: both engines start from the same view."""
        deadline = time.monotonic() + READY_METRICS_TIMEOUT
        while True:
            try:
                reporting = self._query(simulation, f"count(vllm:num_requests_running{{{self.selector}}})")
            except Exception:
                reporting = None
            if reporting is not None and reporting >= self.settings.replicas:
                return
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.engine}: {reporting} replicas in Prometheus after {READY_METRICS_TIMEOUT:.0f}s"
                )
            time.sleep(0.5)

    def run(self, core: client.CoreV1Api) -> EngineResult:
        settings = self.settings
        self.workdir.mkdir(parents=True, exist_ok=True)
        fleet = self.workdir / "fleet.yaml"
        fleet.write_text(yaml.safe_dump(fleet_yaml(self.engine, self.label), sort_keys=False))
        manifest = self.workdir / "model.json"
        manifest.write_text(json.dumps(model_deployment(settings.replicas), indent=2))
        scenario = parse_scenario(
            {
                "name": f"bench-engines-{self.label}",
                "timeScale": settings.scale,
                "duration": settings.duration,
                "fleet": str(fleet),
                "namespace": self.namespace,
                "apply": [str(manifest)],
                # The image and weights as if on the node already: start-up is not what is compared.
                "params": {
                    "kubelet": {"imagePullSeconds": 0, "hfGiBPerSecond": 1000, "engineWarmupSeconds": 0}
                },
            },
            ROOT,
        )
        simulation = Simulation(
            scenario, self.cp.kubeconfig, self.workdir, kubectl=self.cp.kubectl_path, run_operator=True
        )
        with fleet_in_namespace(core, simulation, self.namespace, self.engine) as background:
            log(f"{self.engine}: starting the fleet, Prometheus and the operator in {self.namespace}")
            background.call(simulation.wait_ready(), timeout=scenario.ready_timeout / settings.scale + 60)
            self._wait_metrics(simulation)
            real = settings.duration / settings.scale
            log(f"{self.engine}: load for {settings.duration:.0f} s simulated ({real:.0f} s real)")
            result = background.call(self.drive(simulation), timeout=real + 600)
            require_operator_alive(simulation, self.engine)
            return result


# --- the run ---------------------------------------------------------------------------------------------


def _engines(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ENGINES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"engines must be among {', '.join(ENGINES)}; got {text!r}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=600.0, help="simulated seconds of load")
    parser.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--engines", type=_engines, default=list(ENGINES), help="comma-separated")
    parser.add_argument("--kubeconfig", type=Path, default=None, help="reuse this control plane")
    args = parser.parse_args(argv)
    settings = Settings(duration=args.duration, scale=args.time_scale, replicas=args.replicas, seed=args.seed)
    print("\n".join(caveat_lines(settings)), flush=True)

    def run_trial(cp: ControlPlane, core: client.CoreV1Api, engine: str, workdir: Path) -> EngineResult:
        return Trial(cp, engine, settings, workdir).run(core)

    run: Callable[[], dict[str, EngineResult]] = lambda: run_trials(  # noqa: E731
        "engines", args.engines, args.kubeconfig, run_trial, report_lines
    )
    results = or_failure(run)
    if results is None:
        return 1
    print("\n".join(comparison_lines(results)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
