"""Training curves as inline SVG, drawn on the server: no JavaScript, no charting library.

One chart per metric (``loss``, ``mae``, ...), the training curve and its validation twin
(``val_<metric>``) on the same axes, one marked point per epoch.
"""

from __future__ import annotations

import math
from html import escape

WIDTH, HEIGHT = 560, 260
MARGIN = {"left": 64, "right": 16, "top": 28, "bottom": 40}
COLOURS = {"train": "#2563eb", "validation": "#ea580c"}


def metric_pairs(history: dict[str, list[float]]) -> list[tuple[str, list[float], list[float]]]:
    """``[(metric, train values, validation values)]`` in the order the bundle recorded them."""
    pairs = []
    for name, values in history.items():
        if name.startswith("val_"):
            if name[4:] not in history:  # a validation curve without a training twin
                pairs.append((name[4:], [], values))
            continue
        pairs.append((name, values, history.get(f"val_{name}", [])))
    return pairs


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _label(value: float) -> str:
    return f"{value:.3g}"


def curve_svg(metric: str, train: list[float], validation: list[float]) -> str:
    """One metric's chart: epochs on x, the metric on y, train and validation lines."""
    series = [(kind, values) for kind, values in (("train", train), ("validation", validation)) if values]
    finite = [v for _, values in series for v in values if math.isfinite(v)]
    epochs = max((len(values) for _, values in series), default=0)
    title = escape(metric)
    if not finite or epochs == 0:
        return f'<p class="muted">no per-epoch values of {title}</p>'
    low, high = min(finite), max(finite)
    if high == low:
        low, high = low - (abs(low) or 1) * 0.05, high + (abs(high) or 1) * 0.05
    pad = (high - low) * 0.05
    low, high = low - pad, high + pad
    left, top = MARGIN["left"], MARGIN["top"]
    plot_w = WIDTH - MARGIN["left"] - MARGIN["right"]
    plot_h = HEIGHT - MARGIN["top"] - MARGIN["bottom"]

    def x(epoch: int) -> float:  # epochs count from 1
        return left + (plot_w * (epoch - 1) / (epochs - 1) if epochs > 1 else plot_w / 2)

    def y(value: float) -> float:
        return top + plot_h * (high - value) / (high - low)

    parts = [
        f'<svg class="curve" data-metric="{title}" data-epochs="{epochs}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{title} per epoch" '
        'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{title} per epoch, train and validation</title>",
        f'<text x="{left}" y="18" class="chart-title">{title}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="plot"/>',
    ]
    for tick in _ticks(low, high):
        ty = y(tick)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{ty:.1f}" y2="{ty:.1f}" class="grid"/>')
        parts.append(
            f'<text x="{left - 6}" y="{ty + 4:.1f}" class="tick" text-anchor="end">{_label(tick)}</text>'
        )
    step = max(1, math.ceil(epochs / 10))
    for epoch in range(1, epochs + 1, step):
        tx, ty = f"{x(epoch):.1f}", top + plot_h + 16
        parts.append(f'<text x="{tx}" y="{ty}" class="tick" text-anchor="middle">{epoch}</text>')
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{HEIGHT - 6}" class="axis" text-anchor="middle">epoch</text>'
    )
    for index, (kind, values) in enumerate(series):
        colour = COLOURS[kind]
        points = [(x(i + 1), y(v), v) for i, v in enumerate(values) if math.isfinite(v)]
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in points)
        parts.append(f'<polyline class="line {kind}" points="{path}" stroke="{colour}"/>')
        for i, (px, py, value) in enumerate(points):
            parts.append(
                f'<circle class="point {kind}" data-epoch="{i + 1}" cx="{px:.1f}" cy="{py:.1f}" r="3" '
                f'fill="{colour}"><title>{kind} epoch {i + 1}: {value:.6g}</title></circle>'
            )
        lx = left + plot_w - 150 + index * 80
        parts.append(f'<rect x="{lx}" y="10" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 14}" y="19" class="legend">{kind}</text>')
    parts.append("</svg>")
    return "".join(parts)


def curves_svg(history: dict[str, list[float]]) -> list[str]:
    """Every metric's chart for a version's per-epoch history."""
    return [curve_svg(metric, train, validation) for metric, train, validation in metric_pairs(history)]
