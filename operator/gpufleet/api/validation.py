"""Validation of ModelDeployment manifests: one code path for CLI, webhook and operator.

`validate_manifest` takes the raw object (a dict, as read from YAML or from
an admission review) and returns every problem it finds, each naming the
field path and the fix. The schema catches single-field mistakes; the rules
here are the ones that span fields or need facts about GPUs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from gpufleet.api import catalog, kv_fit, model_catalog, sizing
from gpufleet.api.v1alpha1 import API_VERSION, KIND, ModelDeployment, ModelDeploymentSpec

# `vllm serve` flags that spec fields own; setting them in engine.args would
# silently fight the operator, so point at the field instead.
# None: the operator owns the flag outright (probes and Services depend on it).
MANAGED_VLLM_FLAGS: dict[str, str | None] = {
    "--model": "spec.model.uri",
    "--served-model-name": "spec.model.servedName",
    "--tensor-parallel-size": "spec.accelerator.tensorParallelSize",
    "-tp": "spec.accelerator.tensorParallelSize",
    "--max-model-len": "spec.model.maxModelLen",
    "--dtype": "spec.model.dtype",
    "--quantization": "spec.model.quantization",
    "-q": "spec.model.quantization",
    "--enable-lora": "spec.engine.loraAdapters",
    "--lora-modules": "spec.engine.loraAdapters",
    # --spec-method/--spec-model/--spec-tokens are shorthands merged into --speculative-config
    # (vllm/engine/arg_utils.py create_speculative_config); -sc is its short form.
    "--speculative-config": "spec.engine.speculativeDecoding",
    "-sc": "spec.engine.speculativeDecoding",
    "--spec-method": "spec.engine.speculativeDecoding",
    "--spec-model": "spec.engine.speculativeDecoding",
    "--spec-tokens": "spec.engine.speculativeDecoding",
    "--port": None,
    "--host": None,
    "--shutdown-timeout": None,
}
# Why the operator owns the flags marked None above.
_OPERATOR_FLAG_REASONS: dict[str, str] = {
    "--port": "pods serve on port 8000 for probes and the Service",
    "--host": "pods serve on port 8000 for probes and the Service",
    "--shutdown-timeout": (
        "it is the pod's termination grace period minus its preStop delay, the operator's "
        "GPUFLEET_DRAIN_SECONDS; a longer one would be cut short by the kubelet"
    ),
}

_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Pods are named <name>-<zone>-<capacity>-<hash>-<suffix>; the ModelDeployment
# name is also a label value and the Service name (DNS-1035, <= 63).
MAX_NAME_LENGTH = 40
_HF_REPO = re.compile(r"^hf://[A-Za-z0-9][\w.-]*/[\w.-]+$")
_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
_PVC_URI = re.compile(r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest: where, and what to do about it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(object)"


_BOUND_WORDS = {
    "greater_than_equal": "at least",
    "greater_than": "greater than",
    "less_than_equal": "at most",
    "less_than": "less than",
}


def _from_pydantic(error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors(include_url=False):
        loc = [p for p in item["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal[")))]
        message = item["msg"]
        ctx = item.get("ctx", {})
        if item["type"] == "extra_forbidden":
            parent = ".".join(str(p) for p in loc[:-1] if isinstance(p, str))
            message = f"unknown field; check its spelling with `kubectl explain modeldeployment.{parent}`"
        elif item["type"] in _BOUND_WORDS:
            bound = next(v for k, v in ctx.items() if k in ("ge", "gt", "le", "lt"))
            message = f"must be {_BOUND_WORDS[item['type']]} {bound}, got {item['input']!r}"
        elif item["type"] == "missing":
            message = "is required"
        elif item["type"] == "literal_error":
            expected = item.get("ctx", {}).get("expected", "")
            message = f"must be one of {expected}, got {item['input']!r}"
        elif item["type"] == "string_pattern_mismatch" and loc and loc[-1] == "uri":
            message = (
                f"{item['input']!r} is not a supported model URI: use hf://<org>/<name>, "
                "s3://<bucket>/<prefix> or pvc://<claim>[/<path>]"
            )
        elif item["type"] == "string_pattern_mismatch" and loc and loc[-1] == "servedName":
            message = (
                f"{item['input']!r} is not a served model name: use letters, digits and . _ : / @ + -, "
                "starting with a letter or digit (e.g. meta-llama/Meta-Llama-3-70B-Instruct)"
            )
        problems.append(Problem(_path(loc), message))
    return problems


def validate_manifest(obj: Any) -> list[Problem]:
    """Every problem in one ModelDeployment object; an empty list means valid."""
    if not isinstance(obj, dict):
        return [Problem("(object)", "a ModelDeployment must be a mapping")]
    problems: list[Problem] = []
    if obj.get("apiVersion") != API_VERSION:
        problems.append(Problem("apiVersion", f"must be {API_VERSION}, got {obj.get('apiVersion')!r}"))
    if obj.get("kind") != KIND:
        problems.append(Problem("kind", f"must be {KIND}, got {obj.get('kind')!r}"))
    metadata = obj.get("metadata") or {}
    problems.extend(_check_name(metadata.get("name") if isinstance(metadata, dict) else None))
    if problems:
        return problems
    try:
        # status belongs to the operator; a manifest's status must not make it invalid.
        md = ModelDeployment.model_validate({k: v for k, v in obj.items() if k != "status"})
    except ValidationError as error:
        return _from_pydantic(error)
    return list(check_spec(md.spec))


def _check_name(name: object) -> list[Problem]:
    if not isinstance(name, str) or not name:
        return [Problem("metadata.name", "is required")]
    if len(name) > MAX_NAME_LENGTH or not _DNS_1035_LABEL.match(name):
        return [
            Problem(
                "metadata.name",
                f"{name!r} must be at most {MAX_NAME_LENGTH} lower-case letters, digits and '-', starting "
                "with a letter (it names the Service and is part of every pod name)",
            )
        ]
    return []


def check_spec(spec: ModelDeploymentSpec) -> Iterator[Problem]:
    """Rules that span fields. The spec is already schema-valid."""
    yield from _check_replicas(spec)
    yield from _check_model_uri(spec)
    yield from _check_accelerator(spec)
    yield from _check_memory_fit(spec)
    yield from _check_engine_args(spec)
    yield from _check_speculative(spec)
    yield from _check_autoscaling(spec)
    yield from _check_capacity(spec)
    yield from _check_rollout(spec)


def _check_replicas(spec: ModelDeploymentSpec) -> Iterator[Problem]:
    if spec.max_replicas is not None and spec.min_replicas > spec.max_replicas:
        yield Problem(
            "spec.minReplicas",
            f"minReplicas ({spec.min_replicas}) is above maxReplicas ({spec.max_replicas}); "
            "lower minReplicas or raise maxReplicas",
        )
        return
    if spec.replicas < spec.min_replicas:
        yield Problem(
            "spec.replicas",
            f"replicas ({spec.replicas}) is below minReplicas ({spec.min_replicas}); "
            f"set replicas to at least {spec.min_replicas} or lower minReplicas",
        )
    if spec.max_replicas is not None and spec.replicas > spec.max_replicas:
        yield Problem(
            "spec.replicas",
            f"replicas ({spec.replicas}) is above maxReplicas ({spec.max_replicas}); "
            f"set replicas to at most {spec.max_replicas} or raise maxReplicas",
        )


def _check_model_uri(spec: ModelDeploymentSpec) -> Iterator[Problem]:
    sources = [("spec.model.uri", spec.model.uri)] + [
        (f"spec.engine.loraAdapters[{i}].uri", lora.uri) for i, lora in enumerate(spec.engine.lora_adapters)
    ]
    speculative = spec.engine.speculative_decoding
    if speculative is not None and speculative.draft_model is not None:
        sources.append(("spec.engine.speculativeDecoding.draftModel.uri", speculative.draft_model.uri))
    for path, uri in sources:
        scheme = uri.split("://", 1)[0]
        if scheme == "hf" and not _HF_REPO.match(uri):
            yield Problem(
                path,
                f"{uri!r}: a Hugging Face model is hf://<org>/<name>, e.g. hf://meta-llama/Meta-Llama-3-8B",
            )
        elif scheme == "s3" and not _S3_URI.match(uri):
            yield Problem(path, f"{uri!r}: an S3 source is s3://<bucket>/<prefix> with a valid bucket name")
        elif scheme == "pvc" and not _PVC_URI.match(uri):
            yield Problem(
                path, f"{uri!r}: a volume source is pvc://<claim>[/<path>] where <claim> is a PVC name"
            )


def _check_accelerator(spec: ModelDeploymentSpec) -> Iterator[Problem]:
    acc = spec.accelerator
    if acc.mig_profile is None:
        return
    if acc.tensor_parallel_size > 1:
        yield Problem(
            "spec.accelerator.migProfile",
            f"a MIG slice cannot be combined with tensorParallelSize {acc.tensor_parallel_size}; "
            "set tensorParallelSize: 1, or remove migProfile to use whole GPUs",
        )
    known = catalog.MIG_PROFILES.get(acc.gpu_product or "")
    if known is not None and acc.mig_profile not in known:
        yield Problem(
            "spec.accelerator.migProfile",
            f"{acc.mig_profile} is not a MIG profile of {acc.gpu_product}; use one of {', '.join(known)}",
        )
    elif known is None and acc.mig_profile not in catalog.ALL_MIG_PROFILES:
        yield Problem(
            "spec.accelerator.migProfile",
            f"{acc.mig_profile} is not a MIG profile of any A100/H100/H200; "
            f"use one of {', '.join(sorted(catalog.ALL_MIG_PROFILES))}",
        )


def bytes_per_parameter(dtype: str, quantization: str) -> float:
    return kv_fit.bytes_per_parameter(dtype, quantization)


def gpu_memory_utilization(args: Sequence[str]) -> float:
    """vLLM's --gpu-memory-utilization from engine.args, or its default."""
    for i, arg in enumerate(args):
        value: str | None = None
        name, equals, attached = arg.partition("=")
        if vllm_flag_name(name) != "--gpu-memory-utilization":
            continue
        if equals:
            value = attached
        elif i + 1 < len(args):
            value = args[i + 1]
        if value is not None:
            try:
                return float(value)
            except ValueError:
                return catalog.VLLM_DEFAULT_GPU_MEMORY_UTILIZATION
    return catalog.VLLM_DEFAULT_GPU_MEMORY_UTILIZATION


