"""The Prefect flow of the labeling pipeline, rlaif-label: sample candidates, pair and judge them, route for review.

Thin over the pipeline's steps (`rlaif.pipeline`). One flow run, with coarse tasks: a task run per shard
and step (hundreds of items, with async concurrency inside), never one per item, and one for routing.
The steps are plain functions inside the flow, not subflows: a subflow run costs API calls, and the
shard plan is computed once. A rerun skips finished shards without starting a task run for them: their
files in the run directory are the cache, keyed by inputs, settings and the step's source code
(Prefect's own result cache would live outside the run directory and outlive it). Models open on
first use and stay open across the shards of a step (with `run.task_runner` dask or ray, shard tasks
run on a cluster's workers and open their own: `rlaif.flows.task_runner`). The judge is loaded once
(`rlaif.judges.setup`), by the caller or here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact, acreate_progress_artifact, acreate_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner
from prefect.utilities.annotations import quote

from rlaif.config import Config, dump_config
from rlaif.flows.parameters import ConfigOverrides, ConfigParameter, JudgeParameter, run_config
from rlaif.flows.shard_claims import wait_run_claim
from rlaif.flows.shard_runner import OnFirstUse, ShardOutcome, ShardProgress, opened, run_shards, shard_on_worker
from rlaif.flows.task_runner import open_task_runner
from rlaif.generation.factory import open_backend
from rlaif.generation.protocol import GenerationBackend, TokenUsage
from rlaif.judges.ensemble import ensemble_name
from rlaif.judges.factory import open_judge
from rlaif.judges.reward_model import RewardModelScorer
from rlaif.judges.setup import JudgeSetup, load_judge
from rlaif.models import resolve_model
from rlaif.pipeline.bias_audit import self_preference_warning
from rlaif.pipeline.certify import TWO_PHASE_WAIT, certify_run, earlier_runs_calibrator
from rlaif.pipeline.cost_ledger import BudgetReached, Spending, ledger_totals
from rlaif.pipeline.enqueue import enqueue_routed
from rlaif.pipeline.judge_step import judge_shard
from rlaif.pipeline.pair import pair_shard
from rlaif.pipeline.prompt_sources import PromptCounts, run_prompts
from rlaif.pipeline.refusal_contrast import classifier_section
from rlaif.pipeline.report import write_report
from rlaif.pipeline.route import route_run, routing_totals
from rlaif.pipeline.sample import sample_shard
from rlaif.pipeline.shard_plan import ShardPlan, plan_shards
from rlaif.review.store import ReviewStore
from rlaif.run_directory import RunDirectory
from rlaif.run_files import write_json_atomic, write_text_atomic
from rlaif.run_storage import RunStorage, stored_run


def _plans(
    config: Config, judge: JudgeSetup, storage: RunStorage | None
) -> tuple[RunDirectory, list[ShardPlan], PromptCounts]:
    """The run's shards, and what reading its prompts left out or truncated."""
    run = RunDirectory(config.run.directory(), storage)
    counts = PromptCounts()
    prompts = run_prompts(config, counts)  # less the prompts held out for evaluating the trained policy
    return run, plan_shards(run, config, prompts, judge.identity()), counts


class SamplingModels:
    """The models a sampling shard uses (the policy; the judge model when it classifies prompts for
    pairs.refusal_contrast), each opened on first use and closed with `stack`."""

    def __init__(self, stack: contextlib.AsyncExitStack, config: Config, say: Callable[[str], None]) -> None:
        self.policy = OnFirstUse(stack, lambda: open_backend(config.policy, where="policy", say=say))
        judge_model = classifier_section(config.judge)  # pairs.refusal_contrast: classifies prompts
        self.classifier: OnFirstUse[GenerationBackend] | None = None
        if judge_model is not None:
            self.classifier = OnFirstUse(stack, lambda: open_backend(judge_model, where="judge", say=say))

    def usage(self) -> dict[str, TokenUsage]:
        """What the models opened so far spent, by cost-ledger stage."""
        spent = {"sampling": self.policy.value.usage if self.policy.value else TokenUsage()}
        if self.classifier is not None and self.classifier.value is not None:
            spent["refusal-classifier"] = self.classifier.value.usage
        return spent


