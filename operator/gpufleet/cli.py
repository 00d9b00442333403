"""The `gpufleet` command line: `validate`, `fit`, `crds`, `api-reference`, `run`, `history`, `rollback`,
`promote`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import yaml

from gpufleet import __version__
from gpufleet.api import KIND, validate_manifest
from gpufleet.api.crd import custom_resource_definition, render_yaml
from gpufleet.api.kv_fit import KV_CACHE_DTYPE_BYTES
from gpufleet.api.reference import render_api_reference
from gpufleet.api.validation import manifest_warnings


@dataclass(frozen=True)
class Finding:
    source: str
    name: str
    problem: str
    warning: bool = False  # printed, but the object is valid

    def __str__(self) -> str:
        kind = "warning: " if self.warning else ""
        return f"{self.source}: {self.name}: {kind}{self.problem}"


def _documents(path: str) -> Iterator[tuple[int, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    for index, doc in enumerate(yaml.safe_load_all(text)):
        if doc is not None:
            yield index, doc


def validate_files(paths: Sequence[str]) -> tuple[int, list[Finding]]:
    """Validate every ModelDeployment in the files; returns (objects checked, findings)."""
    checked = 0
    findings: list[Finding] = []
    for path in paths:
        try:
            docs = list(_documents(path))
        except OSError as error:
            findings.append(Finding(path, "-", f"cannot read file: {error.strerror or error}"))
            continue
        except yaml.YAMLError as error:
            findings.append(Finding(path, "-", f"not valid YAML: {error}".replace("\n", " ")))
            continue
        for index, doc in docs:
            if isinstance(doc, dict) and doc.get("kind") not in (KIND, None):
                continue  # other kinds in the same file are not ours to judge
            checked += 1
            metadata = doc.get("metadata") if isinstance(doc, dict) else None
            name = metadata.get("name") if isinstance(metadata, dict) else None
            label = str(name) if name else f"document {index + 1}"
            findings.extend(Finding(path, label, str(problem)) for problem in validate_manifest(doc))
            findings.extend(Finding(path, label, str(w), warning=True) for w in manifest_warnings(doc))
    return checked, findings


def _cmd_validate(args: argparse.Namespace, out: TextIO) -> int:
    checked, findings = validate_files(args.files)
    for finding in findings:
        print(finding, file=out)
    if checked == 0 and not findings:
        print("no ModelDeployment found in " + ", ".join(args.files), file=out)
        return 1
    if any(not finding.warning for finding in findings):
        return 1
    print(f"{checked} ModelDeployment(s) valid", file=out)
    return 0


def _fit_deployment(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The Deployment to size (from a manifest or the flags), or an error message."""
    from gpufleet.api import ModelDeployment, sizing

    if args.manifest:
        docs = [d for _, d in _documents(args.manifest) if isinstance(d, dict) and d.get("kind") == KIND]
        if not docs:
            return None, f"no ModelDeployment found in {args.manifest}"
        try:
            spec = ModelDeployment.model_validate({k: v for k, v in docs[0].items() if k != "status"}).spec
        except ValueError:
            return None, "; ".join(str(p) for p in validate_manifest(docs[0]))
        dep = sizing.deployment(spec)
    else:
        if not args.model or not args.gpu:
            return None, "give a manifest, or --model and --gpu"
        from gpufleet.api.model_catalog import lookup

        known = lookup(args.model)
        dep = sizing.Deployment(
            uri=args.model,
            parameters=known.parameters if known else None,
            architecture=known,
            dtype="bfloat16",
            quantization="none",
            gpu_product=args.gpu,
            gpu_memory_gib=None,
            tensor_parallel_size=1,
            mig_profile=None,
            gpu_memory_utilization=0.9,
            kv_cache_dtype="auto",
            max_model_len=None,
            max_num_seqs=None,
            max_num_batched_tokens=None,
            typical_sequence_length=1024,
        )
    changes: dict[str, Any] = {}
    if args.max_model_len is not None:
        changes["max_model_len"] = args.max_model_len
    if args.gpu_memory_utilization is not None:
        changes["gpu_memory_utilization"] = args.gpu_memory_utilization
    if args.kv_cache_dtype is not None:
        changes["kv_cache_dtype"] = args.kv_cache_dtype
    if args.typical_length is not None:
        changes["typical_sequence_length"] = args.typical_length
    if args.gpu_memory_gib is not None:
        changes["gpu_memory_gib"] = args.gpu_memory_gib
    return replace(dep, **changes), None


