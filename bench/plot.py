#!/usr/bin/env python3
"""Plots the results of `meridian bench peers` (the JSON bench/peers writes).

    python3 bench/plot.py benchmarks/peers.json

Writes, beside the JSON file, one PNG per latency table (majority, all, lag): a panel per region (or link)
showing each system's latency distribution as percentile curves, with the emulated bound (RTT or one-way delay)
and the fiber floor as vertical lines. Needs matplotlib.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TITLES = {
    "majority": "Majority-acknowledged write latency, by client region",
    "all": "All-replica write latency, by client region",
    "lag": "Async replication lag, by link",
}


def plot_table(report, table, out_dir):
    rows = [row for row in report["rows"] if row["table"] == table and row["distribution"]]
    if not rows:
        return None
    places = []
    for row in rows:
        if row["place"] not in places:
            places.append(row["place"])
    figure, axes = plt.subplots(1, len(places), figsize=(5.5 * len(places), 4.2), squeeze=False)
    for axis, place in zip(axes[0], places):
        here = [row for row in rows if row["place"] == place]
        for row in here:
            points = row["distribution"]
            axis.plot([p[1] for p in points], [p[0] for p in points], marker=".", label=row["system"])
        bound, floor = here[0]["bound_ms"], here[0]["floor_ms"]
        axis.axvline(bound, color="grey", linestyle="--", linewidth=1, label=f"emulated {'one-way' if table == 'lag' else 'RTT'} {bound:.1f} ms")
        if floor > 0:
            axis.axvline(floor, color="black", linestyle=":", linewidth=1, label=f"fiber floor {floor:.1f} ms")
        axis.set_title(place)
        axis.set_xlabel("ms")
        axis.set_ylabel("percentile")
        axis.set_ylim(0, 100)
        axis.set_xlim(left=0)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    figure.suptitle(f"{TITLES[table]} ({report['date'][:10]}, {report['machine'].split(',')[0]})")
    figure.tight_layout()
    path = os.path.join(out_dir, f"peers-{table}.png")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: bench/plot.py RESULTS.json")
    with open(sys.argv[1]) as handle:
        report = json.load(handle)
    out_dir = os.path.dirname(os.path.abspath(sys.argv[1]))
    for table in TITLES:
        path = plot_table(report, table, out_dir)
        if path:
            print(f"plot: {path}")


if __name__ == "__main__":
    main()
