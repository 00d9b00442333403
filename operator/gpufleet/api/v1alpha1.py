"""`gpufleet.io/v1alpha1` `ModelDeployment`: the one source of the CRD schema.

Every field's description is what `kubectl explain` shows, so it is written
for a platform engineer. Field-level limits (enums, ranges, patterns) live in
the types so the API server enforces them; rules that span fields live in
`gpufleet.api.validation` and run in the webhook, the CLI and the operator.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from gpufleet.api.timestamps import KubeTime

GROUP = "gpufleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ("md",)

# The newest vLLM release on PyPI when it was set (0.34.0, uploaded 2026-11-16; PyPI release history). vLLM
# publishes each release as vllm/vllm-openai:v<release> (.buildkite/scripts/publish-release-images.sh at
# v0.34.0). gpufleet.api.vllm_versions reads the version from this tag, and tests/contract parses the
# generated command line with that release's own parser.
DEFAULT_IMAGE = "vllm/vllm-openai:v0.34.0"

# The AWS CLI's own image (Docker Hub amazon/aws-cli), pinned: its entrypoint is `aws`, and `aws s3 sync`
# copies an adapter's prefix. It reads AWS_ENDPOINT_URL and AWS_REGION like the SDKs do.
DEFAULT_ADAPTER_FETCH_IMAGE = "amazon/aws-cli:2.22.0"
# Without spec.engine.maxLoras, slots for every adapter up to this many: each slot reserves GPU memory.
DEFAULT_MAX_LORAS_CAP = 4

Dtype = Literal["auto", "bfloat16", "float16"]
# vLLM 0.34.0 accepts only these for --max-lora-rank (vllm/config/lora.py MaxLoRARanks).
LoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
Quantization = Literal["none", "fp8", "awq", "gptq"]
CapacityType = Literal["spot", "on-demand"]
Slot = Literal["a", "b"]
ConditionStatus = Literal["True", "False", "Unknown"]

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
MODEL_URI_PATTERN = r"^(hf|s3|pvc)://[^/\s]+(/\S*)?$"
MIG_PROFILE_PATTERN = r"^[1-7]g\.[0-9]+gb$"
# Hugging Face style names (org/name, versions, tags) and nothing that could leave a PromQL string
# literal or a label value: the autoscaler queries vLLM's metrics by this name.
SERVED_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$"


class _Model(BaseModel):
    """camelCase in YAML, snake_case in Python; unknown fields are an error."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

    def to_json(self) -> dict[str, Any]:
        """As stored in the API server: camelCase, Kubernetes times, unset (None) members left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ModelArchitectureSpec(_Model):
    """Architecture numbers from the model's config.json, for sizing the KV cache."""

    num_hidden_layers: Annotated[int, Field(description="config.json num_hidden_layers.", ge=1)]
    num_key_value_heads: Annotated[
        int,
        Field(description="config.json num_key_value_heads (num_attention_heads where it has none).", ge=1),
    ]
    head_dim: Annotated[
        int,
        Field(description="config.json head_dim (hidden_size / num_attention_heads if it has none).", ge=1),
    ]
    num_attention_heads: Annotated[
        int | None,
        Field(description="config.json num_attention_heads; must divide by tensorParallelSize.", ge=1),
    ] = None
    max_position_embeddings: Annotated[
        int | None,
        Field(
            description="config.json max_position_embeddings: vLLM's default for maxModelLen.",
            ge=1,
        ),
    ] = None


class ModelSource(_Model):
    """Which weights to serve and how clients name them."""

    uri: Annotated[
        str,
        Field(
            description=(
                "Where the weights come from: hf://<org>/<name> (Hugging Face Hub), "
                "s3://<bucket>/<prefix> (streamed by vLLM's Run:ai model streamer), or "
                "pvc://<claim>[/<path>] (a PersistentVolumeClaim in the same namespace, mounted read-only)."
            ),
            pattern=MODEL_URI_PATTERN,
            examples=["hf://meta-llama/Meta-Llama-3-70B-Instruct"],
        ),
    ]
    served_name: Annotated[
        str | None,
        Field(
            description=(
                "Model name clients send in the OpenAI API (`model` field). "
                "Defaults to the ModelDeployment's metadata.name. Letters, digits and . _ : / @ + -, "
                "starting with a letter or digit."
            ),
            pattern=SERVED_NAME_PATTERN,
            min_length=1,
            max_length=253,
        ),
    ] = None
    parameter_count: Annotated[
        float | None,
        Field(
            description=(
                "Number of weights (e.g. 70.6e9 for Llama 3 70B), for the check that the weights and "
                "the KV cache fit the GPUs. Unset: the catalog's count for a known model; for another "
                "model the check is skipped with a warning."
            ),
            gt=0,
        ),
    ] = None
    dtype: Annotated[
        Dtype,
        Field(
            description="Weight and activation precision passed to vLLM --dtype. auto uses the checkpoint's."
        ),
    ] = "auto"
    quantization: Annotated[
        Quantization,
        Field(
            description=(
                "Weight quantization passed to vLLM --quantization. fp8 halves the weights of a bf16 "
                "model (weight-only W8A16 on Ampere); awq and gptq are 4-bit checkpoints."
            )
        ),
    ] = "none"
    max_model_len: Annotated[
        int | None,
        Field(
            description=(
                "Longest context (prompt + output tokens) a request may use; vLLM --max-model-len. "
                "Unset: the model's max_position_embeddings, as vLLM does. The KV cache must hold one "
                "sequence of this length or vLLM refuses to start (see `gpufleet fit`)."
            ),
            ge=1,
        ),
    ] = None
    typical_sequence_length: Annotated[
        int | None,
        Field(
            description=(
                "Prompt + output tokens of a typical request. Validation warns when the KV cache cannot "
                "hold --max-num-seqs such requests at once. Unset: 1024."
            ),
            ge=1,
        ),
    ] = None
    architecture: Annotated[
        ModelArchitectureSpec | None,
        Field(
            description=(
                "Layers, KV heads and head size from the model's config.json, for the KV-cache check of a "
                "model not in gpufleet's catalog (Llama 3.x, Mistral/Mixtral, Qwen2.5/Qwen3, DeepSeek-R1 "
                "distills, Gemma 2/3); overrides the catalog. Without either, the check is skipped "
                "with a warning."
            )
        ),
    ] = None
    credentials_secret: Annotated[
        str | None,
        Field(
            description=(
                "Name of a Secret in the same namespace holding HF_TOKEN (for hf://) and/or "
                "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (for s3://), for the model and its "
                "adapters. The operator checks that it exists and holds them (condition CredentialsReady)."
            ),
            pattern=_DNS_SUBDOMAIN,
            max_length=253,
        ),
    ] = None


