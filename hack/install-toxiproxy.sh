#!/usr/bin/env bash
# Toxiproxy (Shopify), a TCP proxy that injects latency, resets and outages, for the API-fault tests. Built
# once from the Go module proxy and cached.
#
#   hack/install-toxiproxy.sh     (what `make faultdeps` runs; the server binary is the last line of stdout)
set -euo pipefail

VERSION="${TOXIPROXY_VERSION:-v2.12.0}"
CACHE="${GPUFLEET_CACHE:-$HOME/.cache/gpufleet}"
OUT="$CACHE/toxiproxy-$VERSION"

log() { echo "[install-toxiproxy] $*" >&2; }
die() { echo "[install-toxiproxy] ERROR: $*" >&2; exit 1; }

if [[ -x "$OUT/bin/toxiproxy-server" ]]; then echo "$OUT/bin/toxiproxy-server"; exit 0; fi
command -v go >/dev/null || die "go is needed (it is on these machines)"
mkdir -p "$CACHE"
work="$(mktemp -d "$CACHE/.toxiproxy.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log "building github.com/Shopify/toxiproxy/v2/cmd/server@$VERSION"
GOBIN="$work/bin" CGO_ENABLED=0 GOFLAGS=-mod=mod go install "github.com/Shopify/toxiproxy/v2/cmd/server@$VERSION" >&2 \
  || die "go install failed"
rm -rf "$OUT"
mkdir -p "$OUT/bin"
mv "$work/bin/server" "$OUT/bin/toxiproxy-server"
echo "$OUT/bin/toxiproxy-server"