def _check_memory_fit(spec: ModelDeploymentSpec) -> Iterator[Problem]:
    # KV-cache-aware, as vLLM's start-up check (gpufleet.api.kv_fit has the arithmetic and sources).
    for path, message in sizing.problems(sizing.deployment(spec)):
        yield Problem(path, message)


def spec_warnings(spec: ModelDeploymentSpec) -> list[Problem]:
    """What a valid spec may get wrong at run time, or what could not be checked."""
    return [Problem(path, message) for path, message in sizing.warnings(sizing.deployment(spec))]


def manifest_warnings(obj: Any) -> list[Problem]:
    """Warnings for a manifest that validates; none for one that does not (its problems come first)."""
    if validate_manifest(obj):
        return []
    return spec_warnings(ModelDeployment.model_validate({k: v for k, v in obj.items() if k != "status"}).spec)


def vllm_flag_name(name: str) -> str:
    """A flag name as vLLM's parser reads it: underscores in a `--` name are dashes."""
    return "--" + name[2:].replace("_", "-") if name.startswith("--") else name


def managed_flag(arg: str) -> str | None:
    """The managed flag `arg` sets as vLLM's parser reads it, or None.

    vLLM's FlexibleArgumentParser turns underscores in `--` flag names into dashes
    (vllm/utils FlexibleArgumentParser, "allows both underscore and dash in names"),
    and argparse takes an unambiguous prefix of a long flag (allow_abbrev, on by
    default), so `--tensor_parallel_size=8` and `--tensor-parallel 8` both set
    --tensor-parallel-size. Short flags take their value attached (`-tp8`, `-qfp8`).
    """
    name = vllm_flag_name(arg.split("=", 1)[0])
    if name.startswith("--"):
        if name in MANAGED_VLLM_FLAGS:
            return name
        if len(name) > 3:
            longer = [flag for flag in MANAGED_VLLM_FLAGS if flag.startswith("--") and flag.startswith(name)]
            return longer[0] if longer else None
        return None
    if name.startswith("-"):
        return next((flag for flag in ("-tp", "-q", "-sc") if name.startswith(flag)), None)
    return None