class EnvVar(_Model):
    """An environment variable for the vLLM container, as in a Pod spec."""

    name: Annotated[str, Field(description="Variable name.", min_length=1)]
    value: Annotated[str | None, Field(description="Literal value.")] = None
    value_from: Annotated[
        dict[str, Any] | None,
        Field(
            description="Source of the value (secretKeyRef, configMapKeyRef, fieldRef), as in a Pod spec.",
            json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
        ),
    ] = None


class LoraAdapter(_Model):
    """A LoRA adapter served next to the base model under its own name."""

    name: Annotated[
        str,
        Field(
            description=(
                "Model name clients send to use this adapter. Letters, digits and . _ : / @ + -, starting "
                "with a letter or digit (an = would split vLLM's --lora-modules name=path)."
            ),
            pattern=SERVED_NAME_PATTERN,
            min_length=1,
            max_length=253,
        ),
    ]
    uri: Annotated[
        str,
        Field(
            description="Where the adapter comes from: hf://, s3:// or pvc:// as for spec.model.uri.",
            pattern=MODEL_URI_PATTERN,
        ),
    ]


# vLLM 0.34.0's built-in proposers that gpufleet renders and sizes (vllm/config/speculative.py
# SpeculativeMethod; the MTP model-type aliases there are deprecated in favour of "mtp").
SpeculativeMethod = Literal["ngram", "draft_model", "eagle", "eagle3", "mtp"]


class DraftModel(_Model):
    """The checkpoint that proposes tokens: a small model of the same family, or an EAGLE head."""

    uri: Annotated[
        str,
        Field(
            description="Where the draft weights come from: hf://, s3:// or pvc:// as for spec.model.uri.",
            pattern=MODEL_URI_PATTERN,
            examples=["hf://meta-llama/Llama-3.2-1B-Instruct"],
        ),
    ]
    parameter_count: Annotated[
        float | None,
        Field(
            description=(
                "Number of draft weights, for the memory fit. Unset: the catalog's count for a known "
                "model; for an EAGLE head, an estimate of one decoder layer of the served model."
            ),
            gt=0,
        ),
    ] = None
    architecture: Annotated[
        ModelArchitectureSpec | None,
        Field(description="The draft's config.json numbers, for its KV cache; overrides the catalog."),
    ] = None


class SpeculativeDecoding(_Model):
    """Proposes several tokens cheaply and lets the served model verify them in one step."""

    method: Annotated[
        SpeculativeMethod,
        Field(
            description=(
                "ngram: look the next tokens up in the prompt (no draft model; suits summarising and "
                "editing). draft_model: a small model with the same tokenizer. eagle / eagle3: an "
                "EAGLE or EAGLE-3 head trained for the served model. mtp: the served model's own "
                "multi-token-prediction layers (DeepSeek-V3/R1, Qwen3-Next, GLM-4.5, ...)."
            )
        ),
    ]
    num_speculative_tokens: Annotated[
        int,
        Field(description="Tokens proposed per step (vLLM num_speculative_tokens); 2-5 is typical.", ge=1),
    ]
    draft_model: Annotated[
        DraftModel | None,
        Field(description="The draft checkpoint; required for draft_model, eagle and eagle3."),
    ] = None
    prompt_lookup_min: Annotated[
        int | None,
        Field(description="ngram only: shortest n-gram matched in the prompt. vLLM's default: 5.", ge=1),
    ] = None
    prompt_lookup_max: Annotated[
        int | None,
        Field(description="ngram only: longest n-gram matched in the prompt. vLLM's default: 5.", ge=1),
    ] = None