def _fit_prices(args: argparse.Namespace, product: str | None) -> Any:
    """The price book of the GPU product: --prices FILE, else GPUFLEET_PRICES, else None."""
    import json

    from gpufleet.config import ProductPriceSetting

    text = Path(args.prices).read_text() if args.prices else os.environ.get("GPUFLEET_PRICES", "")
    table = (yaml.safe_load(text) if args.prices else json.loads(text)) if text.strip() else {}
    entry = (table or {}).get(product or "")
    return ProductPriceSetting.model_validate(entry).book() if entry else None


def _cmd_fit(args: argparse.Namespace, out: TextIO) -> int:
    from gpufleet.api.sizing import fit_of
    from gpufleet.planning.fit_table import fit_rows, render

    dep, error = _fit_deployment(args)
    if error is not None:
        print(error, file=out)
        return 1
    if fit_of(dep) is None:
        missing = "the model's architecture (not in the catalog: use a manifest with spec.model.architecture)"
        if dep.device_gib is None:
            missing = f"the memory of {dep.gpu_product} (use a manifest with spec.accelerator.gpuMemoryGiB)"
        elif dep.effective_max_model_len is None:
            missing = "maxModelLen (--max-model-len)"
        print(f"cannot size {dep.uri}: unknown {missing}", file=out)
        return 1
    prices = _fit_prices(args, dep.gpu_product)
    out.write(render(dep, fit_rows(dep, prices), prices, mark_choice=bool(args.manifest)))
    return 0


def _cmd_crds(args: argparse.Namespace, out: TextIO) -> int:
    out.write(render_yaml(custom_resource_definition()))
    return 0


def _cmd_api_reference(args: argparse.Namespace, out: TextIO) -> int:
    out.write(render_api_reference())
    return 0


def _cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    if args.verbose:
        os.environ["GPUFLEET_VERBOSE_WATCH_LOG"] = "true"
    from gpufleet.adapters.kube_http import credentials_from_environment

    if credentials_from_environment() is not None:
        # Nothing in the operator uses the kubernetes client then (adapters.kube_http), but kopf imports
        # it when it is installed, only to recognise its model objects: about 55 MiB for nothing.
        sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    # Imported here so `validate` and `crds` stay fast and need no cluster libraries.
    import kopf

    import gpufleet.handlers.operator
    from gpufleet.config import Settings

    settings = Settings()
    if settings.webhook_enabled:
        import gpufleet.handlers.webhook  # noqa: F401  (registers the validating webhook)
    kopf.configure(verbose=args.verbose)
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
    )
    return 0


def _kube(args: argparse.Namespace) -> Any:
    from gpufleet.adapters.kube import RestKubeApi, load_http

    return RestKubeApi(load_http(args.kubeconfig))


def _model_and_history(args: argparse.Namespace, out: TextIO) -> tuple[Any, Any, list[Any]] | None:
    """The ModelDeployment and its revisions, lowest first; None (with the reason printed) when missing."""
    from gpufleet.api.v1alpha1 import API_VERSION
    from gpufleet.planning.revisions import observe_revisions
    from gpufleet.planning.workloads import selector_string

    kube = _kube(args)
    body = kube.get(API_VERSION, KIND, args.namespace, args.name)
    if body is None:
        print(f"ModelDeployment {args.namespace}/{args.name} not found", file=out)
        return None
    listed = kube.list("apps/v1", "ControllerRevision", args.namespace, selector_string(args.name))
    return kube, body, observe_revisions(listed, body["metadata"]["uid"])


