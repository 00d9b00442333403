#!/usr/bin/env bash
# ElasticMQ, an SQS-compatible server on the JVM, for the interruption-queue backlog tests. Installed once.
#
#   hack/install-elasticmq.sh     (what `make sqsdeps` runs; the folder of its jars is the last line of stdout)
#
# moto's SQS scans every message on each call, so a 10,000-message backlog takes longer to send to it than
# CI has; ElasticMQ takes it in seconds and speaks the JSON protocol boto3 uses. Its server and dependencies
# come from Maven Central (Java and Maven are on these machines), pinned by version; the cache folder is
# keyed by the version, so a rerun does nothing.
set -euo pipefail

VERSION="${ELASTICMQ_VERSION:-1.6.11}"
CACHE="${GPUFLEET_CACHE:-$HOME/.cache/gpufleet}"
OUT="$CACHE/elasticmq-$VERSION"

log() { echo "[install-elasticmq] $*" >&2; }
die() { echo "[install-elasticmq] ERROR: $*" >&2; exit 1; }

if [[ -f "$OUT/lib/elasticmq-server_2.13-$VERSION.jar" ]]; then echo "$OUT"; exit 0; fi
command -v java >/dev/null || die "java is needed (OpenJDK 17 is on these machines)"
command -v mvn >/dev/null || die "mvn is needed to fetch ElasticMQ from Maven Central"

mkdir -p "$CACHE"
work="$(mktemp -d "$CACHE/.elasticmq.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.gpufleet.test</groupId><artifactId>elasticmq-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.elasticmq</groupId><artifactId>elasticmq-server_2.13</artifactId><version>$VERSION</version>
    </dependency>
  </dependencies>
</project>
POM
log "fetching org.elasticmq:elasticmq-server_2.13:$VERSION and its dependencies"
(cd "$work" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=lib) >&2 || die "mvn could not fetch ElasticMQ"
[[ -f "$work/lib/elasticmq-server_2.13-$VERSION.jar" ]] || die "the server jar is missing after the fetch"
rm -rf "$OUT"
mkdir -p "$OUT"
mv "$work/lib" "$OUT/lib"
log "ElasticMQ $VERSION in $OUT"
echo "$OUT"
