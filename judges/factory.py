"""Building the judge a config describes, with its model backend opened for as long as it is used."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from judges.ensemble import EnsembleJudge
from judges.pairwise import PairwiseLLMJudge
from judges.protocol import Judge
from judges.reward_model import RewardModelJudge, RewardModelScorer
from judges.templates import load_template
from rlaif.config import JudgeSection
from rlaif.generation import open_backend
from rlaif.models import resolve_model

log = logging.getLogger(__name__)


def judge_identity(section: JudgeSection) -> list[dict[str, object]]:
    """What a judge's verdicts depend on (not how fast it runs): models, modes, settings, template hashes."""
    identity = []
    for member in section.ensemble or [section]:
        settings = member.model_dump(
            include={
                "backend",
                "model",
                "mode",
                "prompt",
                "temperature",
                "max_tokens",
                "top_logprobs",
                "continue_final_message",
            }
        )
        if member.mode != "reward_model":
            settings["template_hash"] = load_template(member.prompt, member.mode).hash
        identity.append(settings)
    return identity


def check_judge(section: JudgeSection) -> None:
    """Load every template the judge config names, so a broken one fails before any model call."""
    for member in section.ensemble or [section]:
        if member.mode != "reward_model":
            load_template(member.prompt, member.mode)


@contextlib.asynccontextmanager
async def open_judge(
    section: JudgeSection, seed: int = 0, say: Callable[[str], None] = log.info
) -> AsyncIterator[Judge]:
    if section.ensemble:
        async with contextlib.AsyncExitStack() as stack:
            members = [await stack.enter_async_context(open_judge(m, seed, say)) for m in section.ensemble]
            yield EnsembleJudge(members)
        return
    if section.mode == "reward_model":
        yield RewardModelJudge(
            RewardModelScorer(resolve_model(section.model, say=say), device=section.device), name=section.model
        )
        return
    template = load_template(section.prompt, section.mode)  # before the model is loaded
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
