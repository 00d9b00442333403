"""Timing parameters of the simulated fleet, each with its source.

Every delay here is in simulated seconds; SimClock turns it into real time.
All are overridable from a scenario file (`params:`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class KubeletParams(BaseModel):
    """What a GPU node's kubelet and the vLLM container take to start and stop."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # REFERENCE.md: vLLM container images are 12-29 GB (vllm #27154). 20 GB at an assumed
    # ~500 MB/s registry pull is ~40 s; a node that pulled it once has it cached.
    image_pull_seconds: float = Field(40.0, ge=0, alias="imagePullSeconds")
    # REFERENCE.md (Run:ai Model Streamer on Llama-3-8B): S3 3.51 GiB/s, io2 ~1.95 GiB/s,
    # gp3 ~1.0 GiB/s. Scaled to 70B bf16 (131 GiB): ~37 s, ~67 s, ~128 s.
    s3_gib_per_second: float = Field(3.51, gt=0, alias="s3GiBPerSecond")
    pvc_gib_per_second: float = Field(1.0, gt=0, alias="pvcGiBPerSecond")
    # Hub downloads depend on the network; 0.5 GiB/s gives ~4.5 min for 70B, between the
    # streamer's ~37 s and the 10+ minutes users report untuned (vllm #10702).
    hf_gib_per_second: float = Field(0.5, gt=0, alias="hfGiBPerSecond")
    # CUDA graphs capture and engine warm-up after the weights are in (assumed).
    engine_warmup_seconds: float = Field(20.0, ge=0, alias="engineWarmupSeconds")
    # The kubelet renews its Lease every 10 s by default (nodeLeaseDurationSeconds 40).
    heartbeat_seconds: float = Field(10.0, gt=0, alias="heartbeatSeconds")


class CloudParams(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # REFERENCE.md: AWS sends the interruption notice 2 minutes before stop/terminate.
    spot_notice_seconds: float = Field(120.0, ge=0, alias="spotNoticeSeconds")