def _cmd_history(args: argparse.Namespace, out: TextIO) -> int:
    from gpufleet.adapters.kube import KubeError
    from gpufleet.planning.revisions import summary_of

    try:
        found = _model_and_history(args, out)
    except KubeError as error:
        print(f"cannot read from the API server: {error}", file=out)
        return 1
    if found is None:
        return 1
    _, body, history = found
    revisions = (body.get("status") or {}).get("revisions") or {}
    current = (revisions.get("current") or {}).get("name")
    stable = (revisions.get("stable") or {}).get("name")
    print(f"{'REVISION':<9} {'':<8} {'NAME':<32} {'IMAGE':<34} CHANGES", file=out)
    for revision in history:
        summary = summary_of(revision, history)
        mark = "current" if revision.name == current else "stable" if revision.name == stable else ""
        columns = f"{summary.revision:<9} {mark:<8} {summary.name:<32} {summary.image:<34}"
        print(f"{columns} {summary.changes or '-'}", file=out)
    return 0


def _cmd_rollback(args: argparse.Namespace, out: TextIO) -> int:
    from gpufleet.adapters.kube import KubeError
    from gpufleet.api.v1alpha1 import API_VERSION
    from gpufleet.planning.rollback import RollbackError, plan_rollback

    try:
        found = _model_and_history(args, out)
        if found is None:
            return 1
        kube, body, history = found
        rollback = plan_rollback(body, history, args.to_revision)
    except RollbackError as error:
        print(f"cannot roll back: {error}", file=out)
        return 1
    except KubeError as error:
        print(f"cannot read from the API server: {error}", file=out)
        return 1
    target = rollback.target
    if args.dry_run:
        # For GitOps: the serving fields to commit, instead of writing them here.
        print(f"# {args.name}: revision {target.revision} ({target.name}); {rollback.changes}", file=out)
        print(yaml.safe_dump({"spec": dict(target.template)}, sort_keys=False), end="", file=out)
        return 0
    try:
        kube.json_patch(API_VERSION, KIND, args.namespace, args.name, rollback.operations)
    except KubeError as error:
        if error.status in (409, 422):
            what = f"{args.name} changed while rolling back (nothing was written); run the command again"
            print(f"{what}: {error}", file=out)
        else:
            print(f"the API server refused the rollback (nothing was written): {error}", file=out)
        return 1
    print(
        f"{args.name} rolled back to revision {target.revision} ({target.name}): {rollback.changes}", file=out
    )
    return 0


