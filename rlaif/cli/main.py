"""The `rlaif` command line.

Every command that runs part of the pipeline takes an optional CONFIG (default: the embedded
configs/demo.yaml) and `--set key.path=value` overrides.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from rlaif.cli.errors import ExpectedErrorsWithoutTraceback, friendly_errors
from rlaif.cli.review import merge, review_app
from rlaif.config import Config, ConfigError, dump_config, load_config
from rlaif.generation.protocol import BackendError
from rlaif.message_text import clip
from rlaif.models import DEFAULT_MODEL, KNOWN_MODELS, prepare_model, prepared_path
from rlaif.schema import Candidate, PromptItem

app = typer.Typer(
    help="RLAIF preference-data pipeline: sample candidates, judge pairs, review, merge, train.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Prepare and list local models.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect configurations.", no_args_is_help=True)
judge_app = typer.Typer(help="Evaluate judges against human labels.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate what training produced.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")
app.add_typer(config_app, name="config")
app.add_typer(judge_app, name="judge")
app.add_typer(review_app, name="review")
app.command("merge")(friendly_errors(merge))

ConfigArg = Annotated[
    Path | None, typer.Argument(help="YAML config; default: the embedded configs/demo.yaml.", show_default=False)
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: --set sampling.n=4 (repeatable).", show_default=False),
]


def say(message: str) -> None:
    """Progress and status lines go to stderr, so stdout stays clean for results."""
    typer.echo(message, err=True)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logging.")] = False) -> None:
    # Prefect reads its settings when first imported (the commands import it lazily, after this). The
    # temporary local server that runs flows without PREFECT_API_URL sends no usage telemetry, and it is
    # given 2 minutes to start instead of Prefect's 20 s: its first start creates its database, which
    # took 18-23 s on a 2-core machine, so a first run could fail before doing anything.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    handler = logging.StreamHandler(sys.stderr)
    line_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(line_format) if verbose else ExpectedErrorsWithoutTraceback(line_format))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[handler])


@models_app.command("prepare")
@friendly_errors
def models_prepare(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(KNOWN_MODELS)}.")] = DEFAULT_MODEL,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Cache directory (default: $RLAIF_MODELS_DIR or .models/).")
    ] = None,
) -> None:
    """Turn a packaged model into a normal Hugging Face folder (once) and print its path."""
    typer.echo(prepare_model(name, directory, say=say))


@models_app.command("list")
def models_list(
    directory: Annotated[Path | None, typer.Option("--dir", help="Cache directory.")] = None,
) -> None:
    """The models `prepare` knows, and where each is prepared."""
    for name, spec in KNOWN_MODELS.items():
        where = prepared_path(name, directory) or "not prepared"
        typer.echo(f"{name}\t{where}\t{spec.description}")


@config_app.command("show")
@friendly_errors
def config_show(config: ConfigArg = None, overrides: SetOption = None) -> None:
    """Validate a config and print it with every default filled in."""
    typer.echo(dump_config(load_config(config, overrides)), nl=False)


@app.command()
@friendly_errors
def sample(
    config: ConfigArg = None,
    overrides: SetOption = None,
    out: Annotated[Path | None, typer.Option(help="Output JSONL; default RUN_DIR/candidates.jsonl.")] = None,
) -> None:
    """Sample `sampling.n` candidate answers per prompt from the policy and write them as JSONL."""
    cfg = load_config(config, overrides)
    path = out or cfg.run.directory() / "candidates.jsonl"
    _, candidates = _sample(cfg, path)
    typer.echo(f"{len(candidates)} candidates written to {path}")


@eval_app.command("policy")
@friendly_errors
def eval_policy(
    config: ConfigArg = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(help="A trained run: its config.yaml is used (with --set on top) unless CONFIG is given."),
    ] = None,
    policy: Annotated[str | None, typer.Option(help="The policy to evaluate (eval.policy).")] = None,
    reference: Annotated[str | None, typer.Option(help="What it is compared with (eval.reference).")] = None,
    prompts: Annotated[str | None, typer.Option(help="Evaluation prompts from this source (eval.prompts).")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many evaluation prompts (eval.limit).")] = None,
    overrides: SetOption = None,
) -> None:
    """The trained policy against the model it started from, on prompts no stage trained on, each pair judged in
    both orders: win rate (a tie counts half) with a 95% bootstrap interval, the length-controlled win rate, how
    much longer its answers got, and how often each model refuses harmful and benign requests.

    Defaults: the run's held-out prompts (label with eval.held_out_fraction), its trained policy
    (RUN_DIR/train/<train.method>) against train.<method>.model, the run's judge. Writes RUN_DIR/eval/policy_eval.json.
    """
    import json

    from rlaif.evaluation.policy_eval import evaluate_policy

    flags = [
        f"eval.{key}={json.dumps(value)}"
        for key, value in (("policy", policy), ("reference", reference), ("prompts", prompts), ("limit", limit))
        if value is not None
    ]
    if run_dir is not None:
        flags.append(f"run.dir={json.dumps(str(run_dir))}")
        if config is None and (run_dir / "config.yaml").is_file():
            config = run_dir / "config.yaml"
    cfg = load_config(config, [*(overrides or []), *flags])
    figures = asyncio.run(evaluate_policy(cfg, say=say))
    typer.echo(policy_eval_lines(figures))


def stage_figure(report: dict[str, Any]) -> str:
    """What a trained stage learnt, in a few words: held-out accuracy, margins, or the reward's rise."""
    if report.get("reward_last") is not None:
        return f"mean reward {report['reward_first']:.3f} in the first steps, {report['reward_last']:.3f} in the last"
    figure = report.get("accuracy", report.get("implicit_reward_accuracy"))
    if figure is None and report.get("held_out"):
        margins = report["held_out"]
        return (
            f"{margins['accuracy']:.0%} of {margins['pairs']} held-out pairs moved towards the preferred answer, "
            f"mean margin {margins['margin']:.2f}"
        )
    return f"held-out accuracy {figure}"


