"""An ensemble of judges: the mean p(A) of the members that succeeded, with a disagreement flag."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from rlaif.generation.protocol import TokenUsage
from rlaif.judges.combine import combine_judges, confidence_of, winner_of
from rlaif.judges.protocol import Judge
from rlaif.schema import Judgment, Pair, content_id


def ensemble_name(models: Sequence[str]) -> str:
    """The name an ensemble of judges goes by (on its judgments and in the cost ledger)."""
    return "ensemble[" + "|".join(models) + "]"


class EnsembleJudge:
    def __init__(self, members: Sequence[Judge]) -> None:
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two judges")
        self.members = list(members)
        self.name = ensemble_name([m.name for m in members])
        self.template_hash = content_id("ensemble", [m.template_hash for m in members])

    def usage(self) -> TokenUsage:
        return sum((member.usage() for member in self.members), TokenUsage())

    async def judge(self, pairs: Sequence[Pair]) -> list[Judgment]:
        per_member = await asyncio.gather(*(m.judge(pairs) for m in self.members))
        return [self._combine(pair, [results[i] for results in per_member]) for i, pair in enumerate(pairs)]

    def _combine(self, pair: Pair, judgments: list[Judgment]) -> Judgment:
        ok = [j for j in judgments if j.status == "ok" and j.p_a is not None]
        raw = tuple(f"{j.judge_model}: {out}" for j in judgments for out in j.raw_outputs)
        common = dict(
            pair_id=pair.id,
            raw_outputs=raw,
            judge_model=self.name,
            template_hash=self.template_hash,
            principle=next((j.principle for j in judgments if j.principle), None),
        )
        if not ok:
            status = "backend_error" if any(j.status == "backend_error" for j in judgments) else "parse_error"
            errors = "; ".join(f"{j.judge_model}: {j.error}" for j in judgments)
            return Judgment(winner=None, status=status, error=errors, **common)
        p_a, disagree = combine_judges([j.p_a for j in ok if j.p_a is not None])
        return Judgment(
            winner=winner_of(p_a),
            p_a=p_a,
            confidence=confidence_of(p_a),
            status="ok",
            order_disagreement=any(j.order_disagreement for j in ok),
            judge_disagreement=disagree or len(ok) < len(judgments),
            **common,
        )
