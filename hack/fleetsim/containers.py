"""What a simulated pod's containers do with files: init containers, their volumes, vLLM's LoRA check.

The simulated kubelet (kubelet.py) runs a pod's init containers in order before its vLLM container, as
the real kubelet does. This module is what one init container does once started:

- Its environment is resolved as the kubelet resolves it (`makeEnvironmentVariables`,
  pkg/kubelet/kubelet_pods.go at v1.36.3): `value`, `secretKeyRef` and `configMapKeyRef`; a missing
  Secret, ConfigMap or key that is not `optional` is a CreateContainerConfigError and the container
  does not start. `$(VAR)` references, `fieldRef`, `resourceFieldRef` and `envFrom` are not resolved.
- Its volume mounts are directories of the pod on this machine (`PodVolumes`): what it writes into an
  emptyDir is there for the containers that mount that volume after it, and goes with the pod.
- The AWS CLI image (`amazon/aws-cli`, `public.ecr.aws/aws-cli/aws-cli`; the image gpufleet renders
  for s3:// LoRA adapters): `aws s3 sync` and `aws s3 cp [--recursive]` from S3 into the container's
  filesystem are performed with boto3 against the S3 endpoint the container's environment or flags
  name (the simulation's moto server; `cloud.require_loopback` refuses anything else), with aws-cli
  v2's messages and exit codes (`run_aws_cli`). Other aws-cli invocations are not simulated: they
  exit 2 with a line saying so, rather than passing for something they might not do.
- Any other image: nothing it would do is simulated; it exits 0 (after the kubelet's INIT_START_SECONDS).

`lora_load_error` is vLLM's start-up check of the adapters in `--lora-modules`, made on those files.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from fleetsim.cloud import require_loopback

# Simulated seconds an init container takes to start: a small image (amazon/aws-cli is ~130 MB) already on
# the node, or pulled in a few seconds (assumed).
INIT_START_SECONDS = 3.0
# The kubelet's crash back-off: 10 s, doubled after each failure, at most 5 minutes
# (initialCrashLoopBackOff and MaxContainerBackOff, pkg/kubelet/kubelet.go and
# pkg/kubelet/apis/config/v1beta1/defaults.go at v1.36.3; the ReduceDefaultCrashLoopBackOffDecay gate that
# shortens them is alpha, off by default). A pod whose container cannot be configured (a missing Secret) is
# retried after the pod-sync back-off, also 10 s (backOffPeriod, kubelet.go).
BACKOFF_INITIAL_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 300.0
# The AWS CLI image's ENTRYPOINT is /usr/local/bin/aws and its WORKDIR /aws (aws-cli's docker/Dockerfile).
AWS_CLI_ENTRYPOINT = ("aws",)
AWS_CLI_WORKDIR = "/aws"

# EnvLookup(kind, name): the data of Secret or ConfigMap `name` (kind "secret" / "configmap"), Secret
# values already decoded, or None when it does not exist. Called from a worker thread.
EnvLookup = Callable[[str, str], Mapping[str, str] | None]


class ContainerConfigError(Exception):
    """The kubelet cannot build the container's config (CreateContainerConfigError); the message is its."""


@dataclass(frozen=True)
class Outcome:
    """How an init container ended: its exit code, what it wrote (`kubectl logs`), bytes it downloaded."""

    exit_code: int
    log: str = ""
    bytes_copied: int = 0


@dataclass(frozen=True)
class PodVolumes:
    """A pod's volumes as directories on this machine: `root/volumes/<name>` for each, created empty.

    emptyDir volumes are simulated in full (an init container fills them, vLLM reads them). The contents of
    other kinds (persistentVolumeClaim, hostPath, configMap, ...) are not: vLLM's checks take what is
    under them as present.
    """

    root: Path
    kinds: Mapping[str, str]

    @classmethod
    def of(cls, root: Path, pod_spec: Mapping[str, Any]) -> PodVolumes:
        kinds: dict[str, str] = {}
        for volume in pod_spec.get("volumes") or []:
            kind = next((key for key in volume if key != "name"), "emptyDir")
            kinds[volume["name"]] = kind
            (root / "volumes" / volume["name"]).mkdir(parents=True, exist_ok=True)
        return cls(root, kinds)

    def resolve(self, mounts: Sequence[Mapping[str, Any]], path: str) -> tuple[Path, str, bool] | None:
        """Host path, volume kind and read-only flag of container path `path` (absolute), or None when it
        is in no mounted volume (the container's own filesystem)."""
        best: Mapping[str, Any] | None = None
        for mount in mounts:
            mount_path = mount["mountPath"].rstrip("/") or "/"
            inside = path == mount_path or path.startswith(mount_path.rstrip("/") + "/")
            if inside and (best is None or len(mount_path) > len(best["mountPath"].rstrip("/"))):
                best = mount
        if best is None or best["name"] not in self.kinds:
            return None
        rest = path[len(best["mountPath"].rstrip("/")) :].lstrip("/")
        host = self.root / "volumes" / best["name"] / (best.get("subPath") or "") / rest
        return host, self.kinds[best["name"]], bool(best.get("readOnly", False))


