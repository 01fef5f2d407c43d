"""Escalation tiers (`judge.tiers`): the pairs one tier is not certified on, judged by the next tier's judge.

A tier judges the pairs the tiers before it passed on, and the run's audit sample (which people labelled),
so that it is calibrated and certified on its own (`rlaif.pipeline.certify`). Its judgments are written
once, under RUN_DIR/tiers/ and keyed by the judge's identity and the pairs, so a rerun reuses them and a
crash loses at most the tier in flight. What it spends goes to the cost ledger as stage `escalation-<tier>`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

from rlaif.config import Config, JudgeSection
from rlaif.generation.protocol import TokenUsage
from rlaif.judges.ensemble import ensemble_name
from rlaif.judges.factory import open_judge
from rlaif.judges.protocol import Judge
from rlaif.judges.setup import load_judge
from rlaif.pipeline.cost_ledger import Spending
from rlaif.pipeline.judge_step import judge_shard
from rlaif.pipeline.shard_plan import JudgedShard
from rlaif.run_directory import RunDirectory, read_records
from rlaif.run_files import write_jsonl_atomic
from rlaif.schema import Judgment, Pair, content_id

log = logging.getLogger(__name__)


def tier_name(section: JudgeSection) -> str:
    """The name a tier's judge goes by (on its judgments and in the cost ledger)."""
    return ensemble_name([m.model for m in section.ensemble]) if section.ensemble else section.model


def tier_stage(tier: int) -> str:
    """The cost ledger's stage of a tier: `judging` for the run's judge (tier 0), `escalation-<tier>` after it."""
    return "judging" if tier == 0 else f"escalation-{tier}"


async def judge_tier(run: RunDirectory, config: Config, tier: int, pairs: Sequence[Pair]) -> Path:
    """The judgments of `pairs` by tier `tier` (1 is `judge.tiers[0]`), both orders each: their file, written
    here unless a run before wrote it for the same judge and pairs."""
    section = config.judge.tiers[tier - 1]
    setup = load_judge(section)
    key = content_id("tier", tier, setup.identity(), [pair.id for pair in pairs], config.run.seed)
    shard = JudgedShard(
        tier, run.root / "tiers" / f"{tier}-pairs-{key}.jsonl", run.root / "tiers" / f"{tier}-judgments-{key}.jsonl"
    )
    if shard.judgments.is_file():
        return shard.judgments
    write_jsonl_atomic(shard.pairs, pairs)
    async with contextlib.AsyncExitStack() as stack:
        opened: list[Judge] = []

        async def judge() -> Judge:
            if not opened:
                opened.append(await stack.enter_async_context(open_judge(setup, seed=config.run.seed, say=log.info)))
            return opened[0]

        spending = Spending(
            run,
            tier_stage(tier),
            tier_name(section),
            config.cost,
            lambda: opened[0].usage() if opened else TokenUsage(),
        )
        spending.before_shard()
        log.info(f"escalation: tier {tier} ({tier_name(section)}) judges {len(pairs)} pairs")
        await judge_shard(shard, judge)
        spending.after_shard(0)
    return shard.judgments


def read_tier_judgments(path: Path) -> dict[str, Judgment]:
    """A tier's judgments by pair id."""
    return {judgment.pair_id: judgment for judgment in read_records(path, Judgment)}