class Engine(_Model):
    """The vLLM server that runs the model."""

    image: Annotated[
        str,
        Field(
            description=(
                "vLLM OpenAI-compatible server image. Its tag (vllm/vllm-openai:v0.34.0) tells gpufleet "
                "which vLLM it runs, so which flags it takes; set version for a tag that does not."
            ),
            min_length=1,
        ),
    ] = DEFAULT_IMAGE
    version: Annotated[
        str | None,
        Field(
            description=(
                "vLLM release the image runs, e.g. 0.34.0, for an image whose tag does not say (a digest, "
                "latest, a private build). Unset: read from the image tag; a tag naming no release is taken "
                "as the newest release gpufleet knows (the default image's). Releases before 0.18.0 have "
                "no --shutdown-timeout, so gpufleet does not pass it to them."
            ),
            pattern=r"^v?[0-9]+\.[0-9]+(\.[0-9]+)?$",
        ),
    ] = None
    args: Annotated[
        list[str],
        Field(
            description=(
                "Extra `vllm serve` arguments, appended after the ones gpufleet derives from the spec. "
                "Flags that the spec already controls (--model, --port, --tensor-parallel-size, ...) "
                "are rejected: set the spec field instead."
            )
        ),
    ] = []
    env: Annotated[
        list[EnvVar],
        Field(description="Extra environment variables for the vLLM container."),
    ] = []
    speculative_decoding: Annotated[
        SpeculativeDecoding | None,
        Field(description="Speculative decoding (vLLM --speculative-config). Unset: off."),
    ] = None
    lora_adapters: Annotated[
        list[LoraAdapter],
        Field(
            description=(
                "LoRA adapters loaded at start-up (vLLM --enable-lora --lora-modules). hf:// adapters are "
                "downloaded by vLLM, pvc:// ones mounted read-only, s3:// ones copied into the pod by an "
                "init container (adapterFetchImage) before vLLM starts; all are then served by name."
            ),
            json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        ),
    ] = []
    max_loras: Annotated[
        int | None,
        Field(
            description=(
                "Adapters vLLM can use in one batch (vLLM --max-loras); GPU memory is reserved for this "
                "many adapters of maxLoraRank and counted in the memory fit. Unset: the number of "
                f"loraAdapters, at most {DEFAULT_MAX_LORAS_CAP}."
            ),
            ge=1,
        ),
    ] = None
    max_lora_rank: Annotated[
        LoraRank,
        Field(
            description=(
                "Highest adapter rank vLLM accepts (vLLM --max-lora-rank); an adapter of higher rank "
                "fails to load. One of vLLM's allowed ranks; 16 is vLLM's default."
            )
        ),
    ] = 16
    adapter_fetch_image: Annotated[
        str,
        Field(
            description=(
                "Image of the init container that copies s3:// adapters into the pod before vLLM starts "
                "(runs `aws s3 sync`, with the credentialsSecret's AWS keys when given). Set it to a mirror "
                "when Docker Hub is not reachable."
            ),
            min_length=1,
        ),
    ] = DEFAULT_ADAPTER_FETCH_IMAGE


class Accelerator(_Model):
    """Which GPUs a replica runs on and how many."""

    gpu_product: Annotated[
        str | None,
        Field(
            description=(
                "Required value of the node label nvidia.com/gpu.product, e.g. NVIDIA-A100-SXM4-80GB or "
                "NVIDIA-H100-80GB-HBM3. Unset: any GPU node (then set gpuMemoryGiB)."
            ),
            min_length=1,
            max_length=63,
        ),
    ] = None
    gpu_memory_gib: Annotated[
        float | None,
        Field(
            alias="gpuMemoryGiB",
            description=(
                "Memory of one GPU in GiB, used for the memory-fit check. "
                "Defaults to the known size of gpuProduct (e.g. 80 for NVIDIA-A100-SXM4-80GB)."
            ),
            gt=0,
        ),
    ] = None
    tensor_parallel_size: Annotated[
        Literal[1, 2, 4, 8],
        Field(
            description=(
                "GPUs per replica, all on one node (vLLM --tensor-parallel-size); requests nvidia.com/gpu "
                "of this count. Llama 3 70B bf16 needs 4 on 80 GB GPUs."
            )
        ),
    ] = 1
    mig_profile: Annotated[
        str | None,
        Field(
            description=(
                "Run each replica on one MIG slice instead of whole GPUs, e.g. 3g.40gb; requests "
                "nvidia.com/mig-<profile> (device plugin mixed strategy). Requires tensorParallelSize: 1."
            ),
            pattern=MIG_PROFILE_PATTERN,
        ),
    ] = None


