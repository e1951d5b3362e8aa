#!/usr/bin/env python3
"""Draws bench/scale.png from the CSV that bench/run.sh writes (`kube-nftproxy bench --csv`).

    pip install matplotlib          # the only dependency
    python3 bench/plot.py bench/scale.csv bench/scale.png

One panel per measurement (cold start; partial syncs of 1, 100 and 1,000 endpoint changes;
one new Service), time against the number of Services on log-log axes. Colour: the layout
(ours over netlink, ours with nft -f, the upstream-style layout with nft -f); marker and
line: the cluster (uniform with E endpoints per Service, or the realistic mix). A step that
hit the benchmark's 120 s cap is drawn at 120 s with an upward triangle; a failed one
(nftables 1.0.6 aborts on our realistic-mix text, see BENCHMARKS.md) is left out.
"""
import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [
    ("cold_start_ms", "cold start"),
    ("sync_1_ms", "partial sync: 1 endpoint change"),
    ("sync_100_ms", "partial sync: 100 endpoint changes"),
    ("sync_1000_ms", "partial sync: 1,000 endpoint changes"),
    ("new_service_ms", "partial sync: one new Service"),
]
COLOURS = {"ours-netlink": "tab:blue", "ours-nft-f": "tab:cyan", "upstream-nft-f": "tab:red"}
NAMES = {
    "ours-netlink": "kube-nftproxy (netlink)",
    "ours-nft-f": "kube-nftproxy text (nft -f)",
    "upstream-nft-f": "upstream layout (nft -f)",
}
MARKERS = ["o", "s", "D", "v", "P", "X"]
STYLES = ["-", "--", ":", "-."]


def value(cell):
    """(milliseconds, capped) or None for an empty or failed cell."""
    cell = cell.strip()
    if not cell or cell == "failed":
        return None
    if cell.startswith(">"):
        return float(cell[1:]), True
    return float(cell), False


def main(src, dst):
    rows = list(csv.DictReader(open(src)))
    clusters = []
    for r in rows:
        c = (r["mix"], r["endpoints"])
        if c not in clusters:
            clusters.append(c)
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    axes = axes.flatten()
    for ax, (col, title) in zip(axes, PANELS):
        series = defaultdict(list)
        for r in rows:
            v = value(r[col])
            if v is not None:
                series[(r["layout"], r["mix"], r["endpoints"])].append((int(r["services"]), *v))
        for (layout, mix, eps), pts in sorted(series.items()):
            pts.sort()
            i = clusters.index((mix, eps))
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            ax.plot(xs, ys, color=COLOURS.get(layout, "k"), marker=MARKERS[i % len(MARKERS)],
                    linestyle=STYLES[i % len(STYLES)])
            for x, y, capped in pts:
                if capped:
                    ax.plot([x], [y], marker="^", markersize=14, color=COLOURS.get(layout, "k"))
                    ax.annotate(">120 s", (x, y), textcoords="offset points", xytext=(4, 6))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("Services")
        ax.set_ylabel("ms")
        ax.grid(True, which="both", alpha=0.3)
    legend = axes[5]
    legend.axis("off")
    handles = [plt.Line2D([], [], color=c, lw=3, label=NAMES[l]) for l, c in COLOURS.items()]
    for i, (mix, eps) in enumerate(clusters):
        label = f"uniform, {eps} endpoint(s) per Service" if mix == "uniform" else f"{mix} mix"
        handles.append(plt.Line2D([], [], color="grey", marker=MARKERS[i % len(MARKERS)],
                                  linestyle=STYLES[i % len(STYLES)], label=label))
    legend.legend(handles=handles, loc="center", fontsize=11, frameon=False)
    fig.suptitle("kube-nftproxy vs the upstream-style layout (kube-proxy nftables mode), "
                 "one bench/run.sh run; partial syncs: median")
    fig.tight_layout()
    fig.savefig(dst, dpi=100)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/scale.csv",
         sys.argv[2] if len(sys.argv) > 2 else "bench/scale.png")
