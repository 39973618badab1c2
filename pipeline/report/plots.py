"""Inline SVG figures of the report (no JavaScript, no CDN): line charts with optional confidence bands and
grouped bar charts. The legend sits in its own column right of the plot area, never over the curves.
Every label is HTML-escaped (labels come from params and MLflow).

Each figure carries ``data-figure`` (its kind) and every series a ``data-series`` attribute with its label,
so tests and readers can find them; the SVG is well-formed XML (parsed by the tests with xml.etree).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 44, 12, 22, 34
_LEGEND_W = 150


@dataclass
class Series:
    label: str
    x: list[float]
    y: list[float]
    lo: list[float] | None = None  # lower edge of a band (e.g. the 95% CI), same length as y
    hi: list[float] | None = None
    dashed: bool = False
    extra: dict = field(default_factory=dict)


def _esc(s) -> str:
    return html.escape(str(s), quote=True)


def _finite(*vals) -> bool:
    return all(v is not None and math.isfinite(float(v)) for v in vals)


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    out, v = [], start
    while v <= hi + 1e-12:
        out.append(round(v, 10))
        v += step
    return out


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def _legend(parts: list[str], x0: float, labels: list[tuple[str, str, bool]]) -> None:
    for i, (label, color, dashed) in enumerate(labels):
        y = _PAD_T + 6 + 14 * i
        dash = ' stroke-dasharray="4 2"' if dashed else ""
        parts.append(f'<line x1="{x0:.1f}" y1="{y}" x2="{x0 + 16:.1f}" y2="{y}" stroke="{color}" stroke-width="2"{dash}/>')
        parts.append(f'<text x="{x0 + 20:.1f}" y="{y + 3}" font-size="10">{_esc(label)}</text>')


def line_svg(series: list[Series], *, kind: str, x_label: str, y_label: str, width: int = 520, height: int = 260,
             x_log2: bool = False, y_range: tuple[float, float] | None = None, x_ticks: list[float] | None = None) -> str:
    """A line chart: one polyline (and band, where ``lo``/``hi`` are given) per series, legend on the right."""
    series = [s for s in series if any(_finite(x, y) for x, y in zip(s.x, s.y))]
    if not series:
        return ""
    n_leg = len(series)
    height = max(height, _PAD_T + 14 * n_leg + 10)
    pw, ph = width - _PAD_L - _PAD_R - _LEGEND_W, height - _PAD_T - _PAD_B
    tx = (lambda v: math.log2(v)) if x_log2 else (lambda v: float(v))
    xs = [tx(x) for s in series for x, y in zip(s.x, s.y) if _finite(x, y)]
    ys = [float(v) for s in series for v in (s.y + (s.lo or []) + (s.hi or [])) if _finite(v)]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = y_range if y_range else (min(ys), max(ys))
    if y1 == y0:
        y0, y1 = y0 - 0.05, y1 + 0.05
    if not y_range:
        margin = 0.05 * (y1 - y0)
        y0, y1 = y0 - margin, y1 + margin

    def px(v):
        return _PAD_L + (tx(v) - x0) / (x1 - x0) * pw

    def py(v):
        return _PAD_T + (1 - (float(v) - y0) / (y1 - y0)) * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" data-figure="{_esc(kind)}">',
             f'<rect x="{_PAD_L}" y="{_PAD_T}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for t in _ticks(y0, y1):
        parts.append(f'<text x="{_PAD_L - 4}" y="{py(t) + 3:.1f}" font-size="9" text-anchor="end">{_fmt(t)}</text>')
        parts.append(f'<line x1="{_PAD_L}" y1="{py(t):.1f}" x2="{_PAD_L + pw}" y2="{py(t):.1f}" stroke="#eee"/>')
    xt = x_ticks if x_ticks is not None else sorted({x for s in series for x in s.x if _finite(x)}) if x_log2 else _ticks(x0, x1)
    for t in xt:
        parts.append(f'<text x="{px(t):.1f}" y="{_PAD_T + ph + 12}" font-size="9" text-anchor="middle">{_fmt(t)}</text>')
    parts.append(f'<text x="{_PAD_L + pw / 2:.1f}" y="{height - 6}" font-size="10" text-anchor="middle">{_esc(x_label)}</text>')
    parts.append(f'<text x="11" y="{_PAD_T + ph / 2:.1f}" font-size="10" transform="rotate(-90 11 {_PAD_T + ph / 2:.1f})" text-anchor="middle">{_esc(y_label)}</text>')
    legend = []
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        legend.append((s.label, color, s.dashed))
        parts.append(f'<g data-series="{_esc(s.label)}">')
        if s.lo is not None and s.hi is not None:
            pts = [(x, lo, hi) for x, lo, hi in zip(s.x, s.lo, s.hi) if _finite(x, lo, hi)]
            if len(pts) >= 2:
                ring = [f"{px(x):.1f},{py(hi):.1f}" for x, _, hi in pts] + [f"{px(x):.1f},{py(lo):.1f}" for x, lo, _ in reversed(pts)]
                parts.append(f'<polygon class="band" points="{" ".join(ring)}" fill="{color}" fill-opacity="0.15" stroke="none"/>')
            for x, lo, hi in pts:  # whiskers, also visible for a single code length
                parts.append(f'<line class="ci" x1="{px(x):.1f}" y1="{py(lo):.1f}" x2="{px(x):.1f}" y2="{py(hi):.1f}" stroke="{color}" stroke-opacity="0.6"/>')
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(s.x, s.y) if _finite(x, y))
        dash = ' stroke-dasharray="4 2"' if s.dashed else ""
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash} points="{pts}"/>')
        if len(s.x) <= 12:
            for x, y in zip(s.x, s.y):
                if _finite(x, y):
                    parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.2" fill="{color}"/>')
        parts.append("</g>")
    _legend(parts, width - _LEGEND_W + 6, legend)
    parts.append("</svg>")
    return "".join(parts)


def bar_svg(groups: list[str], series: list[tuple[str, list[float | None]]], *, kind: str, y_label: str, width: int = 520, height: int = 240) -> str:
    """Grouped bars: one group per entry of ``groups`` (e.g. head / medium / tail), one bar per series in each."""
    series = [(label, vals) for label, vals in series if any(_finite(v) for v in vals)]
    if not series or not groups:
        return ""
    height = max(height, _PAD_T + 14 * len(series) + 10)
    pw, ph = width - _PAD_L - _PAD_R - _LEGEND_W, height - _PAD_T - _PAD_B
    top = max(float(v) for _, vals in series for v in vals if _finite(v))
    y1 = max(top * 1.05, 1e-9)
    gw = pw / len(groups)
    bw = gw * 0.8 / len(series)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" data-figure="{_esc(kind)}">',
             f'<rect x="{_PAD_L}" y="{_PAD_T}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for t in _ticks(0.0, y1):
        y = _PAD_T + (1 - t / y1) * ph
        parts.append(f'<text x="{_PAD_L - 4}" y="{y + 3:.1f}" font-size="9" text-anchor="end">{_fmt(t)}</text>')
    for g, name in enumerate(groups):
        parts.append(f'<text x="{_PAD_L + gw * (g + 0.5):.1f}" y="{_PAD_T + ph + 12}" font-size="9" text-anchor="middle">{_esc(name)}</text>')
    parts.append(f'<text x="11" y="{_PAD_T + ph / 2:.1f}" font-size="10" transform="rotate(-90 11 {_PAD_T + ph / 2:.1f})" text-anchor="middle">{_esc(y_label)}</text>')
    legend = []
    for i, (label, vals) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        legend.append((label, color, False))
        parts.append(f'<g data-series="{_esc(label)}">')
        for g, v in enumerate(vals[: len(groups)]):
            if not _finite(v):
                continue
            h = float(v) / y1 * ph
            x = _PAD_L + gw * g + gw * 0.1 + bw * i
            parts.append(f'<rect x="{x:.1f}" y="{_PAD_T + ph - h:.1f}" width="{bw:.1f}" height="{h:.1f}" fill="{color}"><title>{_esc(label)} {_esc(groups[g])}: {float(v):.4f}</title></rect>')
        parts.append("</g>")
    _legend(parts, width - _LEGEND_W + 6, legend)
    parts.append("</svg>")
    return "".join(parts)
