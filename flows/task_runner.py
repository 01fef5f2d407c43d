"""Where a run's shard tasks run: in the flow's own process, or on a Dask or Ray cluster through Prefect's
task runners (prefect-dask, prefect-ray), so that spreading work over machines is the engine's job.

`local` awaits each shard task in the flow's event loop, with the models opened once for every shard. On
a cluster a shard task is pickled to a worker and opens its own models there (a model object cannot travel
between processes); the flow process still plans the shards, claims them, checks the budget and counts what
each shard's models spent. Dask reschedules the task of a worker that died on another worker (the task
run keeps its id); a shard is idempotent (its output is written whole or not at all), so that repeats at
most that shard's model calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

from prefect import Task
from prefect.task_runners import TaskRunner
from prefect.utilities.annotations import quote

from rlaif.config import ConfigError, RunSection


@contextlib.contextmanager
def open_task_runner(run: RunSection) -> Iterator[TaskRunner[Any] | None]:
    """The started task runner `run.task_runner` names, or None for `local` (tasks awaited in this process)."""
    if run.task_runner == "local":
        yield None
        return
    runner: TaskRunner[Any]
    if run.task_runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise ConfigError("run.task_runner dask needs prefect-dask: pip install -e '.[dask]'") from None
        runner = DaskTaskRunner(address=run.cluster_address) if run.cluster_address else DaskTaskRunner()
    else:
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise ConfigError("run.task_runner ray needs prefect-ray: pip install -e '.[ray]'") from None
        runner = RayTaskRunner(address=run.cluster_address) if run.cluster_address else RayTaskRunner()
    with runner:
        yield runner


def cluster_slots(runner: TaskRunner[Any] | None, default: int) -> int:
    """How many shards to keep in flight: `default` in the flow's process; on a cluster, one per worker thread
    (Dask) or CPU (Ray), and never fewer than `default`."""
    if runner is None:
        return default
    if hasattr(runner, "client"):  # DaskTaskRunner
        return max(default, sum(runner.client.nthreads().values()))
    import ray

    return max(default, int(ray.cluster_resources().get("CPU", default)))


async def run_task(runner: TaskRunner[Any] | None, step: Task[..., Any], *arguments: Any) -> Any:
    """`step(*arguments)` as a task run: awaited here, or submitted to the runner and waited for in a thread (the
    flow's event loop keeps serving the other shards). Arguments awaited here are quoted: Prefect would otherwise
    walk every field of a plan and a config looking for futures, on every task run (a submitted task's
    parameters cannot be: they reach its worker still wrapped)."""
    if runner is None:
        return await step(*(quote(argument) for argument in arguments))
    bound = inspect.signature(step.fn).bind(*arguments).arguments
    future = runner.submit(step, dict(bound))
    return await asyncio.to_thread(future.result)
