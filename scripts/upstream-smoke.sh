#!/usr/bin/env bash
# Smoke check of the pinned upstream control plane (scripts/upstream.sh):
# etcd + kube-apiserver + kube-controller-manager on loopback only, a throwaway
# PKI made with openssl, then `kubectl get ns` with an admin client certificate.
# Everything runs in a temp dir and is stopped and removed on exit, failure included.
#
#   scripts/upstream-smoke.sh            # builds/installs the binaries first if needed
#   UPSTREAM_BIN=/path/bin scripts/upstream-smoke.sh
#   SMOKE_KEEP=1 ...                     # keep the temp dir (logs, certs) for a look
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[smoke] %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

BIN=${UPSTREAM_BIN:-$("$HERE/scripts/upstream.sh" | tail -n1)}
for b in etcd kube-apiserver kube-controller-manager kubectl; do
  [ -x "$BIN/$b" ] || die "$BIN/$b missing"
done
command -v openssl >/dev/null || die "openssl not found"
command -v curl >/dev/null || die "curl not found"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nodepulse-smoke.XXXXXX")
PIDS=()
STATUS=1

# The script's stderr, for cleanup: a signal can arrive while a function call's
# redirection (wait_for's >/dev/null 2>&1) is in force, and the trap inherits it.
exec 4>&2
cleanup() {
  exec 2>&4
  local pid i
  # Stop what this script started, newest first, by pid: TERM, a bounded wait, then KILL.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$STATUS" != 0 ]; then
    for f in "$WORK"/*.log; do
      [ -f "$f" ] || continue
      log "--- last lines of $(basename "$f") ---"
      tail -n 25 "$f" >&2
    done
  fi
  if [ "${SMOKE_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free TCP port on 127.0.0.1 (the kernel picks it; the tiny race is acceptable here).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for <what> <timeout seconds> <pid> <command...>: poll the command until it
# succeeds, the process dies, or the deadline passes.
wait_for() {
  local what=$1 timeout=$2 pid=$3; shift 3
  local deadline=$((SECONDS + timeout)) t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || die "$what exited before it was ready"
    [ "$SECONDS" -lt "$deadline" ] || die "$what not ready after ${timeout}s"
    sleep 0.2
  done
  log "$what ready after $((SECONDS - t0))s"
}

# --- PKI ------------------------------------------------------------------------
PKI="$WORK/pki"
mkdir -p "$PKI"
(
  cd "$PKI"
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 1 \
    -subj "/CN=nodepulse-smoke-ca" 2>/dev/null
  # cert <name> <subject> <extendedKeyUsage> [subjectAltName]
  cert() {
    local name=$1 subj=$2 eku=$3 san=${4:-}
    {
      echo "basicConstraints=CA:FALSE"
      echo "keyUsage=critical,digitalSignature,keyEncipherment"
      echo "extendedKeyUsage=$eku"
      [ -z "$san" ] || echo "subjectAltName=$san"
    } >"$name.ext"
    openssl req -new "${ec[@]}" -keyout "$name.key" -out "$name.csr" -subj "$subj" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
      -days 1 -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  }
  cert apiserver "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin "/O=system:masters/CN=nodepulse-smoke-admin" clientAuth
  cert kcm "/CN=system:kube-controller-manager" clientAuth
  # service-account token signing key pair
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
  openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
)

# --- etcd -------------------------------------------------------------------------
ETCD_CLIENT=$(free_port)
ETCD_PEER=$(free_port)
while [ "$ETCD_PEER" = "$ETCD_CLIENT" ]; do ETCD_PEER=$(free_port); done
ETCD_ARGS=(
  --name=smoke
  --data-dir="$WORK/etcd"
  --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT"
  --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT"
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER"
  --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER"
  --initial-cluster="smoke=http://127.0.0.1:$ETCD_PEER"
  --initial-cluster-state=new
  --log-level=warn
)
log "etcd ${ETCD_ARGS[*]}"
"$BIN/etcd" "${ETCD_ARGS[@]}" >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
wait_for etcd 60 "${PIDS[-1]}" curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_CLIENT/health"

# --- kube-apiserver -----------------------------------------------------------------
API_PORT=$(free_port)
API_ARGS=(
  --etcd-servers="http://127.0.0.1:$ETCD_CLIENT"
  --bind-address=127.0.0.1
  --advertise-address=127.0.0.1
  # the default "lease" reconciler refuses a loopback advertise address (Endpoints
  # reject 127.0.0.0/8), so the "kubernetes" Service gets no endpoints here
  --endpoint-reconciler-type=none
  --secure-port="$API_PORT"
  --cert-dir="$WORK/apiserver-certs"
  --tls-cert-file="$PKI/apiserver.crt"
  --tls-private-key-file="$PKI/apiserver.key"
  --client-ca-file="$PKI/ca.crt"
  --service-account-issuer=https://kubernetes.default.svc.cluster.local
  --service-account-key-file="$PKI/sa.pub"
  --service-account-signing-key-file="$PKI/sa.key"
  --service-cluster-ip-range=10.0.0.0/24
  --authorization-mode=RBAC
)
log "kube-apiserver ${API_ARGS[*]}"
"$BIN/kube-apiserver" "${API_ARGS[@]}" >"$WORK/kube-apiserver.log" 2>&1 &
PIDS+=($!)
API_PID=${PIDS[-1]}

kubeconfig() { # kubeconfig <file> <cert> <key>
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: smoke
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: user
  user:
    client-certificate: $2
    client-key: $3
contexts:
- name: smoke
  context: {cluster: smoke, user: user}
current-context: smoke
EOF
}
kubeconfig "$WORK/admin.kubeconfig" "$PKI/admin.crt" "$PKI/admin.key"
kubeconfig "$WORK/kcm.kubeconfig" "$PKI/kcm.crt" "$PKI/kcm.key"
export KUBECONFIG="$WORK/admin.kubeconfig" KUBECACHEDIR="$WORK/kube-cache"
kc() { "$BIN/kubectl" --request-timeout=5s "$@"; }

wait_for "kube-apiserver /readyz" 120 "$API_PID" kc get --raw=/readyz

log "kubectl get ns:"
NS=$(kc get ns)
printf '%s\n' "$NS" >&2
grep -q '^default ' <<<"$NS" || die "namespace default not listed"
grep -q '^kube-system ' <<<"$NS" || die "namespace kube-system not listed"

# --- kube-controller-manager ------------------------------------------------------------
KCM_PORT=$(free_port)
KCM_ARGS=(
  --kubeconfig="$WORK/kcm.kubeconfig"
  --authentication-kubeconfig="$WORK/kcm.kubeconfig"
  --authorization-kubeconfig="$WORK/kcm.kubeconfig"
  --bind-address=127.0.0.1
  --secure-port="$KCM_PORT"
  --cert-dir="$WORK/kcm-certs"
  --leader-elect=false
  --use-service-account-credentials=true
  --service-account-private-key-file="$PKI/sa.key"
  --root-ca-file="$PKI/ca.crt"
  --cluster-signing-cert-file="$PKI/ca.crt"
  --cluster-signing-key-file="$PKI/ca.key"
)
log "kube-controller-manager ${KCM_ARGS[*]}"
"$BIN/kube-controller-manager" "${KCM_ARGS[@]}" >"$WORK/kube-controller-manager.log" 2>&1 &
PIDS+=($!)
KCM_PID=${PIDS[-1]}
wait_for "kube-controller-manager /healthz" 60 "$KCM_PID" \
  curl -fsS --max-time 2 --cacert "$WORK/kcm-certs/kube-controller-manager.crt" "https://127.0.0.1:$KCM_PORT/healthz"
# The serviceaccount controller creates "default" in every namespace: proof it runs.
wait_for "ServiceAccount default/default (from kube-controller-manager)" 60 "$KCM_PID" \
  kc -n default get serviceaccount default

kill -0 "$API_PID" 2>/dev/null || die "kube-apiserver died"

# Network rule: everything these processes listen on or are connected to is loopback.
if command -v ss >/dev/null; then
  for pid in "${PIDS[@]}"; do
    socks=$(ss -Htanup | grep -F "pid=$pid," || true)
    [ -n "$(awk '$2 == "LISTEN"' <<<"$socks")" ] || die "found no listening socket of pid $pid"
    bad=$(awk '{ print $5; if ($2 != "LISTEN" && $2 != "UNCONN") print $6 }' <<<"$socks" \
      | grep -Ev '^(127\.[0-9.]+|\[::1\]|\[::ffff:127\.[0-9.]+\])(%[a-z0-9]+)?:[0-9*]+$' || true)
    [ -z "$bad" ] || die "pid $pid uses non-loopback addresses: $(tr '\n' ' ' <<<"$bad")"
  done
  log "all sockets of etcd, kube-apiserver, kube-controller-manager are on loopback"
else
  log "warning: ss not found (Debian iproute2); loopback check skipped"
fi
STATUS=0
log "OK: etcd, kube-apiserver, kube-controller-manager and kubectl work ($BIN)"