# --- environment ---------------------------------------------------------------------------------------


def decode_secret(data: Mapping[str, str] | None) -> dict[str, str]:
    """A Secret's `data` (base64, as the API returns it) as text."""
    return {key: base64.b64decode(value).decode() for key, value in (data or {}).items()}


def resolve_env(container: Mapping[str, Any], namespace: str, lookup: EnvLookup) -> dict[str, str]:
    """The container's environment as the kubelet builds it; ContainerConfigError as the kubelet's."""
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var:
            env[name] = str(var["value"])
            continue
        source = var.get("valueFrom") or {}
        for field_name, kind, label in (
            ("secretKeyRef", "secret", "Secret"),
            ("configMapKeyRef", "configmap", "ConfigMap"),
        ):
            ref = source.get(field_name)
            if ref is None:
                continue
            optional = bool(ref.get("optional", False))
            data = lookup(kind, ref["name"])
            if data is None:
                if optional:
                    break
                raise ContainerConfigError(f'{kind} "{ref["name"]}" not found')
            if ref["key"] not in data:
                if optional:
                    break
                raise ContainerConfigError(
                    f"couldn't find key {ref['key']} in {label} {namespace}/{ref['name']}"
                )
            env[name] = data[ref["key"]]
            break
    return env


# --- running an init container -------------------------------------------------------------------------


def image_name(image: str) -> str:
    """The repository's last path component: amazon/aws-cli:2.22.0 → aws-cli."""
    return image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]


def is_aws_cli(image: str) -> bool:
    return image_name(image) == "aws-cli"


def container_argv(container: Mapping[str, Any]) -> list[str]:
    """command + args as the runtime runs them; without a command, the AWS CLI image's ENTRYPOINT."""
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if not command and is_aws_cli(container.get("image", "")):
        command = list(AWS_CLI_ENTRYPOINT)
    return command + args


def run_init_container(
    container: Mapping[str, Any], env: Mapping[str, str], volumes: PodVolumes, scratch: Path
) -> Outcome:
    """Run one init container to its end (blocking: call it from a thread). `scratch` stands for its own
    writable filesystem, discarded afterwards."""
    if not is_aws_cli(container.get("image", "")):
        return Outcome(0)
    return run_aws_cli(container_argv(container), env, volumes, container.get("volumeMounts") or [], scratch)


# --- aws s3 sync / cp ----------------------------------------------------------------------------------

_FLAGS = {
    "--only-show-errors",
    "--quiet",
    "--no-progress",
    "--recursive",
    "--exact-timestamps",
    "--size-only",
}
_GLOBAL_FLAGS = {"--no-sign-request", "--no-paginate"}
_VALUED = {"--region", "--endpoint-url"}


@dataclass
class _AwsCall:
    command: str
    source: str
    dest: str
    flags: set[str] = field(default_factory=set)
    region: str | None = None
    endpoint_url: str | None = None