def _check_engine_args(spec: ModelDeploymentSpec) -> Iterator[Problem]:
    for i, arg in enumerate(spec.engine.args):
        if vllm_flag_name(arg.split("=", 1)[0]) == "--config":
            yield Problem(
                f"spec.engine.args[{i}]",
                "--config reads engine flags from a file gpufleet cannot check (it could set flags the "
                "spec manages); put the flags in engine.args instead",
            )
            continue
        flag = managed_flag(arg)
        if flag is None:
            continue
        owner = MANAGED_VLLM_FLAGS[flag]
        if owner is None:
            message = f"{flag} is managed by gpufleet ({_OPERATOR_FLAG_REASONS[flag]})"
            yield Problem(f"spec.engine.args[{i}]", f"{message}; remove it from engine.args")
        else:
            yield Problem(
                f"spec.engine.args[{i}]",
                f"{flag} is set by gpufleet from {owner}; remove it from engine.args and set {owner} instead",
            )
    seen: set[str] = set()
    for i, var in enumerate(spec.engine.env):
        if var.name in seen:
            yield Problem(f"spec.engine.env[{i}].name", f"{var.name} is set twice; keep one entry")
        seen.add(var.name)
        if var.value is not None and var.value_from is not None:
            yield Problem(f"spec.engine.env[{i}]", "set value or valueFrom, not both")


