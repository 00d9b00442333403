#!/usr/bin/env bash
# llm-d-inference-sim (github.com/llm-d/llm-d-inference-sim), a second vLLM simulator with vLLM's metric names
# and its own latency model, built once from the Go module proxy and cached by version. fleetsim runs one per
# vLLM pod when a fleet file says `engine: llm-d-inference-sim` (hack/fleetsim/llmd_sim.py).
#
#   hack/install-llmd-sim.sh     (what `make llmd-sim` runs; the last line of stdout is the folder holding
#                                 bin/llm-d-inference-sim)
#
# `go install pkg@version` fails here: it looks the module up in the proxy's version list for deprecation
# notices, and the proxy answers 403 for that list. So this builds from a scratch module that requires the
# pinned version (as hack/install-keda.sh does; no list is read then). Its go.mod has no replace or exclude
# lines to repeat. CGO_ENABLED=0: nothing this command links needs C. About 925 packages: a few minutes on
# 2 cores the first time; a second run only checks the cache.
set -euo pipefail

VERSION="${LLMD_SIM_VERSION:-v0.10.2}"
MODULE="github.com/llm-d/llm-d-inference-sim"
CACHE="${GPUFLEET_CACHE:-$HOME/.cache/gpufleet}"
OUT="$CACHE/llm-d-inference-sim-$VERSION"

log() { echo "[install-llmd-sim] $*" >&2; }
die() { echo "[install-llmd-sim] ERROR: $*" >&2; exit 1; }

if [[ -x "$OUT/bin/llm-d-inference-sim" ]]; then echo "$OUT"; exit 0; fi
command -v go >/dev/null || die "Go is required (https://go.dev/dl); this machine kind ships Go 1.26"
# The scratch module stays between runs (its go.sum and Go's build cache make a retry after a failure quick).
WORK="$CACHE/build/llm-d-inference-sim-$VERSION"
mkdir -p "$WORK"
cd "$WORK"
export GOFLAGS="-mod=mod" CGO_ENABLED=0
go mod download "$MODULE@$VERSION" >/dev/null || die "could not download $MODULE@$VERSION from the Go module proxy"
[[ -f go.mod ]] || go mod init gpufleet.local/llm-d-inference-sim >/dev/null 2>&1
go mod edit -require "$MODULE@$VERSION"
tmp="$(mktemp -d "$CACHE/.llmd-sim.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
log "building $MODULE/cmd/llm-d-inference-sim@$VERSION (first run: a few minutes on 2 cores)"
go build -trimpath -ldflags "-s -w" -o "$tmp/llm-d-inference-sim" "$MODULE/cmd/llm-d-inference-sim" \
  || die "go build of $MODULE/cmd/llm-d-inference-sim@$VERSION failed"
rm -rf "$OUT"
mkdir -p "$OUT/bin"
mv "$tmp/llm-d-inference-sim" "$OUT/bin/"
[[ -x "$OUT/bin/llm-d-inference-sim" ]] || die "$OUT/bin/llm-d-inference-sim is missing"
log "done: $OUT"
echo "$OUT"
