"""The shard plan: a run's prompts cut into shards, and the file each step writes for each shard.

A shard's key hashes everything its content depends on: its input, the settings that matter, and the
source code of the step that makes it (the judge's identity for judgments, `rlaif.judges.setup`). Keys
chain: the pairs key depends on the candidates key, the judgments key on the pairs key, so a change
upstream invalidates everything downstream. The steps that fill the files (`sample`, `pair`,
`judge_step`) read the plan; this module reads their source files only to hash them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaif.config import Config
from rlaif.judges.calibration import Calibrator
from rlaif.pipeline.refusal_contrast import classifier_section
from rlaif.run_directory import RunDirectory, read_manifest, read_records, source_hash
from rlaif.run_files import write_jsonl_atomic
from rlaif.schema import Judgment, Pair, PromptItem, content_id

_STEPS = Path(__file__).parent
SAMPLING_CODE = source_hash(_STEPS / "sample.py")
CONTRAST_CODE = source_hash(_STEPS / "refusal_contrast.py")
PAIRING_CODE = source_hash(_STEPS / "pair.py")


@dataclass(frozen=True)
class ShardPlan:
    """One shard of the run: how many prompts it has and the files each step writes for it.

    The shard's prompts are in its own file, so that a run of any size is planned without holding its
    prompts in memory.
    """

    index: int
    prompt_count: int
    prompts: Path
    candidates: Path
    pairs: Path
    judgments: Path

    def read_prompts(self) -> list[PromptItem]:
        return list(read_records(self.prompts, PromptItem))

    def files(self) -> list[Path]:
        """Every file the steps read or write for the shard."""
        return [self.prompts, self.candidates, self.pairs, self.judgments]

    def moved_to(self, root: Path) -> ShardPlan:
        """The same shard in another copy of the run directory (a cluster worker's copy of a stored run)."""
        here = self.prompts.parent.parent  # <run>/prompts/<shard file>

        def move(path: Path) -> Path:
            return root / path.relative_to(here)

        return dataclasses.replace(
            self,
            prompts=move(self.prompts),
            candidates=move(self.candidates),
            pairs=move(self.pairs),
            judgments=move(self.judgments),
        )


def plan_shards(
    run: RunDirectory, config: Config, prompts: Iterable[PromptItem], judge_identity: dict[str, Any]
) -> list[ShardPlan]:
    """The shards of a run, from the config, the prompts (read once, in order) and the judge's identity.

    Each shard's prompts are written to its prompts file unless it is there already; nothing else is read
    or written.
    """
    per_shard = config.run.prompts_per_shard
    plans = []
    for index, shard in enumerate(_chunks(prompts, per_shard)):
        ids = [p.id for p in shard]
        prompts_file = run.shard("prompts", index, content_id("prompts", ids))
        if not prompts_file.is_file():
            write_jsonl_atomic(prompts_file, shard)
        candidates_key = content_id(
            "candidates",
            ids,
            config.policy.model_dump(include={"backend", "model"}),
            config.sampling.model_dump(),
            config.run.seed,
            SAMPLING_CODE,
            *_contrast_inputs(config),
        )
        pairs_key = content_id("pairs", candidates_key, config.pairs.model_dump(), config.run.seed, PAIRING_CODE)
        judgments_key = content_id("judgments", pairs_key, judge_identity, config.run.seed)
        plans.append(
            ShardPlan(
                index=index,
                prompt_count=len(shard),
                prompts=prompts_file,
                candidates=run.shard("candidates", index, candidates_key),
                pairs=run.shard("pairs", index, pairs_key),
                judgments=run.shard("judgments", index, judgments_key),
            )
        )
    return plans


def _contrast_inputs(config: Config) -> list[Any]:
    """What the refusal-contrast candidates depend on besides the sampling inputs: its code and the model that
    classifies prompts (nothing when it is off, so runs without it keep their keys)."""
    if not config.pairs.refusal_contrast:
        return []
    classifier = classifier_section(config.judge)
    return [CONTRAST_CODE, classifier.model_dump(include={"backend", "model"}) if classifier else None]


def _chunks(items: Iterable[PromptItem], size: int) -> Iterator[list[PromptItem]]:
    chunk: list[PromptItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass(frozen=True)
class JudgedShard:
    """A judged shard's files, as the run's manifest lists them: what the steps after judging read."""

    index: int
    pairs: Path
    judgments: Path


def judged_shards(run: RunDirectory) -> list[JudgedShard]:
    """The run's judged shards from its manifest (written when the run was routed)."""
    return [
        JudgedShard(shard["index"], run.root / shard["pairs"], run.root / shard["judgments"])
        for shard in read_manifest(run)["shards"]
    ]


def run_judgments(plans: Sequence[ShardPlan | JudgedShard]) -> Iterator[Judgment]:
    """Every judgment of the run, shard by shard (streamed)."""
    for plan in plans:
        yield from read_records(plan.judgments, Judgment)


def scored_judgments(
    shards: Sequence[ShardPlan | JudgedShard], calibrator: Calibrator, skip: Collection[str] = ()
) -> Iterator[tuple[float, Judgment, Pair]]:
    """(calibrated probability that people agree with the judge, judgment, pair) of every judged pair of the
    shards, shard by shard in pair order; pairs whose id is in `skip` are left out."""
    for shard in shards:
        judgments = {j.pair_id: j for j in read_records(shard.judgments, Judgment) if j.pair_id not in skip}
        judged = [(p, judgments[p.id]) for p in read_records(shard.pairs, Pair) if p.id in judgments]
        for probability, (pair, judgment) in zip(calibrator.probabilities(judged), judged, strict=True):
            yield probability, judgment, pair


def judge_identity(shards: Sequence[ShardPlan | JudgedShard]) -> tuple[str, str] | None:
    """The run's judge model and template hash, from its first judgment; None when nothing was judged."""
    return next(((j.judge_model, j.template_hash) for j in run_judgments(shards)), None)
