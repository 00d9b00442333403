#!/usr/bin/env bash
# KEDA's operator and metrics API server (github.com/kedacore/keda/v2), built once from the Go module proxy
# and cached by version with the CRDs of the same module (config/crd/bases). The e2e test that lets KEDA and
# the real HPA scale a ModelDeployment (tests/e2e/test_keda.py) runs them; hack/fleetsim/keda.py starts them.
#
#   hack/install-keda.sh     (what `make keda` runs; the last line of stdout is the folder holding
#                             bin/keda-operator, bin/keda-adapter and crds/*.yaml)
#
# KEDA's go.mod has a `replace` and an `exclude`, which `go install pkg@version` refuses, so this builds from
# a scratch module that requires KEDA and repeats those lines (as hack/controlplane/build.sh does for
# Kubernetes' staging modules). CGO_ENABLED=0: otherwise a zstd dependency pulls in cgo. About 3,450
# packages: 10-15 minutes on 2 cores the first time; a second run only checks the cache.
set -euo pipefail

VERSION="${KEDA_VERSION:-v2.21.0}"
MODULE="github.com/kedacore/keda/v2"
CACHE="${GPUFLEET_CACHE:-$HOME/.cache/gpufleet}"
OUT="$CACHE/keda-$VERSION"

log() { echo "[install-keda] $*" >&2; }
die() { echo "[install-keda] ERROR: $*" >&2; exit 1; }

complete() {
  [[ -x "$OUT/bin/keda-operator" && -x "$OUT/bin/keda-adapter" && -f "$OUT/crds/keda.sh_scaledobjects.yaml" ]]
}
if complete; then echo "$OUT"; exit 0; fi

command -v go >/dev/null || die "Go is required (https://go.dev/dl); this machine kind ships Go 1.26"
command -v jq >/dev/null || { log "installing jq"; apt-get update -qq && apt-get install -y -qq jq >/dev/null; } \
  || die "jq is missing and could not be installed with apt-get"

# The scratch module stays between runs (its go.sum and Go's build cache make a retry after a failure quick).
WORK="$CACHE/build/keda-$VERSION"
mkdir -p "$WORK"
cd "$WORK"
export GOFLAGS="-mod=mod" CGO_ENABLED=0

info="$(go mod download -json "$MODULE@$VERSION")" || die "could not download $MODULE@$VERSION from the Go module proxy"
src="$(jq -r .Dir <<<"$info")"
gomod="$(jq -r .GoMod <<<"$info")"
[[ -d "$src" && -f "$gomod" ]] || die "no source or go.mod for $MODULE@$VERSION"

[[ -f go.mod ]] || go mod init gpufleet.local/keda >/dev/null 2>&1
go mod edit -require "$MODULE@$VERSION"
# KEDA's own replace and exclude lines: a dependency's are ignored, so the main module repeats them.
while read -r old new; do
  [[ "$new" == *@* ]] || die "$MODULE@$VERSION replaces $old with a local path ($new): cannot be built from the proxy"
  log "replace $old => $new (from KEDA's go.mod)"
  go mod edit -replace "$old=$new"
done < <(go mod edit -json "$gomod" | jq -r '.Replace // [] | .[]
  | "\(.Old.Path)\(if .Old.Version then "@" + .Old.Version else "" end) \(.New.Path)\(if .New.Version then "@" + .New.Version else "" end)"')
while read -r excluded; do
  log "exclude $excluded (from KEDA's go.mod)"
  go mod edit -exclude "$excluded"
done < <(go mod edit -json "$gomod" | jq -r '.Exclude // [] | .[] | "\(.Path)@\(.Version)"')

mkdir -p "$CACHE"
tmp="$(mktemp -d "$CACHE/.keda.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
ldflags="-s -w -X $MODULE/version.Version=${VERSION#v} -X $MODULE/version.GitCommit=$VERSION"
log "building $MODULE@$VERSION cmd/operator and cmd/adapter (first run: 10-15 minutes on 2 cores)"
go build -trimpath -ldflags "$ldflags" -o "$tmp/keda-operator" "$MODULE/cmd/operator" || die "go build of cmd/operator failed"
go build -trimpath -ldflags "$ldflags" -o "$tmp/keda-adapter" "$MODULE/cmd/adapter" || die "go build of cmd/adapter failed"
mkdir -p "$tmp/out/bin" "$tmp/out/crds"
mv "$tmp/keda-operator" "$tmp/keda-adapter" "$tmp/out/bin/"
cp "$src"/config/crd/bases/*.yaml "$tmp/out/crds/"
chmod -R u+w "$tmp/out/crds"  # the module cache is read-only
rm -rf "$OUT"
mv "$tmp/out" "$OUT"
complete || die "some files are missing in $OUT"
log "done: $OUT"
echo "$OUT"
