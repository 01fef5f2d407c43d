"""RUN_DIR/report.html: one static page with the figures and charts of a run, readable without a server.

Sections follow the data: prompts and sampling, judging (confidence, biases, certification, refusal
contrast), review (audit agreement, the judge's reliability diagram, the second round), the merged dataset,
training (curves from the trainers' logs, held-out accuracy), the trained policy against its reference (win
rate with its interval, refusal rates), then cost and time per stage. Charts are matplotlib's, inline SVG
(rlaif.pipeline.report_charts): the page loads nothing and runs no script. Rates stand beside the count
they come from; below `FEW` a rate is not given ("too few to say"). Parts whose files are missing are left
out. With `run.rounds`, RUN_DIR/report.html shows the rounds side by side instead (`write_rounds_report`), each
linking to its own run's page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from rlaif.judges.calibration import Calibrator
from rlaif.pipeline import report_charts
from rlaif.pipeline.rounds import read_rounds, round_folder, round_of
from rlaif.pipeline.shard_plan import judged_shards, run_judgments, scored_judgments
from rlaif.run_directory import RunDirectory
from rlaif.run_files import read_json, write_text_atomic

BINS = 10
FEW = 10  # fewer pairs than this: a rate is not stated
STAGES = ("sft", "reward", "dpo", "ppo", "kto", "orpo", "cpo", "grpo", "rloo")


def confidence_counts(run: RunDirectory, calibrator: Calibrator | None = None) -> list[int]:
    """Pairs per tenth of the judge's confidence, or with `calibrator` of the calibrated probability that people
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
    return counts


def length_bias_rates(labeling: dict[str, Any], merge: dict[str, Any] | None) -> dict[str, tuple[float, int]]:
    """How often the longer answer was chosen: by the judge on all pairs, and by the judge and by people on the
    audit, each with its pairs (rates on no pair left out)."""
    rows = {
        "judge, all pairs": (labeling.get("bias") or {}).get("judge_prefers_longer"),
        **{
            f"{chooser}, audit pairs": ((merge or {}).get("length_bias_on_audit") or {}).get(chooser)
            for chooser in ("judge", "people")
        },
    }
    return {
        name: (row["longer_wins"], row["pairs"])
        for name, row in rows.items()
        if row and row.get("pairs") and row.get("longer_wins") is not None
    }


def held_out_accuracies(trained: dict[str, dict[str, Any]]) -> dict[str, tuple[float, int]]:
    """The reward model's held-out accuracy, DPO's implicit-reward accuracy, and for KTO, ORPO and CPO the share of
    held-out pairs whose implicit-reward margin against the starting model is positive; each with its pairs."""
    rows = (("reward", "accuracy", "reward model: held-out accuracy"),)
    rows += (("dpo", "implicit_reward_accuracy", "DPO: implicit-reward accuracy"),)
    figures = {
        name: (trained[stage][key], trained[stage].get("eval_pairs", 0))
        for stage, key, name in rows
        if stage in trained and trained[stage].get(key) is not None
    }
    for stage in ("kto", "orpo", "cpo"):
        if (margins := (trained.get(stage) or {}).get("held_out")) is not None:
            figures[f"{stage.upper()}: pairs moved towards the preferred answer"] = (
                margins["accuracy"],
                margins["pairs"],
            )
    return figures


def stage_costs(
    labeling: dict[str, Any], trained: dict[str, dict[str, Any]]
) -> tuple[dict[str, int], dict[str, float]]:
    """Tokens per labeling stage (all models together), and wall seconds of labeling and of each training stage."""
    stages = ((labeling.get("cost") or {}).get("stages")) or {}
    tokens = {
        stage: sum(row["prompt_tokens"] + row["completion_tokens"] for row in models.values())
        for stage, models in sorted(stages.items())
    }
    seconds = {"labeling (sampling and judging)": labeling["wall_s"]} if labeling.get("wall_s") else {}
    for stage, report in trained.items():
        if report.get("wall_s") is not None:
            seconds[f"training: {report_charts.STAGE_NAMES[stage]}"] = report["wall_s"]
    return tokens, seconds


def artifact_tables(run_dir: Path) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """The report's charted figures as tables, for Prefect's table artifacts (key -> (description, rows)): the
    judge's reliability on the audit, the training curves and the policy's win rate. Empty ones left out."""
    merge = read_json(run_dir / "dataset" / "merge.json") or {}
    reliability = merge.get("reliability") or {}
    evaluation = read_json(run_dir / "eval" / "policy_eval.json")
    tables = {
        "judge-reliability": (
            "The judge's probability of being right against how often people agreed, on the audit pairs",
            [
                {
                    "probability": name,
                    "bin": f"{b['low']:.1f}-{b['high']:.1f}",
                    "pairs": b["pairs"],
                    "mean probability": round(b["mean_probability"], 3),
                    "people agreed": round(b["agreement"], 3),
                }
                for name in ("raw", "calibrated")
                for b in reliability.get(name) or []
            ],  # fmt: skip
        ),
        "training-curves": (
            "Logged training metrics per step, per stage",
            [
                {"stage": stage, **row}
                for stage in STAGES
                for row in (read_json(run_dir / "train" / stage / "eval_report.json") or {}).get("log") or []
            ],
        ),
        "policy-win-rate": (
            "The trained policy's win rate against its reference, with its 95% bootstrap interval",
            [
                {
                    "round": "this run",
                    "prompts": evaluation["n"],
                    "win rate": evaluation["win_rate"],
                    "95% low": evaluation["ci95"][0],
                    "95% high": evaluation["ci95"][1],
                }
            ]
            if evaluation and evaluation.get("win_rate") is not None
            else [],  # fmt: skip
        ),
    }
    return {key: table for key, table in tables.items() if table[1]}


