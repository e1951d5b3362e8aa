#!/bin/sh
# New-connection latency at 100 vs 10,000 Services (BENCHMARKS.md, "Scale: both layouts"):
# real TCP connects from a client namespace, through a node namespace that holds the
# ruleset, to a 2-endpoint Service whose endpoints listen in an endpoint namespace; once to
# its ClusterIP and once to its NodePort. The cluster is the realistic mix of N Services
# (`synthetic --mix realistic`) plus the probed Service (ClusterIP 10.100.255.10:80,
# NodePort 29080, endpoints 10.200.0.2 and 10.200.0.3 on port 8080). For each N it prints
# the median and p99 connect() time over $CONNECTS connects (after 100 warm-up connects)
# and, for comparison, the same with no ruleset at all (plain routing to one endpoint),
# then the nft-trace rule counts of docs/bench/new-connection-trace.sh.
#
# As root, from the repository: `cargo build --release && sh bench/new-connection.sh`
# (SIZES="100 10000", CONNECTS=2000, BIN=...). Everything runs in namespaces this script
# creates (kntp-nc-*-PID) and deletes on exit; nothing touches the machine's own.
set -eu
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/kube-nftproxy}
SIZES=${SIZES:-"100 10000"}
CONNECTS=${CONNECTS:-2000}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mktemp -d /tmp/kntp-nc-XXXXXX)
N=kntp-nc-node-$$ C=kntp-nc-client-$$ E=kntp-nc-ep-$$
cleanup() {
    [ -n "${SRV:-}" ] && kill "$SRV" 2>/dev/null
    for ns in $N $C $E; do ip netns del "$ns" 2>/dev/null || true; done
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
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
warm, times, failed = 100, [], 0
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
times.sort()
if not times:
    print("all %d connects failed" % failed)
    sys.exit(1)
p = lambda q: times[min(len(times) - 1, int(q * len(times)))]
print("median %6.1f us  p99 %6.1f us  (n=%d, failed %d)" % (p(0.5), p(0.99), len(times), failed))
P

for ns in $N $C $E; do ip netns add "$ns"; done
for ns in $N $C $E; do ip -n "$ns" link set lo up; done
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
SRV=$!
sleep 0.5

echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg); $CONNECTS connects each"
echo "no ruleset, straight to an endpoint (10.200.0.2:8080): $(ip netns exec $C python3 "$OUT/client.py" 10.200.0.2 8080 "$CONNECTS")"
for n in $SIZES; do
    "$BIN" synthetic --mix realistic --seed 1 --services "$n" > "$OUT/c.json"
    "$BIN" render $ARGS "$OUT/c.json" "$OUT/target.yaml" > "$OUT/c.nft" 2>/dev/null
    grep -q "10.100.255.10 . tcp . 80" "$OUT/c.nft" || { echo "the probed Service is not in the render"; exit 1; }
    ip netns exec $N nft flush ruleset
    # The realistic mix's text does not load with nft -f on nftables 1.0.6 (IPv6 affinity,
    # see Findings); `apply` programs it over netlink, as the agent does.
    KUBE_NFTPROXY_STATE_DIR="$OUT/state" ip netns exec $N "$BIN" apply $ARGS "$OUT/c.json" "$OUT/target.yaml" > /dev/null
    rm -rf "$OUT/state"
    echo "$n Services + the probed one ($(wc -l < "$OUT/c.nft") lines of nft text):"
    echo "  ClusterIP 10.100.255.10:80   $(ip netns exec $C python3 "$OUT/client.py" 10.100.255.10 80 "$CONNECTS")"
    echo "  NodePort 192.168.0.10:29080  $(ip netns exec $C python3 "$OUT/client.py" 192.168.0.10 29080 "$CONNECTS")"
    # Rule counts with nft trace, in a namespace of its own (the script loads the text with
    # nft -f, so the IPv6 families are left out of the text it loads).
    awk '/^table ip6 /{skip=1} /^table ip /{skip=0} !skip' "$OUT/c.nft" > "$OUT/c4.nft"
    echo "  trace (rules our table evaluated for the SYN): $(CIP=10.100.255.10 NODEPORT=29080 TMPDIR=$OUT unshare -n bash "$HERE/../docs/bench/new-connection-trace.sh" "$OUT/c4.nft" | tr '\n' ';')"
done
ip netns exec $N nft flush ruleset