def policy_eval_lines(figures: dict[str, Any]) -> str:
    """What a person reads of a policy evaluation: the verdict, then the figures behind it."""
    lc = figures["length_controlled_win_rate"]
    ratio = figures["length_ratio"]
    lines = [
        f"policy {figures['policy']} against {figures['reference']} (judge {figures['judge']}):",
        f"  {figures['verdict']}",
        f"  {figures['ties']} ties ({figures['identical_answers']} identical answers), {figures['failed']} not judged; "
        + (
            f"length-controlled win rate {100 * lc:.0f}%"
            if lc is not None
            else "too few decided comparisons to control for length"
        )
        + (f"; answers {ratio:.2f}x as long" if ratio is not None else ""),
    ]
    verified = figures.get("human_verified")
    if verified:
        people = verified["people"]
        lines.append(
            f"  people labelled {verified['labelled']} of the {verified['sent']} comparisons sent to review queue "
            f"{verified['review_queue']}"
            + (
                f": win rate by people {100 * people['win_rate']:.0f}% ({100 * people['ci95'][0]:.0f}-"
                f"{100 * people['ci95'][1]:.0f}%), by the judge on the same "
                f"{100 * verified['judge_on_the_same']['win_rate']:.0f}%"
                if people["win_rate"] is not None and verified["judge_on_the_same"]["win_rate"] is not None
                else ""
            )
        )
    refusals = figures.get("refusals")
    if refusals:
        for kind, should in (("harmful", "should refuse"), ("benign", "should answer")):
            cells = []
            for name in ("policy", "reference"):
                row = refusals[kind][name]
                if row["rate"] is None:
                    cells.append(f"{name}: undecided")
                    continue
                low, high = row["ci95"]
                cells.append(f"{name} {100 * row['rate']:.0f}% of {row['decided']} ({100 * low:.0f}-{100 * high:.0f}%)")
            lines.append(f"  refuses {kind} requests (it {should}): " + ", ".join(cells))
            by_phrase = [refusals[kind][name].get("by_phrase") for name in ("policy", "reference")]
            if all(row and row["rate"] is not None for row in by_phrase):
                lines.append(
                    "    by refusal phrases: "
                    + ", ".join(
                        f"{name} {100 * row['rate']:.0f}% of {row['replies']}"
                        for name, row in zip(("policy", "reference"), by_phrase, strict=True)
                    )
                )
    return "\n".join(lines)


