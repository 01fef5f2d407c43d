"""The judge step: one shard of pairs judged in both orders, failures kept with their status.

The judge is built once per run (`rlaif.judges.setup`) and opened on first use by the caller, so a rerun
whose judgment shards are all finished loads no model.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from rlaif.judges.protocol import Judge
from rlaif.pipeline.shard_plan import JudgedShard, ShardPlan
from rlaif.run_directory import read_records
from rlaif.run_files import count_lines, write_jsonl_atomic
from rlaif.schema import Pair


async def judge_shard(plan: ShardPlan | JudgedShard, judge: Callable[[], Awaitable[Judge]]) -> tuple[int, bool]:
    """Judgments of one shard of pairs, both orders each, failures kept with their status: (count, reused)."""
    if plan.judgments.is_file():
        return count_lines(plan.judgments), True
    shard_pairs = list(read_records(plan.pairs, Pair))
    judgments = await (await judge()).judge(shard_pairs) if shard_pairs else []
    return write_jsonl_atomic(plan.judgments, judgments), False
