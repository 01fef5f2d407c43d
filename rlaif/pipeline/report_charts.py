"""The report page's charts, drawn with matplotlib and embedded as inline SVG (the page opens offline).

Each function takes figures a run already wrote (report.json, merge.json, the trainers' eval_report.json,
eval/policy_eval.json) and returns the chart as an SVG element, or None when there is nothing to draw.
Text stays text (`svg.fonttype: none`), ids are seeded and the date left out, so the same run draws the
same page. Matplotlib escapes the SVG's text; a `$` in a data label is escaped too, else matplotlib would
read it as mathematics.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

BLUE, GREEN, GREY, ORANGE = "#0969da", "#1a7f37", "#8c959f", "#bc4c00"
WIDTH = 7.5  # inches; the page is about 1000 px wide
STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "rlaif-report",
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
STAGE_NAMES = {"sft": "SFT", "reward": "reward model", "dpo": "DPO", "ppo": "PPO"}
CURVES = {  # per stage: the logged metrics drawn, with the names a person reads
    "sft": {"loss": "training loss"},
    "reward": {"loss": "training loss"},
    "dpo": {"loss": "training loss", "rewards/margins": "reward margin", "rewards/accuracies": "reward accuracy"},
    "ppo": {"score": "reward-model score", "kl": "KL to the reference", "policy_loss": "policy loss"},
}


def as_svg(figure: Figure) -> Markup:
    """The figure as an inline <svg> element (no XML prologue), safe to place in the page."""
    buffer = io.StringIO()
    with matplotlib.rc_context(STYLE):
        figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buffer.getvalue()
    return Markup(text[text.index("<svg") :])


def plain(label: object) -> str:
    """A data label as matplotlib text: `$` escaped so that it is not read as mathematics."""
    return str(label).replace("$", r"\$")


def figure_grid(height: float, rows: int, columns: int) -> tuple[Figure, Any]:
    """A page-wide figure of `rows` x `columns` panels (a 2-D array of axes) in the report's style."""
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(WIDTH, height), layout="constrained")
        return figure, figure.subplots(rows, columns, squeeze=False)


def new_figure(height: float, columns: int = 1) -> tuple[Figure, list[Any]]:
    """A page-wide figure of one row of `columns` panels."""
    figure, grid = figure_grid(height, 1, columns)
    return figure, list(grid[0])


def bar_chart(values: Mapping[str, float], axis_label: str) -> Markup | None:
    """Horizontal bars of counts, one per label, the count written at the end of each."""
    if not values:
        return None
    figure, (axes,) = new_figure(0.45 * len(values) + 0.8)
    drawn = axes.barh([plain(k) for k in values], list(values.values()), color=BLUE)
    axes.bar_label(drawn, labels=[f"{v:,.0f}" for v in values.values()], padding=3)
    axes.invert_yaxis()
    axes.set_xlabel(axis_label)
    return as_svg(figure)


def rate_chart(
    rates: Mapping[str, tuple[float, int]], axis_label: str, few: int, colour: str = BLUE, chance: bool = False
) -> Markup | None:
    """Horizontal bars of rates, each labelled with the pairs behind it; a rate on fewer than `few` pairs is
    drawn grey and written "too few to say"; `chance`: a dashed line at 50%."""
    if not rates:
        return None
    figure, (axes,) = new_figure(0.45 * len(rates) + 0.9)
    labels = [f"{plain(name)} ({pairs} pairs)" for name, (_, pairs) in rates.items()]
    shares = [100 * share for share, _ in rates.values()]
    colours = [colour if pairs >= few else GREY for _, pairs in rates.values()]
    drawn = axes.barh(labels, shares, color=colours)
    written = [
        f"{s:.0f}%" if pairs >= few else "too few to say" for s, (_, pairs) in zip(shares, rates.values(), strict=True)
    ]
    axes.bar_label(drawn, labels=written, padding=3)
    if chance:
        axes.axvline(50, color=GREY, linestyle="--", linewidth=1)
    axes.invert_yaxis()
    axes.set_xlim(0, 125)
    axes.set_xticks(range(0, 101, 20))
    axes.set_xlabel(axis_label)
    return as_svg(figure)


def confidence_histogram(raw: Sequence[int], calibrated: Sequence[int] | None) -> Markup | None:
    """Pairs per tenth of the judge's confidence, and of the calibrated probability that people agree."""
    if not raw or not sum(raw):
        return None
    panels = [("judge confidence |2 p(A) - 1|", raw, BLUE)]
    if calibrated and sum(calibrated):
        panels.append(("calibrated probability that people agree", calibrated, GREEN))
    figure, axes_list = new_figure(2.4, len(panels))
    for axes, (label, counts, colour) in zip(axes_list, panels, strict=True):
        axes.bar([(i + 0.5) / len(counts) for i in range(len(counts))], counts, width=0.9 / len(counts), color=colour)
        axes.set_xlim(0, 1)
        axes.set_xlabel(label)
        axes.set_ylabel("pairs")
    return as_svg(figure)