def _parse_aws(argv: Sequence[str]) -> _AwsCall | str:
    """The call, or why it is not simulated."""
    if not argv or os.path.basename(argv[0]) != "aws":
        return f"fleetsim: {' '.join(argv)!r} is not simulated (only `aws s3 sync|cp S3URI LOCALPATH`)"
    words = list(argv[1:])
    flags: set[str] = set()
    valued: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        name, has_value, value = word.partition("=")
        if name in _VALUED:
            if not has_value:
                if i + 1 >= len(words):
                    return f"aws: error: argument {name}: expected one argument"  # exit 252, below
                value = words[i + 1]
                i += 1
            valued[name] = value
        elif word in _FLAGS or word in _GLOBAL_FLAGS:
            flags.add(word)
        elif word.startswith("--"):
            return f"fleetsim: aws option {word} is not simulated"
        else:
            positional.append(word)
        i += 1
    if len(positional) != 4 or positional[0] != "s3" or positional[1] not in ("sync", "cp"):
        return f"fleetsim: {' '.join(argv)!r} is not simulated (only `aws s3 sync|cp S3URI LOCALPATH`)"
    _, command, source, dest = positional
    if not source.startswith("s3://") or dest.startswith("s3://"):
        return f"fleetsim: aws s3 {command} {source} {dest}: only downloads from S3 are simulated"
    if "--recursive" in flags and command != "cp":
        return "fleetsim: --recursive is an option of aws s3 cp"
    return _AwsCall(command, source, dest, flags, valued.get("--region"), valued.get("--endpoint-url"))


def _s3_client(call: _AwsCall, env: Mapping[str, str], endpoint: str, region: str) -> Any:
    unsigned = "--no-sign-request" in call.flags
    session = boto3.session.Session(
        aws_access_key_id=None if unsigned else env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=None if unsigned else env.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=None if unsigned else env.get("AWS_SESSION_TOKEN") or None,
        region_name=region,
    )
    options: dict[str, Any] = {
        "retries": {"max_attempts": 2, "mode": "standard"},
        "connect_timeout": 5,
        "read_timeout": 30,
        # An HTTP(S)_PROXY in this process's environment must not carry loopback traffic elsewhere.
        "proxies": {},
    }
    if unsigned:
        options["signature_version"] = UNSIGNED
    return session.client("s3", endpoint_url=require_loopback(endpoint), config=Config(**options))


def _local(path: str) -> str:
    return path if path.startswith("/") else f"{AWS_CLI_WORKDIR}/{path}"


def run_aws_cli(
    argv: Sequence[str],
    env: Mapping[str, str],
    volumes: PodVolumes,
    mounts: Sequence[Mapping[str, Any]],
    scratch: Path,
) -> Outcome:
    """`aws s3 sync|cp s3://bucket/prefix /local/dir` as aws-cli v2 runs it, against the local S3.

    Exit codes and messages are aws-cli's (awscli/customizations/s3/subcommands.py and results.py): a
    failure to list the source (no such bucket, access denied, no credentials, no endpoint) prints
    `fatal error: <error>` and exits 1; a file that fails to download prints `download failed: ...` and
    exits 1 after the others are done; otherwise 0. A prefix with no objects is not an error: `sync` and
    `cp --recursive` list nothing, copy nothing and exit 0 (S3's ListObjectsV2 does not require a prefix
    to exist; aws/aws-cli issue #9841), having created the destination directory (sync and recursive cp
    from S3 create it first, `_validate_path_args` in subcommands.py).
    """
    parsed = _parse_aws(argv)
    if isinstance(parsed, str):
        # aws-cli v2 exits 252 on a command line it cannot parse (awscli/constants.py
        # PARAM_VALIDATION_ERROR_RC); what the simulator does not implement exits 2, saying so.
        return Outcome(252 if parsed.startswith("aws: error:") else 2, parsed + "\n")
    call = parsed
    quiet = bool({"--only-show-errors", "--quiet"} & call.flags)
    bucket, _, key = call.source.removeprefix("s3://").partition("/")
    region = call.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint = call.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if not endpoint:
        # Real S3 is out of reach here (and never called from tests): the CLI's error when it is unreachable.
        url = f"https://{bucket}.s3.{region}.amazonaws.com/"
        return Outcome(1, f'fatal error: Could not connect to the endpoint URL: "{url}"\n')
    unsigned = "--no-sign-request" in call.flags
    if not unsigned and not (env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")):
        # The node's instance role and IRSA are not simulated: without keys there are no credentials.
        return Outcome(1, "fatal error: Unable to locate credentials\n")
    try:
        s3 = _s3_client(call, env, endpoint, region)
    except ValueError as error:  # not a loopback endpoint: the simulation never leaves this machine
        return Outcome(1, f"fatal error: {error}\n")
    dest = _local(call.dest)
    recursive = call.command == "sync" or "--recursive" in call.flags
    lines: list[str] = []
    copied = 0
    failed = False
    if recursive:
        # Before anything is listed: a failure here is the CLI's own (no S3 call), exit 255.
        host, read_only = _host(dest, volumes, mounts, scratch)
        if not host.exists():
            if read_only:
                return Outcome(255, f"\n[Errno {errno.EROFS}] {os.strerror(errno.EROFS)}: '{dest}'\n")
            host.mkdir(parents=True, exist_ok=True)
    try:
        if recursive:
            prefix = key if not key or key.endswith("/") else key + "/"
            objects = [
                item
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                for item in page.get("Contents", [])
                if not item["Key"].endswith("/")
            ]
            targets = [(item, f"{dest.rstrip('/')}/{item['Key'][len(prefix) :]}") for item in objects]
        else:
            head = s3.head_object(Bucket=bucket, Key=key)
            item = {"Key": key, "Size": head["ContentLength"], "LastModified": head["LastModified"]}
            into_dir = call.dest.endswith("/") or _is_dir(dest, volumes, mounts, scratch)
            target = f"{dest.rstrip('/')}/{os.path.basename(key)}" if into_dir else dest
            targets = [(item, target)]
    except ClientError as error:
        return Outcome(1, f"fatal error: {_client_error(error)}\n")
    except BotoCoreError as error:
        return Outcome(1, f"fatal error: {error}\n")
    for item, target in targets:
        source = f"s3://{bucket}/{item['Key']}"
        host, read_only = _host(target, volumes, mounts, scratch)
        if call.command == "sync" and host.is_file() and host.stat().st_size == item["Size"]:
            continue  # same size, and not newer than the copy (its mtime is the object's): skipped
        try:
            if read_only:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), target)
            host.parent.mkdir(parents=True, exist_ok=True)
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"]
            with host.open("wb") as out:
                for chunk in body.iter_chunks(1 << 20):
                    out.write(chunk)
                    copied += len(chunk)
            stamp = item["LastModified"].timestamp()
            os.utime(host, (stamp, stamp))
        except ClientError as error:
            failed = True
            lines.append(f"download failed: {source} to {target} {_client_error(error)}")
            continue
        except (BotoCoreError, OSError) as error:
            failed = True
            lines.append(f"download failed: {source} to {target} {error}")
            continue
        if not quiet:
            lines.append(f"download: {source} to {target}")
    return Outcome(1 if failed else 0, "".join(line + "\n" for line in lines), copied)


