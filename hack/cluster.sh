#!/usr/bin/env bash
# A real local Kubernetes control plane without Docker: etcd, kube-apiserver,
# kube-scheduler and kube-controller-manager as plain processes on loopback.
#
#   hack/cluster.sh up     [STATE_DIR]   start (or reuse) a control plane; prints the kubeconfig path
#   hack/cluster.sh down   [STATE_DIR]   stop every process it started (by pid) and remove STATE_DIR
#   hack/cluster.sh status [STATE_DIR]   exit 0 when it is up and ready
#   hack/cluster.sh env    [STATE_DIR]   print `export KUBECONFIG=...` (eval it)
#   hack/cluster.sh restart-apiserver [STATE_DIR]   stop kube-apiserver and start it again, same flags
#   hack/cluster.sh restart-controller-manager [STATE_DIR] [FLAG...]
#                                        start kube-controller-manager again with its `up` flags and
#                                        FLAGs after them (the last of a repeated flag wins)
#
# GPUFLEET_APISERVER_EXTRA_ARGS adds kube-apiserver flags at `up` (the fault tests' audit log);
# GPUFLEET_CONTROLLER_MANAGER_EXTRA_ARGS adds kube-controller-manager flags at `up` (the tests' HPA sync
# period, --horizontal-pod-autoscaler-sync-period=1s; `restart-controller-manager` takes the same flags).
# The aggregation layer is on (front-proxy CA and client certificate, --requestheader-* flags), so
# extension API servers work: KEDA's metrics server behind an APIService, for instance (hack/fleetsim/keda.py).
#
# STATE_DIR defaults to $GPUFLEET_CLUSTER_DIR or .state/cluster. Ports are picked
# free, so a test run and a demo can run side by side. The binaries are built
# once from a current release by hack/controlplane/build.sh and cached.
# There is no kubelet: nothing runs pods (the fleet simulator plays kubelet).
# With Docker (a laptop), kind gives the same API: see docs/local-cluster.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CMD="${1:-}"
STATE="${2:-${GPUFLEET_CLUSTER_DIR:-$ROOT/.state/cluster}}"
READY_TIMEOUT="${GPUFLEET_CLUSTER_TIMEOUT:-90}"
# Services get ClusterIPs from loopback: nothing here may use other private ranges.
SERVICE_CIDR="${GPUFLEET_SERVICE_CIDR:-127.100.0.0/16}"
COMPONENTS=(etcd kube-apiserver kube-scheduler kube-controller-manager)

log() { echo "[cluster] $*" >&2; }
die() { echo "[cluster] ERROR: $*" >&2; [[ -d "$STATE/logs" ]] && echo "[cluster] logs: $STATE/logs" >&2; exit 1; }

pid_alive() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

api_ready() {
  [[ -f "$STATE/kubeconfig" && -f "$STATE/token" && -f "$STATE/ports.env" ]] || return 1
  # shellcheck disable=SC1091
  source "$STATE/ports.env"
  curl -fsS --max-time 2 -k -H "Authorization: Bearer $(cat "$STATE/token")" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null 2>&1
}

all_up() {
  for c in "${COMPONENTS[@]}"; do pid_alive "$c" || return 1; done
  api_ready
}

wait_for() { # description, command...
  local what="$1"; shift
  local deadline=$((SECONDS + READY_TIMEOUT))
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
  log "$what ready"
}

free_ports() { # n
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

start() { # name, logfile, command...
  local name="$1"; shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$STATE/$name.pid"
}

ensure_tools() {
  local missing=()
  command -v openssl >/dev/null || missing+=(openssl)
  command -v curl >/dev/null || missing+=(curl)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; } || die "could not install ${missing[*]}"
  fi
}

write_kubeconfig() { # file, port, token
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: gpufleet-local
  cluster:
    server: https://127.0.0.1:$2
    certificate-authority: $STATE/pki/ca.crt
contexts:
- name: gpufleet-local
  context: {cluster: gpufleet-local, user: admin, namespace: default}
current-context: gpufleet-local
users:
- name: admin
  user: {token: $3}
EOF
}

