"""Server-rendered SVG charts for the overview (no script, no CDN: the CSP allows neither)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup


def bar_chart(labels: Sequence[str], values: Sequence[int], *, title: str, unit: str = "", width: int = 1000,
              height: int = 170, money: bool = False) -> Markup:
    """A bar chart as an inline ``<svg>``; ``money`` values are fen shown as yuan."""
    top = max([*values, 1])
    left, bottom, pad = 44, 22, 6
    plot_w, plot_h = width - left - pad, height - bottom - pad - 18
    step = plot_w / max(len(values), 1)
    shown = (lambda v: f"{v / 100:,.2f}") if money else (lambda v: f"{v:,}")
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<text x="{left}" y="12" class="chart-title">{escape(title)}'
             f'（最大 {escape(shown(top))}{escape(unit)}）</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - pad}" y2="{height - bottom}" class="axis"/>']
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = 0 if top == 0 else plot_h * value / top
        x = left + i * step + 1
        y = height - bottom - h
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(step - 2, 1):.1f}" height="{h:.1f}" class="bar">'
                     f'<title>{escape(label)}：{escape(shown(value))}{escape(unit)}</title></rect>')
        if i % 5 == 0 or i == len(values) - 1:
            parts.append(f'<text x="{x:.1f}" y="{height - 6}" class="tick">{escape(label[5:])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 — every interpolated text above is escaped


def split_bar(parts: Sequence[tuple[str, int, str]], *, width: int = 1000, height: int = 24) -> Markup:
    """One horizontal bar split by share (label, count, css class), e.g. notices by state."""
    total = sum(count for _label, count, _cls in parts) or 1
    out = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">']
    x = 0.0
    for label, count, cls in parts:
        w = width * count / total
        if w > 0:
            out.append(f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="{height}" class="{escape(cls)}">'
                       f'<title>{escape(label)}：{count}</title></rect>')
        x += w
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 — escaped above
