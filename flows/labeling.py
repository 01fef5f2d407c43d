"""Prefect flows of the labeling pipeline: sample_candidates, judge_pairs, route_for_review, and rlaif-label.

Thin wrappers over `rlaif.labeling`. Tasks are coarse: one task run per shard (hundreds of items,
with async concurrency inside), never one per item. A rerun skips finished shards: their files in
the run directory are the cache, keyed by inputs, settings and the step's source code (Prefect's own
result cache would live outside the run directory and outlive it). Models open on first use and
stay open across the shards of a flow.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from flows.parameters import ConfigOverrides, run_config
from judges.factory import check_judge, open_judge
from judges.protocol import Judge
from judges.reward_model import RewardModelScorer
from rlaif.config import Config, dump_config
from rlaif.generation import GenerationBackend, open_backend
from rlaif.labeling import (
    ShardPlan,
    enqueue_routed,
    judge_shard,
    pair_shard,
    plan_shards,
    route_run,
    sample_shard,
    write_report,
)
from rlaif.models import resolve_model
from rlaif.prompt_sources import load_configured_prompts
from rlaif.routing import RoutingDecision
from rlaif.run_directory import RunDirectory, read_records
from rlaif.run_files import write_text_atomic

T = TypeVar("T")


class OnFirstUse(Generic[T]):
    """A resource opened the first time it is needed and closed with the stack that owns it."""

    def __init__(self, stack: contextlib.AsyncExitStack, opener: Callable[[], AbstractAsyncContextManager[T]]) -> None:
        self._stack = stack
        self._opener = opener
        self._value: T | None = None

    @property
    def value(self) -> T | None:
        """The resource if it has been opened, else None (never opens it)."""
        return self._value

    async def __call__(self) -> T:
        if self._value is None:
            self._value = await self._stack.enter_async_context(self._opener())
        return self._value


@contextlib.asynccontextmanager
async def _opened(value: T) -> AsyncIterator[T]:
    yield value


def _plans(config: Config) -> tuple[RunDirectory, list[ShardPlan]]:
    run = RunDirectory(config.run.directory())
    prompts = load_configured_prompts(config.prompts)
    return run, plan_shards(run, config, prompts)


def _shard_line(step: str, plan: ShardPlan, total: int, count: int, reused: bool, seconds: float, unit: str) -> str:
    if reused:
        return f"{step} shard {plan.index + 1}/{total}: {count} {unit} (finished earlier, reused)"
    rate = f", {count / seconds:.1f} {unit}/s" if seconds > 0 else ""
    return f"{step} shard {plan.index + 1}/{total}: {count} {unit} in {seconds:.1f} s{rate}"


@task(name="sample-shard", cache_policy=NO_CACHE)
async def sample_shard_task(plan: ShardPlan, config: Config, policy: OnFirstUse[GenerationBackend]) -> tuple[int, bool]:
    return await sample_shard(plan, config, policy)


@task(name="pair-shard", cache_policy=NO_CACHE)
async def pair_shard_task(plan: ShardPlan, config: Config, scorer: OnFirstUse[RewardModelScorer]) -> tuple[int, bool]:
    return await pair_shard(plan, config, scorer)


@task(name="judge-shard", cache_policy=NO_CACHE)
async def judge_shard_task(plan: ShardPlan, judge: OnFirstUse[Judge]) -> tuple[int, bool]:
    return await judge_shard(plan, judge)


@flow(name="sample_candidates")
async def sample_candidates_flow(config: Config) -> dict[str, int]:
    """Sample `sampling.n` candidates per prompt, shard by shard."""
    logger = get_run_logger()
    run, plans = _plans(config)
    progress = await acreate_progress_artifact(
        progress=0.0, key="sampling-progress", description="Shards of prompts sampled"
    )
    total = 0
    async with contextlib.AsyncExitStack() as stack:
        policy = OnFirstUse(stack, lambda: open_backend(config.policy, where="policy", say=logger.info))
        for done, plan in enumerate(plans, start=1):
            started = time.monotonic()
            count, reused = await sample_shard_task(plan, config, policy)
            total += count
            logger.info(
                _shard_line("sampled", plan, len(plans), count, reused, time.monotonic() - started, "candidates")
            )
            await aupdate_progress_artifact(progress, 100.0 * done / len(plans))
    return {"shards": len(plans), "candidates": total}


@flow(name="judge_pairs")
async def judge_pairs_flow(config: Config) -> dict[str, int]:
    """Build pairs from the sampled candidates and judge each in both orders, shard by shard."""
    logger = get_run_logger()
    check_judge(config.judge)
    run, plans = _plans(config)
    missing = [p.candidates for p in plans if not p.candidates.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} candidate shards are missing (first: {missing[0]}); run sample_candidates first"
        )
    progress = await acreate_progress_artifact(progress=0.0, key="judging-progress", description="Shards judged")
    judged = 0
    async with contextlib.AsyncExitStack() as stack:
        scorer = OnFirstUse(stack, lambda: _opened(RewardModelScorer(resolve_model(config.pairs.score_model or ""))))
        judge = OnFirstUse(stack, lambda: open_judge(config.judge, seed=config.run.seed, say=logger.info))
        for done, plan in enumerate(plans, start=1):
            await pair_shard_task(plan, config, scorer)
            started = time.monotonic()
            count, reused = await judge_shard_task(plan, judge)
            judged += count
            logger.info(_shard_line("judged", plan, len(plans), count, reused, time.monotonic() - started, "pairs"))
            await aupdate_progress_artifact(progress, 100.0 * done / len(plans))
        if judge.value is not None:
            usage = judge.value.usage()
            logger.info(
                f"judge: {usage.requests} requests, {usage.prompt_tokens} prompt and "
                f"{usage.completion_tokens} completion tokens"
            )
    return {"shards": len(plans), "judgments": judged}


@flow(name="route_for_review")
async def route_for_review_flow(config: Config) -> dict[str, int]:
    """Send `review.fraction` of the judged pairs to people: failures, a random audit, the least confident."""
    logger = get_run_logger()
    run, plans = _plans(config)
    write_text_atomic(run.config, dump_config(config))
    decisions = route_run(run, plans, config)
    routed = sum(1 for d in decisions if d.decision == "review")
    added = enqueue_routed(run, config)
    logger.info(
        f"routed {routed} of {len(decisions)} pairs to review ({run.review_queue}); "
        f"{added} new items in the review queue of run {config.run.name!r}"
    )
    return {"pairs": len(decisions), "routed": routed, "enqueued": added}


@flow(name="rlaif-label")
async def label_pipeline(
    config: Config | str | None = None, overrides: ConfigOverrides | None = None
) -> dict[str, Any]:
    """Prompts to judged pairs, of which about `review.fraction` wait for people; writes report.json.

    `config`: a config file (default: the embedded demo config) or a Config; `overrides`: config keys to set.
    """
    config = run_config(config, overrides)
    logger = get_run_logger()
    check_judge(config.judge)  # a broken template fails here, before any model is loaded
    started = time.monotonic()
    await sample_candidates_flow(config)
    await judge_pairs_flow(config)
    await route_for_review_flow(config)
    run, plans = _plans(config)
    decisions = list(read_records(run.routing, RoutingDecision))
    report = write_report(
        run,
        plans,
        decisions,
        {
            "run": config.run.name,
            "wall_s": round(time.monotonic() - started, 2),
            "judge": config.judge.model,
            "judge_mode": config.judge.mode,
            "judge_prompt": config.judge.prompt,
        },
    )
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