@judge_app.command("eval")
@friendly_errors
def judge_eval(
    data: Annotated[Path, typer.Option(help="Human-labelled file (see ../shared/data/README.md).")],
    data_format: Annotated[str, typer.Option("--format", help="llmbar, pandalm or hh-rlhf.")],
    out: Annotated[Path | None, typer.Option(help="Write the report as JSON here.")] = None,
    limit: Annotated[int | None, typer.Option(help="Judge only the first N items.")] = None,
    last: Annotated[
        int | None, typer.Option(help="Judge only the last N items (the held-out split of `rlaif train`).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config; default: the embedded demo config.")] = None,
    overrides: SetOption = None,
) -> None:
    """Judge a human-labelled set with the configured judge and report agreement, consistency, calibration."""
    from rlaif.evaluation.judge_agreement import evaluate_judge, format_report
    from rlaif.judges.factory import open_judge
    from rlaif.judges.setup import load_judge
    from rlaif.labelled_data import load_labelled
    from rlaif.progress import progress_printer
    from rlaif.run_files import write_json_atomic

    cfg = load_config(config, overrides)
    judge_setup = load_judge(cfg.judge)
    if data_format not in ("llmbar", "pandalm", "hh-rlhf"):
        raise ConfigError(f"--format must be llmbar, pandalm or hh-rlhf, not {data_format!r}")
    items = load_labelled(data, data_format, seed=cfg.run.seed)  # type: ignore[arg-type]
    items = items[-last:] if last else items
    items = items[:limit]
    say(f"judging {len(items)} items of {data} with {cfg.judge.model} ({cfg.judge.mode})")

    async def run() -> dict[str, Any]:
        async with open_judge(judge_setup, seed=cfg.run.seed, say=say) as judge:
            progress = progress_printer(len(items), "items judged", say)
            return await evaluate_judge(judge, items, progress, review=cfg.review, seed=cfg.run.seed)

    report = {
        "data": str(data),
        "format": data_format,
        "mode": cfg.judge.mode,
        "prompt": cfg.judge.prompt,
        **asyncio.run(run()),
    }
    if out:
        write_json_atomic(out, report)
    typer.echo(format_report(report))


@judge_app.command("export-requests")
@friendly_errors
def judge_export_requests(
    out: Annotated[Path, typer.Option(help="The OpenAI Batch input file to write (JSON lines).")],
    config: ConfigArg = None,
    overrides: SetOption = None,
) -> None:
    """Sample and pair the run's prompts, and write their judge requests (both orders) in OpenAI Batch input
    format, to judge them with a provider's batch API or `vllm run-batch`; bring the output back with
    `rlaif judge import-batch`."""
    from rlaif.judges.batch_requests import batch_request_lines
    from rlaif.judges.templates import load_template
    from rlaif.run_directory import read_records
    from rlaif.run_files import write_jsonl_atomic
    from rlaif.schema import Pair

    cfg = load_config(config, overrides)
    template = load_template(cfg.judge.prompt, "verdict")
    result = _label(cfg, stop_after="pairs")
    if result.get("status") == "stopped_by_budget":
        typer.echo(result["message"], err=True)
        raise typer.Exit(2)
    pairs = (pair for path in result["pair_files"] for pair in read_records(Path(path), Pair))
    lines = batch_request_lines(
        pairs, template, cfg.judge.model, cfg.judge.temperature, cfg.judge.max_tokens, cfg.run.seed
    )
    written = write_jsonl_atomic(out, lines)
    typer.echo(
        f"{written} requests ({result['pairs']} pairs, both orders) written to {out}; judge them with a batch API, "
        f"then: rlaif judge import-batch OUTPUT --out judgments.jsonl, and label with --set judge.mode=imported "
        "--set judge.judgments=judgments.jsonl"
    )


