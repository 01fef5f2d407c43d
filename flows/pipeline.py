"""The full pipeline as one flow, `rlaif-pipeline`: label; merge and train once people have finished the review.

It never holds a process while people label. When review items are open after labeling, the flow
ends in the state "waiting for review" and the merge happens later, as a run of the `rlaif-merge`
deployment started either by the review service's `rlaif.review.queue-emptied` event (a deployment
trigger) or, when `review.deadline_hours` is set, at the deadline, where `review.on_deadline` says
whether unfinished items keep the judge's label (`judge`) or fail the merge (`fail`).
Outside a deployment, `rlaif merge RUN_DIR` continues the run.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.deployments import run_deployment
from prefect.runtime import deployment

from rlaif.config import Config
from rlaif.flows.label import label_pipeline
from rlaif.flows.merge import merge_flow
from rlaif.flows.parameters import ConfigOverrides, ConfigParameter, JudgeParameter, override_mapping, run_config
from rlaif.flows.train import train_pipeline
from rlaif.pipeline.certify import certify_run
from rlaif.pipeline.report_page import artifact_tables, write_html_report, write_rounds_report
from rlaif.pipeline.rounds import finished_round, read_rounds, round_config, start_model, write_rounds
from rlaif.review.store import ReviewStore
from rlaif.run_storage import stored_run
from rlaif.training.stages import STAGES, stage_output

DEMO_REVIEWER = "demo-auto-reviewer"


def open_review_items(config: Config) -> int:
    """Items of the run that people have not finished (pending or claimed)."""
    with ReviewStore.open(config.review_db()) as store:
        if config.run.name not in store.runs():
            return 0
        stats = store.stats(config.run.name)
    return stats["pending"] + stats["claimed"]


async def schedule_deadline_merge(config: Config, given: dict[str, Any]) -> datetime | None:
    """Schedule the merge deployment's run at the review deadline; None outside a deployment or without one.

    `given` is this run's own `config` and `overrides` parameters: the merge run takes them as they came (a
    deployment run takes a config file's path, not a config) and passes the same checks."""
    if config.review.deadline_hours is None or deployment.get_id() is None:
        return None
    at = datetime.now(UTC) + timedelta(hours=config.review.deadline_hours)
    await run_deployment(
        name=f"rlaif-merge/{deployment.get_name()}",
        parameters={**given, "on_pending": "judge" if config.review.on_deadline == "judge" else "block"},
        scheduled_time=at,
        timeout=0,
        as_subflow=False,
    )
    return at


def answer_queue_as_demo_reviewer(config: Config) -> int:
    """Demo only (`rlaif demo --auto-review`): label every open item of the run with the judge's own verdict,
    as reviewer `demo-auto-reviewer`, so the demo runs end to end. Failed judgments are marked both bad."""
    answered = 0
    with ReviewStore.open(config.review_db()) as store:
        while (item := store.claim_next(config.run.name, DEMO_REVIEWER)) is not None:
            winner = item.judgment.winner if item.judgment.status == "ok" else None
            store.submit(item.item.id, DEMO_REVIEWER, winner or "both_bad", "answered by the demo, not a person")
            answered += 1
    return answered


@flow(name="rlaif-pipeline")
async def rlaif_pipeline(
    config: ConfigParameter = None,
    overrides: ConfigOverrides | None = None,
    auto_review: bool = False,
    judge: JudgeParameter = None,
) -> dict[str, Any]:
    """Label the prompts; when nothing waits for people, merge and train (train.in_pipeline), else stop.

    `auto_review` (demo only) answers the review queue with the judge's verdicts as `demo-auto-reviewer`;
    `judge`: the config's judge already loaded (in-process callers).
    """
    given = {"config": config, "overrides": override_mapping(overrides)}  # before the config is resolved
    config = run_config(config, overrides, judge)
    with stored_run(config.run.stored_at(), config.run.directory()):  # a run on object storage
        if config.run.rounds > 1:
            return await pipeline_rounds(config, auto_review, judge)
        return await pipeline_round(config, auto_review, judge, given)


