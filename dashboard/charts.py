"""Charts drawn on the server as SVG: no chart library, no script, nothing from a CDN — and a
screen reader gets the numbers (every chart has a title, every bar a `<title>`, and each page
shows the table behind its chart)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from decimal import Decimal

from markupsafe import Markup

from dashboard.render import money

# Okabe-Ito: told apart with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#999999")


@dataclass(frozen=True)
class Series:
    name: str
    values: list[Decimal]
    colour: str


def series_of(
    names: list[str], columns: list[str], cells: dict[tuple[str, str], Decimal]
) -> list[Series]:
    """One series per name over the columns (missing cells are 0), coloured in order."""
    return [
        Series(
            name, [cells.get((col, name), Decimal(0)) for col in columns], PALETTE[i % len(PALETTE)]
        )
        for i, name in enumerate(names)
    ]


def _nice_ceiling(value: Decimal) -> Decimal:
    if value <= 0:
        return Decimal(1)
    exponent = value.adjusted()
    step = Decimal(10) ** exponent
    for factor in (1, 2, 2.5, 5, 10):
        top = step * Decimal(str(factor))
        if top >= value:
            return top
    return step * 10


def stacked_bars(
    title: str, columns: list[str], series: list[Series], *, width: int = 760, height: int = 280
) -> Markup:
    """Columns (e.g. days) of stacked bars (e.g. agents), with a y axis in USD."""
    left, bottom, top, right = 64, 40, 12, 8
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum((s.values[i] for s in series), Decimal(0)) for i in range(len(columns))]
    ceiling = _nice_ceiling(max(totals, default=Decimal(0)))
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{html.escape(title)}"><title>{html.escape(title)}</title>'
    ]
    for tick in range(5):  # y axis: 0, ¼, ½, ¾, max
        value = ceiling * tick / 4
        y = top + plot_h - plot_h * tick / 4
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">'
            f"${money(value, 4)}</text>"
        )
    if columns:
        slot = plot_w / len(columns)
        bar = max(min(slot * 0.7, 48), 2)
        every = max(1, len(columns) // 8)  # at most ~8 labels on the x axis
        for i, column in enumerate(columns):
            x = left + slot * i + (slot - bar) / 2
            y = top + plot_h
            for s in series:
                value = s.values[i]
                if value <= 0:
                    continue
                h = float(value / ceiling) * plot_h
                y -= h
                label = f"{column} · {s.name}: ${money(value)}"
                parts.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{max(h, 0.5):.1f}" '
                    f'fill="{s.colour}"><title>{html.escape(label)}</title></rect>'
                )
            if i % every == 0:
                name = column[5:] if len(column) == 10 else column  # a day: MM-DD
                parts.append(
                    f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 16}" class="axis" '
                    f'text-anchor="middle">{html.escape(name)}</text>'
                )
    else:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2}" class="axis" text-anchor="middle">'
            "no spend in this period</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def meter(fraction: float, label: str, *, width: int = 160) -> Markup:
    """A small horizontal gauge (budget used), with its number as text beside it."""
    fraction = max(0.0, min(fraction, 1.0))
    colour = "#D55E00" if fraction >= 0.8 else "#0072B2"
    return Markup(
        f'<svg class="meter" viewBox="0 0 {width} 12" role="img" aria-label="{html.escape(label)}">'
        f'<rect x="0" y="0" width="{width}" height="12" class="track"/>'
        f'<rect x="0" y="0" width="{fraction * width:.1f}" height="12" fill="{colour}"/>'
        f"<title>{html.escape(label)}</title></svg>"
    )
