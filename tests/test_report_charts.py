"""The report page's charts: labels from the data are text, escaped, never markup or mathematics; small
samples are not given a rate; the same figures draw the same SVG."""

from __future__ import annotations

import re

from rlaif.pipeline import report_charts


def test_labels_from_the_data_are_escaped_text():
    svg = str(report_charts.bar_chart({"<script>alert(1)</script> costs $5 or $6": 3}, "rows"))
    assert svg.startswith("<svg") and "<script" not in svg
    shown = re.findall(r">([^<>]*costs[^<>]*)</text>", svg)  # the text element (matplotlib also writes a comment)
    assert shown == ["&lt;script&gt;alert(1)&lt;/script&gt; costs $5 or $6"]  # as typed, not as mathematics


def test_a_rate_on_few_pairs_is_not_stated_and_charts_are_reproducible():
    rates = {"judge, all pairs": (0.625, 32), "people, audit pairs": (1.0, 1)}
    svg = str(report_charts.rate_chart(rates, "longer answer chosen (%)", few=10, chance=True))
    assert "62%" in svg and "100%" not in svg.replace("100</text>", "") and "too few to say" in svg
    assert svg == str(report_charts.rate_chart(rates, "longer answer chosen (%)", few=10, chance=True))
    assert report_charts.rate_chart({}, "x", few=10) is None


def test_reliability_diagram_and_training_curves_draw_what_there_is():
    assert report_charts.reliability_diagram(None) is None
    points = [{"low": 0.9, "high": 1.0, "pairs": 12, "mean_probability": 0.95, "agreement": 0.75}]
    svg = str(report_charts.reliability_diagram({"pairs": 12, "raw": points, "calibrated": None}))
    assert "raw (12 audit pairs)" in svg and "calibrated (" not in svg
    log = [{"step": s, "loss": 0.7 - s / 100, "rewards/margins": s / 10} for s in (1, 2, 3)]
    curves = str(report_charts.training_curves({"dpo": {"log": log}, "reward": {"log": []}}))
    assert "DPO: training loss" in curves and "DPO: reward margin" in curves and "reward model" not in curves
    assert "DPO: reward accuracy" not in curves  # not logged: no empty panel