Weekday = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
WEEKDAYS: tuple[str, ...] = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class ScalingSchedule(_Model):
    """A daily window that raises the replica floor, e.g. business hours."""

    name: Annotated[
        str, Field(description="Name of the window, shown in events.", pattern=_DNS_LABEL, max_length=63)
    ]
    days: Annotated[
        list[Weekday],
        Field(
            description="Days the window starts on (Mon..Sun). Empty: every day.",
            json_schema_extra={"x-kubernetes-list-type": "set"},
        ),
    ] = []
    start: Annotated[
        str, Field(description="Start, HH:MM in timeZone.", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    ]
    end: Annotated[
        str,
        Field(
            description="End, HH:MM in timeZone; before start means the window crosses midnight.",
            pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
        ),
    ]
    time_zone: Annotated[str, Field(description="IANA time zone, e.g. Europe/Berlin.", min_length=1)] = "UTC"
    min_replicas: Annotated[int, Field(description="Replica floor while the window is open.", ge=0)]


class Autoscaling(_Model):
    """How the operator sets spec.replicas from serving metrics."""

    enabled: Annotated[
        bool,
        Field(description="Let the operator set spec.replicas between minReplicas and maxReplicas."),
    ] = False
    target_queue_depth: Annotated[
        float,
        Field(description="Requests waiting per replica (vllm:num_requests_waiting) to aim for.", gt=0),
    ] = 8
    target_kv_cache_usage: Annotated[
        float,
        Field(
            alias="targetKVCacheUsage",
            description="KV-cache usage per replica (vllm:kv_cache_usage_perc, 0-1) to aim for.",
            gt=0,
            le=1,
        ),
    ] = 0.85
    target_gpu_utilization: Annotated[
        float,
        Field(
            alias="targetGPUUtilization",
            description=(
                "GPU utilisation (0-1) above which to add replicas. A guard, not the driver: "
                "batching keeps it near 1 under most loads."
            ),
            gt=0,
            le=1,
        ),
    ] = 0.90
    scale_down_delay_seconds: Annotated[
        int,
        Field(description="How long lower demand must last before removing a replica.", ge=0),
    ] = 300
    scale_to_zero_after_seconds: Annotated[
        int | None,
        Field(
            description=(
                "Remove the last replica after this long without requests. Unset: never scale to zero. "
                "Requires minReplicas: 0."
            ),
            ge=0,
        ),
    ] = None
    schedules: Annotated[
        list[ScalingSchedule],
        Field(
            description="Daily windows that raise the floor above minReplicas (pre-scaling for peak hours).",
            json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        ),
    ] = []


class Capacity(_Model):
    """Where replicas run: zones and the spot / on-demand mix."""

    zones: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=63)]],
        Field(
            description=(
                "Availability zones (node label topology.kubernetes.io/zone) to spread replicas over. "
                "Empty: no zone constraint."
            ),
            json_schema_extra={"x-kubernetes-list-type": "set"},
        ),
    ] = []
    on_demand_replicas: Annotated[
        int,
        Field(description="Replicas always placed on on-demand capacity (the floor spot cannot take).", ge=0),
    ] = 0
    spot_percent: Annotated[
        int,
        Field(
            description="Share (0-100) of the replicas above the on-demand floor placed on spot.",
            ge=0,
            le=100,
        ),
    ] = 0
    fallback_to_on_demand: Annotated[
        bool,
        Field(description="Place spot replicas on on-demand capacity while spot cannot be had."),
    ] = True
    zone_cooldown_seconds: Annotated[
        int,
        Field(
            description="After a spot interruption, keep new spot replicas out of that zone this long.", ge=0
        ),
    ] = 300


class RolloutStep(_Model):
    """One stage of a canary rollout: a share of the replicas on the new revision, then a pause."""

    weight: Annotated[
        int,
        Field(
            description=(
                "Percent of the model's replicas to run the new revision, reached by replica ratio behind "
                "the model's one Service: the smallest canary that reaches it, at least one replica "
                "(1 of 3 replicas is 33 %; status.rollout.weight shows what was reached)."
            ),
            ge=1,
            le=100,
        ),
    ]
    pause_seconds: Annotated[
        int | None,
        Field(
            description=(
                "How long to hold the weight once every canary replica of it is ready. Unset: hold until "
                "`gpufleet promote` (an A/B comparison without end)."
            ),
            ge=0,
        ),
    ] = None


class Analysis(_Model):
    """Judging a canary on LLM signals, against limits and against the stable revision, at every step."""

    interval_seconds: Annotated[
        int,
        Field(
            description=(
                "How often the canary is judged, on every request since its step's weight was reached."
            ),
            ge=5,
        ),
    ] = 60
    min_requests: Annotated[
        int,
        Field(
            description=(
                "Completion requests each revision must have answered in the step before it is judged, so "
                "that one slow request cannot decide. Fewer: the step holds, unless the canary's 5xx "
                "answers already exceed maxErrorRate of minRequests (the error rate of the minimum sample "
                "is then over the limit whatever the rest answer): it fails at once."
            ),
            ge=1,
        ),
    ] = 100
    max_error_rate: Annotated[
        float,
        Field(
            description=(
                "Most share of the canary's completion requests answered 5xx (vLLM's http_requests_total). "
                "Default 1 %."
            ),
            ge=0,
            le=1,
        ),
    ] = 0.01
    max_ttft_seconds: Annotated[
        float | None,
        Field(
            alias="maxTTFTSeconds",
            description=(
                "Most p95 time to first token of the canary (vllm:time_to_first_token_seconds). Unset: none."
            ),
            gt=0,
        ),
    ] = None
    max_itl_seconds: Annotated[
        float | None,
        Field(
            alias="maxITLSeconds",
            description=(
                "Most p95 inter-token latency of the canary (vllm:inter_token_latency_seconds). Unset: none."
            ),
            gt=0,
        ),
    ] = None
    max_ttft_ratio: Annotated[
        float | None,
        Field(
            alias="maxTTFTRatio",
            description="Most canary p95 TTFT over the stable revision's, over the same time. Unset: none.",
            ge=1,
        ),
    ] = 1.5
    max_itl_ratio: Annotated[
        float | None,
        Field(
            alias="maxITLRatio",
            description="Most canary p95 inter-token latency over the stable revision's. Unset: none.",
            ge=1,
        ),
    ] = 1.5


class KeepPrevious(_Model):
    """A warm standby of the previous revision after a promotion, so a rollback needs no cold start."""

    replicas: Annotated[
        int,
        Field(description="Replicas of the previous revision kept running, spread like the others.", ge=1),
    ] = 1
    seconds: Annotated[int, Field(description="How long after the promotion they are kept.", ge=1)] = 3600


class ServiceLevel(_Model):
    """The model's service level objective, exported as gpufleet_model_slo_seconds for the chart's alerts."""

    ttft_p95_seconds: Annotated[
        float | None,
        Field(
            alias="ttftP95Seconds",
            description=(
                "p95 time to first token the model should stay under, from vLLM's "
                "vllm:time_to_first_token_seconds over 5 minutes; ModelTTFTAboveSLO fires after 10 minutes "
                "above it. Unset: no alert."
            ),
            gt=0,
        ),
    ] = None


