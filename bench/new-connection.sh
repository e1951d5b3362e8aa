#!/bin/sh
# New-connection latency at 100 vs 10,000 Services (BENCHMARKS.md, "Scale: both layouts"):
# real TCP connects from a client namespace, through a node namespace that holds the
# ruleset, to a 2-endpoint Service whose endpoints listen in an endpoint namespace; once to
# its ClusterIP and once to its NodePort. The cluster is the realistic mix of N Services
# (`synthetic --mix realistic`) plus the probed Service (ClusterIP 10.100.255.10:80,
# NodePort 29080, endpoints 10.200.0.2 and 10.200.0.3 on port 8080). Each N gets its own
# set of three namespaces, and so does a baseline without any ruleset (plain routing to one
# endpoint); the connects run in $BLOCKS alternating blocks across all of them, so that the
# load of the machine drifting during the run hits every case alike. It prints the median
# and p99 connect() time over $CONNECTS connects per case (after warm-up connects), then
# the nft-trace rule counts of docs/bench/new-connection-trace.sh.
#
# As root, from the repository: `cargo build --release && sh bench/new-connection.sh`
# (SIZES="100 10000", CONNECTS=2000, BIN=...). Everything runs in namespaces this script
# creates (kntp-nc-*-PID) and deletes on exit; nothing touches the machine's own.
set -eu
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/kube-nftproxy}
SIZES=${SIZES:-"100 10000"}
CONNECTS=${CONNECTS:-2000}
BLOCKS=${BLOCKS:-8}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mktemp -d /tmp/kntp-nc-XXXXXX)
TAGS="none $SIZES"
SRVS=""
cleanup() {
    for p in $SRVS; do kill "$p" 2>/dev/null || true; done
    for t in $TAGS; do
        for r in node client ep; do ip netns del "kntp-nc-$r-$t-$$" 2>/dev/null || true; done
    done
    rm -rf "$OUT"
}
trap cleanup EXIT
ARGS="--hostname-override node-a --cluster-cidr 10.244.0.0/16"

cat > "$OUT/target.yaml" <<'Y'
apiVersion: v1
kind: Service
metadata: {name: probed, namespace: bench}
spec:
  type: NodePort
  clusterIP: 10.100.255.10
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 29080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: probed-x, namespace: bench, labels: {kubernetes.io/service-name: probed}}
addressType: IPv4
endpoints:
- {addresses: [10.200.0.2], conditions: {ready: true}, nodeName: node-b}
- {addresses: [10.200.0.3], conditions: {ready: true}, nodeName: node-b}
ports: [{name: http, port: 8080, protocol: TCP}]
Y

cat > "$OUT/server.py" <<'P'
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(4096)
while True:
    c, _ = s.accept()
    c.close()
P

# connect() time of each new connection: SYN through the node's rules to an endpoint and
# the SYN-ACK back. The client resets each connection (SO_LINGER 0) so no TIME_WAIT piles up.
cat > "$OUT/client.py" <<'P'
import socket, struct, sys, time
host, port, n, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
warm, times, failed = 20, [], 0
for i in range(n + warm):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.settimeout(2)
    t = time.perf_counter_ns()
    try:
        s.connect((host, port))
    except OSError:
        failed += 1
        s.close()
        continue
    d = time.perf_counter_ns() - t
    s.close()
    if i >= warm:
        times.append(d / 1000)
with open(out, "a") as f:
    f.write("".join("%.1f\n" % t for t in times))
    f.write("failed %d\n" % failed if failed else "")
P

cat > "$OUT/stats.py" <<'P'
import sys
vals, failed = [], 0
for line in open(sys.argv[1]):
    if line.startswith("failed"):
        failed += int(line.split()[1])
    else:
        vals.append(float(line))
vals.sort()
p = lambda q: vals[min(len(vals) - 1, int(q * len(vals)))]
print("median %6.1f us  p99 %7.1f us  (n=%d, failed %d)" % (p(0.5), p(0.99), len(vals), failed))
P

