"""The admin panel's charts as inline SVG, drawn on the server from plain data.

Why server-side SVG and not a chart library: the panel needs three plain bar
charts; a library from npm would have to be built into the package's data (the
hub runs where no CDN may be reachable), whereas a few dozen ``<rect>``
elements need nothing at all, print, and work without JavaScript.

Every function here is pure: plain rows in, one ``<svg>`` string out
(``markupsafe.Markup``, so a Jinja template puts it in as it is; every text
that came from data is escaped here). Colours are the theme's: text and axes
use ``currentColor`` (the page's body colour), bars Bootstrap's CSS variables
(``--bs-primary`` ...), so a chart reads in the hub's light and dark themes
alike. Each bar carries a ``<title>`` (the browser's tooltip, and what a
screen reader says); each chart has axis labels and a legend; a chart without
data says so in words instead of drawing empty axes.

Amounts come in ledger units (``UNITS_PER_CREDIT`` per credit) and are shown
as credits with 2 decimals; GPU time in hours (``Decimal``), also 2 decimals.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from decimal import Decimal
from html import escape

from markupsafe import Markup

from ..ledger.amounts import UNITS_PER_CREDIT

#: Series colours: Bootstrap's theme variables (with the light theme's value as fallback),
#: chosen to stay apart for colour-blind readers (blue / orange / teal / purple ...).
PALETTE = (
    "var(--bs-primary, #0d6efd)",
    "var(--bs-warning, #ffc107)",
    "var(--bs-info, #0dcaf0)",
    "var(--bs-purple, #6f42c1)",
    "var(--bs-success, #198754)",
    "var(--bs-danger, #dc3545)",
    "var(--bs-secondary, #6c757d)",
)

WIDTH = 1000
HEIGHT = 280
#: Room for the y axis' tick labels and name (left), the x labels (bottom), the legend (top).
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 16, 34, 46
#: The longest name the top-consumers chart writes out; longer ones end with "…".
MAX_LABEL_CHARS = 20


# --- numbers and words ------------------------------------------------------------------

def credits_of(units: int) -> Decimal:
    return Decimal(int(units)) / UNITS_PER_CREDIT


def two_places(value: Decimal | int | float) -> str:
    """ "1234.5" → "1,234.50": what every figure on the panel looks like."""
    return f"{Decimal(str(value)).quantize(Decimal('0.01')):,}"


#: The finest tick step: figures are shown to the hundredth, so are the axes.
FINEST_STEP = Decimal("0.01")


def nice_ticks(maximum: Decimal | float, count: int = 4) -> list[Decimal]:
    """Round tick values from 0 to at least ``maximum``: 0, 25, 50, 75, 100.

    Steps are 1, 2, 2.5 or 5 × 10ⁿ, never finer than ``FINEST_STEP``.
    """
    maximum = Decimal(str(maximum))
    if maximum <= 0:
        return [Decimal(0), Decimal(1)]
    raw = maximum / count
    power = Decimal(10) ** math.floor(math.log10(raw))
    for factor in (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5), Decimal(10)):
        step = factor * power
        if step >= raw:
            break
    step = max(step, FINEST_STEP)
    ticks = [Decimal(0)]
    while ticks[-1] < maximum:
        ticks.append(ticks[-1] + step)
    return ticks


def tick_text(value: Decimal) -> str:
    """A tick label as short as it is exact: "0", "2.5", "1,000", "0.02"."""
    return f"{value.normalize():,f}"


def short_date(day: date) -> str:
    """ "Nov 27": the days on the x axis (UTC days)."""
    return f"{day:%b} {day.day}"


def _label(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _fmt(number: float) -> str:
    """A coordinate: at most 1 decimal, no trailing zeros (keeps the SVG small)."""
    return f"{number:.1f}".rstrip("0").rstrip(".")


# --- drawing ----------------------------------------------------------------------------

def _svg(label: str, body: Iterable[str], *, height: int = HEIGHT, kind: str) -> Markup:
    title = escape(label)
    return Markup(
        f'<svg class="credits-chart credits-chart-{kind}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" '
        f'aria-label="{title}"><title>{title}</title>' + "".join(body) + "</svg>")


def empty_chart(message: str, *, kind: str = "empty", label: str | None = None) -> Markup:
    """No data: the sentence ``message`` where the bars would be."""
    height = 90
    return _svg(label or message, [
        f'<rect class="credits-chart-frame" x="0.5" y="0.5" width="{WIDTH - 1}" '
        f'height="{height - 1}" rx="6" style="fill:none;stroke:currentColor;stroke-opacity:.25;'
        f'stroke-dasharray:4 4"/>',
        f'<text class="credits-chart-empty" x="{WIDTH / 2}" y="{height / 2 + 4}" '
        f'text-anchor="middle">{escape(message)}</text>',
    ], height=height, kind=f"{kind} credits-chart-empty")


def _legend(series: Sequence[tuple[str, str]]) -> list[str]:
    parts, x = [], MARGIN_LEFT
    for name, colour in series:
        parts.append(f'<g class="credits-chart-legend"><rect x="{x}" y="10" width="12" height="12" '
                     f'rx="2" style="fill:{colour}"/><text x="{x + 17}" y="20">{escape(name)}'
                     f'</text></g>')
        x += 30 + 7 * len(name)
    return parts


def _y_axis(ticks: Sequence[Decimal], plot_height: float, name: str) -> list[str]:
    top = ticks[-1]
    parts = []
    for tick in ticks:
        y = MARGIN_TOP + plot_height - float(tick / top) * plot_height
        parts.append(f'<line x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{_fmt(y)}" '
                     f'y2="{_fmt(y)}" style="stroke:currentColor;stroke-opacity:'
                     f'{".45" if tick == 0 else ".12"}"/>')
        parts.append(f'<text x="{MARGIN_LEFT - 6}" y="{_fmt(y + 4)}" text-anchor="end">'
                     f'{tick_text(tick)}</text>')
    middle = MARGIN_TOP + plot_height / 2
    parts.append(f'<text class="credits-chart-axis-label" x="14" y="{_fmt(middle)}" '
                 f'text-anchor="middle" transform="rotate(-90 14 {_fmt(middle)})">'
                 f'{escape(name)}</text>')
    return parts


def _x_labels(days: Sequence[date], slot: float, plot_height: float, name: str) -> list[str]:
    every = max(1, math.ceil(len(days) / 10))  # at most ~10 labels, so they never overlap
    parts = []
    base = MARGIN_TOP + plot_height
    for index, day in enumerate(days):
        if (len(days) - 1 - index) % every:  # counted from the end: today is always labelled
            continue
        x = MARGIN_LEFT + slot * (index + 0.5)
        parts.append(f'<text x="{_fmt(x)}" y="{_fmt(base + 16)}" text-anchor="middle">'
                     f'{short_date(day)}</text>')
    middle = MARGIN_LEFT + (WIDTH - MARGIN_LEFT - MARGIN_RIGHT) / 2
    parts.append(f'<text class="credits-chart-axis-label" x="{_fmt(middle)}" y="{HEIGHT - 6}" '
                 f'text-anchor="middle">{escape(name)}</text>')
    return parts


def _bar(x: float, y: float, width: float, height: float, colour: str, title: str,
         series: str) -> str:
    return (f'<rect class="credits-bar" data-series="{escape(series)}" x="{_fmt(x)}" '
            f'y="{_fmt(y)}" width="{_fmt(max(width, 1))}" height="{_fmt(max(height, 0))}" '
            f'style="fill:{colour}"><title>{escape(title)}</title></rect>')


# --- the three charts -------------------------------------------------------------------

def flows_chart(rows: Sequence[tuple[date, int, int]]) -> Markup:
    """Credits issued (grants and earnings) against credits spent (settled sessions), per day.

    ``rows``: ``(day, issued units, spent units)``, oldest first, one per day
    (``ledger.reports.daily_flows``). Two bars a day, side by side.
    """
    if not rows or not any(issued or spent for _, issued, spent in rows):
        return empty_chart(f"No credits issued or spent in the last {len(rows) or 30} days.",
                           kind="flows")
    series = (("Issued", PALETTE[0]), ("Spent", PALETTE[1]))
    peak = max(max(credits_of(issued), credits_of(spent)) for _, issued, spent in rows)
    ticks = nice_ticks(peak)
    plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    slot = (WIDTH - MARGIN_LEFT - MARGIN_RIGHT) / len(rows)
    bar = max(slot * 0.38, 1)
    parts = _legend(series) + _y_axis(ticks, plot_height, "credits")
    for index, (day, issued, spent) in enumerate(rows):
        left = MARGIN_LEFT + slot * index + (slot - 2 * bar) / 2
        for offset, (name, colour), units in ((0, series[0], issued), (1, series[1], spent)):
            value = credits_of(units)
            height = float(value / ticks[-1]) * plot_height
            parts.append(_bar(left + offset * bar, MARGIN_TOP + plot_height - height, bar, height,
                              colour, f"{day.isoformat()}: {two_places(value)} credits "
                                      f"{name.lower()}", name.lower()))
    parts += _x_labels([day for day, _, _ in rows], slot, plot_height, "day (UTC)")
    days = len(rows)
    return _svg(f"Credits issued and spent per day, last {days} days", parts, kind="flows")


def gpu_hours_chart(rows: Iterable[tuple[date, str, Decimal]], days: Sequence[date],
                    names: Mapping[str, str] | None = None) -> Markup:
    """GPU-hours per day, one stacked bar per day with a segment per GPU type.

    ``rows``: ``(day, gpu type id, hours)`` (``sessions.usage.gpu_hours_by_day``);
    ``days``: the days to show, oldest first (days without rows show no bar);
    ``names``: display names of GPU type ids (the catalog's), also their order.
    """
    names = dict(names or {})
    per_day: dict[date, dict[str, Decimal]] = {}
    shown = set(days)
    for day, gpu_type, hours in rows:
        if hours and day in shown:
            cell = per_day.setdefault(day, {})
            cell[gpu_type] = cell.get(gpu_type, Decimal(0)) + Decimal(str(hours))
    if not per_day:
        return empty_chart(f"No GPU time used in the last {len(days) or 30} days.",
                           kind="gpu-hours")
    used = {gpu_type for cell in per_day.values() for gpu_type in cell}
    types = [gpu_type for gpu_type in names if gpu_type in used] + sorted(used - set(names))
    series = [(gpu_type, names.get(gpu_type, gpu_type), PALETTE[i % len(PALETTE)])
              for i, gpu_type in enumerate(types)]
    ticks = nice_ticks(max(sum(cell.values()) for cell in per_day.values()))
    plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    slot = (WIDTH - MARGIN_LEFT - MARGIN_RIGHT) / len(days)
    bar = max(slot * 0.7, 1)
    parts = _legend([(name, colour) for _, name, colour in series])
    parts += _y_axis(ticks, plot_height, "GPU-hours")
    for index, day in enumerate(days):
        cell = per_day.get(day)
        if not cell:
            continue
        bottom = MARGIN_TOP + plot_height
        for gpu_type, name, colour in series:
            hours = cell.get(gpu_type)
            if not hours:
                continue
            height = float(hours / ticks[-1]) * plot_height
            bottom -= height
            parts.append(_bar(MARGIN_LEFT + slot * index + (slot - bar) / 2, bottom, bar, height,
                              colour, f"{day.isoformat()}: {two_places(hours)} GPU-hours on "
                                      f"{name}", gpu_type))
    parts += _x_labels(days, slot, plot_height, "day (UTC)")
    return _svg(f"GPU-hours by GPU type per day, last {len(days)} days", parts, kind="gpu-hours")


def top_consumers_chart(rows: Sequence[tuple[str, int]], *, days: int = 30) -> Markup:
    """The users who spent most, as horizontal bars, largest first.

    ``rows``: ``(hub user name, spent units)`` (``ledger.reports.top_consumers``).
    """
    rows = [(user, units) for user, units in rows if units > 0]
    if not rows:
        return empty_chart(f"Nobody spent credits in the last {days} days.", kind="top")
    row_height, top, left, right = 26, 34, 150, 90
    height = top + row_height * len(rows) + 30
    peak = max(credits_of(units) for _, units in rows)
    ticks = nice_ticks(peak)
    span = WIDTH - left - right
    colour = PALETTE[0]
    parts = _legend([("Spent", colour)])
    for tick in ticks:
        x = left + float(tick / ticks[-1]) * span
        opacity = ".45" if tick == 0 else ".12"
        parts.append(f'<line x1="{_fmt(x)}" x2="{_fmt(x)}" y1="{top}" y2="{height - 30}" '
                     f'style="stroke:currentColor;stroke-opacity:{opacity}"/>')
        parts.append(f'<text x="{_fmt(x)}" y="{height - 16}" text-anchor="middle">'
                     f'{tick_text(tick)}</text>')
    parts.append(f'<text class="credits-chart-axis-label" x="{left + span / 2}" y="{height - 2}" '
                 f'text-anchor="middle">credits spent, last {days} days</text>')
    for index, (user, units) in enumerate(rows):
        value = credits_of(units)
        y = top + row_height * index + 4
        width = float(value / ticks[-1]) * span
        parts.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end">'
                     f'{escape(_label(user))}<title>{escape(user)}</title></text>')
        parts.append(_bar(left, y, width, row_height - 8, colour,
                          f"{user}: {two_places(value)} credits spent", "spent"))
        parts.append(f'<text x="{_fmt(left + width + 6)}" y="{y + 13}">{two_places(value)}</text>')
    return _svg(f"Top {len(rows)} consumers of credits, last {days} days", parts,
                height=height, kind="top")