class HTTPRouteRef(_Model):
    """A Gateway API HTTPRoute in the model's namespace whose backend weights the rollout writes."""

    name: Annotated[
        str,
        Field(
            description=(
                "Name of the HTTPRoute (gateway.networking.k8s.io/v1). Its rules whose backendRefs name the "
                "model's Service (or the slot Services `<name>-a`, `<name>-b`) get those backendRefs "
                "replaced by the two slot Services with exact weights: the stable slot's and the "
                "canary's. The rest of the route stays the user's."
            ),
            pattern=_DNS_SUBDOMAIN,
            max_length=253,
        ),
    ]


class Rollout(_Model):
    """How a new revision of the serving template replaces the stable one."""

    steps: Annotated[
        list[RolloutStep],
        Field(
            description=(
                "Canary stages, in increasing weight; after the last the new revision takes every replica "
                "and becomes stable. Empty: every group rolls at once (one surge replica at a time per "
                "group), as before rollouts had steps."
            ),
            max_length=20,
        ),
    ] = []
    paused: Annotated[
        bool,
        Field(description="Hold the rollout at its current step: no step is started or finished."),
    ] = False
    max_surge_gpus: Annotated[
        int | None,
        Field(
            alias="maxSurgeGPUs",
            description=(
                "GPUs the canary may use beyond the model's replicas at any time: canary replicas start in "
                "batches of this budget, and each ready one replaces a stable one. At least one replica's "
                "GPUs. Unset: the whole step's canary starts at once."
            ),
            ge=1,
        ),
    ] = None
    analysis: Annotated[
        Analysis | None,
        Field(
            description=(
                "Judge the canary at every step; a failed judgement rolls it back. Unset: steps end on "
                "their pauses alone. `analysis: {}` takes the defaults."
            )
        ),
    ] = None
    http_route: Annotated[
        HTTPRouteRef | None,
        Field(
            description=(
                "Reach each step's weight exactly through this HTTPRoute's backend weights instead of by "
                "replica ratio alone (the canary's replicas are still the smallest count that carries "
                "the weight). The operator creates Services `<name>-a` and `<name>-b`, one per slot, "
                "selecting the revision each slot runs, and labels every pod with its revision (pods "
                "that predate this label are replaced once, one surge replica at a time). Unset: the "
                "weight is the share of ready replicas behind the model's one Service."
            )
        ),
    ] = None
    keep_previous: Annotated[
        KeepPrevious | None,
        Field(
            description=(
                "After a promotion, keep replicas of the previous revision warm in the other slot for a "
                "while (they serve traffic too): `gpufleet rollback` then takes every replica back "
                "without a cold start. Unset: the previous revision's replicas go at promotion."
            )
        ),
    ] = None


class ModelDeploymentSpec(_Model):
    """Desired state of a served model."""

    model: Annotated[ModelSource, Field(description="The model to serve.")]
    engine: Annotated[Engine, Field(description="The vLLM server.")] = Engine()
    accelerator: Annotated[Accelerator, Field(description="GPUs per replica.")] = Accelerator()
    replicas: Annotated[
        int,
        Field(
            description=(
                "Desired number of replicas. `kubectl scale` and the autoscaler write it; "
                "the operator keeps it within minReplicas and maxReplicas."
            ),
            ge=0,
        ),
    ] = 1
    min_replicas: Annotated[
        int,
        Field(description="Fewest replicas; 0 allows scale to zero.", ge=0),
    ] = 1
    max_replicas: Annotated[
        int | None,
        Field(
            description="Most replicas. Required when autoscaling is enabled; unset means no upper bound.",
            ge=1,
        ),
    ] = None
    autoscaling: Annotated[Autoscaling, Field(description="Scaling on serving metrics.")] = Autoscaling()
    capacity: Annotated[Capacity, Field(description="Zones and spot / on-demand mix.")] = Capacity()
    revision_history_limit: Annotated[
        int,
        Field(
            description=(
                "Old revisions of the serving template (model, engine, accelerator) kept as "
                "ControllerRevisions for `gpufleet rollback`, besides the current one and the one still "
                "serving during a rollout. 0 keeps no history."
            ),
            ge=0,
            le=100,
        ),
    ] = 10
    rollout: Annotated[
        Rollout,
        Field(description="How a new revision replaces the stable one: all at once, or in canary steps."),
    ] = Rollout()
    slo: Annotated[
        ServiceLevel | None,
        Field(
            description="What the model promises its users: alerted on (ModelTTFTAboveSLO), not scaled on."
        ),
    ] = None


class PlacementStatus(_Model):
    """Replicas observed in one zone and capacity type."""

    zone: Annotated[str, Field(description="Availability zone; empty when no zone is set.")] = ""
    capacity_type: Annotated[CapacityType, Field(description="spot or on-demand.")]
    replicas: Annotated[int, Field(description="Pods of this group.", ge=0)] = 0
    ready_replicas: Annotated[int, Field(description="Ready pods of this group.", ge=0)] = 0


class Condition(_Model):
    """Standard Kubernetes condition (metav1.Condition)."""

    type: Annotated[str, Field(description="Condition type, e.g. Ready, Progressing, Degraded, Valid.")]
    status: Annotated[ConditionStatus, Field(description="True, False or Unknown.")]
    reason: Annotated[str, Field(description="One CamelCase word saying why.")] = ""
    message: Annotated[str, Field(description="What a person needs to know.")] = ""
    last_transition_time: Annotated[KubeTime | None, Field(description="When status last changed.")] = None
    observed_generation: Annotated[
        int | None, Field(description="metadata.generation this condition was computed from.", ge=0)
    ] = None


