#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd
# from a current upstream release through the Go module proxy, and caches them
# by version. k8s.io/kubernetes replaces its staging modules with local paths, so
# `go install` cannot build it directly; a scratch module that pins every staging
# module to its published v0.Y.Z works (kubernetes/kubernetes#79384).
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
CACHE="${GPUFLEET_CACHE:-$HOME/.cache/gpufleet}"
OUT="$CACHE/k8s-$K8S_VERSION/bin"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)

log() { echo "[controlplane/build] $*" >&2; }
die() { echo "[controlplane/build] ERROR: $*" >&2; exit 1; }

complete() { for b in "${BINARIES[@]}"; do [[ -x "$OUT/$b" ]] || return 1; done; }
if complete; then echo "$OUT"; exit 0; fi

command -v go >/dev/null || die "Go is required (https://go.dev/dl); this machine kind ships Go 1.26"
command -v jq >/dev/null || { log "installing jq"; apt-get update -qq && apt-get install -y -qq jq >/dev/null; } \
  || die "jq is missing and could not be installed with apt-get"

WORK="$CACHE/build/k8s-$K8S_VERSION"
mkdir -p "$WORK" "$OUT"
cd "$WORK"
export GOFLAGS="-mod=mod" CGO_ENABLED=0
if [[ ! -f go.mod ]]; then
  go mod init gpufleet.local/controlplane >/dev/null 2>&1
fi
staging_minor="v0.${K8S_VERSION#v1.}"
K8S_MINOR="${K8S_VERSION#v1.}"; K8S_MINOR="${K8S_MINOR%%.*}"
gomod_path="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | jq -r .GoMod)"
[[ -f "$gomod_path" ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION from the Go module proxy"
log "pinning staging modules of k8s.io/kubernetes $K8S_VERSION to $staging_minor"
go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
while read -r module; do
  go mod edit -replace "$module=$module@$staging_minor"
done < <(grep -E '^\s*k8s.io/[a-z0-9-]+ => \./staging/' "$gomod_path" | awk '{print $1}')

cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
log "resolving dependencies (first run downloads several hundred MB)"
go mod tidy -e >/dev/null 2>&1 || true
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  if [[ ! -x "$OUT/$cmd" ]]; then
    log "building $cmd"
    go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$K8S_MINOR" \
      -o "$OUT/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" || die "go build of $cmd failed"
    mv "$OUT/$cmd.tmp" "$OUT/$cmd"
  fi
done

if [[ ! -x "$OUT/etcd" ]]; then
  EWORK="$CACHE/build/etcd-$ETCD_VERSION"
  mkdir -p "$EWORK" && cd "$EWORK"
  [[ -f go.mod ]] || go mod init gpufleet.local/etcd >/dev/null 2>&1
  log "building etcd $ETCD_VERSION"
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 || die "could not fetch etcd $ETCD_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$OUT/etcd.tmp" go.etcd.io/etcd/server/v3 || die "go build of etcd failed"
  mv "$OUT/etcd.tmp" "$OUT/etcd"
fi
complete || die "some binaries are missing in $OUT"
log "done: $OUT"
echo "$OUT"
