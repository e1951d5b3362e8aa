#!/usr/bin/env bash
# start.sh DIR — run etcd + a real kube-apiserver v1.20.2 on 127.0.0.1 only.
#
# Data, logs and credentials go under DIR (created; must be empty or absent).
# On success prints the path of DIR/kubeconfig on stdout (nothing else) and
# leaves the two servers running; DIR/pids lists their PIDs for stop.sh.
# Token auth + AlwaysAllow; HTTPS with a self-signed cert (skip verify).
#
# Needs: build.sh run first (or KUBE_APISERVER=/path/to/kube-apiserver), etcd
# (Debian etcd-server), openssl, curl.
set -euo pipefail

K8S_VERSION=v1.20.2
CACHE=${KUBE_NFTPROXY_CACHE:-$HOME/.cache/kube-nftproxy}
APISERVER=${KUBE_APISERVER:-$CACHE/kube-apiserver-$K8S_VERSION}
ETCD=${ETCD:-$(command -v etcd || true)}
READY_TIMEOUT=${KUBE_NFTPROXY_APISERVER_TIMEOUT:-60}
MARKER=.kube-nftproxy-real-apiserver

log() { printf '[real-apiserver/start %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $# -eq 1 && -n $1 ]] || die "usage: $0 DIR"
[[ -x $APISERVER ]] || die "no kube-apiserver at $APISERVER (run integration/real-apiserver/build.sh first)"
[[ -n $ETCD && -x $ETCD ]] || die "etcd not found (apt-get install etcd-server)"
command -v openssl >/dev/null || die "openssl not found"
command -v curl >/dev/null || die "curl not found"

mkdir -p "$1"
DIR=$(cd "$1" && pwd)
if [[ -n $(ls -A "$DIR") ]]; then
    die "$DIR is not empty"
fi
: >"$DIR/$MARKER"
exec </dev/null

# --- free loopback ports -----------------------------------------------------
# Bind all three at once to port 0 so the kernel picks distinct free ports.
free_ports() {
    local py
    for py in python3 python; do
        if command -v "$py" >/dev/null; then
            "$py" - <<'EOF' && return 0
import socket
socks = []
for _ in range(3):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
        fi
    done
    # Fallback: random high ports that nothing answers on.
    local ports=() p
    while [[ ${#ports[@]} -lt 3 ]]; do
        p=$((20000 + RANDOM % 30000))
        [[ " ${ports[*]} " == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then ports+=("$p"); fi
    done
    echo "${ports[*]}"
}
read -r ETCD_CLIENT ETCD_PEER API_PORT < <(free_ports)
[[ -n $API_PORT ]] || die "could not pick free ports"
log "ports: etcd client $ETCD_CLIENT, etcd peer $ETCD_PEER, apiserver $API_PORT"

PIDS=()
fail() {
    log "ERROR: $*"
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for f in "$DIR"/etcd.log "$DIR"/kube-apiserver.log; do
        [[ -f $f ]] || continue
        log "--- last lines of $f"
        tail -n 25 "$f" >&2 || true
    done
    sleep 1
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    exit 1
}
record_pid() { PIDS+=("$2"); echo "$1 $2" >>"$DIR/pids"; }

# --- etcd ----------------------------------------------------------------------
"$ETCD" --name kube-nftproxy-test --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "kube-nftproxy-test=http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster-state new \
    --quota-backend-bytes 268435456 \
    </dev/null >"$DIR/etcd.log" 2>&1 &
record_pid etcd $!

deadline=$((SECONDS + READY_TIMEOUT))
until curl -fsS "http://127.0.0.1:$ETCD_CLIENT/health" 2>/dev/null | grep -q '"health":"true"'; do
    kill -0 "${PIDS[0]}" 2>/dev/null || fail "etcd exited"
    ((SECONDS < deadline)) || fail "etcd not healthy after ${READY_TIMEOUT}s"
    sleep 0.2
done
log "etcd healthy (pid ${PIDS[0]})"

# --- credentials ---------------------------------------------------------------
openssl genrsa -out "$DIR/sa.key" 2048 2>/dev/null || fail "openssl genrsa"
openssl rsa -in "$DIR/sa.key" -pubout -out "$DIR/sa.pub" 2>/dev/null || fail "openssl rsa -pubout"
TOKEN=$(openssl rand -hex 16)
# token,user,uid,"group1,group2"
echo "$TOKEN,kube-nftproxy-admin,kube-nftproxy-admin,system:masters" >"$DIR/tokens.csv"
printf '%s\n' "$TOKEN" >"$DIR/token"
chmod 0600 "$DIR/sa.key" "$DIR/tokens.csv" "$DIR/token"

# --- kube-apiserver ------------------------------------------------------------
"$APISERVER" \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT" \
    --bind-address 127.0.0.1 --secure-port "$API_PORT" --insecure-port 0 \
    --advertise-address 127.0.0.1 \
    --cert-dir "$DIR/certs" \
    --endpoint-reconciler-type none \
    --service-cluster-ip-range 10.96.0.0/16 \
    --service-account-key-file "$DIR/sa.pub" \
    --service-account-signing-key-file "$DIR/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --token-auth-file "$DIR/tokens.csv" \
    --authorization-mode AlwaysAllow \
    </dev/null >"$DIR/kube-apiserver.log" 2>&1 &
record_pid kube-apiserver $!

SERVER=https://127.0.0.1:$API_PORT
deadline=$((SECONDS + READY_TIMEOUT))
until [[ $(curl -ksS -m 5 -H "Authorization: Bearer $TOKEN" "$SERVER/readyz" 2>/dev/null) == ok ]]; do
    kill -0 "${PIDS[1]}" 2>/dev/null || fail "kube-apiserver exited"
    ((SECONDS < deadline)) || fail "kube-apiserver /readyz not ok after ${READY_TIMEOUT}s"
    sleep 0.5
done
log "kube-apiserver ready at $SERVER (pid ${PIDS[1]})"

printf '%s\n' "$SERVER" >"$DIR/server"
cat >"$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: real-apiserver
  cluster:
    server: $SERVER
    insecure-skip-tls-verify: true
users:
- name: kube-nftproxy-admin
  user:
    token: $TOKEN
contexts:
- name: real-apiserver
  context:
    cluster: real-apiserver
    user: kube-nftproxy-admin
    namespace: default
current-context: real-apiserver
EOF
chmod 0600 "$DIR/kubeconfig"
printf '%s\n' "$DIR/kubeconfig"
