#!/bin/bash
# New-connection cost, counted with nft trace (issue 16): loads a rendered ruleset into the
# current network namespace and prints how many of our rules the first packet (SYN) of a
# connection to a 2-endpoint ClusterIP and to its NodePort matched.
# Run ONLY in a private namespace, e.g. for K distinct endpoint counts:
#   python3 new-connection-cluster.py K > k.json
#   kube-nftproxy render --hostname-override node-a k.json > k.nft
#   unshare -n ./new-connection-trace.sh k.nft
# CIP and NODEPORT name the probed Service (default 10.96.0.10 and 30080, as
# new-connection-cluster.py makes it; bench/new-connection.sh sets them).
set -e
CIP=${CIP:-10.96.0.10} NODEPORT=${NODEPORT:-30080}
ip link set lo up
ip link add d0 type veth peer name d1; ip link set d0 up; ip link set d1 up; ip addr add 192.168.0.10/24 dev d0
ip route add 10.200.0.0/16 dev d0; ip route add 10.96.0.0/12 dev d0
nft -f "$1"
nft -f - <<'X'
table ip tracer {
 chain out {
  type filter hook output priority -400; policy accept;
  tcp flags syn meta nftrace set 1
 }
}
X
count() { # $1 dst $2 port
  timeout 8 nft monitor trace > ${TMPDIR:-/tmp}/mon.txt & M=$!; sleep 2
  timeout 0.3 bash -c "echo > /dev/tcp/$1/$2" 2>/dev/null || true
  sleep 0.5; kill $M 2>/dev/null || true; wait $M 2>/dev/null || true
  id=$(grep -m1 "kube-nftproxy" ${TMPDIR:-/tmp}/mon.txt | cut -d" " -f3)
  # rules evaluated in our table for the first packet: "rule" lines (matched rules) plus chain entries
  echo "$(grep "^trace id $id ip kube-nftproxy" ${TMPDIR:-/tmp}/mon.txt | grep -c ' rule ') rule lines, $(grep "^trace id $id ip kube-nftproxy" ${TMPDIR:-/tmp}/mon.txt | grep -vc ' rule ') other"
}
echo "ClusterIP: $(count $CIP 80)"; cp ${TMPDIR:-/tmp}/mon.txt ${TMPDIR:-/tmp}/mon-cip.txt
echo "NodePort: $(count 192.168.0.10 $NODEPORT)"; cp ${TMPDIR:-/tmp}/mon.txt ${TMPDIR:-/tmp}/mon-np.txt