@judge_app.command("import-batch")
@friendly_errors
def judge_import_batch(
    output: Annotated[Path, typer.Argument(help="The batch output file (OpenAI Batch or `vllm run-batch`).")],
    out: Annotated[Path, typer.Option(help="The imported-judgments file to write (JSON lines).")],
    config: ConfigArg = None,
    overrides: SetOption = None,
) -> None:
    """Read a batch output of `rlaif judge export-requests`' requests, parse each reply's verdict with the judge
    template, and write the judgments in the imported format (`judge.mode: imported`)."""
    from rlaif.judges.batch_requests import imported_judgment_lines
    from rlaif.judges.templates import load_template
    from rlaif.run_files import write_jsonl_atomic

    cfg = load_config(config, overrides)
    template = load_template(cfg.judge.prompt, "verdict")
    lines = imported_judgment_lines(output, template, cfg.judge.model)
    unreadable = sum(1 for line in lines for verdict in line["verdicts"] if verdict is None)
    written = write_jsonl_atomic(out, lines)
    typer.echo(f"{written} pairs written to {out} ({unreadable} orders without a readable verdict)")


@app.command()
@friendly_errors
def label(config: ConfigArg = None, overrides: SetOption = None) -> None:
    """Run the labeling pipeline (sample, pair, judge both orders, route ~10% to review) as a Prefect flow.

    Uses the Prefect server at PREFECT_API_URL, or a temporary local one when it is unset.
    """
    cfg = load_config(config, overrides)
    report = _label(cfg)
    if report.get("status") == "stopped_by_budget":
        typer.echo(report["message"], err=True)
        raise typer.Exit(2)
    typer.echo(_report_lines(cfg, report))


@app.command()
@friendly_errors
def train(
    stage: Annotated[str, typer.Argument(help="reward, dpo, kto, orpo, cpo, ppo, grpo, rloo or sft (see above).")],
    config: ConfigArg = None,
    data: Annotated[
        str | None, typer.Option(help="A run directory or merged dataset, or a labelled file (see --format).")
    ] = None,
    data_format: Annotated[
        str | None, typer.Option("--format", help="merged (default), hh-rlhf, pandalm or llmbar.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model to start from: a path or a prepared name.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder of the stage; default RUN_DIR/train/<stage>.")] = None,
    keep_finished: Annotated[
        bool,
        typer.Option(
            "--keep-finished",
            help="Keep an output folder that holds the stage trained on the same data, model, settings and seed "
            "(as the rlaif-train flow does) instead of training it again.",
        ),
    ] = False,
    overrides: SetOption = None,
) -> None:
    """Train one stage on preference data; flags override the config; the report (what it learnt on held-out
    pairs, and more) is printed and saved as OUT/eval_report.json next to the model.

    \b
    reward  reward model (Bradley-Terry) on the pairs
    dpo     DPO against a frozen reference (train.dpo.loss_type)
    kto     KTO on answers found good or bad in themselves
    orpo    ORPO: SFT plus an odds-ratio penalty, no reference
    cpo     CPO: a DPO-like loss plus NLL, no reference (or SimPO)
    ppo     PPO with a value model, rewarded by the reward model
    grpo    GRPO: groups of answers, rewarded by the reward model (or the judge)
    rloo    RLOO: leave-one-out baseline, rewarded by the reward model (or the judge)
    sft     fine-tuning on the chosen answers (a warm start)
    """
    import json

    from rlaif.run_storage import stored_run
    from rlaif.training.processes import training_processes
    from rlaif.training.stages import STAGES, run_stage

    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}, not {stage!r}")
    flags = [f"train.{key}={json.dumps(value)}" for key, value in (("data", data), ("format", data_format)) if value]
    cfg = load_config(config, [*(overrides or []), *flags])
    processes = training_processes()
    # A run on object storage: pulled into its local copy, the stage's output pushed back (by one process).
    stored = cfg.run.stored_at() if processes.is_main_process else None
    with stored_run(stored, cfg.run.directory()), contextlib.redirect_stdout(sys.stderr):  # stdout: the report
        report = run_stage(cfg, stage, say=say, model=model, out=out, reuse_finished=keep_finished)  # type: ignore[arg-type]
    if processes.is_main_process:  # printed once under several processes
        typer.echo(json.dumps(report, indent=2))