class AutoscalerMetrics(_Model):
    """The signals of the last evaluation (absent: Prometheus had no value)."""

    waiting: Annotated[
        float | None, Field(description="Requests waiting (sum of vllm:num_requests_waiting).")
    ] = None
    running: Annotated[
        float | None, Field(description="Requests running (sum of vllm:num_requests_running).")
    ] = None
    kv_cache_usage: Annotated[
        float | None,
        Field(alias="kvCacheUsage", description="Mean KV-cache usage of ready replicas (0-1)."),
    ] = None
    gpu_utilization: Annotated[
        float | None,
        Field(alias="gpuUtilization", description="Mean GPU utilisation of the model's GPUs (0-1)."),
    ] = None
    activation: Annotated[
        float | None,
        Field(
            description="Requests a gateway saw for the model while at zero replicas (its activation query)."
        ),
    ] = None
    ready_replicas: Annotated[int, Field(description="Ready replicas when sampled.", ge=0)] = 0
    starting_replicas: Annotated[int, Field(description="Replicas starting when sampled.", ge=0)] = 0
    reporting_replicas: Annotated[
        int | None,
        Field(
            description="Replicas whose vLLM metrics Prometheus had; fewer than ready: no scale-down.",
            ge=0,
        ),
    ] = None


class AutoscalerStatus(_Model):
    """What the autoscaler saw and decided last, like an HPA's status."""

    active: Annotated[
        bool, Field(description="False while holding replicas because metrics are missing.")
    ] = True
    reason: Annotated[str, Field(description="Why the last decision is what it is (CamelCase).")] = ""
    message: Annotated[str, Field(description="The numbers behind the last decision.")] = ""
    limited: Annotated[
        bool, Field(description="minReplicas, maxReplicas or a schedule stopped the decision.")
    ] = False
    desired_replicas: Annotated[int, Field(description="Replicas the autoscaler asked for last.", ge=0)] = 0
    last_evaluation_time: Annotated[
        KubeTime | None,
        Field(
            description=(
                "When the evaluation recorded here ran. A new decision is recorded at once; new readings "
                "alone at most every GPUFLEET_AUTOSCALE_STATUS_REFRESH_SECONDS (60 s), and an unchanged "
                "evaluation not at all."
            )
        ),
    ] = None
    last_scale_time: Annotated[KubeTime | None, Field(description="When it last changed spec.replicas.")] = (
        None
    )
    metrics: Annotated[AutoscalerMetrics, Field(description="Signals of the last evaluation.")] = (
        AutoscalerMetrics()
    )
    state: Annotated[
        dict[str, Any],
        Field(
            description="Recommendation history and timers the autoscaler keeps across operator restarts.",
            json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
        ),
    ] = {}


class CapacityCooldown(_Model):
    """A zone (or only its spot capacity) the placement avoids until a time."""

    zone: Annotated[str, Field(description="Availability zone.")]
    scope: Annotated[
        Literal["spot", "on-demand", "zone"],
        Field(description="spot or on-demand: only that capacity there is avoided; zone: the whole zone is."),
    ]
    until: Annotated[KubeTime, Field(description="When new replicas may go there again.")]
    reason: Annotated[
        str,
        Field(
            description="Interruption, Rebalance, NodeLost, SpotUnavailable, OnDemandUnavailable or ZoneLost."
        ),
    ] = ""
    strikes: Annotated[
        int,
        Field(description="Times in a row this capacity was found unavailable (lengthens the wait).", ge=1),
    ] = 1


class DoomedNode(_Model):
    """A node hosting replicas that the cloud or the cluster is about to take away."""

    node: Annotated[str, Field(description="Node name.")]
    instance_id: Annotated[str, Field(description="Cloud instance id, when known.")] = ""
    zone: Annotated[str, Field(description="Availability zone of the node.")] = ""
    capacity_type: Annotated[CapacityType, Field(description="spot or on-demand.")] = "spot"
    kind: Annotated[
        str,
        Field(
            description=(
                "interruption, rebalance, stopping, terminated, scheduled-change, disruption or not-ready."
            )
        ),
    ]
    since: Annotated[KubeTime, Field(description="When the signal was raised.")]
    deadline: Annotated[
        KubeTime | None, Field(description="When the capacity goes; replicas are drained before it.")
    ] = None
    detail: Annotated[str, Field(description="The signal as received, for people.")] = ""
    source: Annotated[
        Literal["sqs", "node"],
        Field(
            description="sqs: a cloud event, kept until the node's replicas are gone; node: taints, state."
        ),
    ] = "sqs"
    instance_type: Annotated[
        str, Field(description="The node's instance type (its capacity pool with the zone), when known.")
    ] = ""


class SpotStatus(_Model):
    """Interruption handling: what is going, what is avoided, and what was handled."""

    interruptions_handled: Annotated[
        int, Field(description="Capacity signals that moved replicas of this model, since creation.", ge=0)
    ] = 0
    last_interruption_time: Annotated[
        KubeTime | None, Field(description="When the last such signal was raised.")
    ] = None
    doomed_nodes: Annotated[
        list[DoomedNode], Field(description="Nodes with replicas that are being replaced.")
    ] = []
    cooldowns: Annotated[
        list[CapacityCooldown], Field(description="Zones or spot capacity new replicas avoid for now.")
    ] = []
    fallback_since: Annotated[
        KubeTime | None,
        Field(description="Since when spot replicas run on on-demand capacity (OnDemandFallback)."),
    ] = None


