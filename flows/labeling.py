"""The Prefect flow of the labeling pipeline, rlaif-label: sample candidates, pair and judge them, route for review.

Thin wrappers over `rlaif.labeling`. One flow run, with coarse tasks: a task run per shard and step
(hundreds of items, with async concurrency inside), never one per item, and one for routing. The
steps are plain functions inside the flow, not subflows: a subflow run costs API calls, and the shard
plan is computed once. A rerun skips finished shards without starting a task run for them: their
files in the run directory are the cache, keyed by inputs, settings and the step's source code
(Prefect's own result cache would live outside the run directory and outlive it). Models open on
first use and stay open across the shards of a step.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Generic, TypeVar
from uuid import UUID

from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from flows.parameters import ConfigOverrides, ConfigParameter, run_config
from judges.factory import check_judge, open_judge
from judges.protocol import Judge
from judges.reward_model import RewardModelScorer
from rlaif.config import Config, dump_config
from rlaif.generation import GenerationBackend, open_backend
from rlaif.labeling import (
    ShardPlan,
    count_lines,
    enqueue_routed,
    judge_shard,
    pair_shard,
    plan_shards,
    route_run,
    sample_shard,
    write_report,
)
from rlaif.models import resolve_model
from rlaif.prompt_sources import PromptCounts, iter_configured_prompts
from rlaif.run_directory import RunDirectory
from rlaif.run_files import remove_partial_writes, write_text_atomic
from rlaif.shard_claims import claim_path, try_claim, wait_claim

T = TypeVar("T")


class OnFirstUse(Generic[T]):
    """A resource opened the first time it is needed and closed with the stack that owns it."""

    def __init__(self, stack: contextlib.AsyncExitStack, opener: Callable[[], AbstractAsyncContextManager[T]]) -> None:
        self._stack = stack
        self._opener = opener
        self._value: T | None = None
        self._opening = asyncio.Lock()  # shards in flight together open it once

    @property
    def value(self) -> T | None:
        """The resource if it has been opened, else None (never opens it)."""
        return self._value

    async def __call__(self) -> T:
        async with self._opening:
            if self._value is None:
                self._value = await self._stack.enter_async_context(self._opener())
        return self._value


@contextlib.asynccontextmanager
async def _opened(value: T) -> AsyncIterator[T]:
    yield value


def _plans(config: Config) -> tuple[RunDirectory, list[ShardPlan], PromptCounts]:
    """The run's shards, and what reading its prompts left out or truncated."""
    run = RunDirectory(config.run.directory())
    counts = PromptCounts()
    return run, plan_shards(run, config, iter_configured_prompts(config.prompts, counts)), counts


class ShardProgress:
    """Progress of a flow working through shards: a log line per shard it works on, one line for all the
    shards finished earlier, and a progress artifact updated at most every few seconds.

    Every log line and artifact update is a call to the Prefect API: on a rerun of 400 finished shards,
    one line per shard would cost more than the work.
    """

    def __init__(self, step: str, unit: str, total: int, artifact: UUID, every_s: float = 5.0) -> None:
        self.step, self.unit, self.total = step, unit, total
        self.artifact, self.every_s = artifact, every_s
        self.done = self.count = self.reused_shards = self.reused_count = 0
        self._updated = time.monotonic()

    async def shard_done(self, plan: ShardPlan, count: int, reused: bool, seconds: float) -> None:
        self.done += 1
        self.count += count
        if reused:
            self.reused_shards += 1
            self.reused_count += count
        else:
            self._say_reused()
            rate = f", {count / seconds:.1f} {self.unit}/s" if seconds > 0 else ""
            self._say(f"{self.step} shard {plan.index + 1}/{self.total}: {count} {self.unit} in {seconds:.1f} s{rate}")
        now = time.monotonic()
        if self.done == self.total or now - self._updated >= self.every_s:
            self._updated = now
            self._say_reused()
            await aupdate_progress_artifact(self.artifact, 100.0 * self.done / self.total)

    def _say_reused(self) -> None:
        if self.reused_shards:
            self._say(
                f"{self.step} {self.reused_shards} shards: {self.reused_count} {self.unit} "
                "(finished earlier or by another worker, reused)"
            )
            self.reused_shards = self.reused_count = 0

    def _say(self, line: str) -> None:
        get_run_logger().info(line)


@task(name="sample-shard", cache_policy=NO_CACHE)
async def sample_shard_task(plan: ShardPlan, config: Config, policy: OnFirstUse[GenerationBackend]) -> tuple[int, bool]:
    return await sample_shard(plan, config, policy)


@task(name="judge-shard", cache_policy=NO_CACHE)
async def judge_shard_task(
    plan: ShardPlan, config: Config, scorer: OnFirstUse[RewardModelScorer], judge: OnFirstUse[Judge]
) -> tuple[int, bool]:
    """Pairs of one shard, then their judgments: one task run, as pairing is quick next to judging."""
    await pair_shard(plan, config, scorer)
    return await judge_shard(plan, judge)


SHARDS_IN_FLIGHT = 2