async def pipeline_round(
    config: Config, auto_review: bool, judge: Any, given: dict[str, Any] | None, next_step: str | None = None
) -> dict[str, Any]:
    """One run of the pipeline (rlaif_pipeline's, or one of its rounds'); `given`: the flow run's own parameters,
    for the deadline merge; `next_step`: what to do once people are done, when not `rlaif merge RUN_DIR`."""
    logger = get_run_logger()
    report = await label_pipeline(config, judge=judge)
    if report.get("status") == "stopped_by_budget":
        return {"status": "stopped_by_budget", "label": report}
    if auto_review:
        answered = answer_queue_as_demo_reviewer(config)
        with ReviewStore.open(config.review_db()) as store:
            certification = await certify_run(config.run.directory(), config, store)  # review.target_agreement
        if certification is not None:
            logger.info(certification["message"])
            answered += answer_queue_as_demo_reviewer(config)
        logger.warning(f"demo: {answered} review items answered by {DEMO_REVIEWER}")
    waiting = open_review_items(config)
    if waiting == 0:
        merged = await merge_flow(config)
        result: dict[str, Any] = {"status": "merged", "label": report, "merge": merged}
        if config.train.in_pipeline:
            result["train"] = await asyncio.to_thread(train_pipeline, config)
            if result["train"].get("status") == "waiting_for_review" and auto_review:  # review.reward_round_fraction
                answered = answer_queue_as_demo_reviewer(config)
                logger.warning(f"demo: {answered} review items of the reward round answered by {DEMO_REVIEWER}")
                result["merge"] = await merge_flow(config)
                result["train"] = await asyncio.to_thread(train_pipeline, config)
            result["status"] = result["train"].get("status", "trained")
            if result["status"] == "waiting_for_review":  # the reward round's pairs wait for people
                result["open_review_items"] = result["train"]["reward_round"]["open_items"]
        result["report"] = await publish_report(config, result["status"])
        return result
    deadline = await schedule_deadline_merge(config, given) if given is not None else None
    run_dir = config.run.directory()
    logger.info(
        f"{waiting} review items of run {config.run.name!r} wait for people: serve them with "
        f"`rlaif review serve --db {config.review_db()}` (tokens: `rlaif review token add NAME`). "
        + (
            f"The merge deployment starts when the queue empties, or at {deadline.isoformat(timespec='minutes')} "
            f"(review.on_deadline={config.review.on_deadline})."
            if deadline
            else next_step or f"Then run `rlaif merge {run_dir}`."
        )
    )
    return {
        "status": "waiting_for_review",
        "open_review_items": waiting,
        "deadline": deadline.isoformat() if deadline else None,
        "label": report,
        "report": await publish_report(config, "waiting_for_review"),
    }


async def pipeline_rounds(config: Config, auto_review: bool, judge: Any) -> dict[str, Any]:
    """run.rounds: round after round (rlaif.pipeline.rounds), each from the policy the one before kept; the finished
    rounds are read from RUN_DIR/rounds.json and not computed again. Stops where a round waits for people or for
    budget (running the flow again continues it), or where a round kept the previous policy."""
    logger = get_run_logger()
    run_dir = config.run.directory()
    finished = read_rounds(run_dir)
    policy = finished[-1]["kept"] if finished else start_model(config)
    for record in finished:
        logger.info(f"round {record['round']}: finished earlier, not computed again ({record['reason']})")
    result: dict[str, Any] = {}
    for k in range(len(finished) + 1, config.run.rounds + 1):
        if finished and not finished[-1]["promoted"]:
            logger.info(
                f"round {k} is not run: round {k - 1} kept the previous policy, and round {k} would sample it "
                "again with the same seeds"
            )
            break
        this_round = round_config(config, k, policy)
        logger.info(f"round {k} of {config.run.rounds}: from {policy}, in {this_round.run.directory()}")
        again = (
            "Then run the pipeline again (same command or deployment): it keeps finished rounds, continues this one."
        )
        result = await pipeline_round(this_round, auto_review, judge, given=None, next_step=again)
        if result["status"] != "trained":  # waiting for people or stopped by the budget: the next run continues
            return {**result, "round": k, "rounds": finished, "report": await publish_rounds_report(config, finished)}
        trained_policy = str(stage_output(this_round, config.train.method))
        finished.append(finished_round(this_round, k, policy, trained_policy, result["train"]))
        write_rounds(run_dir, finished)
        logger.info(f"round {k}: {finished[-1]['reason']}")
        policy = finished[-1]["kept"]
    report = await publish_rounds_report(config, finished)
    return {**result, "status": "trained", "rounds": finished, "policy": policy, "report": report}


async def publish_rounds_report(config: Config, finished: list[dict[str, Any]]) -> str:
    """RUN_DIR/report.html with the rounds side by side, and a markdown artifact of them."""
    page = write_rounds_report(config.run.directory(), config.run.name, config.run.rounds)
    lines = [f"# Run `{config.run.name}`: {len(finished)} of {config.run.rounds} rounds finished", ""]
    lines += [f"- round {r['round']}: {r['reason']} (`{r['run_dir']}`)" for r in finished]
    lines.append(f"- the rounds side by side: `{page}`")
    await acreate_markdown_artifact(key="pipeline-rounds", markdown="\n".join(lines))
    return str(page)


async def publish_report(config: Config, status: str) -> str:
    """RUN_DIR/report.html, and a markdown artifact pointing at everything the run wrote."""
    run_dir = config.run.directory()
    page = write_html_report(run_dir)
    lines = [f"# Run `{config.run.name}`: {status.replace('_', ' ')}", "", f"- run directory: `{run_dir}`"]
    if (run_dir / "dataset").is_dir():
        lines.append(f"- dataset: `{run_dir / 'dataset'}` (card: README.md)")
    lines += [
        f"- {stage} model: `{run_dir / 'train' / stage}`"
        for stage in STAGES
        if (run_dir / "train" / stage / "eval_report.json").is_file()
    ]
    lines.append(f"- report with charts: `{page}`")
    await acreate_markdown_artifact(key="pipeline-summary", markdown="\n".join(lines))
    for key, (description, rows) in artifact_tables(run_dir).items():  # the report's charts, as tables
        await acreate_table_artifact(key=key, table=rows, description=description)
    return str(page)