def reliability_diagram(reliability: Mapping[str, Any] | None) -> Markup | None:
    """Per bin of the judge's probability of being right: how often people agreed, against the diagonal;
    raw and (when the run calibrated its judge) calibrated; each point labelled with its pairs."""
    if not reliability or not reliability.get("raw"):
        return None
    figure, (axes,) = new_figure(3.6)
    axes.plot([0, 1], [0, 1], color=GREY, linestyle="--", linewidth=1, label="perfectly calibrated")
    for name, colour in (("raw", BLUE), ("calibrated", GREEN)):
        points = reliability.get(name)
        if not points:
            continue
        x = [p["mean_probability"] for p in points]
        y = [p["agreement"] for p in points]
        axes.plot(x, y, marker="o", color=colour, label=f"{name} ({reliability['pairs']} audit pairs)")
        for p in points:
            axes.annotate(str(p["pairs"]), (p["mean_probability"], p["agreement"]), fontsize=8, xytext=(4, 4),
                          textcoords="offset points", color=colour)  # fmt: skip
    axes.set_xlim(0, 1.02)
    axes.set_ylim(-0.02, 1.05)
    axes.set_xlabel("the judge's probability of being right (mean per bin; labels: pairs)")
    axes.set_ylabel("share people agreed with")
    axes.legend(loc="upper left", frameon=False)
    return as_svg(figure)


def training_curves(trained: Mapping[str, Mapping[str, Any]]) -> Markup | None:
    """One row per trained stage, one panel per logged metric (`CURVES`), against the step."""
    rows = [
        (stage, [(key, name) for key, name in CURVES[stage].items() if any(key in r for r in report["log"])])
        for stage, report in trained.items()
        if stage in CURVES and report.get("log")
    ]
    rows = [(stage, metrics) for stage, metrics in rows if metrics]
    if not rows:
        return None
    columns = max(len(metrics) for _, metrics in rows)
    figure, grid = figure_grid(2.2 * len(rows), len(rows), columns)
    for (stage, metrics), panels in zip(rows, grid, strict=True):
        log = trained[stage]["log"]
        for axes, (key, name) in zip(panels, metrics, strict=False):
            steps = [r["step"] for r in log if key in r]
            axes.plot(steps, [r[key] for r in log if key in r], color=BLUE, marker="." if len(steps) < 20 else None)
            axes.set_title(f"{STAGE_NAMES[stage]}: {name}", fontsize=10)
            axes.set_xlabel("step")
        for axes in panels[len(metrics) :]:
            axes.set_visible(False)
    return as_svg(figure)


def win_rate_chart(rounds: Sequence[tuple[str, float, Sequence[float], int]]) -> Markup | None:
    """The trained policy's win rate against its reference per round, with its 95% interval and the prompts
    behind it; the dashed line is chance (50%)."""
    rounds = [r for r in rounds if r[1] is not None]
    if not rounds:
        return None
    figure, (axes,) = new_figure(0.5 * len(rounds) + 1.0)
    labels = [f"{plain(name)} ({n} prompts)" for name, _, _, n in rounds]
    rates = [100 * rate for _, rate, _, _ in rounds]
    errors = [[rate - 100 * ci[0] for (_, _, ci, _), rate in zip(rounds, rates, strict=True)],
              [100 * ci[1] - rate for (_, _, ci, _), rate in zip(rounds, rates, strict=True)]]  # fmt: skip
    axes.errorbar(rates, labels, xerr=errors, fmt="o", color=BLUE, capsize=4)
    axes.axvline(50, color=GREY, linestyle="--", linewidth=1)
    axes.set_xlim(0, 100)
    axes.set_xlabel("win rate against the reference (%), 95% interval")
    axes.invert_yaxis()
    return as_svg(figure)


def cost_chart(tokens: Mapping[str, int], seconds: Mapping[str, float]) -> Markup | None:
    """Tokens per labeling stage and wall time per stage, side by side."""
    panels = [(values, label) for values, label in ((tokens, "tokens"), (seconds, "seconds")) if values]
    if not panels:
        return None
    figure, axes_list = new_figure(0.4 * max(len(v) for v, _ in panels) + 1.0, len(panels))
    for axes, (values, label) in zip(axes_list, panels, strict=True):
        drawn = axes.barh([plain(k) for k in values], list(values.values()), color=BLUE)
        axes.bar_label(drawn, labels=[f"{v:,.0f}" for v in values.values()], padding=3)
        axes.invert_yaxis()
        axes.set_xlabel(label)
        axes.xaxis.set_major_locator(MaxNLocator(4))
        axes.margins(x=0.25)
    return as_svg(figure)
