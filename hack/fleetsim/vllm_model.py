"""A pure model of one vLLM engine: its capacity profile and its continuous-batching scheduler.

`profile_for` derives, from first principles and the constants below, how many
KV-cache tokens a deployment holds and what a scheduler step costs.
`Engine` is a discrete-event state machine of vLLM's scheduler: time is passed
in, nothing sleeps, so the same code drives the HTTP simulator (vllm_server.py)
and fast unit tests.

What is modelled, per step (one forward pass of the batch):
- FCFS admission while running < max_num_seqs and the KV cache has room for the
  request's prompt (plus anything it had generated before a preemption);
- a token budget per step (max_num_batched_tokens, as vLLM's chunked prefill):
  running decodes first, one token each, then prefill chunks;
- one KV token more per decode; when the cache is full the newest running
  request is preempted back to the head of the queue and recomputed later;
- step time = weights read once + prefill FLOPs + per-sequence decode FLOPs +
  KV reads of every decoding sequence's context.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

from fleetsim.models import GIB, gpu_spec, model_spec
from gpufleet.api import kv_fit

# The memory arithmetic and vLLM's start-up refusals are gpufleet's (gpufleet.api.kv_fit, with
# their sources), so the simulated engine refuses exactly what `gpufleet validate` rejects.
ACTIVATION_RESERVE_GIB = kv_fit.ACTIVATION_RESERVE_GIB
# Fraction of datasheet HBM bandwidth a decode step achieves reading weights and KV.
DECODE_BANDWIDTH_EFFICIENCY = 0.7
# Model FLOPs utilisation of the tensor cores for a token's 2 × params FLOPs.
MFU = 0.5
# vLLM allocates the KV cache in blocks of this many tokens (--block-size default).
KV_BLOCK_TOKENS = kv_fit.BLOCK_TOKENS
# Probability that a proposed token is accepted, per method, treated as independent per position
# (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding", §3.1). Each is
# solved from a mean acceptance length L measured with vLLM at k proposed tokens, L = (1 − a^(k+1)) /
# (1 − a) (derived):
# - ngram 0.68: Qwen3-32B-FP8, k = 3, L = 2.46 in vLLM's SpecDecoding log (vllm issue #19254);
# - eagle 0.57: EAGLE-LLaMA3-Instruct-8B on MT-Bench, k = 2, L = 1.89 (vllm PR #16035);
# - eagle3 0.61: an EAGLE-3 head for MiniCPM, k = 6, L = 2.47 (vllm PR #24243).
# draft_model and mtp have no measurement here: EAGLE's rate stands in for them. All depend on the
# workload (prompt overlap for ngram, how well the drafter imitates the model for the others).
ACCEPTANCE_RATES: dict[str, float] = {
    "ngram": 0.68,
    "eagle": 0.57,
    "eagle3": 0.61,
    "draft_model": 0.57,
    "mtp": 0.57,
}


def tokens_per_step(acceptance_rate: float, num_speculative_tokens: int) -> float:
    """Expected tokens a sequence gains per verification step with k proposals: the accepted prefix
    plus the one the model samples itself, (1 − a^(k+1)) / (1 − a) (Leviathan et al. 2023, eq. 1)."""
    k = num_speculative_tokens
    if k <= 0:
        return 1.0
    if acceptance_rate >= 1:
        return float(k + 1)
    return (1 - acceptance_rate ** (k + 1)) / (1 - acceptance_rate)


class EngineConfigError(ValueError):
    """vLLM would refuse to start with this configuration (the pod would crash-loop)."""


class RequestRejectedError(ValueError):
    """vLLM answers 400 to this request."""


@dataclass(frozen=True, kw_only=True)
class EngineProfile:
    """Capacity and cost constants of one engine (one replica, all its TP ranks)."""

    kv_cache_tokens: int
    prefill_tokens_per_s: float
    # decode step = base + per_seq × sequences + per_context_token × Σ context lengths
    decode_step_base_s: float
    decode_step_per_seq_s: float
    decode_step_per_context_token_s: float = 0.0
    max_model_len: int
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    # Speculative decoding: tokens proposed per step (each decode schedules 1 + k tokens) and the
    # expected tokens a decoding sequence gains per step.
    num_speculative_tokens: int = 0
    tokens_per_decode_step: float = 1.0
    # Descriptive, for other simulators (dcgm-exporter memory, logs).
    model_id: str = ""
    tensor_parallel_size: int = 1
    weights_gib_per_gpu: float = 0.0
    gpu_memory_gib_per_gpu: float = 0.0

    def decode_step_s(self, batch: int, context_tokens: int) -> float:
        """One decode step of `batch` sequences holding `context_tokens` KV tokens in total."""
        return (
            self.decode_step_base_s
            + batch * self.decode_step_per_seq_s
            + context_tokens * self.decode_step_per_context_token_s
        )


def slowed(profile: EngineProfile, prefill: float = 1.0, decode: float = 1.0) -> EngineProfile:
    """`profile` with its prefill compute `prefill` times as long and its decode step `decode` times.

    A step costs decode_step_s(...) + prefill tokens / prefill_tokens_per_s (Engine.step), so the first
    factor scales the second term and the other the first: a request alone has TTFT = decode_step_base_s
    (the weights read) × decode + prompt / rate × prefill, and each later token decode_step_s(1, context)
    × decode. Both at 2 double every step. Whatever reads the profile (fleetsim's Engine, llm-d-inference-
    sim's calibration, scale mode's fluid replica) sees the same slower engine.
    """
    if prefill <= 0 or decode <= 0:
        raise ValueError(f"slowdowns must be > 0, got prefill {prefill}, decode {decode}")
    if prefill == 1 and decode == 1:
        return profile
    return replace(
        profile,
        prefill_tokens_per_s=profile.prefill_tokens_per_s / prefill,
        decode_step_base_s=profile.decode_step_base_s * decode,
        decode_step_per_seq_s=profile.decode_step_per_seq_s * decode,
        decode_step_per_context_token_s=profile.decode_step_per_context_token_s * decode,
    )


def weights_bytes(model_id: str, dtype_bytes: float = 2) -> float:
    """Bytes of weights the engine loads (all TP ranks together)."""
    return model_spec(model_id).weight_bytes(dtype_bytes)


def profile_for(
    model_id: str,
    tensor_parallel_size: int,
    gpu_product: str,
    mig_profile: str | None = None,
    dtype_bytes: float = 2,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    *,
    kv_cache_dtype_bytes: float = 2,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    speculative_method: str | None = None,
    num_speculative_tokens: int = 0,
    draft_model_id: str | None = None,
    acceptance_rate: float | None = None,
    max_loras: int = 0,
    max_lora_rank: int = 0,
) -> EngineProfile:
    """The profile of `vllm serve model_id --tensor-parallel-size tp` on `gpu_product` GPUs.

    `dtype_bytes` is bytes per weight (2 bf16, 1 fp8/int8, 0.5 4-bit); the KV cache stays
    bf16 unless `kv_cache_dtype_bytes` says otherwise (vLLM's --kv-cache-dtype auto).

    - weights per GPU = params × dtype_bytes / TP
    - KV tokens = (GPU memory × utilization − weights per GPU − ACTIVATION_RESERVE_GIB)
      / KV bytes per token per GPU, rounded down to whole blocks (gpufleet.api.kv_fit)
    - decode step = weights per GPU / (bandwidth × efficiency)          (weights read once)
      + sequences × 2 × params / (TP × FLOPS × MFU)                     (each token's FLOPs)
      + Σ context × KV bytes per token per GPU / (bandwidth × efficiency)  (attention reads)
    - prefill tokens/s = TP × FLOPS × MFU / (2 × params)

    With speculative decoding (`speculative_method`, k = `num_speculative_tokens`) the drafter's
    weights and KV share the GPUs (gpufleet.api.kv_fit.speculative_draft), a step verifies k + 1
    tokens per sequence and runs the drafter k times (weights read and FLOPs per proposal; ngram
    costs nothing on the GPU), and each sequence gains `tokens_per_step` tokens on average at
    `acceptance_rate` (default: ACCEPTANCE_RATES of the method).

    Raises EngineConfigError where vLLM fails at startup: weights do not fit, the KV
    cache cannot hold one max_model_len sequence, max_model_len exceeds the model's context,
    or the attention heads do not split over TP (gpufleet.api.kv_fit.vllm_refusal).
    """
    if tensor_parallel_size < 1:
        raise EngineConfigError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
    if not 0 < gpu_memory_utilization <= 1:
        raise EngineConfigError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    model = model_spec(model_id)
    gpu = gpu_spec(gpu_product, mig_profile)
    if gpu.mig_profile is not None and tensor_parallel_size > 1:
        # MIG slices have no peer-to-peer/NVLink path, so NCCL cannot span them.
        raise EngineConfigError("tensor parallelism across MIG slices is not supported")

    context = max_model_len if max_model_len is not None else model.max_position_embeddings
    default_batched, default_seqs = kv_fit.batch_defaults(gpu.memory_gib, gpu.product)
    draft = None
    k = num_speculative_tokens if speculative_method else 0
    if speculative_method:
        named = speculative_method == "draft_model" and draft_model_id
        checkpoint = model_spec(draft_model_id) if named and draft_model_id else None
        draft = kv_fit.speculative_draft(
            speculative_method,
            model.architecture(),
            model.params,
            dtype_bytes,
            checkpoint.params if checkpoint else None,
            checkpoint.architecture() if checkpoint else None,
            # The simulator knows the weights' bytes only; a quantized target's draft is taken as bf16.
            dtype_bytes=2,
        )
    fit = kv_fit.KvFit(
        architecture=model.architecture(),
        parameters=model.params,
        bytes_per_parameter=dtype_bytes,
        tensor_parallel_size=tensor_parallel_size,
        device_gib=gpu.memory_gib,
        gpu_memory_utilization=gpu_memory_utilization,
        kv_dtype_bytes=kv_cache_dtype_bytes,
        max_model_len=context,
        max_num_seqs=max_num_seqs if max_num_seqs is not None else default_seqs,
        max_num_batched_tokens=(
            max_num_batched_tokens if max_num_batched_tokens is not None else default_batched
        ),
        draft=draft,
        # --enable-lora: slots of --max-lora-rank reserved before the KV cache, as gpufleet's fit counts them.
        lora_bytes_per_gpu=kv_fit.lora_bytes_per_gpu(
            model.architecture(), model.params, max_loras, max_lora_rank, 2, tensor_parallel_size
        ),
    )
    refusal = kv_fit.vllm_refusal(fit)
    if refusal is not None:
        raise EngineConfigError(f"{model.name} on {gpu.product}: {refusal}")
    # Per GPU: each rank holds its share of the heads of every token (replicated past TP = KV heads).
    kv_token_bytes = kv_fit.kv_bytes_per_token(
        model.architecture(), kv_cache_dtype_bytes, tensor_parallel_size
    )
    weights_per_gpu = fit.weights_gib_per_gpu * GIB

    bandwidth = gpu.hbm_bandwidth_bytes_per_s * DECODE_BANDWIDTH_EFFICIENCY
    token_flops = 2 * model.params
    compute = tensor_parallel_size * gpu.bf16_dense_flops * MFU
    # The drafter runs k times per step: its weights read and its FLOPs for each proposal.
    draft_weights_per_gpu = fit.draft_weights_gib_per_gpu * GIB
    draft_token_flops = draft.weight_bytes if draft is not None else 0.0  # 2 × params at 2 bytes each
    rate = ACCEPTANCE_RATES.get(speculative_method or "", 0.0) if acceptance_rate is None else acceptance_rate
    return EngineProfile(
        kv_cache_tokens=fit.kv_tokens,
        prefill_tokens_per_s=compute / token_flops,
        decode_step_base_s=(weights_per_gpu + k * draft_weights_per_gpu) / bandwidth,
        decode_step_per_seq_s=((k + 1) * token_flops + k * draft_token_flops) / compute,
        num_speculative_tokens=k,
        tokens_per_decode_step=tokens_per_step(rate, k),
        decode_step_per_context_token_s=kv_token_bytes / bandwidth,
        max_model_len=context,
        max_num_seqs=fit.max_num_seqs,
        max_num_batched_tokens=fit.max_num_batched_tokens,
        model_id=model_id,
        tensor_parallel_size=tensor_parallel_size,
        weights_gib_per_gpu=fit.weights_gib_per_gpu,
        gpu_memory_gib_per_gpu=fit.budget_gib_per_gpu,
    )


@dataclass(frozen=True, slots=True)
class FirstToken:
    request_id: str
    ttft: float


@dataclass(frozen=True, slots=True)
class FinishedRequest:
    request_id: str
    prompt_tokens: int
    generated_tokens: int
    arrival: float
    finished_at: float
    # Time in WAITING before first scheduled, as vllm:request_queue_time_seconds.
    queue_time: float
    ttft: float
    finish_reason: str = "length"

    @property
    def e2e_latency(self) -> float:
        return self.finished_at - self.arrival


@dataclass(slots=True)
class StepResult:
    """One scheduler step that starts at `start` and whose outputs exist at `end`."""

    start: float
    duration: float
    # Requests that produced a token this step (for streaming).
    tokens: list[str] = field(default_factory=list)
    first_tokens: list[FirstToken] = field(default_factory=list)
    finished: list[FinishedRequest] = field(default_factory=list)
    # inter-token latency → how many tokens saw it (most of a batch shares one value).
    inter_token_latencies: dict[float, int] = field(default_factory=dict)
    # Counted as vLLM does: a request's prompt when its first token is out.
    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    # Speculative decoding: one entry per draft verified this step, the proposals it got accepted (a
    # decoding sequence's tokens this step minus the one the model samples itself), as vLLM's scheduler
    # counts them (SpecDecodingStats.observe_draft, vllm/v1/spec_decode/metrics.py).
    spec_accepted: list[int] = field(default_factory=list)

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(slots=True)
class _Seq:
    request_id: str
    prompt_tokens: int
    max_tokens: int
    arrival: float
    generated: int = 0
    # Tokens to (re)compute before the next token: the prompt, plus generated ones after preemption.
    to_prefill: int = 0
    prefilled: int = 0
    kv: int = 0
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float = 0.0
    # Expected tokens earned by speculation and not yet emitted (whole tokens come out per step).
    speculative_credit: float = 0.0


class Engine:
    """vLLM's continuous-batching scheduler as a pure state machine; see the module docstring."""

    def __init__(self, profile: EngineProfile, busy_window_s: float = 10.0) -> None:
        self.profile = profile
        self.busy_window_s = busy_window_s
        self.num_preemptions = 0
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._ids: set[str] = set()
        self._kv_used = 0
        # Merged busy intervals [start, end] within the last busy_window_s.
        self._busy: deque[list[float]] = deque()

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_cache_usage(self) -> float:
        return self._kv_used / self.profile.kv_cache_tokens

    @property
    def has_work(self) -> bool:
        return bool(self._running or self._waiting)

    def submit(self, request_id: str, prompt_tokens: int, max_tokens: int, now: float) -> None:
        """Queue a request; RequestRejectedError where vLLM returns 400."""
        if request_id in self._ids:
            raise ValueError(f"duplicate request id {request_id!r}")
        if prompt_tokens < 1 or max_tokens < 1:
            raise RequestRejectedError("prompt and max_tokens must each be at least 1 token")
        total = prompt_tokens + max_tokens
        if total > self.profile.max_model_len:
            raise RequestRejectedError(
                f"This model's maximum context length is {self.profile.max_model_len} tokens. "
                f"However, you requested {total} tokens ({prompt_tokens} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages or completion."
            )
        self._ids.add(request_id)
        self._waiting.append(_Seq(request_id, prompt_tokens, max_tokens, now, to_prefill=prompt_tokens))

    def abort(self, request_id: str) -> bool:
        """Drop a request (client gone); True if it was known."""
        if request_id not in self._ids:
            return False
        self._ids.discard(request_id)
        for seq in self._running:
            if seq.request_id == request_id:
                self._running.remove(seq)
                self._kv_used -= seq.kv
                return True
        for seq in self._waiting:
            if seq.request_id == request_id:
                self._waiting.remove(seq)
                return True
        return True

    def busy_fraction(self, now: float) -> float:
        """Share of the last busy_window_s the engine spent in steps (GPU 'utilization')."""
        lo = now - self.busy_window_s
        busy = sum(max(0.0, min(end, now) - max(start, lo)) for start, end in self._busy)
        return min(1.0, busy / self.busy_window_s)

    def _preempt_newest(self) -> _Seq:
        victim = self._running.pop()
        self._kv_used -= victim.kv
        victim.kv = 0
        # Recompute: prompt and generated tokens are prefilled again on readmission.
        victim.to_prefill = victim.prompt_tokens + victim.generated
        victim.prefilled = 0
        self._waiting.appendleft(victim)
        self.num_preemptions += 1
        return victim

    def step(self, now: float) -> StepResult:
        """Schedule and run one step starting at `now`; a zero-duration result means no work."""
        profile = self.profile
        budget = profile.max_num_batched_tokens
        capacity = profile.kv_cache_tokens
        decodes: list[tuple[_Seq, int]] = []
        prefills: list[tuple[_Seq, int]] = []
        preemptions = 0

        # Running requests first, in admission order, as vLLM's scheduler does.
        i = 0
        while i < len(self._running) and budget > 0:
            seq = self._running[i]
            if seq.prefilled < seq.to_prefill:
                chunk = min(seq.to_prefill - seq.prefilled, budget)
                prefills.append((seq, chunk))
                budget -= chunk
                i += 1
                continue
            gained = 1
            if profile.num_speculative_tokens:
                # On average tokens_per_decode_step: the accepted proposals and the model's own token.
                seq.speculative_credit += profile.tokens_per_decode_step
                gained = max(1, min(int(seq.speculative_credit), seq.max_tokens - seq.generated))
                seq.speculative_credit -= gained
            victim = None
            while self._kv_used + gained > capacity and victim is not seq:
                victim = self._preempt_newest()
                preemptions += 1
            if victim is seq:
                break
            self._kv_used += gained
            seq.kv += gained
            decodes.append((seq, gained))
            # vLLM schedules the proposals with the token they verify (1 + k per decode).
            budget -= 1 + profile.num_speculative_tokens
            i += 1

        # Then the queue, FCFS, unless this step had to preempt (vLLM admits nothing then).
        while (
            not preemptions
            and self._waiting
            and budget > 0
            and len(self._running) < profile.max_num_seqs
            and self._kv_used + self._waiting[0].to_prefill <= capacity
        ):
            seq = self._waiting.popleft()
            self._kv_used += seq.to_prefill
            seq.kv = seq.to_prefill
            if seq.scheduled_at is None:
                seq.scheduled_at = now
            self._running.append(seq)
            chunk = min(seq.to_prefill, budget)
            prefills.append((seq, chunk))
            budget -= chunk

        if not decodes and not prefills:
            return StepResult(start=now, duration=0.0, preemptions=preemptions)

        prefill_tokens = sum(chunk for _, chunk in prefills)
        duration = profile.decode_step_s(len(decodes), sum(seq.kv for seq, _ in decodes))
        duration += prefill_tokens / profile.prefill_tokens_per_s
        end = now + duration
        result = StepResult(start=now, duration=duration, preemptions=preemptions)

        itl = result.inter_token_latencies
        for seq, gained in decodes:
            # One observation per request and step however many tokens it brought, as vLLM records
            # inter-token latency (vllm/v1/metrics/stats.py IterationStats.update_from_output).
            gap = end - seq.last_token_at
            itl[gap] = itl.get(gap, 0) + 1
            seq.generated += gained
            seq.last_token_at = end
            result.tokens.extend([seq.request_id] * gained)
            if profile.num_speculative_tokens:
                result.spec_accepted.append(min(gained - 1, profile.num_speculative_tokens))
        for seq, chunk in prefills:
            seq.prefilled += chunk
            if seq.prefilled < seq.to_prefill:
                continue
            # The step that completes a prefill also samples the next token.
            if seq.generated == 0:
                seq.first_token_at = end
                result.first_tokens.append(FirstToken(seq.request_id, end - seq.arrival))
                result.prompt_tokens += seq.prompt_tokens
            else:
                gap = end - seq.last_token_at
                itl[gap] = itl.get(gap, 0) + 1
            seq.generated += 1
            seq.last_token_at = end
            result.tokens.append(seq.request_id)

        still_running: list[_Seq] = []
        for seq in self._running:
            if seq.generated < seq.max_tokens:
                still_running.append(seq)
                continue
            self._kv_used -= seq.kv
            self._ids.discard(seq.request_id)
            arrival = seq.arrival
            result.finished.append(
                FinishedRequest(
                    request_id=seq.request_id,
                    prompt_tokens=seq.prompt_tokens,
                    generated_tokens=seq.generated,
                    arrival=arrival,
                    finished_at=end,
                    queue_time=max(0.0, (seq.scheduled_at or arrival) - arrival),
                    ttft=(seq.first_token_at or end) - arrival,
                )
            )
        self._running = still_running
        self._record_busy(now, end)
        result.generation_tokens = len(result.tokens)
        return result

    def _record_busy(self, start: float, end: float) -> None:
        if self._busy and start <= self._busy[-1][1]:
            self._busy[-1][1] = max(self._busy[-1][1], end)
        else:
            self._busy.append([start, end])
        horizon = end - self.busy_window_s
        while self._busy and self._busy[0][1] < horizon:
            self._busy.popleft()


__all__ = [
    "ACCEPTANCE_RATES",
    "ACTIVATION_RESERVE_GIB",
    "DECODE_BANDWIDTH_EFFICIENCY",
    "KV_BLOCK_TOKENS",
    "MFU",
    "Engine",
    "EngineConfigError",
    "EngineProfile",
    "FinishedRequest",
    "FirstToken",
    "RequestRejectedError",
    "StepResult",
    "profile_for",
    "slowed",
    "tokens_per_step",
    "weights_bytes",
]
