"""Running a step over a run's shards in Prefect: a task run per unfinished shard, two at a time, with
progress in the log and in a progress artifact; and models opened on first use, once, for all shards.

A shard whose output file exists gets no task run at all. The task runs in the flow's process or on a
cluster (`rlaif.flows.task_runner`). Workers on one run directory split its shards through claims
(`rlaif.flows.shard_claims`). A shard task that fails with an error of the machine
or its storage is run again by Prefect (`run.shard_retry_delays_s`); a shard's steps are idempotent (their
output is written whole or not at all), so a retry repeats at most that shard's model calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Generic, TypeVar
from uuid import UUID

from prefect import State, Task, get_run_logger
from prefect.artifacts import aupdate_progress_artifact
from prefect.client.schemas.objects import TaskRun
from prefect.task_runners import TaskRunner

from rlaif.config import Config
from rlaif.flows.shard_claims import claim_name, try_run_claim, wait_run_claim
from rlaif.flows.task_runner import cluster_slots, run_task
from rlaif.generation.protocol import TokenUsage
from rlaif.pipeline.cost_ledger import BudgetReached, Spending
from rlaif.pipeline.shard_plan import ShardPlan
from rlaif.run_directory import RunDirectory
from rlaif.run_files import count_lines, remove_partial_writes
from rlaif.run_storage import RunStorage

T = TypeVar("T")

# What a shard task returns: the items it wrote (or found), whether they were there already, and what the
# models it opened itself spent, by cost-ledger stage (empty when it used models the flow opened).
ShardOutcome = tuple[int, bool, dict[str, TokenUsage]]


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
async def opened(value: T) -> AsyncIterator[T]:
    """A value made already, as the context manager `OnFirstUse` opens."""
    yield value


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


SHARDS_IN_FLIGHT = 2


def machine_or_storage_error(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's retry condition for shard tasks: run a shard again only after an OSError (a full or
    unreachable disk, a network file system or object store that dropped a request), which may pass. A
    stopped endpoint (EndpointDown: its message says to rerun once it is back), the budget or a bug would fail
    the same way again, and at once is better."""
    return isinstance(state.data, OSError)


async def run_shards(
    run: RunDirectory,
    plans: list[ShardPlan],
    output: Callable[[ShardPlan], Path],
    step: Task[..., Any],
    progress: ShardProgress,
    *arguments: Any,
    spending: Sequence[Spending] = (),
    retry_delays_s: Sequence[float] = (),
    runner: TaskRunner[Any] | None = None,
) -> None:
    """One task run per shard, two shards at a time (on a cluster, one per worker thread); a shard whose
    output file exists is counted, not run. `step` returns a ShardOutcome; `runner` runs it (None: here).

    Two at a time: the next shard's requests fill the endpoint while the last, slowest requests of the
    previous one finish (one at a time, the endpoint would idle at every shard's tail). A crash repeats at
    most the shards in flight. Each shard is claimed first (`rlaif.flows.shard_claims`): shards another worker on
    the same run holds are left to it and waited for at the end, then counted as done, or done here if that
    worker stopped without finishing them. With `spending` (one per model the step
    uses), each shard is checked against the run's budget before it starts and recorded in the cost ledger
    when it ends; once the budget is reached the shards in flight finish, no other starts, and BudgetReached
    is raised at the end. `retry_delays_s`: a shard failing with an OSError runs again after each delay in turn.
    """
    if retry_delays_s:
        step = step.with_options(
            retries=len(retry_delays_s),
            retry_delay_seconds=list(retry_delays_s),
            retry_condition_fn=machine_or_storage_error,
        )
    in_flight = asyncio.Semaphore(cluster_slots(runner, SHARDS_IN_FLIGHT))
    held_elsewhere: list[ShardPlan] = []
    stopped: list[BudgetReached] = []  # the budget was reached: no new shard starts

    async def one(plan: ShardPlan, wait: bool) -> None:
        async with in_flight:
            started = time.monotonic()
            if output(plan).is_file():
                count, reused = count_lines(output(plan)), True
            else:
                name = claim_name(output(plan))
                claim = await wait_run_claim(run, name) if wait else await asyncio.to_thread(try_run_claim, run, name)
                if claim is None:
                    held_elsewhere.append(plan)
                    return
                with claim:
                    if not output(plan).is_file():  # a stored run: finished elsewhere since its pull?
                        await fetch_stored(run, plan)
                    if output(plan).is_file():  # finished by another worker while this one waited
                        count, reused = count_lines(output(plan)), True
                    else:
                        if stopped or not _within_budget(spending, stopped):
                            return
                        remove_partial_writes(output(plan))  # of a worker killed while writing it
                        if run.storage is not None and runner is not None:  # its inputs, for the worker
                            await asyncio.to_thread(run.storage.put_new, plan.files())
                        count, reused, spent = await run_task(runner, step, plan, *arguments)
                        if run.storage is not None:  # at once: workers elsewhere skip it from now on
                            await fetch_stored(run, plan)  # what a cluster's worker wrote
                            await asyncio.to_thread(run.storage.put_new, plan.files())
                        for ledger in spending:
                            ledger.add_elsewhere(spent.get(ledger.stage, TokenUsage()))
                            projection = ledger.after_shard(len(plans) - progress.done - 1)
                            if projection:
                                get_run_logger().info(projection)
            await progress.shard_done(plan, count, reused, time.monotonic() - started)

    async def all_of(shards: list[ShardPlan], wait: bool) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for plan in shards:
                    group.create_task(one(plan, wait))
        except ExceptionGroup as failed:  # the other shard in flight was cancelled; report the failure itself
            raise failed.exceptions[0] from None

    await all_of(plans, wait=False)
    if held_elsewhere and not stopped:
        get_run_logger().info(f"waiting for {len(held_elsewhere)} shards that another worker on this run holds")
        await all_of(sorted(held_elsewhere, key=lambda plan: plan.index), wait=True)
    if stopped:
        raise stopped[0]


async def fetch_stored(run: RunDirectory, plan: ShardPlan) -> None:
    """For a stored run, the shard's files that a worker elsewhere has written and this copy lacks."""
    if run.storage is not None:
        await asyncio.to_thread(run.storage.fetch_missing, plan.files())


@contextlib.contextmanager
def shard_on_worker(config: Config, plan: ShardPlan) -> Iterator[ShardPlan]:
    """A shard task on a cluster's worker: the shard as this machine has it. For a stored run, in the worker's
    own local copy, its input files fetched from the store first and what the step wrote uploaded after."""
    stored = config.run.stored_at()
    if stored is None:  # a run directory the workers share
        yield plan
        return
    storage = RunStorage(stored, config.run.directory())
    here = plan.moved_to(storage.local)
    storage.fetch_missing(here.files())
    yield here
    storage.put_new(here.files())


def _within_budget(spending: Sequence[Spending], stopped: list[BudgetReached]) -> bool:
    """Whether the next shard fits the run's budget; when it does not, the reason is kept in `stopped` (the
    shards in flight finish, no new one starts)."""
    try:
        for ledger in spending:
            ledger.before_shard()
    except BudgetReached as reached:
        stopped.append(reached)
        return False
    return True