make_pki() {
  local pki="$STATE/pki"
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=gpufleet-local-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n' >"$pki/san.ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/san.ext" -out "$pki/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  # The aggregation layer (APIServices such as KEDA's external.metrics.k8s.io): kube-apiserver calls an
  # extension API server with this client certificate and passes the caller it authenticated in the
  # X-Remote-* headers; the extension trusts those headers only from a certificate of this CA named
  # front-proxy-client (it reads both from the ConfigMap kube-system/extension-apiserver-authentication).
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=gpufleet-local-front-proxy-ca" \
    -keyout "$pki/front-proxy-ca.key" -out "$pki/front-proxy-ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=front-proxy-client" \
    -keyout "$pki/front-proxy-client.key" -out "$pki/front-proxy-client.csr" 2>/dev/null
  printf 'keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"$pki/front-proxy-client.ext"
  openssl x509 -req -in "$pki/front-proxy-client.csr" -CA "$pki/front-proxy-ca.crt" -CAkey "$pki/front-proxy-ca.key" \
    -CAcreateserial -days 3650 -extfile "$pki/front-proxy-client.ext" -out "$pki/front-proxy-client.crt" 2>/dev/null
}

cmd_up() {
  if all_up; then
    log "already running in $STATE"
    echo "$STATE/kubeconfig"
    return 0
  fi
  [[ -d "$STATE" ]] && cmd_down_quiet
  ensure_tools
  local bin
  bin="$("$HERE/controlplane/build.sh" | tail -n1)" || die "building the control-plane binaries failed"
  mkdir -p "$STATE/logs" "$STATE/etcd"
  make_pki
  local token
  token="$(openssl rand -hex 24)"
  echo "$token" >"$STATE/token"
  echo "$token,admin,admin,system:masters" >"$STATE/tokens.csv"
  read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT SCHEDULER_PORT CONTROLLER_PORT <<<"$(free_ports 5)"
  cat >"$STATE/ports.env" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
SCHEDULER_PORT=$SCHEDULER_PORT
CONTROLLER_PORT=$CONTROLLER_PORT
EOF
  echo "$bin" >"$STATE/bin"
  write_kubeconfig "$STATE/kubeconfig" "$APISERVER_PORT" "$token"

  start etcd "$bin/etcd" --data-dir "$STATE/etcd" --name local \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "local=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync
  wait_for etcd curl -fs --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" -o /dev/null \
    || die "etcd did not become healthy within ${READY_TIMEOUT}s"

  local apiserver=("$bin/kube-apiserver"
    --etcd-servers "http://127.0.0.1:$ETCD_PORT"
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT"
    --tls-cert-file "$STATE/pki/apiserver.crt" --tls-private-key-file "$STATE/pki/apiserver.key"
    --client-ca-file "$STATE/pki/ca.crt"
    --token-auth-file "$STATE/tokens.csv" --authorization-mode RBAC
    --service-account-issuer https://kubernetes.default.svc
    --service-account-key-file "$STATE/pki/sa.pub" --service-account-signing-key-file "$STATE/pki/sa.key"
    --service-cluster-ip-range "$SERVICE_CIDR"
    --cert-dir "$STATE/pki"
    --requestheader-client-ca-file "$STATE/pki/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group
    --requestheader-extra-headers-prefix X-Remote-Extra-
    --proxy-client-cert-file "$STATE/pki/front-proxy-client.crt" --proxy-client-key-file "$STATE/pki/front-proxy-client.key")
  # Extra flags (e.g. an audit log for the fault tests), split on spaces.
  # shellcheck disable=SC2206
  apiserver+=(${GPUFLEET_APISERVER_EXTRA_ARGS:-})
  # Kept so that `restart-apiserver` starts it again exactly so.
  printf '%s\0' "${apiserver[@]}" >"$STATE/kube-apiserver.args"
  start kube-apiserver "${apiserver[@]}"
  wait_for kube-apiserver api_ready || die "kube-apiserver did not become ready within ${READY_TIMEOUT}s"

  start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$STATE/kubeconfig" \
    --authentication-kubeconfig "$STATE/kubeconfig" --authorization-kubeconfig "$STATE/kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT"
  # Without the token controller's key and a root CA, no pod can be created.
  local controller_manager=("$bin/kube-controller-manager" --kubeconfig "$STATE/kubeconfig"
    --authentication-kubeconfig "$STATE/kubeconfig" --authorization-kubeconfig "$STATE/kubeconfig"
    --leader-elect=false --bind-address 127.0.0.1 --secure-port "$CONTROLLER_PORT"
    --service-account-private-key-file "$STATE/pki/sa.key" --root-ca-file "$STATE/pki/ca.crt"
    --use-service-account-credentials=false --service-cluster-ip-range "$SERVICE_CIDR")
  # shellcheck disable=SC2206 # word splitting of the extra flags is intended
  controller_manager+=(${GPUFLEET_CONTROLLER_MANAGER_EXTRA_ARGS:-})
  printf '%s\0' "${controller_manager[@]}" >"$STATE/kube-controller-manager.args"
  start kube-controller-manager "${controller_manager[@]}"
  wait_for kube-scheduler curl -fsk --max-time 2 "https://127.0.0.1:$SCHEDULER_PORT/healthz" -o /dev/null \
    || die "kube-scheduler did not become healthy within ${READY_TIMEOUT}s"
  wait_for kube-controller-manager curl -fsk --max-time 2 "https://127.0.0.1:$CONTROLLER_PORT/healthz" -o /dev/null \
    || die "kube-controller-manager did not become healthy within ${READY_TIMEOUT}s"
  # The default ServiceAccount is what pods need first; wait for the controller that makes it.
  wait_for "default ServiceAccount" "$bin/kubectl" --kubeconfig "$STATE/kubeconfig" get serviceaccount default \
    -o name >/dev/null 2>&1 || die "the default ServiceAccount did not appear"
  log "up: export KUBECONFIG=$STATE/kubeconfig"
  echo "$STATE/kubeconfig"
}

