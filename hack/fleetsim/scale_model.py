"""A fluid model of one vLLM replica: the gauges the full engine would report, from its offered load.

Scale mode (fleetsim.scale_fleet) stands for hundreds of replicas without
running an Engine per replica. Each replica gets its share of its model's
offered load (requests/s, every request `prompt` tokens in and `output` out)
and this model gives, from the same EngineProfile the full engine uses
(fleetsim.vllm_model.profile_for), what vLLM's /metrics would show on average:

- step time s(λ) = base / (1 − λ·(T·c + P / prefill rate)), where c is a
  decode's cost per sequence (its FLOPs plus reading its average context of
  P + T/2 KV tokens): each step decodes every running sequence once and
  prefills the prompts that arrived during it;
- running b = λ·T·s (Little's law: a request holds a batch slot for T steps);
- the batch is bounded by max_num_seqs and by the KV cache (b × (P + T/2)
  tokens): past that bound the replica serves μ = b_max / (T·s(b_max))
  requests/s and the rest waits; the queue is a fluid level that fills at
  λ − μ and drains at μ − λ (requests on a replica that dies are lost);
- KV usage = b × (P + T/2) / KV tokens; busy fraction (dcgm's utilisation)
  = 1 − e^(−b): the chance that at least one request is in flight.

Pure and deterministic: time is passed in, Poisson noise is not modelled
(tests/fleetsim/test_scale_model.py checks the averages against the Engine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fleetsim.vllm_model import EngineProfile


@dataclass(frozen=True)
class Workload:
    """The requests a model receives: every one `prompt` tokens in, `output` tokens out."""

    prompt: int = 512
    output: int = 128

    @property
    def mean_context(self) -> float:
        # A sequence's KV grows from P to P + T while it decodes.
        return self.prompt + self.output / 2


@dataclass(frozen=True)
class Steady:
    running: float
    waiting_growth: float  # requests/s the queue grows by (0 below capacity)
    kv_cache_usage: float
    busy: float
    step_s: float
    served: float  # requests/s finished


class FluidReplica:
    """One replica's state: its queue level. `advance` moves it on by `dt` simulated seconds."""

    def __init__(self, profile: EngineProfile, workload: Workload) -> None:
        self.profile = profile
        self.workload = workload
        self.waiting = 0.0
        self.running = 0.0
        self.kv_cache_usage = 0.0
        self.busy = 0.0
        self.served_total = 0.0
        p, w = profile, workload
        self._per_seq = p.decode_step_per_seq_s + w.mean_context * p.decode_step_per_context_token_s
        self._per_request = w.output * self._per_seq + w.prompt / p.prefill_tokens_per_s
        kv_bound = p.kv_cache_tokens / w.mean_context
        self.max_batch = max(1.0, min(float(p.max_num_seqs), kv_bound))
        step_full = p.decode_step_base_s + self.max_batch * (
            self._per_seq + w.prompt / (w.output * p.prefill_tokens_per_s)
        )
        self.capacity = self.max_batch / (w.output * step_full)  # μ, requests/s at a full batch

    def steady(self, rate: float) -> Steady:
        """The long-run averages at `rate` requests/s (queue growth instead of a level past μ)."""
        p, w = self.profile, self.workload
        if rate >= self.capacity:
            batch, served = self.max_batch, self.capacity
        else:
            batch, served = 0.0, rate
            load = rate * self._per_request
            if rate > 0 and load < 1:
                batch = min(self.max_batch, rate * w.output * p.decode_step_base_s / (1 - load))
        step = p.decode_step_base_s / max(1e-9, 1 - served * self._per_request)
        return Steady(
            running=batch,
            waiting_growth=max(0.0, rate - served),
            kv_cache_usage=batch * w.mean_context / p.kv_cache_tokens,
            busy=1 - math.exp(-batch),
            step_s=step,
            served=served,
        )

    def advance(self, rate: float, dt: float) -> None:
        """`dt` simulated seconds at `rate` requests/s offered to this replica."""
        backlog = self.waiting + rate * dt
        if backlog > self.capacity * dt:
            # Full batches all along: serve at capacity, the rest waits.
            state = self.steady(self.capacity)
            served = self.capacity * dt
        else:
            # The queue (if any) empties within the interval; the batch carries the offered rate.
            state = self.steady(min(rate + self.waiting / dt, self.capacity) if dt > 0 else rate)
            served = backlog
        self.waiting = backlog - served
        self.served_total += served
        self.running, self.kv_cache_usage, self.busy = state.running, state.kv_cache_usage, state.busy

    def in_flight(self) -> float:
        return self.running + self.waiting


__all__ = ["FluidReplica", "Steady", "Workload"]
