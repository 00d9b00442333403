"""A second engine: llm-d-inference-sim (Go, hack/install-llmd-sim.sh) in place of fleetsim's VllmServer.

A fleet file with `engine: llm-d-inference-sim` makes the kubelet start one llm-d-inference-sim process per
vLLM pod. Facts about it below are from its source at v0.10.2
(https://github.com/llm-d/llm-d-inference-sim/tree/v0.10.2, the file named in each comment).

Addresses. It listens on 0.0.0.0:<--port> with no bind-address flag (pkg/communication/http.go,
newListener), so two instances cannot share port 8000 the way fleetsim's servers do on their own loopback
addresses. Each process gets a free port of its own, and a small TCP forwarder listens where the pod is
reached (podIP:containerPort, in 127.2.0.0/16) and splices every connection to 127.0.0.1:<that port>.
Prometheus, the load generator and the operator see the pod's address as with the other engine. (0.0.0.0
also means the process is reachable on every interface of this machine: it cannot be told otherwise.)

Time. The process runs on the wall clock; fleetsim's simulated time runs `scale` times faster
(fleetsim.clock). Every latency passed to it is divided by the scale, so what a client measures and
multiplies back (the load generator does) is simulated time. Its own latency histograms
(vllm:time_to_first_token_seconds, ...) are therefore in real seconds: multiply by the scale. Its gauges
(requests running and waiting, KV-cache usage: what gpufleet reads) have no unit and need nothing.
It sleeps whole milliseconds (pkg/common/utils.go, RandomNormDuration), so its resolution is `scale`
simulated milliseconds: an 8B model's ~11 ms inter-token latency is only right at a time scale near 1
(at 20 it is 0.57 ms real, and every token takes 0 or 1 ms). `command` rounds rather than truncates, and
the factory logs a warning when the inter-token latency falls under MIN_ACCURATE_ITL_REAL_S.

Calibration (`calibrate`): from the same EngineProfile fleetsim's engine would run (fleetsim.vllm_model),
at a batch of one:
- prefill-overhead = decode_step_base_s (a step reads the weights once, prefill or not);
- prefill-time-per-token = 1 / prefill_tokens_per_s, so TTFT alone = base + n / rate, fleetsim's
  single-step prefill exactly (prompts up to max_num_batched_tokens; longer ones take several steps in
  fleetsim, one overhead each, which llm-d-inference-sim cannot express);
- inter-token-latency = decode_step_s(1, 0) / tokens_per_decode_step (the KV-read term, under 2 % for the
  models in the catalogue at 4k context, is left out: llm-d-inference-sim has no context-length term);
- time-factor-under-load = decode_step_s(max_num_seqs, 0) / decode_step_s(1, 0). llm-d-inference-sim
  multiplies both TTFT and inter-token latency by 1 + (f - 1)(running - 1)/(max_num_seqs - 1)
  (pkg/llm-d-inference-sim/latencies.go, getCurrLoadFactor): linear in the batch like fleetsim's decode
  step, and equal to it at 1 and at max_num_seqs.
What cannot be calibrated: fleetsim's steps mix prefill chunks into the decode batch, so a prompt slows
every running decode for one step and a new request waits for the step in flight; llm-d-inference-sim's
requests run independently (one goroutine each, sleeping TTFT then one inter-token latency per token), and
its load factor stretches the prefill too. Its KV cache (--enable-kvcache) holds prompt blocks only, not
generated tokens, and a full cache fails the request (HTTP 500, pkg/kv-cache/block_cache.go) where vLLM
would queue or preempt: calibrated to fleetsim's KV tokens, the capacity is rarely reached, and
vllm:kv_cache_usage_perc reads lower than fleetsim's for the same load. No preemption, no speculative
acceptance, no chunked-prefill budget.

Shutdown. On SIGTERM it stops taking requests (503 "server is shutting down", pkg/communication/http.go,
handleHTTP) while /health stays 200, waits for in-flight requests up to 30 real seconds (a constant,
pkg/communication/communication.go, drainTimeout), then exits; a second signal exits at once
(cmd/signals/signals.go). So it always drains on SIGTERM, with or without vLLM's --shutdown-timeout (which it
does not take), for 30 s of wall clock: `sigterm_drain_seconds` tells the kubelet so, and the kubelet's
grace period still ends it with SIGKILL (stop()).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetsim.clock import SimClock
from fleetsim.local import ROOT, free_port, run_install_script
from fleetsim.vllm_model import KV_BLOCK_TOKENS, EngineProfile

log = logging.getLogger("fleetsim.llmd_sim")

VERSION = "v0.10.2"
INSTALL_SCRIPT = ROOT / "hack" / "install-llmd-sim.sh"
# pkg/communication/communication.go (v0.10.2): how long SIGTERM waits for in-flight requests, wall clock.
SIGTERM_DRAIN_REAL_S = 30.0
# vLLM bounds no waiting queue; llm-d-inference-sim answers 429 past --max-waiting-queue-length (default
# 1000, pkg/common/config.go). Far above the load generator's 512 requests in flight.
MAX_WAITING_QUEUE = 10_000
# Real seconds between two reads of the process's running and waiting gauges (in_flight, GPU busy).
POLL_REAL_S = 0.2
START_TIMEOUT_REAL_S = 30.0
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_GAUGE = re.compile(r"^(vllm:num_requests_(?:running|waiting))\{[^}]*\}\s+(\S+)$", re.MULTILINE)


def install(timeout: float = 30 * 60) -> Path:
    """The binary, built once by hack/install-llmd-sim.sh (`make llmd-sim`); at once when cached."""
    return run_install_script(INSTALL_SCRIPT, timeout) / "bin" / "llm-d-inference-sim"


@dataclass(frozen=True)
class Calibration:
    """llm-d-inference-sim's latency parameters, in simulated seconds (see the module docstring)."""

    prefill_overhead_s: float
    prefill_per_token_s: float
    inter_token_s: float
    time_factor_under_load: float
    kv_cache_blocks: int