def pair_scorer(stack: contextlib.AsyncExitStack, config: Config) -> OnFirstUse[RewardModelScorer]:
    """The reward model that pairs.score_model names (for the strategies that pick pairs by score), on first use."""
    score_model = config.pairs.score_model or ""
    return OnFirstUse(stack, lambda: opened(RewardModelScorer(resolve_model(score_model))))


class JudgingModels:
    """The models a judging shard uses (the pair scorer, the judge), each opened on first use and closed with
    `stack`."""

    def __init__(
        self, stack: contextlib.AsyncExitStack, config: Config, judge: JudgeSetup, say: Callable[[str], None]
    ) -> None:
        self.scorer = pair_scorer(stack, config)
        self.judge = OnFirstUse(stack, lambda: open_judge(judge, seed=config.run.seed, say=say))

    def usage(self) -> dict[str, TokenUsage]:
        return {"judging": self.judge.value.usage() if self.judge.value else TokenUsage()}


@task(name="sample-shard", cache_policy=NO_CACHE)
async def sample_shard_task(plan: ShardPlan, config: Config, models: SamplingModels | None) -> ShardOutcome:
    """One shard's candidates, with the flow's models, or (models None: on a cluster's worker) models of its own
    (and, for a stored run, the shard's files in the worker's own copy)."""
    if models is not None:
        return *await sample_shard(plan, config, models.policy, models.classifier), {}
    with shard_on_worker(config, plan) as here:
        async with contextlib.AsyncExitStack() as stack:
            own = SamplingModels(stack, config, get_run_logger().info)
            return *await sample_shard(here, config, own.policy, own.classifier), own.usage()


@task(name="judge-shard", cache_policy=NO_CACHE)
async def judge_shard_task(plan: ShardPlan, config: Config, models: JudgingModels | None) -> ShardOutcome:
    """Pairs of one shard, then their judgments: one task run, as pairing is quick next to judging. With the
    flow's models, or (models None: on a cluster's worker) models of its own, the judge loaded from the config."""
    if models is not None:
        await pair_shard(plan, config, models.scorer)
        return *await judge_shard(plan, models.judge), {}
    with shard_on_worker(config, plan) as here:
        async with contextlib.AsyncExitStack() as stack:
            own = JudgingModels(stack, config, load_judge(config.judge), get_run_logger().info)
            await pair_shard(here, config, own.scorer)
            return *await judge_shard(here, own.judge), own.usage()


@task(name="pair-shard", cache_policy=NO_CACHE)
async def pair_shard_task(
    plan: ShardPlan, config: Config, scorer: OnFirstUse[RewardModelScorer] | None
) -> ShardOutcome:
    """One shard's pairs, unjudged; with the flow's pair scorer, or (on a cluster's worker) one of its own."""
    if scorer is not None:
        return *await pair_shard(plan, config, scorer), {}
    with shard_on_worker(config, plan) as here:
        async with contextlib.AsyncExitStack() as stack:
            return *await pair_shard(here, config, pair_scorer(stack, config)), {}


async def sample_shards(
    config: Config, run: RunDirectory, plans: list[ShardPlan], runner: TaskRunner[Any] | None = None
) -> int:
    """Sample `sampling.n` candidates per prompt, a task run per unfinished shard; returns the count."""
    logger = get_run_logger()
    artifact = await acreate_progress_artifact(
        progress=0.0, key="sampling-progress", description="Shards of prompts sampled"
    )
    progress = ShardProgress("sampled", "candidates", len(plans), artifact)
    async with contextlib.AsyncExitStack() as stack:
        models = SamplingModels(stack, config, logger.info)
        spending = [Spending(run, "sampling", config.policy.model, config.cost, lambda: models.usage()["sampling"])]
        judge_model = classifier_section(config.judge)
        if config.pairs.refusal_contrast and judge_model is not None:  # what classifying prompts costs, at its price
            spending.append(
                Spending(
                    run,
                    "refusal-classifier",
                    judge_model.model,
                    config.cost,
                    lambda: models.usage().get("refusal-classifier", TokenUsage()),
                )
            )
        await run_shards(
            run,
            plans,
            lambda plan: plan.candidates,
            sample_shard_task,
            progress,
            config,
            models if runner is None else None,
            spending=spending,
            retry_delays_s=config.run.shard_retry_delays_s,
            runner=runner,
        )
    return progress.count