def write_html_report(run_dir: Path) -> Path:
    """Render RUN_DIR/report.html from whatever stages of the run have finished."""
    run = RunDirectory(run_dir)
    labeling = read_json(run.report) or {}
    merge = read_json(run.dataset / "merge.json")
    trained = {
        stage: report
        for stage in STAGES
        if (report := read_json(run_dir / "train" / stage / "eval_report.json")) is not None
    }
    audit = (merge or {}).get("audit_agreement")
    certification = read_json(run.certification)
    calibrator = Calibrator.from_json(certification["calibration"]["calibrator"]) if certification else None
    if calibrator is not None and not calibrator.fitted:
        calibrator = None  # too few reviewed pairs: the raw confidence was used, and is shown
    evaluation = read_json(run_dir / "eval" / "policy_eval.json")
    label_value = read_json(run_dir / "train" / "label_value.json")
    has_judgments = run.manifest.is_file()
    tokens, seconds = stage_costs(labeling, trained)
    charts = {
        "confidence": report_charts.confidence_histogram(
            confidence_counts(run) if has_judgments else [],
            confidence_counts(run, calibrator) if calibrator is not None and has_judgments else None,
        ),
        "length_bias": report_charts.rate_chart(
            length_bias_rates(labeling, merge), "longer answer chosen (%)", FEW, report_charts.ORANGE, chance=True
        ),
        "reliability": report_charts.reliability_diagram((merge or {}).get("reliability")),
        "label_sources": report_charts.bar_chart(merge["label_sources"], "dataset rows") if merge else None,
        "training_curves": report_charts.training_curves(trained),
        "accuracy": report_charts.rate_chart(held_out_accuracies(trained), "held-out accuracy (%)", FEW),
        "win_rate": report_charts.win_rate_chart(
            [("this run", evaluation["win_rate"], evaluation["ci95"], evaluation["n"])] if evaluation else []
        ),
        "cost": report_charts.cost_chart(tokens, seconds),
    }
    page = (
        templates()
        .get_template("report.html.j2")
        .render(
            run=labeling.get("run", run_dir.name),
            run_dir=str(run_dir),
            round_number=round_of(run_dir),  # a round's page links to the rounds side by side
            labeling=labeling,
            merge=merge,
            training=trained,
            audit=audit,
            certification=certification,
            evaluation=evaluation,
            label_value=label_value["summary"] if label_value else None,
            charts=charts,
            few=FEW,
        )
    )
    target = run_dir / "report.html"
    write_text_atomic(target, page)
    return target


def write_rounds_report(run_dir: Path, name: str, wanted: int) -> Path:
    """Render RUN_DIR/report.html for run `name` of `wanted` rounds: the finished ones side by side (rounds.json),
    with each round's dataset and a link to its own page."""
    finished = {record["round"]: record for record in read_rounds(run_dir)}
    policies = {record["policy"]: f"round {k}'s policy" for k, record in finished.items()}  # short names for paths
    rows = [
        {
            "round": k,
            "record": finished.get(k),
            "trained_from": policies.get(finished[k]["trained_from"]) if k in finished else None,
            "reference": policies.get(finished[k]["reference"]) if k in finished else None,
            "merge": read_json(run_dir / round_folder(k) / "dataset" / "merge.json"),
            "report": f"{round_folder(k)}/report.html"
            if (run_dir / round_folder(k) / "report.html").is_file()
            else None,
        }
        for k in range(1, max(wanted, len(finished)) + 1)
    ]
    charts = {
        "win_rate": report_charts.win_rate_chart(
            [
                (f"round {k}", e["win_rate"], e["ci95"], e["n"])
                for k, record in finished.items()
                if (e := record["evaluation"]) is not None
            ]
        )
    }
    page = (
        templates()
        .get_template("rounds.html.j2")
        .render(
            run=name,
            run_dir=str(run_dir),
            rounds=list(finished.values()),
            wanted=wanted,
            rows=rows,
            charts=charts,
            few=FEW,
        )
    )
    target = run_dir / "report.html"
    write_text_atomic(target, page)
    return target


def templates() -> Environment:
    """The report pages' templates, every value escaped."""
    return Environment(
        loader=PackageLoader("rlaif.pipeline", "templates"),
        undefined=StrictUndefined,
        autoescape=select_autoescape(["j2"]),
    )