stop_pid() { # name
  local file="$STATE/$1.pid" pid
  [[ -f "$file" ]] || return 0
  pid="$(cat "$file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

cmd_down_quiet() {
  local i
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do stop_pid "${COMPONENTS[$i]}"; done
  rm -rf "$STATE"
}

cmd_restart_apiserver() { # stop kube-apiserver and start it again with the same flags (a control-plane upgrade)
  [[ -f "$STATE/kube-apiserver.args" ]] || die "no control plane in $STATE"
  local args=()
  mapfile -d '' args <"$STATE/kube-apiserver.args"
  stop_pid kube-apiserver
  start kube-apiserver "${args[@]}"
  wait_for kube-apiserver api_ready || die "kube-apiserver did not come back within ${READY_TIMEOUT}s"
}

cmd_restart_controller_manager() { # FLAG...: kube-controller-manager again, its `up` flags then these
  [[ -f "$STATE/kube-controller-manager.args" ]] || die "no control plane in $STATE"
  local args=() port
  mapfile -d '' args <"$STATE/kube-controller-manager.args"
  port="$(sed -n 's/^CONTROLLER_PORT=//p' "$STATE/ports.env")"
  stop_pid kube-controller-manager
  start kube-controller-manager "${args[@]}" "$@"
  wait_for kube-controller-manager curl -fsk --max-time 2 "https://127.0.0.1:$port/healthz" -o /dev/null \
    || die "kube-controller-manager did not come back within ${READY_TIMEOUT}s"
}

case "$CMD" in
  up) cmd_up ;;
  restart-apiserver) cmd_restart_apiserver ;;
  restart-controller-manager) shift $(( $# < 2 ? $# : 2 )); cmd_restart_controller_manager "$@" ;;
  down) cmd_down_quiet; log "down: $STATE removed" ;;
  status) if all_up; then log "up ($STATE)"; else log "not running ($STATE)"; exit 1; fi ;;
  env) all_up || die "no control plane running in $STATE (run: hack/cluster.sh up)"; echo "export KUBECONFIG=$STATE/kubeconfig" ;;
  *) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