async def judge_shards(
    config: Config,
    judge: JudgeSetup,
    run: RunDirectory,
    plans: list[ShardPlan],
    runner: TaskRunner[Any] | None = None,
) -> int:
    """Pair the sampled candidates and judge each pair in both orders, a task run per unfinished shard."""
    logger = get_run_logger()
    artifact = await acreate_progress_artifact(progress=0.0, key="judging-progress", description="Shards judged")
    progress = ShardProgress("judged", "pairs", len(plans), artifact)
    async with contextlib.AsyncExitStack() as stack:
        models = JudgingModels(stack, config, judge, logger.info)
        members = judge.section.ensemble
        spending = Spending(
            run,
            "judging",
            ensemble_name([m.model for m in members]) if members else judge.section.model,
            config.cost,
            lambda: models.usage()["judging"],
        )
        await run_shards(
            run,
            plans,
            lambda plan: plan.judgments,
            judge_shard_task,
            progress,
            config,
            models if runner is None else None,
            spending=[spending],
            retry_delays_s=config.run.shard_retry_delays_s,
            runner=runner,
        )
        usage = models.usage()["judging"] + spending.elsewhere
        if usage.requests:
            logger.info(
                f"judge: {usage.requests} requests, {usage.prompt_tokens} prompt and "
                f"{usage.completion_tokens} completion tokens"
            )
    return progress.count


async def pair_shards(
    config: Config, run: RunDirectory, plans: list[ShardPlan], runner: TaskRunner[Any] | None = None
) -> int:
    """Pair the sampled candidates without judging them (for judging elsewhere: `rlaif judge export-requests`)."""
    artifact = await acreate_progress_artifact(progress=0.0, key="pairing-progress", description="Shards paired")
    progress = ShardProgress("paired", "pairs", len(plans), artifact)
    async with contextlib.AsyncExitStack() as stack:
        scorer = pair_scorer(stack, config)
        await run_shards(
            run,
            plans,
            lambda plan: plan.pairs,
            pair_shard_task,
            progress,
            config,
            scorer if runner is None else None,
            retry_delays_s=config.run.shard_retry_delays_s,
            runner=runner,
        )
    return progress.count


@task(name="route-for-review", cache_policy=NO_CACHE)
async def route_for_review(run: RunDirectory, plans: list[ShardPlan], config: Config) -> dict[str, int]:
    """Send `review.fraction` of the judged pairs to people: failures, a random audit, the least confident;
    with `review.target_agreement`, failures and the audit, and once they are labelled the pairs below the
    certified threshold. Returns how many were routed for each reason. Workers on one run route it one after
    the other (each gets the same result; the second adds nothing to the review queue)."""
    logger = get_run_logger()
    with await wait_run_claim(run, "route"):
        write_text_atomic(run.config, dump_config(config))
        with ReviewStore.open(config.review_db()) as store:
            calibrator = earlier_runs_calibrator(plans, config, store)  # review.calibration_runs, fixed routing
            judged, routed_by_reason = route_run(run, plans, config, calibrator)
            added = enqueue_routed(run, config, store)
            certification = await certify_run(run.root, config, store)
        if certification is not None:
            judged, routed_by_reason = routing_totals(run)
    if calibrator is not None:
        logger.info(
            f"least confident by the probability calibrated on {calibrator.examples} reviewed pairs of "
            f"review.calibration_runs {config.review.calibration_runs}"
        )
    logger.info(
        f"routed {sum(routed_by_reason.values())} of {judged} pairs to review ({run.review_queue}); "
        f"{added} new items in the review queue of run {config.run.name!r}"
    )
    if config.review.target_agreement is not None:
        logger.info(certification["message"] if certification else TWO_PHASE_WAIT)
    return routed_by_reason