def _client_error(error: ClientError) -> str:
    # str(ClientError) is aws-cli's wording: "An error occurred (NoSuchBucket) when calling the
    # ListObjectsV2 operation: The specified bucket does not exist".
    return str(error)


def _host(
    path: str, volumes: PodVolumes, mounts: Sequence[Mapping[str, Any]], scratch: Path
) -> tuple[Path, bool]:
    found = volumes.resolve(mounts, path)
    if found is None:
        return scratch / path.lstrip("/"), False
    host, _, read_only = found
    return host, read_only


def _is_dir(path: str, volumes: PodVolumes, mounts: Sequence[Mapping[str, Any]], scratch: Path) -> bool:
    return _host(path, volumes, mounts, scratch)[0].is_dir()


# --- vLLM's start-up check of --lora-modules -----------------------------------------------------------

# What vLLM 0.34.0 does with each --lora-modules entry before it serves (init_static_loras in
# vllm/entrypoints/openai/models/serving.py, then LRUCacheWorkerLoRAManager._load_adapter in
# vllm/lora/worker_manager.py): get_adapter_absolute_path (vllm/lora/utils.py) keeps an absolute path as it
# is; PEFTHelper.from_local_dir opens <path>/adapter_config.json (a missing file is FileNotFoundError,
# re-raised as LoRAAdapterNotFoundError "Loading lora <name> failed: No adapter found for <path>",
# vllm/exceptions.py); PEFTHelper.from_dict requires r, lora_alpha and target_modules; validate_legal
# refuses a rank above --max-lora-rank, bias other than "none" and DoRA (vllm/lora/peft_helper.py);
# LoRAModel.from_local_checkpoint reads adapter_model.safetensors, .bin or .pt and raises
# "<dir> doesn't contain tensors" without one (vllm/lora/lora_model.py). Any of these makes
# init_static_loras raise ValueError and `vllm serve` exit. The message goes through sanitize_message
# (vllm/entrypoints/serve/exception_handling/utils.py), which writes paths under /mnt, /tmp, ... as <path>.
_REQUIRED_PEFT_FIELDS = ("r", "lora_alpha", "target_modules")
_SANITIZED_PATH = re.compile(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+")


def _sanitize(message: str) -> str:
    return _SANITIZED_PATH.sub("<path>", message)


def lora_load_error(
    name: str,
    path: str,
    volumes: PodVolumes,
    mounts: Sequence[Mapping[str, Any]],
    max_lora_rank: int,
) -> str | None:
    """Why vLLM would fail to load adapter `name` from `path` at start-up, or None.

    A relative path is a Hub repo id, downloaded by vLLM (not simulated: taken as there). An absolute path
    in an emptyDir is checked on the files its init containers wrote; in another kind of volume it is
    taken as there; in no volume it is in the image, where there is no adapter.
    """
    if not path.startswith("/"):
        return None
    found = volumes.resolve(mounts, path)
    if found is not None and found[1] != "emptyDir":
        return None
    not_found = _sanitize(f"Loading lora {name} failed: No adapter found for {path}")
    if found is None:
        return not_found
    directory = found[0]
    config_file = directory / "adapter_config.json"
    if not config_file.is_file():
        return not_found
    try:
        config = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        return _sanitize(str(error))
    if not isinstance(config, dict):
        return "adapter_config.json is not a JSON object"
    missing = {key for key in _REQUIRED_PEFT_FIELDS if key not in config}
    if missing:
        return f"Missing required configuration fields: {missing}"
    problems = []
    ranks = [config["r"], *(config.get("rank_pattern") or {}).values()]
    if all(isinstance(rank, int) for rank in ranks) and max(ranks) > max_lora_rank:
        problems.append(f"LoRA rank {max(ranks)} is greater than max_lora_rank {max_lora_rank}.")
    if config.get("bias", "none") != "none":
        problems.append("Adapter bias is not supported.")
    if config.get("use_dora"):
        problems.append("vLLM does not yet support DoRA.")
    if problems:
        return " ".join(problems)
    tensors = directory / "adapter_model.safetensors"
    if tensors.is_file():
        return _safetensors_error(tensors)
    if not any((directory / f"adapter_model.{ext}").is_file() for ext in ("bin", "pt")):
        return _sanitize(f"{path} doesn't contain tensors")
    return None


def _safetensors_error(file: Path) -> str | None:
    """The safetensors header must parse (8-byte little-endian length, then that much JSON) and its
    tensors lie inside the file, or safetensors.safe_open refuses it."""
    data = file.read_bytes()
    if len(data) < 8:
        return "Error while deserializing header: HeaderTooSmall"
    (size,) = struct.unpack("<Q", data[:8])
    if 8 + size > len(data):
        return "Error while deserializing header: InvalidHeaderLength"
    try:
        header = json.loads(data[8 : 8 + size])
    except (ValueError, UnicodeDecodeError):
        return "Error while deserializing header: InvalidHeaderDeserialization"
    if not isinstance(header, dict):
        return "Error while deserializing header: InvalidHeaderDeserialization"
    buffer = len(data) - 8 - size
    for tensor, info in header.items():
        if tensor == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= buffer):
            return "Error while deserializing header: InvalidOffset"
    return None


def adapter_files(rank: int = 8, hidden: int = 4096) -> dict[str, bytes]:
    """A small PEFT LoRA adapter as a fine-tuning job leaves it (adapter_config.json and
    adapter_model.safetensors: zero lora_A/lora_B of one q_proj, fp16) to put into the simulation's S3."""
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.05,
        "bias": "none",
        "target_modules": ["q_proj", "v_proj"],
    }
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    shapes = {f"{prefix}.lora_A.weight": [rank, hidden], f"{prefix}.lora_B.weight": [hidden, rank]}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = shape[0] * shape[1] * 2
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes
    tensors = struct.pack("<Q", len(encoded)) + encoded + bytes(offset)
    return {"adapter_config.json": json.dumps(config).encode(), "adapter_model.safetensors": tensors}


__all__ = [
    "BACKOFF_INITIAL_SECONDS",
    "BACKOFF_MAX_SECONDS",
    "INIT_START_SECONDS",
    "ContainerConfigError",
    "EnvLookup",
    "Outcome",
    "PodVolumes",
    "adapter_files",
    "container_argv",
    "decode_secret",
    "is_aws_cli",
    "lora_load_error",
    "resolve_env",
    "run_aws_cli",
    "run_init_container",
]
