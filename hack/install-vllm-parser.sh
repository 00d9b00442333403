#!/usr/bin/env bash
# vLLM's own `vllm serve` argument parser, at the default image's release, for the contract test
# (tests/contract/test_vllm_cli.py). Installed once into ~/.cache/gpufleet/vllm-parser-<release>.
#
#   hack/install-vllm-parser.sh     (what `make vllm-parser` runs; the folder is the last line of stdout)
#   then: PYTHONPATH=<folder>/site <folder>/venv/bin/python -P hack/vllm_parser.py < request.json
#
# The parser needs no GPU, no torch and none of vLLM's compiled kernels (hack/vllm_parser.py stands in
# for them), so this takes the release's wheel from PyPI with pip, keeps only its Python files and
# data (about 60 MB of the wheel's 240 MB: the rest is CUDA kernels and C++ headers), and gives it a
# venv of its own holding the few packages its argument code runs on (pydantic, regex, PyYAML, msgspec,
# packaging), pinned. A separate venv, so none of this can shadow the project's packages.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
PYTHON="${PYTHON:-python3}"
CACHE="${GPUFLEET_CACHE:-$HOME/.cache/gpufleet}"
# Default: the release of the default image (gpufleet.api.v1alpha1.DEFAULT_IMAGE), so the two cannot drift.
VERSION="${VLLM_PARSER_VERSION:-$("$PYTHON" -c \
  'from gpufleet.api.vllm_versions import NEWEST_KNOWN, format_version; print(format_version(NEWEST_KNOWN))')}"
OUT="$CACHE/vllm-parser-$VERSION"
# Wheels only, exact versions that satisfy vLLM 0.34.0's requirements (pydantic>=2.12.0, regex, pyyaml,
# msgspec, typing_extensions>=4.10), with pydantic's own dependencies, so a rerun resolves nothing.
PINS=(
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 regex==2026.11.19 pyyaml==6.0.4 msgspec==0.23.0 packaging==26.4
)

log() { echo "[install-vllm-parser] $*" >&2; }
die() { echo "[install-vllm-parser] ERROR: $*" >&2; exit 1; }

if [[ -f "$OUT/ready" ]]; then echo "$OUT"; exit 0; fi

mkdir -p "$CACHE"
work="$(mktemp -d "$CACHE/.vllm-parser.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log "downloading vllm==$VERSION from PyPI (wheel only, no dependencies)"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --dest "$work/wheel" "vllm==$VERSION" || die "pip download failed"
wheel="$(ls "$work"/wheel/vllm-*.whl 2>/dev/null | head -n1)"
[[ -f "$wheel" ]] || die "no wheel downloaded"

# Python's zipfile: nothing beyond Python is needed.
"$PYTHON" - "$wheel" "$work/site" <<'PY'
import re, sys, zipfile
from pathlib import Path

wheel, site = zipfile.ZipFile(sys.argv[1]), Path(sys.argv[2])
# Compiled kernels, their C++/CUDA sources and headers, and the bundled binaries: the parser runs none.
skip = re.compile(r"\.(so|h|hpp|cuh|inl|cu|cpp|c|cc|cubin|fatbin)$")
for info in wheel.infolist():
    name = info.filename
    if skip.search(name) or name.endswith("/RECORD"):
        continue
    if "." not in name.rsplit("/", 1)[-1] and info.file_size > 1 << 20:  # e.g. vllm/vllm-rs
        continue
    wheel.extract(info, site)
# vLLM checks torch's version at import (vllm/utils/torch_version.py): give the stand-in the release vLLM pins.
metadata = next(site.glob("vllm-*.dist-info/METADATA")).read_text()
pinned = re.search(r"^Requires-Dist: torch==([0-9][^ ;\n]*)", metadata, re.M)
if pinned is None:
    sys.exit("vLLM's METADATA pins no torch version")
info = site / f"torch-{pinned[1]}.dist-info"
info.mkdir()
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {pinned[1]}\n")
(info / "INSTALLER").write_text("gpufleet stand-in: metadata only, no code\n")
PY
rm -rf "$work/wheel"

log "creating its venv with ${PINS[*]}"
"$PYTHON" -m venv --without-pip "$work/venv" || die "python -m venv failed"
"$PYTHON" -m pip --python "$work/venv/bin/python" install --quiet --disable-pip-version-check \
  --no-deps --only-binary=:all: "${PINS[@]}" || die "pip install failed"

rm -rf "$OUT"
mv "$work" "$OUT"
trap - EXIT
# A smoke parse: checks the stand-ins still cover this release, and compiles the modules once.
if ! echo '{"argvs": [["m", "--port", "8000"]]}' \
  | PYTHONPATH="$OUT/site" "$OUT/venv/bin/python" -P "$HERE/vllm_parser.py" >"$OUT/smoke.json" 2>"$OUT/smoke.log" \
  || ! "$PYTHON" -c 'import json, sys; sys.exit(not json.load(open(sys.argv[1]))["results"][0]["ok"])' \
    "$OUT/smoke.json"; then
  tail -n 30 "$OUT/smoke.log" "$OUT/smoke.json" >&2 || true
  rm -rf "$OUT"
  die "vLLM $VERSION's parser does not build or parse; see hack/vllm_parser.py"
fi
touch "$OUT/ready"   # last, so a half-done run never looks complete
log "vLLM $VERSION's parser in $OUT ($(du -sh "$OUT" | cut -f1))"
echo "$OUT"
