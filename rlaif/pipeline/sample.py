"""Sampling K distinct candidate answers per prompt from the policy model.

Seeds are derived from the run seed and the prompt's id, so a rerun with the same config asks for
exactly the same samples. An answer that repeats an earlier one exactly is dropped and asked for
again with a new seed, for up to `sampling.resample_rounds` rounds; a prompt that still has fewer
than K answers is reported (a model that never varies usually means the server does not sample).
A prompt whose request fails, in the first round or a later one, is reported as failed with none of its
answers kept, never turned into empty or fewer answers: what a prompt gets never depends on a passing
fault, and a rerun asks again with the same seeds. With `pairs.refusal_contrast`, each shard's candidates
also hold one steered refusal per prompt (`rlaif.pipeline.refusal_contrast`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rlaif.config import Config, SamplingSection
from rlaif.generation.factory import open_backend
from rlaif.generation.protocol import BackendError, GenerationBackend, GenerationRequest, Progress
from rlaif.pipeline.prompt_sources import run_prompts
from rlaif.pipeline.refusal_contrast import (
    SHOULD_REFUSE_FIELD,
    classify_prompts,
    contrast_kind,
    known_should_refuse,
    sample_contrast_candidates,
)
from rlaif.pipeline.shard_plan import ShardPlan
from rlaif.progress import progress_printer
from rlaif.run_files import count_lines, write_jsonl_atomic
from rlaif.schema import Candidate, PromptItem, content_id


@dataclass
class SamplingResult:
    candidates: list[Candidate] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # prompt id -> error message
    short: dict[str, int] = field(default_factory=dict)  # prompt id -> distinct answers, when fewer than n


def prompt_seed(run_seed: int, prompt_id: str) -> int:
    """A per-prompt seed that depends only on the run seed and the prompt."""
    return int(content_id("seed", run_seed, prompt_id)[:8], 16)


async def sample_candidates(
    backend: GenerationBackend,
    prompts: Sequence[PromptItem],
    sampling: SamplingSection,
    run_seed: int = 0,
    model_label: str | None = None,
    progress: Progress | None = None,
) -> SamplingResult:
    """`sampling.n` distinct candidates for each prompt.

    `model_label` is the model's name as the config gives it, recorded on each candidate
    (default: the name the backend uses).
    """
    model = model_label or backend.model_name
    found: dict[str, list[Candidate]] = {prompt.id: [] for prompt in prompts}
    result = SamplingResult()
    pending = list(prompts)
    for round_number in range(sampling.resample_rounds + 1):
        requests = [
            GenerationRequest(
                messages=prompt.chat(),
                n=sampling.n - len(found[prompt.id]),
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                # round r uses seeds [base + r*n, base + r*n + n): never a seed used before
                seed=prompt_seed(run_seed, prompt.id) + round_number * sampling.n,
            )
            for prompt in pending
        ]
        outputs = await backend.generate(requests, progress=progress if round_number == 0 else None)
        for prompt, output in zip(pending, outputs, strict=True):
            kept = found[prompt.id]
            if isinstance(output, BackendError):  # in any round: a rerun asks again for the same seeds
                result.failures[prompt.id] = str(output)
                continue
            for generation in output:
                candidate = Candidate(
                    prompt_id=prompt.id,
                    text=generation.text,
                    model=model,
                    sample_index=len(kept),
                    finish_reason=generation.finish_reason,
                    completion_tokens=generation.completion_tokens,
                )
                if all(candidate.id != other.id for other in kept):
                    kept.append(candidate)
        pending = [p for p in pending if p.id not in result.failures and len(found[p.id]) < sampling.n]
        if not pending:
            break
    for prompt in prompts:
        if prompt.id in result.failures:
            continue
        result.candidates.extend(found[prompt.id])
        if len(found[prompt.id]) < sampling.n:
            result.short[prompt.id] = len(found[prompt.id])
    return result


async def sample_shard(
    plan: ShardPlan,
    config: Config,
    policy: Callable[[], Awaitable[GenerationBackend]],
    classifier: Callable[[], Awaitable[GenerationBackend]] | None = None,
) -> tuple[int, bool]:
    """Candidates for one shard of prompts: (count, reused). A shard with a failed prompt is not written.

    With `pairs.refusal_contrast`, each prompt also gets its contrast candidate; `classifier` (the judge
    model) is opened only for prompts whose file does not say whether they should be refused.
    """
    if plan.candidates.is_file():
        return count_lines(plan.candidates), True
    prompts = plan.read_prompts()
    result = await sample_candidates(
        await policy(), prompts, config.sampling, run_seed=config.run.seed, model_label=config.policy.model
    )
    if result.failures:
        first = next(iter(result.failures.values()))
        raise BackendError(
            f"sampling shard {plan.index}: {len(result.failures)} of {plan.prompt_count} prompts failed: {first}"
        )
    candidates = result.candidates
    if config.pairs.refusal_contrast:
        candidates += await _contrast_candidates(prompts, config, policy, classifier)
    return write_jsonl_atomic(plan.candidates, candidates), False


async def _contrast_candidates(
    prompts: list[PromptItem],
    config: Config,
    policy: Callable[[], Awaitable[GenerationBackend]],
    classifier: Callable[[], Awaitable[GenerationBackend]] | None,
) -> list[Candidate]:
    should_refuse = {p.id: known_should_refuse(p) for p in prompts}
    unknown = [p for p in prompts if should_refuse[p.id] is None]
    if unknown:
        if classifier is None:
            raise BackendError(
                f"{len(unknown)} prompts have no {SHOULD_REFUSE_FIELD} field and no judge model can classify them"
            )
        should_refuse.update(await classify_prompts(await classifier(), unknown))
    kinds = {prompt_id: contrast_kind(value) for prompt_id, value in should_refuse.items() if value is not None}
    return await sample_contrast_candidates(
        await policy(),
        prompts,
        kinds,
        config.sampling,
        config.run.seed,
        config.policy.model,
        config.pairs.refusal_opening,
    )


async def sample_to_file(
    config: Config, out: Path, say: Callable[[str], None]
) -> tuple[list[PromptItem], SamplingResult]:
    """Read the configured prompts, sample from the configured policy, and write the candidates to `out`.

    The candidates of the prompts that succeeded are written even when others failed: the caller
    decides what a failure means.
    """
    prompts = list(run_prompts(config))  # less those held out for the evaluation (eval.held_out_fraction)
    say(f"sampling {config.sampling.n} answers for each of {len(prompts)} prompts from {config.policy.model}")
    async with open_backend(config.policy, where="policy", say=say) as backend:
        result = await sample_candidates(
            backend,
            prompts,
            config.sampling,
            run_seed=config.run.seed,
            model_label=config.policy.model,
            progress=progress_printer(len(prompts), "prompts sampled", say),
        )
        say(f"tokens: {backend.usage.prompt_tokens} prompt, {backend.usage.completion_tokens} completion")
    write_jsonl_atomic(out, result.candidates)
    return prompts, result
