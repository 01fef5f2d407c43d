"""RUN_DIR/report.html: one static page with the figures and charts of a run, readable without a server.

Charts are inline SVG drawn from the run's files: label sources of the merged dataset, the judge's
confidence histogram (and, where the run was calibrated, that of the calibrated probability that people
agree with the judge), judge-vs-human agreement on the audit sample (with its 95% interval) and the
held-out accuracy of the trained models; then the trained policy against its reference (win rate with its
interval, length-controlled win rate, refusal rates). Parts whose files are missing are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from rlaif.judges.calibration import Calibrator
from rlaif.pipeline.shard_plan import judged_shards, run_judgments, scored_judgments
from rlaif.run_directory import RunDirectory
from rlaif.run_files import read_json, write_text_atomic

BINS = 10


def bars(values: dict[str, float], maximum: float | None = None) -> list[dict[str, Any]]:
    """Bar geometry (share of the largest, 0..1) for a label -> value mapping."""
    top = maximum if maximum is not None else max(values.values(), default=0) or 1
    return [{"label": str(k), "value": v, "share": (v / top) if top else 0} for k, v in values.items()]


def confidence_histogram(run: RunDirectory, calibrator: Calibrator | None = None) -> list[dict[str, Any]]:
    """Pairs per bin of the judge's confidence, or with `calibrator` of the calibrated probability that people
    agree with it (failed judgments left out)."""
    counts = [0] * BINS
    shards = judged_shards(run)
    if calibrator is None:
        values = (j.confidence for j in run_judgments(shards) if j.confidence is not None)
    else:
        values = (
            p for p, j, _ in scored_judgments(shards, calibrator) if j.status == "ok" and j.confidence is not None
        )
    for value in values:
        counts[min(BINS - 1, int(value * BINS))] += 1
    return bars({f"{i / BINS:.1f}-{(i + 1) / BINS:.1f}": c for i, c in enumerate(counts)})


def write_html_report(run_dir: Path) -> Path:
    """Render RUN_DIR/report.html from whatever stages of the run have finished."""
    run = RunDirectory(run_dir)
    labeling = read_json(run.report) or {}
    merge = read_json(run.dataset / "merge.json")
    trained = {stage: read_json(run_dir / "train" / stage / "eval_report.json") for stage in ("reward", "dpo", "ppo")}
    accuracies = {
        name: value
        for name, value in (
            ("reward model: held-out accuracy", (trained["reward"] or {}).get("accuracy")),
            ("DPO: implicit-reward accuracy", (trained["dpo"] or {}).get("implicit_reward_accuracy")),
        )
        if value is not None
    }
    audit = (merge or {}).get("audit_agreement")
    certification = read_json(run.certification)
    calibrator = Calibrator.from_json(certification["calibration"]["calibrator"]) if certification else None
    if calibrator is not None and not calibrator.fitted:
        calibrator = None  # too few reviewed pairs: the raw confidence was used, and is shown
    environment = Environment(
        loader=PackageLoader("rlaif.pipeline", "templates"),
        undefined=StrictUndefined,
        autoescape=select_autoescape(["j2"]),
    )
    page = environment.get_template("report.html.j2").render(
        run=labeling.get("run", run_dir.name),
        run_dir=str(run_dir),
        labeling=labeling,
        merge=merge,
        training={k: v for k, v in trained.items() if v},
        label_sources=bars(merge["label_sources"]) if merge else [],
        confidence=confidence_histogram(run) if run.manifest.is_file() else [],
        audit=audit,
        certification=certification,
        calibrated=confidence_histogram(run, calibrator) if calibrator is not None and run.manifest.is_file() else [],
        accuracies=bars(accuracies, maximum=1.0),
        evaluation=read_json(run_dir / "eval" / "policy_eval.json"),
    )
    target = run_dir / "report.html"
    write_text_atomic(target, page)
    return target