def _cmd_promote(args: argparse.Namespace, out: TextIO) -> int:
    from gpufleet.adapters.kube import KubeError
    from gpufleet.api.v1alpha1 import API_VERSION
    from gpufleet.planning.rollout import PromoteError, promote_patch

    try:
        kube = _kube(args)
        body = kube.get(API_VERSION, KIND, args.namespace, args.name)
        if body is None:
            print(f"ModelDeployment {args.namespace}/{args.name} not found", file=out)
            return 1
        patch, what = promote_patch(body)
        kube.patch(API_VERSION, KIND, args.namespace, args.name, patch)
    except PromoteError as error:
        print(f"nothing to promote: {error}", file=out)
        return 1
    except KubeError as error:
        if error.status == 409:
            print(
                f"{args.name} changed while promoting (nothing was written); run the command again", file=out
            )
        else:
            print(f"the API server refused the promotion (nothing was written): {error}", file=out)
        return 1
    print(f"{args.name} promoted: {what}", file=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpufleet", description="Operator for self-hosted GPU inference fleets."
    )
    parser.add_argument("--version", action="version", version=f"gpufleet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser(
        "validate",
        help="check ModelDeployment manifests offline with the admission webhook's rules",
        description="Exit 0 when every ModelDeployment is valid, 1 otherwise; one line per problem.",
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="YAML file(s); - reads standard input")
    validate.set_defaults(handler=_cmd_validate)

    crds = commands.add_parser(
        "crds", help="print the CustomResourceDefinition generated from the API models"
    )
    crds.set_defaults(handler=_cmd_crds)

    run = commands.add_parser(
        "run",
        help="run the operator (settings from GPUFLEET_* environment variables; see docs/operator.md)",
    )
    run.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
    run.add_argument("--verbose", action="store_true", help="log every event kopf handles")
    run.set_defaults(handler=_cmd_run)

    fit = commands.add_parser(
        "fit",
        help="compare TP degrees, MIG profiles and weight formats for a model on a GPU type",
        description=(
            "Weights and KV cache per GPU, KV capacity in tokens and sequences, GPUs and cost per replica "
            "for every tensor-parallel degree, MIG profile and weight format; the manifest's choice is "
            "marked."
        ),
    )
    fit.add_argument("manifest", nargs="?", metavar="FILE", help="a ModelDeployment manifest (the first one)")
    fit.add_argument("--model", help="model URI, e.g. hf://meta-llama/Meta-Llama-3-70B-Instruct")
    fit.add_argument("--gpu", help="GPU product (node label nvidia.com/gpu.product)")
    fit.add_argument("--gpu-memory-gib", type=float, help="memory of one GPU when the product is not known")
    fit.add_argument("--max-model-len", type=int, help="default: the manifest's, else the model's context")
    fit.add_argument("--gpu-memory-utilization", type=float, help="default: the manifest's, else 0.9")
    fit.add_argument("--kv-cache-dtype", choices=sorted(KV_CACHE_DTYPE_BYTES), help="default: auto")
    fit.add_argument("--typical-length", type=int, help="tokens of a typical request (default 1024)")
    fit.add_argument("--prices", help="YAML/JSON prices per GPU product, as GPUFLEET_PRICES (the default)")
    fit.set_defaults(handler=_cmd_fit)

    history = commands.add_parser(
        "history",
        help="list a ModelDeployment's revisions of its serving template (model, engine, accelerator)",
    )
    history.add_argument("name", help="the ModelDeployment")
    history.add_argument("-n", "--namespace", default="default", help="its namespace (default: default)")
    history.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
    history.set_defaults(handler=_cmd_history)

    rollback = commands.add_parser(
        "rollback",
        help="write an earlier revision's serving template back into a ModelDeployment's spec",
        description=(
            "Writes spec.model, spec.engine and spec.accelerator of an earlier revision (the one before the "
            "current, or --to-revision) back into the spec in one patch that fails if the object changed "
            "since it was read; replicas, autoscaling and capacity are left alone. The operator rolls the "
            "groups to it. With --dry-run it prints those fields as YAML, for a GitOps repository."
        ),
    )
    rollback.add_argument("name", help="the ModelDeployment")
    rollback.add_argument("-n", "--namespace", default="default", help="its namespace (default: default)")
    rollback.add_argument("--to-revision", type=int, help="revision number (see `gpufleet history`)")
    rollback.add_argument("--dry-run", action="store_true", help="print the spec fields; write nothing")
    rollback.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
    rollback.set_defaults(handler=_cmd_rollback)

    promote = commands.add_parser(
        "promote",
        help="end the current canary step's pause now (spec.rollout.steps)",
        description=(
            "Ends the pause of the canary step in progress, a step without pauseSeconds included, by "
            "setting the annotation gpufleet.io/promote to <revision>/<step>; the operator then starts "
            "the next step. It promotes that step only, and fails if the object changed since it was read."
        ),
    )
    promote.add_argument("name", help="the ModelDeployment")
    promote.add_argument("-n", "--namespace", default="default", help="its namespace (default: default)")
    promote.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
    promote.set_defaults(handler=_cmd_promote)

    reference = commands.add_parser(
        "api-reference", help="print the Markdown API reference generated from the models"
    )
    reference.set_defaults(handler=_cmd_api_reference)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = args.handler
    result: int = handler(args, out or sys.stdout)
    return result
