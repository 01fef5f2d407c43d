"""The judge of a run, loaded once: its config, every member's template, and the identity shard keys use.

A run builds its `JudgeSetup` once (`load_judge`), before any model is loaded, and hands it down to the
flow, the shard plan and `rlaif.judges.factory.open_judge`: a broken template fails there, naming its file
and line, and no step loads it again. The identity is what a judge's verdicts depend on (not how fast
it runs): each member's model, mode, settings and template hash, and the source code of this package,
whose every module (templates included: rendering changes what the judge sees) decides what a verdict is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rlaif.config import JudgeSection
from rlaif.judges.imported import ImportedJudge
from rlaif.judges.templates import JudgeTemplate, load_template
from rlaif.run_directory import source_hash

JUDGES_FOLDER = Path(__file__).parent
# The settings a verdict depends on; the others (concurrency, timeouts, batch size, ...) only change speed.
VERDICT_SETTINGS = {
    "backend",
    "model",
    "mode",
    "prompt",
    "temperature",
    "max_tokens",
    "top_logprobs",
    "continue_final_message",
}


def judge_code_hash(folder: Path = JUDGES_FOLDER) -> str:
    """A hash of the judges package's source files: a change to any of them changes every judge's identity."""
    return source_hash(*sorted(folder.glob("*.py")))


class JudgeSetup(BaseModel):
    """A run's judge, loaded: the config section, each member's template (None for a reward model) and the
    hash of the judging code. Built by `load_judge`; the templates are not part of its JSON form."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    section: JudgeSection
    templates: tuple[JudgeTemplate | None, ...] = Field(exclude=True, repr=False)
    code: str
    imported: tuple[str | None, ...] = ()  # each member's judgments-file hash (imported mode), else None

    def members(self) -> list[tuple[JudgeSection, JudgeTemplate | None]]:
        """(section, template) of each judge: the ensemble's members, or the judge itself."""
        return list(zip(self.section.ensemble or [self.section], self.templates, strict=True))

    def identity(self) -> dict[str, Any]:
        """What the judge's verdicts depend on, as JSON: shard keys hash it."""
        members = []
        for (member, template), judgments_hash in zip(self.members(), self.imported, strict=True):
            settings = member.model_dump(mode="json", include=VERDICT_SETTINGS)
            if template is not None:
                settings["template_hash"] = template.hash
            if judgments_hash is not None:
                settings["judgments_hash"] = judgments_hash
            members.append(settings)
        return {"members": members, "code": self.code}


def load_judge(section: JudgeSection, code: str | None = None) -> JudgeSetup:
    """Load every template the judge config names, once, and read every imported judgments file through; a
    broken one fails here, naming its file and line, before any model call."""
    members = section.ensemble or [section]
    templates = tuple(
        load_template(member.prompt, member.mode) if member.mode in ("verdict", "logprob") else None
        for member in members
    )
    imported = tuple(
        source_hash(ImportedJudge(Path(member.judgments or "")).path) if member.mode == "imported" else None
        for member in members
    )
    return JudgeSetup(
        section=section,
        templates=templates,
        code=code if code is not None else judge_code_hash(),
        imported=imported,
    )