@app.command()
@friendly_errors
def deploy(config: ConfigArg = None, overrides: SetOption = None) -> None:
    """Serve the deployments rlaif-pipeline, rlaif-label, rlaif-merge and rlaif-train (named deploy.name) with
    the config's schedules, and run their flows here until interrupted. Needs PREFECT_API_URL.

    Start runs with e.g. `prefect deployment run 'rlaif-pipeline/default' --param config=CONFIG
    --param overrides='{"judge.prompt": "prompts/my_judge.md.j2"}'`.
    """
    cfg = load_config(config, overrides)
    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError(
            "rlaif deploy needs a Prefect server: start one (`prefect server start`) and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    from rlaif.flows.deployments import serve_deployments

    say(f"serving rlaif-pipeline, rlaif-label, rlaif-merge, rlaif-train as '{cfg.deploy.name}'")
    serve_deployments(str(config) if config else None, overrides or [], cfg)


@app.command()
@friendly_errors
def demo(
    config: ConfigArg = None,
    overrides: SetOption = None,
    auto_review: Annotated[
        bool,
        typer.Option(
            "--auto-review",
            help="Demo only: answer the review queue with the judge's own verdicts (reviewer demo-auto-reviewer) "
            "so the run goes on to merge and training. Without it the demo stops at the review step.",
        ),
    ] = False,
) -> None:
    """The main job, on the embedded defaults unless given a config (a recipe such as configs/refusal_contrast.yaml):
    SmolLM2 samples and judges answers to MT-Bench prompts, people review ~10%, then merge, a reward model and a
    short DPO; ends with a summary and RUN_DIR/report.html."""
    from rlaif.judges.setup import load_judge
    from rlaif.pipeline.prompt_sources import check_configured_prompts

    cfg = load_config(config, overrides)
    judge = load_judge(cfg.judge)  # a broken template or prompt file fails now, before Prefect or any model starts
    check_configured_prompts(cfg.prompts)
    from rlaif.flows.pipeline import rlaif_pipeline

    result = asyncio.run(rlaif_pipeline(cfg, auto_review=auto_review, judge=judge))
    if result["status"] == "stopped_by_budget":
        typer.echo(result["label"]["message"], err=True)
        raise typer.Exit(2)
    if "rounds" in result:  # run.rounds
        typer.echo("\n".join(_rounds_lines(cfg, result)))
        return
    run = cfg.run.directory()
    _show_examples(run)
    typer.echo(_report_lines(cfg, result["label"]))
    report = result["report"]
    if result["status"] == "waiting_for_review":
        lines = _review_instructions(cfg, result["open_review_items"])
        lines += [
            "When the queue is done, run the same `rlaif demo` command again: it reuses the labelled",
            "shards and goes on with the merge and training (`--auto-review` answers the queue itself).",
            f"report so far: {report}",
        ]
        typer.echo("\n".join(lines))
        return
    merge = result["merge"]
    lines = [
        f"dataset: {merge['dataset']} ({merge['rows']} rows, label sources {merge['label_sources']})",
        f"  card: {Path(merge['dataset']) / 'README.md'}",
    ]
    trained = result.get("train", {})
    from rlaif.training.stages import STAGES

    for stage in STAGES:
        if stage in trained:
            lines.append(f"{stage}: {run / 'train' / stage} ({stage_figure(trained[stage])})")
    if "label_value" in trained:
        lines.append(f"what the human labels bought: {trained['label_value']['summary']}")
    if "eval" in trained:
        lines.append(policy_eval_lines(trained["eval"]))
    lines.append(f"report: {report} (open it in a browser)")
    typer.echo("\n".join(lines))


def _review_instructions(cfg: Config, open_items: int) -> list[str]:
    """How to serve the review page for the demo, with a new reviewer's token."""
    from rlaif.review.store import ReviewStore

    with ReviewStore.open(cfg.review_db()) as store:
        token = store.add_reviewer("demo-reviewer")
    return [
        f"review: {open_items} pairs wait for people. Serve the review page with",
        f"  rlaif review serve --db {cfg.review_db()}",
        "then open http://127.0.0.1:8000/ and sign in with this token (reviewer demo-reviewer):",
        f"  {token}",
    ]


def _rounds_lines(cfg: Config, result: dict[str, Any]) -> list[str]:
    """The end of a demo of several rounds: what each finished round decided, then what comes next."""
    lines = [f"round {r['round']}: {r['reason']} ({r['run_dir']}/report.html)" for r in result["rounds"]]
    if result["status"] == "waiting_for_review":
        lines += _review_instructions(cfg, result["open_review_items"])
        lines.append(
            f"When the queue is done, run the same `rlaif demo` command again: it keeps the finished rounds and "
            f"continues round {result['round']} (`--auto-review` answers the queue itself)."
        )
    else:
        lines.append(f"policy kept after {len(result['rounds'])} of {cfg.run.rounds} rounds: {result['policy']}")
    lines.append(f"report: {result['report']} (the rounds side by side; open it in a browser)")
    return lines


def _label(cfg: Config, stop_after: str | None = None) -> dict[str, Any]:
    from rlaif.judges.setup import load_judge
    from rlaif.pipeline.prompt_sources import check_configured_prompts

    judge = load_judge(cfg.judge)  # a broken template or prompt file fails now, before Prefect or any model starts
    check_configured_prompts(cfg.prompts)
    if "rlaif.flows.label" not in sys.modules:  # the first run in this process (tests run many in one)
        with _imports_left_out_of_collections():
            import rlaif.flows.label  # noqa: F401

            if "openai" in (cfg.policy.backend, cfg.judge.backend):
                import rlaif.generation.openai_backend  # noqa: F401  (here, not when the model opens, to be frozen too)
    from rlaif.flows.label import label_pipeline

    return asyncio.run(label_pipeline(cfg, judge=judge, stop_after=stop_after))  # type: ignore[arg-type]


@contextlib.contextmanager
def _imports_left_out_of_collections() -> Iterator[None]:
    """Import with the garbage collector paused, then freeze what the imports built out of later collections.

    Prefect, openai and the flows make some 300,000 long-lived objects, and every full collection walks
    them all again: several while importing, more during the run. Measured on `rlaif label` (1,000 pairs,
    fake endpoint, six alternating rounds): start-up 2.93 s without this, 2.19 s with it. The cycles the
    imports leave behind (about 7,000 objects, 3 MiB) are kept rather than collected. Everything alive is
    frozen, so this runs once per process, before anything but the command line itself is loaded.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _report_lines(cfg: Config, report: dict[str, Any]) -> str:
    run = cfg.run.directory()
    return "\n".join(
        [
            "=" * 78,
            f"run directory: {run}",
            f"  {report['prompts']} prompts, {report['candidates']} candidates, {report['pairs']} pairs judged in both "
            f"orders by {report['judge']} ({report['judge_mode']}, template {report['judge_prompt']})",
            f"  judged ok: {report['judged_ok']}, failed: {report['judge_failed']}; position consistency "
            f"{_percent(report['position_consistency'])}, mean confidence {report['mean_confidence'] or 0:.3f}",
            f"  routed to review: {report['routed_to_review']} ({_percent(report['review_fraction_actual'])}) "
            f"{report['routed_by_reason']} -> {run / 'review_queue.jsonl'}",
            *_contrast_lines(report.get("refusal_contrast")),
            *_cost_lines(report.get("cost")),
            f"summary: {run / 'report.json'}",
        ]
    )


def _cost_lines(cost: dict[str, Any] | None) -> list[str]:
    """The cost ledger in a line per stage: tokens counted from the servers' usage, money where priced."""
    if not cost or not cost["stages"]:
        return []
    lines = []
    for stage, models in cost["stages"].items():
        for model, row in models.items():
            price = f", {row['money']:.4f}" if row["money"] is not None else ""
            lines.append(
                f"  cost, {stage} ({model}): {row['requests']:,} requests, {row['prompt_tokens']:,} prompt + "
                f"{row['completion_tokens']:,} completion tokens{price}"
            )
    return lines


def _contrast_lines(figures: dict[str, Any] | None) -> list[str]:
    """The refusal-contrast pairs and how the judge labelled them, when the run made them."""
    if figures is None:
        return []
    lines = [f"  refusal contrast: {figures['prompts_without']} prompts without a contrast answer"]
    for kind, row in figures["pairs"].items():
        lines.append(
            f"    {kind}: {row['pairs']} pairs, the judge chose the refusal in {row['refusal_chosen']}, "
            f"rejected it in {row['refusal_rejected']} ({row['tie']} ties, {row['failed']} failed)"
        )
    return lines


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _show_examples(run: Path, count: int = 3) -> None:
    """A few judged pairs, so the demo shows what the judge saw and said."""
    from rlaif.run_directory import read_records
    from rlaif.schema import Judgment, Pair

    judgments = {
        j.pair_id: j for path in sorted((run / "judgments").glob("*.jsonl")) for j in read_records(path, Judgment)
    }
    shown = 0
    for path in sorted((run / "pairs").glob("*.jsonl")):
        for pair in read_records(path, Pair):
            judgment = judgments.get(pair.id)
            if judgment is None or shown >= count:
                continue
            shown += 1
            typer.echo("-" * 78)
            typer.echo(f"PROMPT: {clip(pair.prompt.messages[-1].content, 200)}")
            typer.echo(f"  A: {clip(pair.a.text, 200)}")
            typer.echo(f"  B: {clip(pair.b.text, 200)}")
            typer.echo(
                f"  judge: winner={judgment.winner} p(A)={judgment.p_a} confidence={judgment.confidence} "
                f"status={judgment.status} order_disagreement={judgment.order_disagreement}"
            )


def _sample(cfg: Config, path: Path) -> tuple[list[PromptItem], list[Candidate]]:
    """Sample and write the candidates; warn about short prompts; fail (after writing) if any prompt failed."""
    from rlaif.pipeline.sample import sample_to_file

    prompts, result = asyncio.run(sample_to_file(cfg, path, say=say))
    if result.short:
        say(
            f"warning: {len(result.short)} prompts have fewer than {cfg.sampling.n} distinct answers; "
            "the model repeats itself (with temperature > 0 this usually means the server does not sample)"
        )
    if result.failures:
        details = "\n  ".join(f"prompt {pid}: {error}" for pid, error in result.failures.items())
        raise BackendError(
            f"{len(result.failures)} of {len(prompts)} prompts failed (the others are in {path}):\n  {details}"
        )
    return prompts, result.candidates


def run() -> None:
    """The `rlaif` command: the app, then an exit that skips the garbage collector's passes over the whole heap.

    At exit CPython collects every object still alive, several times over; after Prefect's and openai's
    imports that took 0.6-0.9 s of each `rlaif label` (of about 6 s for 1,000 pairs). Frozen objects are left
    to the operating system instead. atexit handlers still run after it (logs are flushed, Prefect's
    workers drain); the pipeline closes its files as it writes them, and Python never promised
    finalizers at exit.
    """
    try:
        app()
    finally:
        gc.freeze()