def _check_speculative(spec: ModelDeploymentSpec) -> Iterator[Problem]:
    """What vLLM 0.34.0 refuses, or silently ignores, in a speculative config (vllm/config/
    speculative.py and vllm/v1/worker/gpu/spec_decode/*/config.py)."""
    speculative = spec.engine.speculative_decoding
    if speculative is None:
        return
    path = "spec.engine.speculativeDecoding"
    method, draft = speculative.method, speculative.draft_model
    if method in kv_fit.DRAFT_CHECKPOINT_METHODS and draft is None:
        # DraftModelSpeculatorConfig.default_model: "num_speculative_tokens was provided but
        # without speculative model."
        yield Problem(
            f"{path}.draftModel",
            f"method {method} needs a draft checkpoint; set draftModel.uri (e.g. a small model of the "
            "same family for draft_model, or an EAGLE head trained for this model)",
        )
    if method == "ngram" and draft is not None:
        yield Problem(
            f"{path}.draftModel",
            "ngram proposes tokens from the prompt and loads no model; remove draftModel",
        )
    if method != "ngram" and (speculative.prompt_lookup_min or speculative.prompt_lookup_max):
        # SpeculatorConfig.configure zeroes them for every method but ngram.
        yield Problem(
            f"{path}.promptLookupMin",
            f"promptLookupMin/promptLookupMax only apply to method ngram; vLLM ignores them for {method}",
        )
    low, high = speculative.prompt_lookup_min, speculative.prompt_lookup_max
    if low is not None and high is not None and low > high:
        # NgramSpeculatorConfig.configure: "prompt_lookup_min=... must be <= prompt_lookup_max=..."
        yield Problem(f"{path}.promptLookupMin", f"{low} is above promptLookupMax ({high}); lower it")
    known = model_catalog.lookup(spec.model.uri)
    if method == "mtp" and draft is None and known is not None and spec.model.architecture is None:
        # Every model in the catalog is a Llama/Mistral/Qwen/Gemma without MTP layers, so vLLM
        # would find no MTP draft in the checkpoint.
        yield Problem(
            f"{path}.method",
            f"{known.name} has no multi-token-prediction layers; use eagle3 with an EAGLE-3 head trained "
            "for it, draft_model with a smaller model of its family, or ngram",
        )
    if draft is not None and (draft.uri.startswith("s3://") != spec.model.uri.startswith("s3://")):
        # The draft loads with the target's load config (SpeculativeConfig.draft_load_config), so it
        # is streamed from S3 exactly when the model is (--load-format runai_streamer).
        yield Problem(
            f"{path}.draftModel.uri",
            "the draft must come from s3:// exactly when spec.model.uri does: vLLM loads it the same "
            "way as the model",
        )


