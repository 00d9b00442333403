# Sourced by the install-*-crds.sh scripts: CRD files out of a Go module's zip from the module proxy.
#
#   crds_from_module TAG MODULE VERSION SHA256 FOLDER OUT CRD...
#
# No GitHub release is reachable from these machines, but the Go module proxy is, and a module's zip
# carries its CRDs. The zip is pinned by version and SHA-256 and the OUT folder is keyed by the version,
# so a rerun does nothing; OUT is the last line of stdout. FOLDER is the CRDs' folder inside the zip.
# Needs $PYTHON, $CACHE and $GOPROXY_URL.

crds_from_module() {
  local tag="$1" module="$2" version="$3" sha256="$4" folder="$5" out="$6"
  shift 6
  local crds=("$@") complete=1 crd
  for crd in "${crds[@]}"; do [[ -f "$out/$crd" ]] || complete=0; done
  if (( complete )); then echo "$out"; return 0; fi

  mkdir -p "$CACHE"
  local work
  work="$(mktemp -d "$CACHE/.$tag.XXXXXX")"
  # shellcheck disable=SC2064  # the folder is fixed now; the trap runs after this function returns
  trap "rm -rf '$work'" EXIT
  local url="$GOPROXY_URL/$module/@v/$version.zip"
  echo "[$tag] downloading $url" >&2
  "$PYTHON" - "$url" "$work/module.zip" <<'PY' || { echo "[$tag] ERROR: download failed" >&2; return 1; }
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=120) as response, open(sys.argv[2], "wb") as out:
    out.write(response.read())
PY
  local actual
  actual="$(sha256sum "$work/module.zip" | cut -d' ' -f1)"
  if [[ "$actual" != "$sha256" ]]; then
    echo "[$tag] ERROR: SHA-256 of the module zip is $actual, expected $sha256" >&2
    return 1
  fi
  mkdir -p "$work/crds"
  "$PYTHON" - "$work/module.zip" "$work/crds" "$module@$version/$folder" "${crds[@]}" <<'PY'
import sys, zipfile
module, out, folder, names = zipfile.ZipFile(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
for name in names:
    with open(f"{out}/{name}", "wb") as crd:
        crd.write(module.read(f"{folder}/{name}"))
PY
  rm -rf "$out"
  mv "$work/crds" "$out"   # last, so a half-done run never looks complete
  echo "[$tag] $module $version CRDs in $out" >&2
  echo "$out"
}
