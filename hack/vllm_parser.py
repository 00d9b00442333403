"""Parse `vllm serve` command lines with the argument parser of a real vLLM release, without torch or a GPU.

Run by the interpreter that hack/install-vllm-parser.sh sets up (its own venv, the release's Python
files on PYTHONPATH), never by the project's: it puts stand-in modules into sys.modules.

    <parser venv>/bin/python hack/vllm_parser.py < {"argvs": [["<model>", "--port", "8000", ...], ...]}
    → {"vllm": "0.34.0", "stand_ins": [...], "results": [{"ok": true, "error": "", "inexact": []}, ...]}

Each argv is what follows `vllm serve`. The parser is built as vLLM's CLI builds it for `serve`
(vllm/entrypoints/cli/main.py: a FlexibleArgumentParser with subcommands, the serve subparser filled by
make_arg_parser in vllm/entrypoints/common/cli_args.py), and each parse is followed by the same
validate_parsed_serve_args that `vllm serve` runs before it starts anything. `inexact` lists options
that argparse accepted only as abbreviations (allow_abbrev): a generated flag must be spelt in full.

Importing vLLM's argument code imports torch and runtime modules, but building and running the parser
needs none of their behaviour; vLLM builds its own CLI reference pages the same way, with torch and
missing modules mocked (docs/mkdocs/gen_files/generate_argparse.py at v0.34.0). Here: torch and
vLLM's compiled extensions are stand-ins from the start, any other module is stood in for only when
its absence would fail the import (so optional-dependency probes such as platform detection still see
it missing), and VLLM_TARGET_DEVICE=cpu picks vLLM's CPU platform, whose flags are the same; only
defaults that depend on the device differ, and those are not checked here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import typing
from importlib.machinery import ModuleSpec
from typing import Any
from unittest.mock import MagicMock

from pydantic_core import core_schema

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

STAND_INS: list[str] = []


class _StandInBase:
    """A real class for vLLM classes that subclass something from a stand-in module."""

    def __class_getitem__(cls, item: Any) -> Any:
        return cls

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        return core_schema.any_schema()


class _StandIn(MagicMock):
    """A module (and everything in it) that pydantic accepts as a field type and classes can extend."""

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        return core_schema.any_schema()

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        return (type("StandIn", (_StandInBase,), {}),)


def stand_in(name: str) -> Any:
    module = _StandIn(name=name)
    module.__spec__ = ModuleSpec(name, None)
    module.__path__ = []
    module.__name__ = name
    sys.modules[name] = module
    STAND_INS.append(name)
    return module


def _infer_schema(fn: Any, **_: Any) -> str:
    # vllm/ir/op.py splits the schema of an op at " -> " and counts the Tensors it returns.
    returns = typing.get_type_hints(fn).get("return")
    count = len(typing.get_args(returns)) if typing.get_origin(returns) is tuple else 1
    return "(Tensor x) -> " + ", ".join(["Tensor"] * count)


def _install_torch_stand_in() -> None:
    nn = stand_in("torch.nn")
    # Real classes: vLLM's parameter classes inherit from nn.Parameter along two paths.
    nn.Module = type("Module", (), {})
    nn.Parameter = type("Parameter", (), {})
    library = stand_in("torch.library")
    library.infer_schema = _infer_schema
    torch = stand_in("torch")
    torch.nn = nn
    torch.library = library
    for name in ("triton", "vllm._C", "vllm._C_stable_libtorch", "vllm.utils.torch_utils"):
        stand_in(name)
    # Registers custom ops with torch at import; the parser needs none.
    stand_in("vllm.model_executor.custom_op")


def _build() -> tuple[Any, Any, Any]:
    from vllm.entrypoints.common.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm", description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    serve = make_arg_parser(subparsers.add_parser("serve", usage="vllm serve [model_tag] [options]"))
    return parser, serve, validate_parsed_serve_args


def build_parser() -> tuple[Any, Any, Any]:
    """(vllm CLI parser, its serve subparser, validate_parsed_serve_args)."""
    _install_torch_stand_in()
    for _ in range(500):
        try:
            return _build()
        except ModuleNotFoundError as missing:
            if missing.name is None or missing.name.split(".")[0] == "vllm":
                raise
            stand_in(missing.name)
    raise RuntimeError("vLLM's parser still misses modules after 500 stand-ins")


def _inexact(serve: Any, argv: list[str]) -> list[str]:
    known = serve._option_string_actions
    inexact = []
    for arg in argv:
        if not arg.startswith("--"):
            continue
        # FlexibleArgumentParser reads `--a_b` as `--a-b` and `--json-arg.key` as a part of --json-arg.
        name = "--" + arg[2:].split("=", 1)[0].replace("_", "-").split(".", 1)[0]
        if name not in known:
            inexact.append(arg)
    return inexact


def parse(parser: Any, serve: Any, validate: Any, argv: list[str]) -> dict[str, Any]:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            namespace = parser.parse_args(["serve", *argv])
            validate(namespace)
    except SystemExit:
        lines = err.getvalue().strip().splitlines()
        return {"ok": False, "error": lines[-1] if lines else "exited", "inexact": []}
    except Exception as error:  # vLLM's own checks raise TypeError / ValueError
        return {"ok": False, "error": f"{type(error).__name__}: {error}", "inexact": []}
    return {"ok": True, "error": "", "inexact": _inexact(serve, argv)}


def main() -> None:
    request = json.load(sys.stdin)
    parser, serve, validate = build_parser()
    from importlib.metadata import version

    results = [parse(parser, serve, validate, list(argv)) for argv in request["argvs"]]
    json.dump({"vllm": version("vllm"), "stand_ins": STAND_INS, "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
