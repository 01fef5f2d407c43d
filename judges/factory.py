"""Opening the judge a `JudgeSetup` describes, with its model backend open for as long as it is used."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from rlaif.config import JudgeSection
from rlaif.generation.factory import open_backend
from rlaif.judges.ensemble import EnsembleJudge
from rlaif.judges.imported import ImportedJudge
from rlaif.judges.pairwise import PairwiseLLMJudge
from rlaif.judges.protocol import Judge
from rlaif.judges.reward_model import RewardModelJudge, RewardModelScorer
from rlaif.judges.setup import JudgeSetup
from rlaif.judges.templates import JudgeTemplate
from rlaif.models import resolve_model

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def open_judge(setup: JudgeSetup, seed: int = 0, say: Callable[[str], None] = log.info) -> AsyncIterator[Judge]:
    """The judge, its models loaded (or endpoints opened) here and released when the block ends."""
    members = setup.members()
    if setup.section.ensemble:
        async with contextlib.AsyncExitStack() as stack:
            judges = [await stack.enter_async_context(_open_member(m, t, seed, say)) for m, t in members]
            yield EnsembleJudge(judges)
        return
    async with _open_member(*members[0], seed, say) as judge:
        yield judge


@contextlib.asynccontextmanager
async def _open_member(
    section: JudgeSection, template: JudgeTemplate | None, seed: int, say: Callable[[str], None]
) -> AsyncIterator[Judge]:
    if section.mode == "imported":
        yield ImportedJudge(Path(section.judgments or ""))
        return
    if template is None:  # reward_model mode
        yield RewardModelJudge(
            RewardModelScorer(resolve_model(section.model, say=say), device=section.device), name=section.model
        )
        return
    async with open_backend(section, where="judge", say=say) as backend:
        yield PairwiseLLMJudge(
            backend,
            template,
            section.mode,
            name=section.model,
            temperature=section.temperature,
            max_tokens=section.max_tokens,
            top_logprobs=section.top_logprobs,
            seed=seed,
            response_format=section.response_format,
        )
