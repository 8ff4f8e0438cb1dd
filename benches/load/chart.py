#!/usr/bin/env python3
"""SVG bar chart of a load-benchmark run: req/s and p99 per scenario and target.

Hand-written SVG, standard library only. Used by bench.py; also runs on its own:
    python3 benches/load/chart.py bench-results/<timestamp>/results.json [out.svg]
"""

from __future__ import annotations

import json
import sys
from html import escape
from pathlib import Path

COLORS = {"raster-edge": "#e4572e", "raster-edge+ratelimit": "#f0a07a", "raster-edge+accesslog": "#f3c4a6",
          "nginx": "#29335c", "varnish": "#669bbc", "direct": "#a0a0a0"}
ORDER = ["raster-edge", "raster-edge+ratelimit", "raster-edge+accesslog", "nginx", "varnish", "direct"]


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** len(str(int(v))) / 10
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if v <= m * mag:
            return m * mag
    return 10 * mag


def _fmt(v: float, unit: str) -> str:
    if unit == "req/s":
        return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"
    if v >= 1000:
        return f"{v / 1000:.1f} ms"
    return f"{v:.0f} µs"


def _panel(x0: float, y0: float, w: float, h: float, title: str, groups: list[tuple[str, dict]],
           unit: str) -> list[str]:
    out = [f'<text x="{x0}" y="{y0 - 8}" font-size="14" font-weight="bold">{escape(title)}</text>']
    vmax = _nice_max(max((v for _, g in groups for v in g.values()), default=1))
    # axis and grid
    for i in range(5):
        gy = y0 + h - h * i / 4
        out.append(f'<line x1="{x0}" y1="{gy:.1f}" x2="{x0 + w}" y2="{gy:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 6}" y="{gy + 4:.1f}" font-size="10" text-anchor="end">'
                   f'{escape(_fmt(vmax * i / 4, unit))}</text>')
    gw = w / max(1, len(groups))
    for gi, (label, vals) in enumerate(groups):
        names = [n for n in ORDER if n in vals] + [n for n in vals if n not in ORDER]
        bw = gw * 0.8 / max(1, len(names))
        for bi, name in enumerate(names):
            v = vals[name]
            bh = h * v / vmax
            bx = x0 + gi * gw + gw * 0.1 + bi * bw
            out.append(f'<rect x="{bx:.1f}" y="{y0 + h - bh:.1f}" width="{bw - 2:.1f}" height="{bh:.1f}" '
                       f'fill="{COLORS.get(name, "#777")}"><title>{escape(name)}: '
                       f'{escape(_fmt(v, unit))}</title></rect>')
            out.append(f'<text x="{bx + (bw - 2) / 2:.1f}" y="{y0 + h - bh - 3:.1f}" font-size="9" '
                       f'text-anchor="middle">{escape(_fmt(v, unit))}</text>')
        out.append(f'<text x="{x0 + gi * gw + gw / 2:.1f}" y="{y0 + h + 16}" font-size="11" '
                   f'text-anchor="middle">{escape(label)}</text>')
    out.append(f'<line x1="{x0}" y1="{y0 + h}" x2="{x0 + w}" y2="{y0 + h}" stroke="#333"/>')
    return out


def write_svg(summary: dict, path: Path, title: str = "raster-edge load benchmark") -> None:
    rps, p99 = [], []
    for sid, s in summary.items():
        if s.get("kind") == "stampede":
            continue
        rps.append((sid, {n: r["rps"] for n, r in s["rows"].items() if r.get("rps") is not None}))
        p99.append((sid, {n: r["p99_us"] for n, r in s["rows"].items() if r.get("p99_us") is not None}))
    width, ph = 960, 260
    height = 80 + 2 * (ph + 70)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" viewBox="0 0 {width} {height}">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="24" font-size="16" text-anchor="middle">{escape(title)}</text>']
    lx = 80
    for name in ORDER:
        if any(name in g for _, g in rps):
            svg.append(f'<rect x="{lx}" y="36" width="12" height="12" fill="{COLORS[name]}"/>')
            svg.append(f'<text x="{lx + 16}" y="46" font-size="12">{escape(name)}</text>')
            lx += 30 + 7 * len(name)
    svg += _panel(80, 90, width - 110, ph, "Throughput (median req/s, higher is better)", rps, "req/s")
    svg += _panel(80, 90 + ph + 70, width - 110, ph, "p99 latency (median, lower is better)", p99, "us")
    svg.append("</svg>")
    Path(path).write_text("\n".join(svg) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    src = Path(sys.argv[1])
    data = json.loads(src.read_text())
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_name("chart.svg")
    write_svg(data["summary"], out)
    print(out)