# Three namespaces per case: client -- node (the ruleset) -- endpoints.
setup() {
    t=$1 N=kntp-nc-node-$1-$$ C=kntp-nc-client-$1-$$ E=kntp-nc-ep-$1-$$
    for ns in $N $C $E; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
    ip -n $N link add nc type veth peer name cn netns $C
    ip -n $N link add ne type veth peer name en netns $E
    ip -n $N addr add 192.168.0.10/24 dev nc
    ip -n $N addr add 10.201.0.1/30 dev ne
    ip -n $C addr add 192.168.0.2/24 dev cn
    ip -n $E addr add 10.201.0.2/30 dev en
    ip -n $E addr add 10.200.0.2/32 dev en
    ip -n $E addr add 10.200.0.3/32 dev en
    for l in nc ne; do ip -n $N link set $l up; done
    ip -n $C link set cn up
    ip -n $E link set en up
    ip -n $C route add default via 192.168.0.10
    ip -n $E route add default via 10.201.0.1
    ip -n $N route add 10.200.0.0/16 via 10.201.0.2
    ip netns exec $N sysctl -qw net.ipv4.ip_forward=1
    ip netns exec $E python3 "$OUT/server.py" &
    SRVS="$SRVS $!"
}

echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg); $CONNECTS connects per case in $BLOCKS blocks"
setup none
for n in $SIZES; do
    setup "$n"
    "$BIN" synthetic --mix realistic --seed 1 --services "$n" > "$OUT/c.json"
    "$BIN" render $ARGS "$OUT/c.json" "$OUT/target.yaml" > "$OUT/c-$n.nft" 2>/dev/null
    grep -q "10.100.255.10 . tcp . 80" "$OUT/c-$n.nft" || { echo "the probed Service is not in the render"; exit 1; }
    # The realistic mix's text does not load with nft -f on nftables 1.0.6 (IPv6 affinity,
    # see Findings); `apply` programs it over netlink, as the agent does.
    KUBE_NFTPROXY_STATE_DIR="$OUT/state-$n" ip netns exec "kntp-nc-node-$n-$$" "$BIN" apply $ARGS "$OUT/c.json" "$OUT/target.yaml" > /dev/null
done
sleep 0.5
per=$((CONNECTS / BLOCKS))
b=0
while [ $b -lt "$BLOCKS" ]; do
    b=$((b + 1))
    for t in $TAGS; do
        C=kntp-nc-client-$t-$$
        if [ "$t" = none ]; then
            ip netns exec $C python3 "$OUT/client.py" 10.200.0.2 8080 $per "$OUT/none"
        else
            ip netns exec $C python3 "$OUT/client.py" 10.100.255.10 80 $per "$OUT/$t-cip"
            ip netns exec $C python3 "$OUT/client.py" 192.168.0.10 29080 $per "$OUT/$t-np"
        fi
    done
done
echo "no ruleset, straight to an endpoint (10.200.0.2:8080): $(python3 "$OUT/stats.py" "$OUT/none")"
for n in $SIZES; do
    echo "$n Services + the probed one ($(wc -l < "$OUT/c-$n.nft") lines of nft text):"
    echo "  ClusterIP 10.100.255.10:80   $(python3 "$OUT/stats.py" "$OUT/$n-cip")"
    echo "  NodePort 192.168.0.10:29080  $(python3 "$OUT/stats.py" "$OUT/$n-np")"
    # Rule counts with nft trace, in a namespace of its own (the script loads the text with
    # nft -f, so the IPv6 table is left out of the text it loads).
    awk '/^table ip6 /{skip=1} /^table ip /{skip=0} !skip' "$OUT/c-$n.nft" > "$OUT/c4.nft"
    echo "  trace (rules our table evaluated for the SYN): $(CIP=10.100.255.10 NODEPORT=29080 TMPDIR=$OUT unshare -n bash "$HERE/../docs/bench/new-connection-trace.sh" "$OUT/c4.nft" | tr '\n' ';')"
done