async def _run_shards(
    run: RunDirectory,
    plans: list[ShardPlan],
    output: Callable[[ShardPlan], Path],
    step: Task[..., Any],
    progress: ShardProgress,
    *arguments: Any,
) -> None:
    """One task run per shard, two shards at a time; a shard whose output file exists is counted, not run.

    Two at a time: the next shard's requests fill the endpoint while the last, slowest requests of the
    previous one finish (one at a time, the endpoint would idle at every shard's tail). A crash repeats at
    most the shards in flight. Each shard is claimed first (`rlaif.shard_claims`): shards another worker on
    the same run holds are left to it and waited for at the end, then counted as done, or done here if that
    worker stopped without finishing them. Arguments are quoted: Prefect would otherwise walk every field of
    the plan and the config looking for futures, on every task run.
    """
    in_flight = asyncio.Semaphore(SHARDS_IN_FLIGHT)
    held_elsewhere: list[ShardPlan] = []

    async def one(plan: ShardPlan, wait: bool) -> None:
        async with in_flight:
            started = time.monotonic()
            if output(plan).is_file():
                count, reused = count_lines(output(plan)), True
            else:
                where = claim_path(run.root, output(plan))
                claim = await wait_claim(where) if wait else try_claim(where)
                if claim is None:
                    held_elsewhere.append(plan)
                    return
                with claim:
                    if output(plan).is_file():  # finished by another worker while this one waited
                        count, reused = count_lines(output(plan)), True
                    else:
                        remove_partial_writes(output(plan))  # of a worker killed while writing it
                        count, reused = await step(quote(plan), *(quote(argument) for argument in arguments))
            await progress.shard_done(plan, count, reused, time.monotonic() - started)

    async def all_of(shards: list[ShardPlan], wait: bool) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for plan in shards:
                    group.create_task(one(plan, wait))
        except ExceptionGroup as failed:  # the other shard in flight was cancelled; report the failure itself
            raise failed.exceptions[0] from None

    await all_of(plans, wait=False)
    if held_elsewhere:
        get_run_logger().info(f"waiting for {len(held_elsewhere)} shards that another worker on this run holds")
        await all_of(sorted(held_elsewhere, key=lambda plan: plan.index), wait=True)


async def sample_candidates(config: Config, run: RunDirectory, plans: list[ShardPlan]) -> int:
    """Sample `sampling.n` candidates per prompt, a task run per unfinished shard; returns the count."""
    logger = get_run_logger()
    artifact = await acreate_progress_artifact(
        progress=0.0, key="sampling-progress", description="Shards of prompts sampled"
    )
    progress = ShardProgress("sampled", "candidates", len(plans), artifact)
    async with contextlib.AsyncExitStack() as stack:
        policy = OnFirstUse(stack, lambda: open_backend(config.policy, where="policy", say=logger.info))
        await _run_shards(run, plans, lambda plan: plan.candidates, sample_shard_task, progress, config, policy)
    return progress.count


async def judge_pairs(config: Config, run: RunDirectory, plans: list[ShardPlan]) -> int:
    """Pair the sampled candidates and judge each pair in both orders, a task run per unfinished shard."""
    logger = get_run_logger()
    artifact = await acreate_progress_artifact(progress=0.0, key="judging-progress", description="Shards judged")
    progress = ShardProgress("judged", "pairs", len(plans), artifact)
    async with contextlib.AsyncExitStack() as stack:
        scorer = OnFirstUse(stack, lambda: _opened(RewardModelScorer(resolve_model(config.pairs.score_model or ""))))
        judge = OnFirstUse(stack, lambda: open_judge(config.judge, seed=config.run.seed, say=logger.info))
        await _run_shards(run, plans, lambda plan: plan.judgments, judge_shard_task, progress, config, scorer, judge)
        if judge.value is not None:
            usage = judge.value.usage()
            logger.info(
                f"judge: {usage.requests} requests, {usage.prompt_tokens} prompt and "
                f"{usage.completion_tokens} completion tokens"
            )
    return progress.count


@task(name="route-for-review", cache_policy=NO_CACHE)
async def route_for_review(run: RunDirectory, plans: list[ShardPlan], config: Config) -> dict[str, int]:
    """Send `review.fraction` of the judged pairs to people: failures, a random audit, the least confident.
    Returns how many were routed for each reason. Workers on one run route it one after the other (each
    gets the same result; the second adds nothing to the review queue)."""
    with await wait_claim(run.root / "claims" / "route.lock"):
        write_text_atomic(run.config, dump_config(config))
        judged, routed_by_reason = route_run(run, plans, config)
        added = enqueue_routed(run, config)
    get_run_logger().info(
        f"routed {sum(routed_by_reason.values())} of {judged} pairs to review ({run.review_queue}); "
        f"{added} new items in the review queue of run {config.run.name!r}"
    )
    return routed_by_reason


@flow(name="rlaif-label")
async def label_pipeline(config: ConfigParameter = None, overrides: ConfigOverrides | None = None) -> dict[str, Any]:
    """Prompts to judged pairs, of which about `review.fraction` wait for people; writes report.json.

    `config`: a config file (default: the embedded demo config) or a Config; `overrides`: config keys to set.
    """
    config = run_config(config, overrides)
    logger = get_run_logger()
    check_judge(config.judge)  # a broken template fails here, before any model is loaded
    started = time.monotonic()
    run, plans, prompt_counts = _plans(config)
    if any(prompt_counts.as_dict().values()):
        logger.warning(f"prompts left out or changed while reading {config.prompts.path}: {prompt_counts.as_dict()}")
    await sample_candidates(config, run, plans)
    await judge_pairs(config, run, plans)
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
        },
    )
    if report["prompts_short"]:
        logger.warning(
            f"{report['prompts_short']} of {report['prompts']} prompts have fewer than {config.sampling.n} distinct "
            "answers (so fewer pairs): their answers kept repeating through every resample round"
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