def _check_autoscaling(spec: ModelDeploymentSpec) -> Iterator[Problem]:
    auto = spec.autoscaling
    if auto.enabled and spec.max_replicas is None:
        yield Problem(
            "spec.maxReplicas",
            "is required when autoscaling.enabled is true; set the most replicas the autoscaler may run",
        )
    for i, schedule in enumerate(auto.schedules):
        try:
            ZoneInfo(schedule.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            yield Problem(
                f"spec.autoscaling.schedules[{i}].timeZone",
                f"unknown time zone {schedule.time_zone!r}; use an IANA name such as UTC or Europe/Berlin",
            )
        if spec.max_replicas is not None and schedule.min_replicas > spec.max_replicas:
            yield Problem(
                f"spec.autoscaling.schedules[{i}].minReplicas",
                f"the floor ({schedule.min_replicas}) is above maxReplicas ({spec.max_replicas}); lower it",
            )
    if auto.scale_to_zero_after_seconds is not None and spec.min_replicas > 0:
        yield Problem(
            "spec.autoscaling.scaleToZeroAfterSeconds",
            f"scale to zero needs minReplicas: 0 (it is {spec.min_replicas}); set minReplicas: 0 "
            "or remove scaleToZeroAfterSeconds",
        )


def _check_capacity(spec: ModelDeploymentSpec) -> Iterator[Problem]:
    cap = spec.capacity
    seen: set[str] = set()
    for i, zone in enumerate(cap.zones):
        if zone in seen:
            yield Problem(f"spec.capacity.zones[{i}]", f"zone {zone} is listed twice; list each zone once")
        seen.add(zone)
    if spec.max_replicas is not None and cap.on_demand_replicas > spec.max_replicas:
        yield Problem(
            "spec.capacity.onDemandReplicas",
            f"the on-demand floor ({cap.on_demand_replicas}) is above maxReplicas ({spec.max_replicas}); "
            "lower onDemandReplicas or raise maxReplicas",
        )


def _check_rollout(spec: ModelDeploymentSpec) -> Iterator[Problem]:
    rollout = spec.rollout
    for i in range(1, len(rollout.steps)):
        before, weight = rollout.steps[i - 1].weight, rollout.steps[i].weight
        if weight <= before:
            yield Problem(
                f"spec.rollout.steps[{i}].weight",
                f"{weight} does not rise above the step before it ({before}); "
                "list steps in increasing weight",
            )
    if rollout.keep_previous is not None and not rollout.steps:
        yield Problem(
            "spec.rollout.keepPrevious",
            "keeps the previous revision warm after a canary's promotion, and there is no canary without "
            "spec.rollout.steps; add steps (one step of weight 100 is enough) or remove keepPrevious",
        )
    if rollout.http_route is not None and not rollout.steps:
        # Without a canary every replica rolls in the stable slot, whose Service would follow the new
        # revision's label while the old pods still serve: weights would only add churn.
        yield Problem(
            "spec.rollout.httpRoute",
            "weighs a canary against the stable revision, and there is no canary without "
            "spec.rollout.steps; add steps (one step of weight 100 is enough) or remove httpRoute",
        )
    gpus = spec.accelerator.tensor_parallel_size
    if rollout.max_surge_gpus is not None and rollout.max_surge_gpus < gpus:
        yield Problem(
            "spec.rollout.maxSurgeGPUs",
            f"{rollout.max_surge_gpus} is below one replica's GPUs ({gpus}, tensorParallelSize): no canary "
            f"replica could start; set it to {gpus} or more",
        )


def admission_problems(new: Any, old: Any = None) -> list[Problem]:
    """Problems that make the admission webhook deny a CREATE (old None) or UPDATE.

    `kubectl scale` and the autoscaler write spec.replicas through the scale
    subresource, which no webhook sees, and the operator clamps it into range.
    An UPDATE that leaves spec.replicas as it was must not be denied for it,
    or nobody could edit the object after a scale past maxReplicas.
    """
    problems = validate_manifest(new)
    if not isinstance(old, dict) or not isinstance(new, dict):
        return problems
    unchanged = (old.get("spec") or {}).get("replicas") == (new.get("spec") or {}).get("replicas")
    return [p for p in problems if not (unchanged and p.path == "spec.replicas")]
