#!/usr/bin/env python3
"""Summarises docs/bench/results/*.json (written by scripts/bench.sh) into a Markdown table
(medians of the runs, with min-max) and an SVG chart of deliveries/s and p99 latency against
the number of subscribers. Standard library only.

    python3 scripts/bench_report.py [RESULTS_DIR] [OUT_DIR]
"""
import glob
import json
import os
import statistics
import sys
from collections import defaultdict

results = sys.argv[1] if len(sys.argv) > 1 else "docs/bench/results"
out = sys.argv[2] if len(sys.argv) > 2 else "docs/bench"

runs = defaultdict(list)  # (scenario, server) -> [report]
for path in sorted(glob.glob(os.path.join(results, "*.json"))):
    name = os.path.basename(path)[:-5]
    scenario, server, _run = name.rsplit("-", 2)
    with open(path) as f:
        runs[(scenario, server)].append(json.load(f))


def med(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def fmt(triple, scale=1.0, digits=0, unit=""):
    m, lo, hi = triple
    if m is None:
        return "-"
    f = f"{{:,.{digits}f}}"
    if lo == hi:
        return f.format(m / scale) + unit
    return f"{f.format(m / scale)}{unit} ({f.format(lo / scale)}–{f.format(hi / scale)})"


def pick(scenario, server, key, sub=None):
    reports = runs.get((scenario, server), [])
    if sub:
        return med([r[key][sub] for r in reports])
    return med([r.get(key) for r in reports])


lines = []
load_scenarios = ["S1", "S2", "S3", "S5", "S6", "S7"]
lines.append("| scenario | server | deliveries/s | lost | p50 µs | p99 µs | server CPU | server ns/delivery | drain s |")
lines.append("|---|---|---|---|---|---|---|---|---|")
for s in load_scenarios:
    for server in ["hub", "naive", "raw"]:
        if (s, server) not in runs:
            continue
        lines.append(
            f"| {s} | {server} | {fmt(pick(s, server, 'deliveries_per_s'))} | {fmt(pick(s, server, 'lost'))} "
            f"| {fmt(pick(s, server, 'latency_us', 'p50'))} | {fmt(pick(s, server, 'latency_us', 'p99'))} "
            f"| {fmt(pick(s, server, 'server_cpu_cores'), 0.01, 0, ' %')} | {fmt(pick(s, server, 'server_ns_per_delivery'))} "
            f"| {fmt(pick(s, server, 'drain_s'), 1, 3)} |"
        )
lines.append("")
lines.append("| S4: 10,000 idle connections | server | KiB per connection | time to connect all (s) |")
lines.append("|---|---|---|---|")
for server in ["hub", "naive", "raw"]:
    if ("S4", server) in runs:
        lines.append(
            f"| S4 | {server} | {fmt(pick('S4', server, 'server_kib_per_connection'), 1, 2)} "
            f"| {fmt(pick('S4', server, 'connect_s'), 1, 3)} |"
        )
lines.append("")
lines.append("| S7 memory growth while 10 subscribers never read | server | RSS growth KiB |")
lines.append("|---|---|---|")
for server in ["hub", "naive", "raw"]:
    reports = runs.get(("S7", server), [])
    growth = med([r["server_rss_end_kib"] - r["server_rss_connected_kib"] for r in reports
                  if r.get("server_rss_end_kib") is not None and r.get("server_rss_connected_kib") is not None])
    if reports:
        lines.append(f"| S7 | {server} | {fmt(growth)} |")
lines.append("")
for s, title, keys in [
    ("S8", "S8: one ws-client publishing as fast as it can", [("received_per_s", "messages/s received", 1, 0), ("latency_us.p99", "p99 µs", 1, 0)]),
    ("S9", "S9: reconnect storm, 5,000 clients", [("all_back_s", "all back (s)", 1, 3), ("median_back_s", "median back (s)", 1, 3), ("peak_reconnects_per_s", "peak reconnects/s", 1, 0), ("missing", "missing", 1, 0)]),
    ("S10", "S10: 1,000 clients cut every ~15 s for ~2 s, 2 msg/s", [("delivered_percent", "delivered %", 1, 2), ("worst_client_percent", "worst client %", 1, 1), ("cuts", "cuts", 1, 0)]),
]:
    reports = runs.get((s, "hub"), [])
    if not reports:
        continue
    lines.append(f"| {title} | " + " | ".join(k[1] for k in keys) + " |")
    lines.append("|---|" + "---|" * len(keys))
    cells = []
    for key, _label, scale, digits in keys:
        if "." in key:
            a, b = key.split(".")
            values = [r[a][b] for r in reports]
        else:
            values = [r[key] for r in reports]
        cells.append(fmt(med(values), scale, digits))
    lines.append(f"| hub ({len(reports)} runs) | " + " | ".join(cells) + " |")
    lines.append("")

s11 = runs.get(("S11", "hub"), [])
if s11:
    lines.append("| S11: redundant connections over delaying paths | p50 µs | p99 µs | p99.9 µs | max µs | wins |")
    lines.append("|---|---|---|---|---|---|")
    for legs in sorted({r["legs"] for report in s11 for r in report["runs"]}):
        rows = [r for report in s11 for r in report["runs"] if r["legs"] == legs]
        cells = [fmt(med([r[k] for r in rows])) for k in ["p50_us", "p99_us", "p999_us", "max_us"]]
        wins = " / ".join(str(w) for w in rows[0]["wins"])
        lines.append(f"| {legs} connection(s) ({len(rows)} runs) | " + " | ".join(cells) + f" | {wins} |")
    lines.append("")

os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")

# Chart: deliveries/s and p99 against subscriber count (SWEEP-N scenarios), per server.
sweep = defaultdict(dict)
for (scenario, server), reports in runs.items():
    if scenario.startswith("SWEEP-"):
        n = int(scenario.split("-")[1])
        sweep[server][n] = (med([r["deliveries_per_s"] for r in reports])[0],
                            med([r["latency_us"]["p99"] for r in reports])[0])
if sweep:
    colors = {"hub": "#1f77b4", "raw": "#2ca02c", "naive": "#d62728"}
    W, H, P = 900, 360, 60
    xs = sorted({n for s in sweep.values() for n in s})
    import math

    def xpos(n, i0):
        return i0 + P + (math.log10(n) - math.log10(xs[0])) / max(1e-9, math.log10(xs[-1]) - math.log10(xs[0])) * (W / 2 - 2 * P)

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>']
    for panel, (title, idx, log) in enumerate([("deliveries/s (millions)", 0, False), ("p99 latency (ms, log)", 1, True)]):
        x0 = panel * W / 2
        vals = [v[idx] for s in sweep.values() for v in s.values() if v[idx]]
        top = max(vals) if vals else 1
        bottom = min(vals) if vals else 1

        def ypos(v):
            if log:
                lo, hi = math.log10(max(bottom, 1)), math.log10(max(top, 10))
                return H - P - (math.log10(max(v, 1)) - lo) / max(hi - lo, 1e-9) * (H - 2 * P)
            return H - P - v / top * (H - 2 * P)

        svg.append(f'<text x="{x0 + W / 4}" y="20" text-anchor="middle" font-weight="bold">{title} vs subscribers</text>')
        svg.append(f'<line x1="{x0 + P}" y1="{H - P}" x2="{x0 + W / 2 - P}" y2="{H - P}" stroke="black"/>')
        svg.append(f'<line x1="{x0 + P}" y1="{P}" x2="{x0 + P}" y2="{H - P}" stroke="black"/>')
        for n in xs:
            svg.append(f'<text x="{xpos(n, x0)}" y="{H - P + 16}" text-anchor="middle">{n}</text>')
        for frac in [0, 0.5, 1]:
            v = (bottom * (top / max(bottom, 1e-9)) ** frac) if log else top * frac
            label = f"{v / 1000:.1f}" if log else f"{v / 1e6:.2f}"
            svg.append(f'<text x="{x0 + P - 6}" y="{ypos(v) + 4}" text-anchor="end">{label}</text>')
        for k, (server, points) in enumerate(sorted(sweep.items())):
            pts = [(xpos(n, x0), ypos(points[n][idx])) for n in sorted(points) if points[n][idx]]
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            svg.append(f'<polyline points="{path}" fill="none" stroke="{colors.get(server, "gray")}" stroke-width="2"/>')
            for x, y in pts:
                svg.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colors.get(server, "gray")}"/>')
            svg.append(f'<text x="{x0 + W / 2 - P - 60}" y="{P + 16 * k}" fill="{colors.get(server, "gray")}">{server}</text>')
    svg.append("</svg>")
    with open(os.path.join(out, "chart.svg"), "w") as f:
        f.write("\n".join(svg) + "\n")
print(open(os.path.join(out, "summary.md")).read())
