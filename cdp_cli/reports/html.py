"""Reports as one self-contained HTML file: inline CSS and SVG charts, no script, no network.

A marketer opens it in a browser, mails it, or prints it. The charts are drawn here, in Python,
as SVG; every bar, band and interval carries its number in data- attributes (the same values
`--json` prints), so what a chart shows can be checked against the data. All text that comes
from the user's data (journey, step, tag and event names) is escaped by Jinja's autoescape.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from cdp_cli.files import write_text
from cdp_cli.reports.common import now_in

TEMPLATE_FOLDER = Path(__file__).parent / "report_templates"
WIDTH = 720  # every chart's viewBox width; the page scales it to the column
PALETTE = ("#2f6fb0", "#e07b39", "#3a9d6a", "#b04a6f", "#7d5bb5", "#8c8c3a", "#4a9fb0", "#a0522d")
GROUP_COLOURS = {"treatment": "#2f6fb0", "holdout": "#9a9a9a", "control": "#6b6b6b"}


def num(value: Any) -> str:
    """A number exactly as --json prints it, for a data- attribute; empty for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return repr(float(value)) if isinstance(value, float) else str(value)


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f}%"


def money(value: float | None) -> str:
    return "–" if value is None else f"{value:,.2f}"


def count(value: int | float | None) -> str:
    return "–" if value is None else f"{value:,}"


def pp(value: float | None) -> str:
    """An absolute difference of two rates, in percentage points."""
    return "–" if value is None else f"{value * 100:+.1f} pp"


# ---------------------------------------------------------------------------------------------
# Charts: geometry in Python, drawn by the templates


def bar_rows(items: list[tuple[str, float]], width: int = WIDTH, label: int = 170) -> list[dict]:
    """Horizontal bars scaled to the largest value: (label, value) -> positions."""
    largest = max((v for _, v in items), default=0) or 1
    span = width - label - 150
    return [
        {"label": name, "value": value, "y": i * 30, "x": label,
         "width": max(1.0, span * value / largest) if value else 0}
        for i, (name, value) in enumerate(items)
    ]  # fmt: skip


def bars_of(rows: list[dict[str, Any]], label: str, value: str) -> list[dict]:
    """Bars for a list of report rows: the label and the value named."""
    return bar_rows([(str(r[label]), r[value] or 0) for r in rows])


