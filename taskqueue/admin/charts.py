"""Server-rendered SVG charts (no JavaScript library, no CDN)."""

from typing import Any

from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

BAR = (
    "<g><title>{}</title>"
    '<rect x="{}" y="{}" width="{}" height="{}" fill="#1a7f37"/>'
    '<rect class="tq-failed-bar" x="{}" y="{}" width="{}" height="{}" '
    'fill="#c62828"/></g>'
)
TICK = '<text x="{}" y="{}" font-size="10" fill="#666">{}</text>'
GRID = (
    '<text x="2" y="{}" font-size="10" fill="#666">{}</text>'
    '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#ddd"/>'
)


def throughput_svg(
    series: list[dict[str, Any]], *, width: int = 720, height: int = 180
) -> SafeString:
    """Stacked bars per hour: completed (green) under failed (red), with a y scale."""
    top = max([row["completed"] + row["failed"] for row in series] + [1])
    left, bottom = 40, 24
    plot = height - 34
    base = height - bottom
    step = (width - left - 4) / max(len(series), 1)
    parts = []
    for fraction in (0, 0.5, 1):
        y = base - plot * fraction
        parts.append(format_html(GRID, _n(y + 4), round(top * fraction), left, width, _n(y), _n(y)))
    for n, row in enumerate(series):
        x = left + n * step + 1
        ok_h, bad_h = plot * row["completed"] / top, plot * row["failed"] / top
        label = f"{row['hour']:%H:00} UTC: {row['completed']} completed, {row['failed']} failed"
        bar = (_n(x), _n(base - ok_h), _n(step - 2), _n(ok_h))
        failed = (_n(x), _n(base - ok_h - bad_h), _n(step - 2), _n(bad_h))
        parts.append(format_html(BAR, label, *bar, *failed))
        if n % 3 == 0:
            parts.append(format_html(TICK, _n(x), height - 8, f"{row['hour']:%H}h"))
    # Every part above went through format_html, which escapes its arguments.
    body = mark_safe("".join(parts))  # noqa: S308
    return format_html(
        '<svg class="tq-chart" viewBox="0 0 {} {}" width="100%" role="img" '
        'aria-label="Tasks finished per hour over the last 24 hours">{}</svg>',
        width,
        height,
        body,
    )


def _n(value: float) -> str:
    return f"{value:.1f}"
