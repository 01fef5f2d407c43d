"""The cost ledger: the tokens (and money, with `cost.prices`) each stage of a run spent, and the budget that
stops the run cleanly before it would pass `cost.budget` or `cost.budget_tokens`.

Counted, not estimated: the tokens are the servers' usage fields (or the in-process backend's own counts),
as the backend adds them up. Each process working on a run keeps one entry per stage in RUN_DIR/ledger/,
rewritten atomically after every shard it finishes, so the ledger outlives the process; a crash loses at
most the shards in flight, which a rerun computes (and counts) again. A rerun that reuses finished shards
spends nothing on them.

Before each shard, what the run has spent (every entry, this process's live counts included) plus the
projected cost of the shards then in flight and this one (the mean of the shards this process finished in
the stage; the first shard of a stage always runs) is compared with the budget. The counts of a shard still
in flight are in both parts, so the check errs on the safe side: a run may stop one shard early, never late
by more than the shards in flight. When it would pass, the
stage stops taking shards (`BudgetReached`, one message saying what was spent, the budget and how to go
on): finished shards stay, and a rerun with a higher budget continues from them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlaif.config import CostSection
from rlaif.generation.protocol import TokenUsage
from rlaif.run_directory import RunDirectory
from rlaif.run_files import read_json, write_json_atomic


class BudgetReached(RuntimeError):
    """The next shard would take the run past its budget; the message says where it stands."""


def money(cost: CostSection, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """The price of some tokens of a model, or None when the config has no price for it."""
    price = cost.prices.get(model)
    if price is None:
        return None
    return (prompt_tokens * price.prompt_per_million + completion_tokens * price.completion_per_million) / 1e6


def ledger_folder(run: RunDirectory) -> Path:
    return run.root / "ledger"


def ledger_totals(run: RunDirectory, cost: CostSection) -> dict[str, Any]:
    """The run's spending by stage and model, and in all: requests, tokens, money (None where unpriced)."""
    stages: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(ledger_folder(run).glob("*.json")) if ledger_folder(run).is_dir() else []:
        entry = read_json(path)
        if not entry:
            continue
        row = stages.setdefault(entry["stage"], {}).setdefault(
            entry["model"], {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "shards": 0}
        )
        for key in ("requests", "prompt_tokens", "completion_tokens", "shards"):
            row[key] += entry[key]
    priced = True
    total_money = 0.0
    for models in stages.values():
        for model, row in models.items():
            row["money"] = money(cost, model, row["prompt_tokens"], row["completion_tokens"])
            priced = priced and row["money"] is not None
            total_money += row["money"] or 0.0
    return {
        "stages": stages,
        "tokens": sum(r["prompt_tokens"] + r["completion_tokens"] for m in stages.values() for r in m.values()),
        "money": total_money if priced and stages else None,
        "budget": cost.budget,
        "budget_tokens": cost.budget_tokens,
    }


class Spending:
    """One process's spending in one stage of a run: its ledger entry, kept up to date shard by shard, and the
    budget check before each shard. `usage` reads the stage's backend (or judge) counts, cumulative; what the
    stage's shards spent in other processes (on a cluster's workers) is added by `add_elsewhere`."""

    def __init__(self, run: RunDirectory, stage: str, model: str, cost: CostSection, usage: Callable[[], TokenUsage]):
        self.run, self.stage, self.model, self.cost, self.usage = run, stage, model, cost, usage
        self.path = ledger_folder(run) / f"{stage}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        self.shards = 0
        self.in_flight = 0
        self.projection: str | None = None  # said once, after the stage's first shard
        self.elsewhere = TokenUsage()

    def add_elsewhere(self, usage: TokenUsage) -> None:
        """Count what a shard's own models spent in another process."""
        self.elsewhere = self.elsewhere + usage

    def _entry(self) -> dict[str, Any]:
        usage = self.usage() + self.elsewhere
        return {
            "stage": self.stage,
            "model": self.model,
            "requests": usage.requests,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "shards": self.shards,
        }

    def before_shard(self) -> None:
        """Raise BudgetReached when this shard (with those in flight) would take the run past its budget."""
        if (self.cost.budget is not None or self.cost.budget_tokens is not None) and self.shards:
            spent = self._spent()
            mine = self._entry()
            per_shard_tokens = (mine["prompt_tokens"] + mine["completion_tokens"]) / self.shards
            per_shard_money = (
                money(self.cost, self.model, mine["prompt_tokens"], mine["completion_tokens"]) or 0.0
            ) / self.shards
            coming = self.in_flight + 1
            if (
                self.cost.budget_tokens is not None
                and spent["tokens"] + coming * per_shard_tokens > self.cost.budget_tokens
            ):
                raise BudgetReached(self._message(f"{spent['tokens']:,} tokens", f"{self.cost.budget_tokens:,} tokens"))
            if self.cost.budget is not None:
                if spent["money"] is None:
                    raise BudgetReached(
                        f"cost.budget is set but the run's models are not all in cost.prices ({self.model}?): "
                        "give their prices, or use cost.budget_tokens"
                    )
                if spent["money"] + coming * per_shard_money > self.cost.budget:
                    raise BudgetReached(self._message(f"{spent['money']:.4f}", f"{self.cost.budget:.4f}"))
        self.in_flight += 1

    def after_shard(self, shards_left: int) -> str | None:
        """Record a finished shard in the ledger; after the stage's first, return the projection for the rest."""
        self.in_flight -= 1
        self.shards += 1
        entry = self._entry()
        write_json_atomic(self.path, entry)
        if self.shards == 1:
            tokens = entry["prompt_tokens"] + entry["completion_tokens"]
            price = money(self.cost, self.model, entry["prompt_tokens"], entry["completion_tokens"])
            self.projection = (
                f"{self.stage}: the first shard took {tokens:,} tokens"
                + (f" ({price:.4f})" if price is not None else "")
                + f"; at that rate the shards left ({shards_left}) would take about {tokens * shards_left:,} more"
                + (f" ({price * shards_left:.4f})" if price is not None else "")
            )
            return self.projection
        return None

    def _spent(self) -> dict[str, Any]:
        """The whole run's spending, with this process's live counts in place of its last written entry."""
        if self.shards:
            write_json_atomic(self.path, self._entry())
        return ledger_totals(self.run, self.cost)

    def _message(self, spent: str, budget: str) -> str:
        return (
            f"budget reached: the run has spent {spent} of its budget of {budget}, and the next {self.stage} shard "
            f"would pass it. Finished shards are kept; run again with a higher cost.budget / cost.budget_tokens "
            "to continue"
        )