class CostStatus(_Model):
    """Estimated cost of the replicas that exist, at the operator's configured prices."""

    currency: Annotated[str, Field(description="Currency of the prices (the operator's configuration).")] = (
        "USD"
    )
    per_hour: Annotated[
        float | None, Field(description="Estimated cost per hour of the current replicas.", ge=0)
    ] = None
    on_demand_equivalent_per_hour: Annotated[
        float | None, Field(description="What the same replicas would cost all on on-demand.", ge=0)
    ] = None
    message: Annotated[str, Field(description="How the estimate was made, or why there is none.")] = ""


class RevisionSummary(_Model):
    """One revision of the serving template (a ControllerRevision owned by the ModelDeployment)."""

    revision: Annotated[
        int, Field(description="Revision number; a rollback renumbers the revision it restores.", ge=1)
    ]
    name: Annotated[str, Field(description="The ControllerRevision holding this template.")]
    hash: Annotated[
        str,
        Field(description="Hash of its template: the gpufleet.io/revision-hash label of its canary pods."),
    ] = ""
    image: Annotated[str, Field(description="vLLM image of this revision.")] = ""
    model_uri: Annotated[str, Field(description="spec.model.uri of this revision.")] = ""
    quantization: Annotated[str, Field(description="spec.model.quantization of this revision, if set.")] = ""
    changes: Annotated[
        str,
        Field(
            description="What differs from the revision before it (fields, old → new); empty for the first."
        ),
    ] = ""


class StandbyStatus(_Model):
    """The previous revision kept warm after a promotion (spec.rollout.keepPrevious)."""

    revision: Annotated[int, Field(description="Its revision number.", ge=1)]
    name: Annotated[str, Field(description="Its ControllerRevision.")]
    replicas: Annotated[int, Field(description="Replicas kept.", ge=0)]
    until: Annotated[KubeTime, Field(description="When they go.")]
    hash: Annotated[str, Field(description="Its template's hash (the pods' gpufleet.io/revision-hash).")] = ""
    cost_per_hour: Annotated[
        float | None, Field(description="Estimated cost of the standby replicas, per hour.", ge=0)
    ] = None


class RevisionsStatus(_Model):
    """The serving template's revisions: the one asked for, and the last one that was fully rolled out."""

    current: Annotated[RevisionSummary, Field(description="The revision spec asks for.")]
    stable: Annotated[
        RevisionSummary | None,
        Field(
            description=(
                "The last revision every group's Deployment finished rolling out; during a rollout the "
                "previous one, which still serves."
            )
        ),
    ] = None
    canary: Annotated[
        RevisionSummary | None,
        Field(
            description="The revision a canary rollout is bringing in (spec.rollout.steps), while it runs."
        ),
    ] = None
    standby: Annotated[
        StandbyStatus | None,
        Field(description="The previous revision kept warm after a promotion (spec.rollout.keepPrevious)."),
    ] = None
    history: Annotated[int, Field(description="ControllerRevisions kept for this model.", ge=0)] = 0
    stable_slot: Annotated[
        Slot,
        Field(
            description=(
                "Which of each group's two Deployments runs the stable revision: a (`<group>`) or b "
                "(`<group>-b`); a canary runs in the other, and promotion swaps them without a restart."
            )
        ),
    ] = "a"


RolloutPhase = Literal["Progressing", "Paused", "Held", "WaitingForPromotion", "Promoting", "Aborted"]
Verdict = Literal["Passed", "Failed", "Inconclusive", "NoData"]


class RevisionFigures(_Model):
    """One revision's serving figures over the analysis window."""

    requests: Annotated[float, Field(description="Completion requests answered.", ge=0)] = 0
    error_rate: Annotated[float | None, Field(description="Share answered 5xx.", ge=0, le=1)] = None
    ttft_p95_seconds: Annotated[
        float | None, Field(alias="ttftP95Seconds", description="p95 time to first token.", ge=0)
    ] = None
    itl_p95_seconds: Annotated[
        float | None, Field(alias="itlP95Seconds", description="p95 inter-token latency.", ge=0)
    ] = None


class AnalysisStatus(_Model):
    """The last judgement of a canary (written by the operator's analysis loop)."""

    revision: Annotated[int, Field(description="The canary revision judged.", ge=1)]
    step: Annotated[int, Field(description="Its step when judged.", ge=1)]
    verdict: Annotated[
        Verdict,
        Field(
            description=(
                "Passed, Failed (rolled back), Inconclusive (too few requests, or no stable figure to "
                "compare with: the step holds), NoData (no metrics: the step holds)."
            )
        ),
    ]
    checked_at: Annotated[KubeTime, Field(description="When.")]
    window_seconds: Annotated[float, Field(description="Seconds of serving judged.", ge=0)] = 0
    canary: Annotated[RevisionFigures | None, Field(description="The canary's figures.")] = None
    stable: Annotated[RevisionFigures | None, Field(description="The stable revision's figures.")] = None
    message: Annotated[str, Field(description="What decided it: the metric, both values and the limit.")] = ""