def calibrate(profile: EngineProfile) -> Calibration:
    one = profile.decode_step_s(1, 0)
    full = profile.decode_step_s(profile.max_num_seqs, 0)
    return Calibration(
        prefill_overhead_s=profile.decode_step_base_s,
        prefill_per_token_s=1.0 / profile.prefill_tokens_per_s,
        inter_token_s=one / profile.tokens_per_decode_step,
        time_factor_under_load=max(1.0, full / one),
        kv_cache_blocks=max(1, profile.kv_cache_tokens // KV_BLOCK_TOKENS),
    )


# llm-d-inference-sim draws every latency in whole milliseconds, truncating the mean
# (pkg/common/utils.go, RandomNormDuration: mean.Milliseconds()). Half a millisecond more on each mean
# turns the truncation into rounding, so the error is at most 0.5 ms real either way, not up to 1 ms low.
TRUNCATION_BIAS_REAL_S = 0.0005
# Below this many real milliseconds an inter-token latency is too coarse for comparisons (0.5 ms of
# rounding is 10 % of it): lower the time scale.
MIN_ACCURATE_ITL_REAL_S = 0.005


def resolution_simulated_s(clock: SimClock) -> float:
    """llm-d-inference-sim's latency step (1 real millisecond) in simulated seconds at this time scale."""
    return clock.simulated(0.001)


def _duration(simulated_s: float, clock: SimClock, bias_real_s: float = 0.0) -> str:
    # Integer nanoseconds ("123456ns"), which Go's time.ParseDuration takes.
    return f"{max(0, round((clock.real(simulated_s) + bias_real_s) * 1e9))}ns"


def command(
    binary: str | Path,
    port: int,
    served_name: str,
    profile: EngineProfile,
    clock: SimClock,
    loras: Sequence[str] = (),
) -> list[str]:
    """The llm-d-inference-sim command line for what the pod's `vllm serve` arguments asked.

    Flags from pkg/common/parser.go (v0.10.2). --force-dummy-tokenizer: otherwise a real model name makes it
    fetch the tokenizer from the Hub at start. --zmq-endpoint empty: no KV events are published.
    """
    calibration = calibrate(profile)
    args = [
        str(binary),
        f"--port={port}",
        f"--model={profile.model_id or served_name}",
        f"--served-model-name={served_name}",
        f"--max-num-seqs={profile.max_num_seqs}",
        f"--max-model-len={profile.max_model_len}",
        f"--max-waiting-queue-length={MAX_WAITING_QUEUE}",
        "--force-dummy-tokenizer",
        "--mode=random",
        "--seed=1",
        f"--prefill-overhead={_duration(calibration.prefill_overhead_s, clock, TRUNCATION_BIAS_REAL_S)}",
        f"--prefill-time-per-token={_duration(calibration.prefill_per_token_s, clock)}",
        f"--inter-token-latency={_duration(calibration.inter_token_s, clock, TRUNCATION_BIAS_REAL_S)}",
        f"--time-factor-under-load={calibration.time_factor_under_load:.6f}",
        "--enable-kvcache",
        f"--kv-cache-size={calibration.kv_cache_blocks}",
        f"--block-size={KV_BLOCK_TOKENS}",
        "--zmq-endpoint=",
        "--v=1",  # warnings only: its default (2) logs every start-up detail
    ]
    if loras:
        # As many adapters in a batch as are served: fleetsim's engine does not limit LoRA batching either,
        # where llm-d-inference-sim would queue requests for an adapter beyond --max-loras.
        args.append(f"--max-loras={len(loras)}")
        args.append("--lora-modules")
        args += [json.dumps({"name": name, "path": name, "base_model_name": profile.model_id or served_name})
                 for name in loras]  # fmt: skip
    return args


class _Pipe(asyncio.Protocol):
    """One side of a forwarded connection; whatever it receives goes to its peer, with back-pressure."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self._pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def attach(self, peer: _Pipe) -> None:
        self.peer = peer
        if peer.transport is not None and self._pending:
            peer.transport.write(b"".join(self._pending))
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.peer.transport is None:
            self._pending.append(data)  # the upstream connection is still being made
        else:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is None or self.peer.transport is None:
            return
        if exc is None:
            self.peer.transport.close()
        else:
            self.peer.transport.abort()

    # The peer cannot keep up: stop reading here until it drains.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class Forwarder:
    """host:port → 127.0.0.1:upstream_port, byte for byte; stop() cuts every connection (the pod is gone)."""

    def __init__(self, host: str, port: int, upstream_port: int) -> None:
        self.host, self.port, self.upstream_port = host, port, upstream_port
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.Transport] = set()
        self._connecting: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(self._accepted, self.host, self.port)

    def _accepted(self) -> _Pipe:
        pipe = _Pipe()
        task = asyncio.get_running_loop().create_task(self._connect(pipe))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        return pipe

    async def _connect(self, client: _Pipe) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream_transport, upstream = await loop.create_connection(
                _Pipe, "127.0.0.1", self.upstream_port
            )
        except OSError:
            if client.transport is not None:
                client.transport.abort()  # as a refused connection: the process is not there
            return
        assert isinstance(upstream_transport, asyncio.Transport)
        if client.transport is None or client.transport.is_closing():
            upstream_transport.close()
            return
        self._open.update((client.transport, upstream_transport))
        upstream.attach(client)
        client.attach(upstream)
        self._open = {t for t in self._open if not t.is_closing()}  # forget connections already closed

    async def stop(self) -> None:
        for task in list(self._connecting):
            task.cancel()
        if self._server is not None:
            self._server.close()
        for transport in list(self._open):
            transport.abort()
        self._open.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None


def read_gauges(exposition: str) -> tuple[float, float]:
    """(running, waiting) summed over the exposition's vllm:num_requests_running / _waiting samples."""
    totals = {"vllm:num_requests_running": 0.0, "vllm:num_requests_waiting": 0.0}
    for name, value in _GAUGE.findall(exposition):
        totals[name] += float(value)
    return totals["vllm:num_requests_running"], totals["vllm:num_requests_waiting"]


class LlmdSimServer:
    """One llm-d-inference-sim process for one vLLM pod, reached at host:port through a Forwarder.

    Implements the kubelet's Server protocol (fleetsim.kubelet). The kubelet learns in-flight requests and
    GPU busy time from the process's own gauges, read every POLL_REAL_S.
    """

    def __init__(
        self,
        host: str,
        port: int,
        served_model_name: str,
        profile: EngineProfile,
        clock: SimClock,
        lora_names: Sequence[str] = (),
        binary: Path | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.served_model_name = served_model_name
        self.profile = profile
        self.clock = clock
        self.lora_names = tuple(lora_names)
        self.binary = binary
        self.draining = False
        self.upstream_port = 0
        self.process: asyncio.subprocess.Process | None = None
        self.log_path: Path | None = None
        self._forwarder: Forwarder | None = None
        self._poller: asyncio.Task[None] | None = None
        self._running = 0.0
        self._waiting = 0.0
        # (real monotonic time, running > 0) of recent polls, for the GPU's busy share.
        self._samples: deque[tuple[float, bool]] = deque()

    @classmethod
    def factory(
        cls, host: str, port: int, name: str, profile: EngineProfile, clock: SimClock, loras: Sequence[str]
    ) -> LlmdSimServer:
        """The kubelet's ServerFactory for this engine."""
        itl_real = clock.real(calibrate(profile).inter_token_s)
        if itl_real < MIN_ACCURATE_ITL_REAL_S:
            log.warning(
                "llm-d-inference-sim: inter-token latency %.2f ms real at time scale %g; it sleeps whole "
                "milliseconds, so latencies are coarse: use a time scale <= %g for this model",
                itl_real * 1000,
                clock.scale,
                clock.scale * itl_real / MIN_ACCURATE_ITL_REAL_S,
            )
        return cls(host, port, name, profile, clock, loras)

    @property
    def refuse_scrapes(self) -> bool:
        return False

    @refuse_scrapes.setter
    def refuse_scrapes(self, value: bool) -> None:
        # The forwarder splices bytes and cannot single out scrapes: that fault exists on fleetsim's engine.
        if value:
            raise NotImplementedError(
                "refusing scrapes is a fault of fleetsim's engine, not llm-d-inference-sim"
            )

    @property
    def sigterm_drain_seconds(self) -> float:
        """Simulated seconds SIGTERM lets in-flight requests finish, whatever --shutdown-timeout says."""
        return self.clock.simulated(SIGTERM_DRAIN_REAL_S)

    def _metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}/metrics"

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        try:
            with _NO_PROXY.open(f"http://127.0.0.1:{self.upstream_port}{path}", timeout=timeout) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, ""

    def _log_tail(self) -> str:
        if self.log_path is None:
            return ""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        return ""

    async def start(self) -> None:
        binary = self.binary if self.binary is not None else await asyncio.to_thread(install)
        self.upstream_port = free_port()
        handle, name = tempfile.mkstemp(prefix=f"llmd-sim-{self.host}-", suffix=".log")
        self.log_path = Path(name)
        args = command(binary, self.upstream_port, self.served_model_name, self.profile, self.clock,
                       self.lora_names)  # fmt: skip
        # POD_IP: its KV cache refuses to start without one (pkg/kv-cache/block_cache.go).
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "POD_IP": self.host}
        try:
            self.process = await asyncio.create_subprocess_exec(
                *args, stdin=subprocess.DEVNULL, stdout=handle, stderr=handle, env=env
            )
        finally:
            os.close(handle)
        deadline = time.monotonic() + START_TIMEOUT_REAL_S
        while True:
            if self.process.returncode is not None:
                raise RuntimeError(
                    f"llm-d-inference-sim exited {self.process.returncode} at start:\n{self._log_tail()}"
                )
            with contextlib.suppress(OSError):
                status, _ = await asyncio.to_thread(self._get, "/health/ready", 1.0)
                if status == 200:
                    break
            if time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(f"llm-d-inference-sim not ready in {START_TIMEOUT_REAL_S:.0f} s:\n"
                                   f"{self._log_tail()}")  # fmt: skip
            await asyncio.sleep(0.05)
        self._forwarder = Forwarder(self.host, self.port, self.upstream_port)
        await self._forwarder.start()
        self._poller = asyncio.create_task(self._poll(), name=f"llm-d-inference-sim {self.host}:{self.port}")

    async def _poll(self) -> None:
        while True:
            try:
                status, body = await asyncio.to_thread(self._get, "/metrics")
                if status == 200:
                    self._running, self._waiting = read_gauges(body)
                    now = time.monotonic()
                    self._samples.append((now, self._running > 0))
                    horizon = now - self.clock.real(10.0)
                    while len(self._samples) > 1 and self._samples[0][0] < horizon:
                        self._samples.popleft()
            except OSError:
                pass  # exiting, or busy past the timeout: keep the last reading
            await asyncio.sleep(POLL_REAL_S)

    def start_draining(self) -> None:
        """SIGTERM: it refuses new requests and drains by itself (see the module docstring)."""
        self.draining = True
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)

    async def stop(self) -> None:
        """The process is gone (SIGKILL, as at the end of the grace period) and its connections with it."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._forwarder is not None:
            await self._forwarder.stop()
            self._forwarder = None
        if self.process is not None:
            if self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 10.0)
            self.process = None
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def in_flight(self) -> int:
        """Requests running or waiting, as its gauges said at the last poll (0 once it has exited)."""
        if self.process is None or self.process.returncode is not None:
            return 0
        return int(self._running + self._waiting)

    def gpu_utilization(self) -> float:
        """Share of the polls over the last ~10 simulated seconds that saw a request running."""
        if not self._samples:
            return 0.0
        return sum(1 for _, busy in self._samples if busy) / len(self._samples)


__all__ = [
    "MAX_WAITING_QUEUE",
    "MIN_ACCURATE_ITL_REAL_S",
    "SIGTERM_DRAIN_REAL_S",
    "TRUNCATION_BIAS_REAL_S",
    "VERSION",
    "Calibration",
    "Forwarder",
    "LlmdSimServer",
    "calibrate",
    "command",
    "install",
    "read_gauges",
    "resolution_simulated_s",
]
