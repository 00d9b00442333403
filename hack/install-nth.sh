#!/usr/bin/env bash
# aws-node-termination-handler (github.com/aws/aws-node-termination-handler), built once from the Go module
# proxy and cached by version. The spot benchmark's `nth` and `nth+ours` policies (hack/bench/spot.py) and the
# e2e test of NTH beside gpufleet (tests/e2e/test_nth_pairing.py) run it; hack/fleetsim/nth.py starts it.
#
#   hack/install-nth.sh      (what `make nth` runs; the last line of stdout is the folder holding
#                             bin/node-termination-handler)
#
# `go install <module>/cmd@<version>` is refused here: it asks the proxy for the module's version list (to
# look for a deprecation), which the proxy answers 403 for this module. So, as hack/install-keda.sh does, this
# builds from a scratch module that requires the exact version (its go.mod has no replace or exclude lines to
# repeat). About 660 packages: a few minutes on 2 cores the first time; a second run only checks the cache.
# CGO_ENABLED=0: a static binary, no C toolchain needed.
set -euo pipefail

VERSION="${NTH_VERSION:-v1.25.6}"
MODULE="github.com/aws/aws-node-termination-handler"
CACHE="${GPUFLEET_CACHE:-$HOME/.cache/gpufleet}"
OUT="$CACHE/nth-$VERSION"
BINARY="node-termination-handler"

log() { echo "[install-nth] $*" >&2; }
die() { echo "[install-nth] ERROR: $*" >&2; exit 1; }

complete() { [[ -x "$OUT/bin/$BINARY" ]]; }
if complete; then echo "$OUT"; exit 0; fi

command -v go >/dev/null || die "Go is required (https://go.dev/dl); this machine kind ships Go 1.26"

# The scratch module stays between runs (its go.sum and Go's build cache make a retry after a failure quick).
WORK="$CACHE/build/nth-$VERSION"
mkdir -p "$WORK"
cd "$WORK"
export GOFLAGS="-mod=mod" CGO_ENABLED=0
go mod download "$MODULE@$VERSION" || die "could not download $MODULE@$VERSION from the Go module proxy"
[[ -f go.mod ]] || go mod init gpufleet.local/nth >/dev/null 2>&1
go mod edit -require "$MODULE@$VERSION"

mkdir -p "$CACHE"
tmp="$(mktemp -d "$CACHE/.nth.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
log "building $MODULE@$VERSION ./cmd (first run: a few minutes on 2 cores)"
go build -trimpath -ldflags "-s -w" -o "$tmp/$BINARY" "$MODULE/cmd" || die "go build of $MODULE/cmd failed"
mkdir -p "$tmp/out/bin"
mv "$tmp/$BINARY" "$tmp/out/bin/"
rm -rf "$OUT"
mv "$tmp/out" "$OUT"
complete || die "$OUT/bin/$BINARY is missing"
log "done: $OUT"
echo "$OUT"