class RolloutStatus(_Model):
    """A canary rollout in progress."""

    revision: Annotated[int, Field(description="The canary revision's number.", ge=1)]
    step: Annotated[
        int,
        Field(description="Current step, from 1; steps + 1 while the canary takes every replica.", ge=1),
    ]
    steps: Annotated[int, Field(description="Steps in spec.rollout.steps.", ge=0)]
    phase: Annotated[
        RolloutPhase,
        Field(
            description=(
                "Progressing (canary replicas starting), Paused (holding the step's weight for its pause), "
                "WaitingForPromotion (a step without pauseSeconds), Held (spec.rollout.paused, or spot or "
                "zone failover under way), Promoting (the canary taking every replica)."
            )
        ),
    ]
    target_weight: Annotated[int, Field(description="The step's weight, percent.", ge=0, le=100)]
    weight: Annotated[
        int,
        Field(
            description=(
                "The weight reached, percent: the canary backend's weight in spec.rollout.httpRoute when "
                "the operator routes through it, else ready canary replicas as a percent of ready ones."
            ),
            ge=0,
            le=100,
        ),
    ] = 0
    canary_replicas: Annotated[int, Field(description="Ready replicas of the canary revision.", ge=0)] = 0
    stable_replicas: Annotated[int, Field(description="Ready replicas of the stable revision.", ge=0)] = 0
    step_started_at: Annotated[KubeTime | None, Field(description="When the step began.")] = None
    weight_reached_at: Annotated[
        KubeTime | None,
        Field(description="When every canary replica of the step was ready; the pause counts from here."),
    ] = None
    message: Annotated[str, Field(description="What the rollout waits for.")] = ""


class RevisionTokenCost(_Model):
    """What one revision's generated tokens cost: its replicas' GPU cost over its output tokens."""

    revision: Annotated[
        int | None, Field(description="The revision; unset for pods of a revision no longer known.")
    ] = None
    hash: Annotated[str, Field(description="Its template's hash.")] = ""
    replicas: Annotated[int, Field(description="Its live replicas.", ge=0)] = 0
    output_tokens_per_second: Annotated[
        float, Field(description="Generated tokens per second (rate of vllm:generation_tokens_total).", ge=0)
    ] = 0
    cost_per_hour: Annotated[
        float | None, Field(description="Estimated cost of its replicas per hour.", ge=0)
    ] = None
    per_million_output_tokens: Annotated[
        float | None,
        Field(description="Cost per million generated tokens: cost per hour / tokens per hour × 10⁶.", ge=0),
    ] = None


class TokenCostStatus(_Model):
    """Cost per million output tokens per revision, from vLLM's token counter and the operator's prices."""

    sampled_at: Annotated[KubeTime, Field(description="When it was read.")]
    window_seconds: Annotated[int, Field(description="The rate's window.", ge=1)] = 300
    currency: Annotated[str, Field(description="Of every cost here.")] = "USD"
    revisions: Annotated[list[RevisionTokenCost], Field(description="By revision.")] = []
    message: Annotated[str, Field(description="Why a figure is missing, if one is.")] = ""


class ModelDeploymentStatus(_Model):
    """Observed state, written by the operator."""

    observed_generation: Annotated[
        int | None, Field(description="Last metadata.generation the operator acted on.", ge=0)
    ] = None
    replicas: Annotated[int, Field(description="Pods that exist for this model.", ge=0)] = 0
    ready_replicas: Annotated[int, Field(description="Pods ready to serve.", ge=0)] = 0
    desired_replicas: Annotated[
        int, Field(description="Replicas the operator is converging to (spec.replicas after clamping).", ge=0)
    ] = 0
    selector: Annotated[
        str, Field(description="Label selector of this model's pods (used by the scale subresource).")
    ] = ""
    placement: Annotated[
        list[PlacementStatus], Field(description="Replicas per zone and capacity type.")
    ] = []
    autoscaler: Annotated[
        AutoscalerStatus | None, Field(description="The autoscaler's last evaluation (autoscaling.enabled).")
    ] = None
    spot: Annotated[
        SpotStatus | None, Field(description="Interruption handling and capacity the placement avoids.")
    ] = None
    cost: Annotated[CostStatus | None, Field(description="Estimated cost of the current replicas.")] = None
    revisions: Annotated[
        RevisionsStatus | None,
        Field(description="Revisions of the serving template (see `gpufleet rollback`)."),
    ] = None
    rollout: Annotated[
        RolloutStatus | None, Field(description="The canary rollout in progress (spec.rollout.steps).")
    ] = None
    analysis: Annotated[
        AnalysisStatus | None,
        Field(description="The last judgement of the canary (spec.rollout.analysis), by the analysis loop."),
    ] = None
    http_route: Annotated[
        str | None,
        Field(
            description=(
                "The HTTPRoute whose backendRefs the operator writes (spec.rollout.httpRoute). Kept after "
                "spec.rollout.httpRoute is unset or renamed until the operator has pointed the route's "
                "rules back at the model's Service; then the slot Services are deleted (unset) or the "
                "newly named route gets the weights (renamed)."
            )
        ),
    ] = None
    token_cost: Annotated[
        TokenCostStatus | None,
        Field(
            description=(
                "Cost per million output tokens per revision, written by the operator's metrics sweep "
                "(GPUFLEET_PROMETHEUS_URL and GPUFLEET_PRICES)."
            )
        ),
    ] = None
    conditions: Annotated[
        list[Condition],
        Field(
            description=(
                "Ready, Progressing, Degraded, Valid, ScalingActive, ScalingLimited, SpotInterrupted, "
                "OnDemandFallback, ZoneDegraded, CredentialsReady (with spec.model.credentialsSecret), "
                "TrafficRouted (with spec.rollout.httpRoute)."
            ),
            json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        ),
    ] = []


class ObjectMeta(BaseModel):
    """The part of metadata that validation reads; the rest passes through."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = ""
    namespace: str | None = None
    generation: int | None = None


class ModelDeployment(_Model):
    """One served model: vLLM replicas across zones and capacity types."""

    api_version: Literal["gpufleet.io/v1alpha1"] = "gpufleet.io/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: ObjectMeta = ObjectMeta()
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None
