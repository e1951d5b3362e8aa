#!/bin/sh
# Scale: both layouts (BENCHMARKS.md, "Scale: both layouts"). For each cluster it runs
# `kube-nftproxy bench` (which enters a private network namespace of its own): cold start
# of our ruleset over netlink and with `nft -f`, of the upstream-style layout (kube-proxy's
# nftables mode, generated from the same model) with `nft -f`, and partial syncs of 1, 100
# and 1,000 endpoint changes and of one new Service in both layouts. The report goes to
# stdout, one CSV line per layout and cluster to $CSV, and bench/plot.py draws $PNG from it.
#
# As root, from the repository:
#   cargo build --release && sh bench/run.sh
#   pip install matplotlib     # once, for the plot (PLOT=0 skips it)
# SPECS picks the clusters: realistic:N (issue 18's mix, seed 1) or uniform:N:E (N
# one-port Services with E endpoints each); ROUNDS the one-endpoint repetitions (100 and
# 1,000 changes and the new Service take min(ROUNDS, 5), min(ROUNDS, 3), min(ROUNDS, 3)).
set -eu
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/kube-nftproxy}
CSV=${CSV:-bench/scale.csv}
PNG=${PNG:-bench/scale.png}
ROUNDS=${ROUNDS:-20}
SPECS=${SPECS:-"uniform:1000:1 uniform:10000:1 uniform:45000:1 uniform:1000:10 uniform:10000:10 realistic:1000 realistic:10000"}

rm -f "$CSV"
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "# $("$BIN" --version); nft $(nft --version | cut -d' ' -f2); load average $(cut -d' ' -f1-3 /proc/loadavg)"
for spec in $SPECS; do
    mix=${spec%%:*} rest=${spec#*:}
    n=${rest%%:*} e=${rest#*:}
    [ "$e" = "$rest" ] && e=10
    start=$(date +%s)
    "$BIN" bench --mix "$mix" --services "$n" --endpoints "$e" --rounds "$ROUNDS" --csv "$CSV"
    echo "  (wall time $(($(date +%s) - start)) s; load average $(cut -d' ' -f1-3 /proc/loadavg))"
done
[ "${PLOT:-1}" = 0 ] && exit 0
python3 "$(dirname "$0")/plot.py" "$CSV" "$PNG"
