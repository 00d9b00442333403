"""The `gpufleet` command line: `validate`, `crds` and (later) `run`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from gpufleet import __version__
from gpufleet.api import KIND, validate_manifest
from gpufleet.api.crd import custom_resource_definition, render_yaml
from gpufleet.api.reference import render_api_reference


@dataclass(frozen=True)
class Finding:
    source: str
    name: str
    problem: str

    def __str__(self) -> str:
        return f"{self.source}: {self.name}: {self.problem}"


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
    return checked, findings


def _cmd_validate(args: argparse.Namespace, out: TextIO) -> int:
    checked, findings = validate_files(args.files)
    for finding in findings:
        print(finding, file=out)
    if checked == 0 and not findings:
        print("no ModelDeployment found in " + ", ".join(args.files), file=out)
        return 1
    if findings:
        return 1
    print(f"{checked} ModelDeployment(s) valid", file=out)
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