@flow(name="rlaif-label")
async def label_pipeline(
    config: ConfigParameter = None,
    overrides: ConfigOverrides | None = None,
    judge: JudgeParameter = None,
    stop_after: Literal["pairs"] | None = None,
) -> dict[str, Any]:
    """Prompts to judged pairs, of which about `review.fraction` wait for people; writes report.json.

    `config`: a config file (default: the embedded demo config) or a Config; `overrides`: config keys to set;
    `judge`: the config's judge already loaded (in-process callers), else it is loaded here; `stop_after`
    "pairs": sample and pair, judge nothing (the pairs are then judged elsewhere and imported).
    """
    config = run_config(config, overrides, judge)
    with stored_run(config.run.stored_at(), config.run.directory()) as storage:  # a run on object storage
        return await label_run(config, judge, stop_after, storage)


async def label_run(
    config: Config, judge: JudgeSetup | None, stop_after: Literal["pairs"] | None, storage: RunStorage | None
) -> dict[str, Any]:
    """label_pipeline's work, in the run directory (the local copy of a stored run, `storage`)."""
    logger = get_run_logger()
    judge = judge or load_judge(config.judge)  # a broken template fails here, before any model is loaded
    for tier in config.judge.tiers:
        load_judge(tier)  # and an escalation tier's, not only once people have labelled the audit
    started = time.monotonic()
    run, plans, prompt_counts = _plans(config, judge, storage)
    if any(prompt_counts.as_dict().values()):
        logger.warning(f"prompts left out or changed while reading {config.prompts.path}: {prompt_counts.as_dict()}")
    try:
        with open_task_runner(config.run) as runner:
            await sample_shards(config, run, plans, runner)
            if stop_after == "pairs":
                paired = await pair_shards(config, run, plans, runner)
                return {
                    "run": config.run.name,
                    "status": "paired",
                    "pairs": paired,
                    "pair_files": [str(plan.pairs) for plan in plans],
                }
            await judge_shards(config, judge, run, plans, runner)
    except BudgetReached as reached:
        logger.error(str(reached))
        report = {"run": config.run.name, "status": "stopped_by_budget", "message": str(reached)}
        report["cost"] = ledger_totals(run, config.cost)
        write_json_atomic(run.report, report)
        return report
    routed_by_reason = await route_for_review(quote(run), quote(plans), quote(config))
    report = write_report(
        run,
        plans,
        routed_by_reason,
        config.sampling.n,
        {
            "run": config.run.name,
            "wall_s": round(time.monotonic() - started, 2),
            "judge": config.judge.model,
            "judge_mode": config.judge.mode,
            "judge_prompt": config.judge.prompt,
            "prompts_left_out_or_truncated": prompt_counts.as_dict(),
            "cost": ledger_totals(run, config.cost),
        },
        refusal_contrast=config.pairs.refusal_contrast,
        self_preference=self_preference_warning(config.policy.model, config.judge),
    )
    if report["bias"]["self_preference_warning"]:
        logger.warning(report["bias"]["self_preference_warning"])
    if report["prompts_short"]:
        logger.warning(
            f"{report['prompts_short']} of {report['prompts']} prompts have fewer than {config.sampling.n} distinct "
            "answers (so fewer pairs): their answers kept repeating through every resample round"
        )
    cost_rows = [
        {"stage": stage, "model": model, **{k: str(v) for k, v in row.items()}}
        for stage, models in report["cost"]["stages"].items()
        for model, row in models.items()
    ]
    if cost_rows:
        await acreate_table_artifact(table=cost_rows, key="cost-ledger", description="Tokens and money per stage")
    summary = [{"measure": key, "value": str(value)} for key, value in report.items()]
    await acreate_table_artifact(table=summary, key="label-summary", description=f"Labeling run {config.run.name}")
    await acreate_markdown_artifact(
        key="label-report",
        markdown=(
            f"# Labeling run `{config.run.name}`\n\n{report['pairs']} pairs judged; "
            f"{report['routed_to_review']} ({100 * report['review_fraction_actual']:.1f}%) routed to review.\n\n"
            f"Run directory: `{run.root}`"
        ),
    )
    logger.info(f"report: {run.report}")
    return report
