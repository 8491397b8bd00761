"""The admin panel's SVG charts: plain rows in, well-formed and themable SVG out (no I/O)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date, timedelta
from decimal import Decimal

import pytest

from jupyterhub_credits.service import charts

SVG = "{http://www.w3.org/2000/svg}"
DAYS = [date(2026, 11, 1) + timedelta(days=n) for n in range(30)]


def parsed(svg) -> ET.Element:
    """The chart as XML: it must parse (inline SVG that is not well-formed breaks the page)."""
    return ET.fromstring(str(svg))


def bars(root: ET.Element) -> list[ET.Element]:
    return [rect for rect in root.iter(f"{SVG}rect") if "credits-bar" in rect.get("class", "")]


def bar_titles(root: ET.Element) -> list[str]:
    return [bar.find(f"{SVG}title").text for bar in bars(root)]


def texts(root: ET.Element) -> list[str]:
    return ["".join(node.itertext()) for node in root.iter(f"{SVG}text")]


@pytest.mark.parametrize("maximum, ticks", [
    (0, ["0", "1"]),
    (Decimal("0.03"), ["0", "0.01", "0.02", "0.03"]),
    (Decimal("0.007"), ["0", "0.01"]),  # never finer than the hundredths figures are shown in
    (137, ["0", "50", "100", "150"]),
    (1000, ["0", "250", "500", "750", "1,000"]),
    (7, ["0", "2", "4", "6", "8"]),
])
def test_ticks_are_round_numbers_reaching_the_maximum(maximum, ticks):
    values = charts.nice_ticks(maximum)
    assert [charts.tick_text(value) for value in values] == ticks
    assert values[-1] >= Decimal(str(maximum))


def test_flows_chart_draws_two_bars_a_day_with_tooltips_in_credits():
    rows = [(day, 1_000 * n, 500 * n) for n, day in enumerate(DAYS)]
    root = parsed(charts.flows_chart(rows))
    assert root.get("role") == "img"
    assert root.find(f"{SVG}title").text == "Credits issued and spent per day, last 30 days"
    # Day 0 has zero of both: its bars are there, with no height.
    assert len(bars(root)) == 60
    titles = bar_titles(root)
    assert "2026-11-30: 29.00 credits issued" in titles
    assert "2026-11-30: 14.50 credits spent" in titles
    # Axis names and the legend.
    words = texts(root)
    assert {"credits", "day (UTC)", "Issued", "Spent"} <= set(words)
    assert "Nov 30" in words and "Nov 27" in words  # today, then every third day back
    # The tallest bar reaches at most the top of the plot.
    tallest = max(float(bar.get("height")) for bar in bars(root))
    assert 0 < tallest <= charts.HEIGHT - charts.MARGIN_TOP - charts.MARGIN_BOTTOM


def test_flows_chart_without_any_flow_says_so_instead_of_drawing_axes():
    root = parsed(charts.flows_chart([(day, 0, 0) for day in DAYS]))
    assert bars(root) == []
    assert texts(root) == ["No credits issued or spent in the last 30 days."]
    assert "credits-chart-empty" in root.get("class")
    assert bars(parsed(charts.flows_chart([]))) == []


def test_colours_come_from_the_theme_so_both_themes_read():
    svg = str(charts.flows_chart([(DAYS[0], 2_000, 1_000)]))
    # Bars take Bootstrap's variables; lines and text the page's colour.
    assert "fill:var(--bs-primary" in svg and "fill:var(--bs-warning" in svg
    assert "stroke:currentColor" in svg
    assert 'fill="#' not in svg and "fill:#" not in svg
    assert "credits-chart" in parsed(svg).get("class")  # credits.css: text fill currentColor


def test_gpu_hours_are_stacked_per_day_in_catalog_order():
    rows = [(DAYS[3], "a100", Decimal("2.5")), (DAYS[3], "t4", Decimal("1")),
            (DAYS[5], "h100", Decimal("0.25")),
            (date(2025, 1, 1), "a100", Decimal(9))]  # not a day shown: left out
    names = {"t4": "T4", "a100": "A100", "h100": "H100"}
    root = parsed(charts.gpu_hours_chart(rows, DAYS, names))
    assert [bar.get("data-series") for bar in bars(root)] == ["t4", "a100", "h100"]
    assert bar_titles(root) == ["2026-11-04: 1.00 GPU-hours on T4",
                                "2026-11-04: 2.50 GPU-hours on A100",
                                "2026-11-06: 0.25 GPU-hours on H100"]
    t4, a100, _ = bars(root)
    # A100 sits on top of T4 in the same column, 2.5 times as tall.
    assert t4.get("x") == a100.get("x")
    assert float(a100.get("y")) + float(a100.get("height")) == pytest.approx(float(t4.get("y")),
                                                                             abs=0.2)
    assert float(a100.get("height")) == pytest.approx(2.5 * float(t4.get("height")), rel=0.05)
    assert {"T4", "A100", "H100", "GPU-hours"} <= set(texts(root))


def test_gpu_hours_chart_empty_and_unknown_types():
    assert texts(parsed(charts.gpu_hours_chart([], DAYS))) == [
        "No GPU time used in the last 30 days."]
    root = parsed(charts.gpu_hours_chart([(DAYS[0], "mystery", Decimal(1))], DAYS, {}))
    assert bar_titles(root) == ["2026-11-01: 1.00 GPU-hours on mystery"]


def test_top_consumers_escape_and_shorten_names():
    rows = [("alice", 12_000), ("<script>alert(1)</script>", 500), ("x" * 40, 3), ("idle", 0)]
    svg = charts.top_consumers_chart(rows, days=30)
    assert "<script>" not in str(svg)
    root = parsed(svg)
    assert len(bars(root)) == 3  # nobody who spent nothing
    words = texts(root)
    assert "<script>alert(1)</script>" in "".join(words)  # shown as text, escaped in the SVG
    assert "12.00" in words and "0.50" in words
    long_label = next(word for word in words if word.startswith("xxx"))
    assert long_label.startswith("x" * (charts.MAX_LABEL_CHARS - 1) + "…")
    assert long_label.endswith("x" * 40)  # its <title> holds the whole name
    assert bar_titles(root)[0] == "alice: 12.00 credits spent"
    widths = [float(bar.get("width")) for bar in bars(root)]
    assert widths == sorted(widths, reverse=True)
    assert texts(parsed(charts.top_consumers_chart([("idle", 0)]))) == [
        "Nobody spent credits in the last 30 days."]


def test_two_places_and_dates():
    assert charts.two_places(Decimal("1234.5")) == "1,234.50"
    assert charts.two_places(0) == "0.00"
    assert charts.short_date(date(2026, 1, 5)) == "Jan 5"