def funnel_chart(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """A funnel: one centred bar per step, its width the share of the first step."""
    first = steps[0]["customers"] if steps else 0
    rows, span = [], WIDTH - 170 - 150
    for i, step in enumerate(steps):
        share = step["customers"] / first if first else 0
        bar = max(2.0, span * share) if step["customers"] else 0
        rows.append({**step, "y": i * 46, "width": bar, "x": 170 + (span - bar) / 2})
    return {"rows": rows, "height": len(rows) * 46 + 4}


def stage_colour(stage: str, stages: list[str]) -> str:
    """The same colour for a stage in every lifecycle chart; grey for one not listed."""
    return PALETTE[stages.index(stage) % len(PALETTE)] if stage in stages else "#9a9a9a"


def flow_chart(flows: list[dict[str, Any]], stages: list[str], height: int = 260) -> dict:
    """A two-column flow (Sankey): stages before on the left, after on the right, bands between;
    each band in the colour of the stage it left."""
    total = sum(f["customers"] for f in flows) or 1
    gap = 8
    left = sorted({f["from"] for f in flows}, key=lambda s: -_sum(flows, "from", s))
    right = sorted({f["to"] for f in flows}, key=lambda s: -_sum(flows, "to", s))
    scale = (height - gap * max(len(left), len(right), 1)) / total
    nodes, y_of = [], {}
    for side, names, x in (("from", left, 150), ("to", right, WIDTH - 160)):
        y = 0.0
        for name in names:
            size = _sum(flows, side, name) * scale
            nodes.append({"side": side, "stage": name, "customers": _sum(flows, side, name),
                          "x": x, "y": y, "height": max(size, 1.0)})  # fmt: skip
            y_of[(side, name)] = y
            y += size + gap
    bands, offset = [], {k: 0.0 for k in y_of}
    ordered = sorted(flows, key=lambda f: (left.index(f["from"]), right.index(f["to"])))
    for f in ordered:
        size = f["customers"] * scale
        y0 = y_of[("from", f["from"])] + offset[("from", f["from"])]
        y1 = y_of[("to", f["to"])] + offset[("to", f["to"])]
        offset[("from", f["from"])] += size
        offset[("to", f["to"])] += size
        x0, x1 = 160, WIDTH - 160
        middle = (x0 + x1) / 2
        path = (
            f"M{x0},{y0:.1f} C{middle},{y0:.1f} {middle},{y1:.1f} {x1},{y1:.1f} "
            f"L{x1},{y1 + size:.1f} C{middle},{y1 + size:.1f} {middle},{y0 + size:.1f} "
            f"{x0},{y0 + size:.1f} Z"
        )
        bands.append({**f, "path": path, "colour": stage_colour(f["from"], stages)})
    return {"nodes": nodes, "bands": bands, "height": height + 10}


def _sum(flows: list[dict[str, Any]], side: str, stage: str) -> int:
    return sum(f["customers"] for f in flows if f[side] == stage)


def stage_columns(periods: list[dict[str, Any]], stages: list[str]) -> dict[str, Any]:
    """Stacked columns: customers per stage after each tag run."""
    tallest = max((sum(p["stages"].values()) for p in periods), default=0) or 1
    width = min(90, (WIDTH - 60) / max(len(periods), 1) - 12)
    columns = []
    for i, period in enumerate(periods):
        y, parts = 200.0, []
        for stage in stages:
            n = period["stages"].get(stage, 0)
            h = 190 * n / tallest
            y -= h
            parts.append({"stage": stage, "customers": n, "y": y, "height": h,
                          "colour": stage_colour(stage, stages)})  # fmt: skip
        columns.append({"as_of": period["as_of"], "run": period["run"], "parts": parts,
                        "x": 50 + i * (width + 12), "width": width})  # fmt: skip
    return {"columns": columns, "legend": [(s, stage_colour(s, stages)) for s in stages]}


def uplift_chart(comparisons: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Every comparison's uplift as a point on one axis around zero, its interval a line."""
    shown = [c for c in comparisons if c["uplift"] is not None and c["interval"]]
    if not shown:
        return None
    reach = max(max(abs(c["interval"][0]), abs(c["interval"][1]), abs(c["uplift"])) for c in shown)
    reach = math.ceil(max(reach, 0.01) * 20) / 20  # round the axis out to the next 5 points
    left, right = 230, WIDTH - 30

    def x(value: float) -> float:
        return left + (value + reach) / (2 * reach) * (right - left)

    rows = [
        {**c, "y": 10 + i * 34, "x_low": x(c["interval"][0]), "x_high": x(c["interval"][1]),
         "x_point": x(c["uplift"])}
        for i, c in enumerate(shown)
    ]  # fmt: skip
    axis = 10 + len(rows) * 34
    ticks = [(x(t * reach / 2), pp(t * reach / 2)) for t in (-2, -1, 0, 1, 2)]
    return {"rows": rows, "x_zero": x(0), "left": left, "right": right, "axis": axis,
            "ticks": ticks, "height": axis + 26}  # fmt: skip


def group_bars(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Conversion rate per group and variant, as bars."""
    items = [(_group_label(g), g["conversion_rate"] or 0.0) for g in groups]
    rows = bar_rows(items)
    for row, g in zip(rows, groups, strict=True):
        row.update(group=g, colour=GROUP_COLOURS.get(g["group"], PALETTE[0]))
    return rows


def _group_label(group: dict[str, Any]) -> str:
    return f"{group['group']} · {group['variant']}" if group["variant"] else group["group"]


# ---------------------------------------------------------------------------------------------
# The page


def render_html(sections: list[dict[str, Any]], title: str = "cdp report", *, timezone: str) -> str:
    """One page holding every report given (journey, funnel, lifecycle, overview), stamped
    with the time it was made in the project's `timezone`."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATE_FOLDER),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=num, pct=pct, money=money, count=count, pp=pp)
    env.globals.update(
        funnel_chart=funnel_chart, flow_chart=flow_chart, stage_columns=stage_columns,
        uplift_chart=uplift_chart, group_bars=group_bars, bars_of=bars_of, WIDTH=WIDTH,
        stage_colour=stage_colour,
    )  # fmt: skip
    generated = now_in(timezone)
    return env.get_template("page.html").render(sections=sections, title=title, generated=generated)


def write_html(
    path: Path, sections: list[dict[str, Any]], title: str = "cdp report", *, timezone: str
) -> None:
    """Write the page whole: a temporary file renamed into place."""
    write_text(path, render_html(sections, title, timezone=timezone))
