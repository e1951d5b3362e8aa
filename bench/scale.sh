#!/bin/sh
# Reproduces the CLI-level figures of BENCHMARKS.md: for each cluster, the time and peak RSS
# of `synthetic`, `render`, a cold `apply` over netlink (parse + render + one netlink
# transaction into an empty namespace) and `nft -f` of the rendered text into an empty
# namespace, RUNS times each; then `kube-nftproxy bench` (uniform clusters, in its own
# namespace) for the kernel-side breakdown.
#
# As root, from the repository: `cargo build --release && sh bench/scale.sh`.
# SPECS="realistic:1000 uniform:10000" picks the clusters (mix:Services), RUNS the
# repetitions, BENCH=0 skips `kube-nftproxy bench`.
# Kernel work happens only in the network namespace this script creates (kntp-bench-PID),
# which it deletes on exit; apply's state file goes to a scratch directory.
set -eu
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/kube-nftproxy}
RUNS=${RUNS:-3}
OUT=$(mktemp -d /tmp/kntp-bench-XXXXXX)
NS=kntp-bench-$$
ip netns add "$NS"
trap 'ip netns del "$NS"; rm -rf "$OUT"' EXIT
export KUBE_NFTPROXY_STATE_DIR="$OUT/state"
ARGS="--hostname-override node-a --cluster-cidr 10.244.0.0/16"

t() { # label, command...: prints the wall time (ms) and the peak RSS (MiB) of the command
    label=$1
    shift
    start=$(date +%s%N)
    if ! /usr/bin/time -o "$OUT/time" -f '%M' "$@" > /dev/null 2> "$OUT/err"; then
        printf "  %-34s FAILED: %s\n" "$label" "$(grep -v '^Command\|^[[:space:]]' "$OUT/err" | head -1)"
        return 0
    fi
    end=$(date +%s%N)
    awk -v l="$label" -v ns=$((end - start)) '{ printf "  %-34s %8.1f ms  %5.0f MiB\n", l, ns / 1e6, $1 / 1024 }' "$OUT/time"
}

echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "# $("$BIN" --version); nft $(nft --version | cut -d' ' -f2)"
for spec in ${SPECS:-realistic:1000 realistic:10000 uniform:10000}; do
    mix=${spec%%:*} n=${spec#*:}
    f="$OUT/$mix-$n"
    echo "$mix mix, $n Services:"
    t "synthetic" sh -c "\"$BIN\" synthetic --mix $mix --seed 1 --services $n --endpoints 10 > $f.json"
    "$BIN" render $ARGS "$f.json" > "$f.nft" 2>/dev/null
    echo "  ($(($(wc -c < "$f.json") / 1024)) KiB of JSON, $(($(wc -c < "$f.nft") / 1024)) KiB / $(wc -l < "$f.nft") lines of nft text)"
    i=0
    while [ $i -lt "$RUNS" ]; do
        i=$((i + 1))
        t "render (run $i)" "$BIN" render $ARGS "$f.json"
        ip netns exec "$NS" nft flush ruleset
        rm -rf "$OUT/state"
        t "cold apply, netlink (run $i)" ip netns exec "$NS" "$BIN" apply $ARGS "$f.json"
        ip netns exec "$NS" nft flush ruleset
        t "nft -f of the render (run $i)" ip netns exec "$NS" nft -f "$f.nft"
        ip netns exec "$NS" nft flush ruleset
    done
done
[ "${BENCH:-1}" = 0 ] && exit 0
echo "kube-nftproxy bench (uniform x 10 endpoints):"
"$BIN" bench --services 1000,10000 --rounds 20
