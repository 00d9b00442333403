#!/usr/bin/env bash
# Native dependencies of the fleet simulator (hack/fleetsim), installed once.
#
#   hack/install-simdeps.sh     (what `make simdeps` runs)
#
# Today that is Prometheus only: Debian's build (2.42, ENVIRONMENT.md "Prometheus,
# AWS, Python"), run by fleetsim.prometheus with its own config and data dir.
# Idempotent: nothing is installed when `prometheus` is already on PATH. The
# binary's path is printed on the last line of stdout.
set -euo pipefail

log() { echo "[simdeps] $*" >&2; }

if ! command -v prometheus >/dev/null 2>&1; then
  if [[ $EUID -ne 0 ]]; then
    SUDO=sudo
    command -v sudo >/dev/null 2>&1 || { log "ERROR: prometheus is missing and installing it needs root (apt-get)"; exit 1; }
  else
    SUDO=
  fi
  log "installing Debian package prometheus"
  export DEBIAN_FRONTEND=noninteractive
  # --no-install-recommends: the recommended exporters and web assets are not needed to scrape and query.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

path="$(command -v prometheus)" || { log "ERROR: prometheus is still not on PATH after installing"; exit 1; }
log "prometheus: $("$path" --version 2>&1 | head -n1)"
echo "$path"
