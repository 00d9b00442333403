"""Faulty builds: a container image that the simulated vLLM runs worse than the real one.

A scenario's `builds:` (or a benchmark's Scenario) maps the exact image string of a pod's vLLM container
to its faults. The kubelet looks the image up when the pod starts:

- `errorShare`: this share of the completion requests that pass validation is answered HTTP 500 with vLLM's
  internal-error body, at once, before the engine sees them (fleetsim.vllm_server);
- `prefillSlowdown` / `decodeSlowdown`: multipliers on the engine's prefill compute and on its decode
  step (weights read, per-sequence compute, KV reads) for every pod of that image (`Build.engine_profile`);
- `neverReady`: the engine never finishes starting, so its HTTP server never listens (fleetsim.kubelet).

Images not listed run as built.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fleetsim.vllm_model import EngineProfile, slowed


class Build(BaseModel):
    """The faults of one image; every field defaults to a sound build."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    error_share: float = Field(
        0.0,
        ge=0,
        le=1,
        alias="errorShare",
        description="Share of completion requests answered HTTP 500 (vLLM's internal server error).",
    )
    prefill_slowdown: float = Field(
        1.0,
        gt=0,
        alias="prefillSlowdown",
        description="Multiplier on prefill compute time (prompt tokens / prefill rate); below 1 is faster.",
    )
    decode_slowdown: float = Field(
        1.0,
        gt=0,
        alias="decodeSlowdown",
        description="Multiplier on decode step time (weights read, per-sequence FLOPs, KV reads).",
    )
    never_ready: bool = Field(
        False,
        alias="neverReady",
        description="The engine never finishes starting: /health never answers, the pod is never Ready.",
    )

    def engine_profile(self, profile: EngineProfile) -> EngineProfile:
        """`profile` as this build runs it (its slowdowns applied)."""
        return slowed(profile, prefill=self.prefill_slowdown, decode=self.decode_slowdown)


__all__ = ["Build"]
