"""Imported judgments: verdicts made elsewhere enter the pipeline as a judge (`judge.mode: imported`).

A provider's batch API, `vllm run-batch`, another tool or an earlier labeling system judged the pairs; the
file of its verdicts then gets the same combining, routing, calibration, certification and merge as a judge
the pipeline runs itself. The format is JSON lines, one judgment a line:

    {"pair_id": "3f2a...", "judge": "gpt-4o", "template": "helpfulness-v2", "verdicts": ["a", "b"]}
    {"prompt": "Name a prime.", "answer_a": "7", "answer_b": "8", "judge": "gpt-4o", "p_a": 0.92}

- the pair: `pair_id` (a pipeline pair's id), or `prompt` (text, or a list of {role, content} messages) with
  `answer_a` and `answer_b`; a pair whose answers are stored the other way round is matched too;
- `judge` (required): the judging model, one per file; `template`: a name for its prompt (default
  "imported"); the two make the judge's identity, which calibration keys on;
- the verdict: `verdicts`, one or two of "a", "b", "tie" or null (unreadable), naming the better answer of
  the pair as stored, as judged with A shown first and then with B shown first; or `p_a`, the probability
  that A is better, in [0, 1];
- `reasons` (optional): the judge's raw outputs, kept on the judgment.

A pair may appear twice only with the same verdict. The whole file is read and checked when the judge is
loaded, so a bad line stops the run before anything is judged, with an error naming the file and line:
nothing is half-imported. A pipeline pair the file has no verdict for becomes a failed judgment (it goes to
people), never a silent label.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlaif.generation.protocol import TokenUsage
from rlaif.judges.combine import combine_judges, confidence_of, winner_of
from rlaif.run_files import read_jsonl
from rlaif.schema import Judgment, Message, Pair, content_id

ImportedVerdict = Literal["a", "b", "tie"] | None
_P_A = {"a": 1.0, "b": 0.0, "tie": 0.5}


class JudgmentsFileError(ValueError):
    """A judgments file that cannot be imported; the message names the file and line."""


class ImportedJudgment(BaseModel):
    """One line of a judgments file (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pair_id: str | None = None
    prompt: str | list[Message] | None = None
    answer_a: str | None = None
    answer_b: str | None = None
    judge: str = Field(min_length=1)
    template: str = Field("imported", min_length=1)
    verdicts: list[ImportedVerdict] | None = Field(None, min_length=1, max_length=2)
    p_a: float | None = Field(None, ge=0.0, le=1.0)
    reasons: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_pair_one_verdict(self) -> ImportedJudgment:
        by_content = (self.prompt, self.answer_a, self.answer_b)
        if self.pair_id is None and any(part is None for part in by_content):
            raise ValueError("give pair_id, or prompt with answer_a and answer_b")
        if self.pair_id is not None and any(part is not None for part in by_content):
            raise ValueError("give pair_id or prompt/answer_a/answer_b, not both")
        if (self.verdicts is None) == (self.p_a is None):
            raise ValueError("give exactly one of verdicts and p_a")
        return self

    def keys(self) -> list[tuple[str, bool]]:
        """(key, swapped): how a pipeline pair finds this line, by id or by content in either answer order."""
        if self.pair_id is not None:
            return [(self.pair_id, False)]
        prompt = self.prompt if isinstance(self.prompt, list) else [Message(role="user", content=self.prompt or "")]
        return [
            (content_key(prompt, self.answer_a or "", self.answer_b or ""), False),
            (content_key(prompt, self.answer_b or "", self.answer_a or ""), True),
        ]

    def judgment(self, pair_id: str, swapped: bool, template_hash: str) -> Judgment:
        """The pipeline judgment of this line for a pair (whose answers are this line's, swapped or not)."""
        common = dict(
            pair_id=pair_id, judge_model=self.judge, template_hash=template_hash, raw_outputs=tuple(self.reasons)
        )
        if self.p_a is not None:
            probabilities = [self.p_a]
        else:
            probabilities = [_P_A[v] for v in self.verdicts or [] if v is not None]
        if not probabilities:
            return Judgment(winner=None, status="parse_error", error="the imported verdicts are unreadable", **common)
        if swapped:
            probabilities = [1.0 - p for p in probabilities]
        p_a, orders_disagree = combine_judges(probabilities)  # the mean p(A), and whether the winners differ
        return Judgment(
            winner=winner_of(p_a),
            p_a=p_a,
            confidence=confidence_of(p_a),
            status="ok",
            order_disagreement=orders_disagree,
            **common,
        )


def content_key(prompt: Sequence[Message], answer_a: str, answer_b: str) -> str:
    """What a pair's prompt and answers are matched on."""
    return content_id("imported-pair", [m.model_dump() for m in prompt], answer_a, answer_b)


class ImportedJudge:
    """A judge whose verdicts were made elsewhere: `judge()` looks each pair up in the file."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise JudgmentsFileError(f"{path}: no such judgments file (judge.judgments)")
        self.path = path
        self._lines: dict[str, tuple[ImportedJudgment, bool, int]] = {}
        judges: set[str] = set()
        templates: set[str] = set()
        for number, row in read_jsonl(path, JudgmentsFileError):
            try:
                line = ImportedJudgment.model_validate(row)
            except ValidationError as exc:
                problem = exc.errors()[0]
                field = ".".join(str(part) for part in problem["loc"]) or "line"
                raise JudgmentsFileError(f"{path}:{number}: {field}: {problem['msg']}") from None
            judges.add(line.judge)
            templates.add(line.template)
            if len(judges) > 1 or len(templates) > 1:
                raise JudgmentsFileError(
                    f"{path}:{number}: a second judge or template ({line.judge}, {line.template}): one judge per "
                    "file (an ensemble of imported judges takes one file each)"
                )
            for key, swapped in line.keys():
                earlier = self._lines.get(key)
                if earlier is not None and not swapped and not earlier[1] and earlier[0] != line:
                    raise JudgmentsFileError(f"{path}:{number}: the same pair as line {earlier[2]}, judged differently")
                self._lines.setdefault(key, (line, swapped, number))
        if not self._lines:
            raise JudgmentsFileError(f"{path}: no judgments in the file")
        self.name = judges.pop()
        self.template_hash = content_id("imported", templates.pop())

    async def judge(self, pairs: Sequence[Pair]) -> list[Judgment]:
        return [self.judgment_of(pair) for pair in pairs]

    def judgment_of(self, pair: Pair) -> Judgment:
        """The imported judgment of a pair, or a failure when the file has none for it."""
        found = self._lines.get(pair.id) or self._lines.get(content_key(pair.prompt.messages, pair.a.text, pair.b.text))
        if found is None:
            return Judgment(
                pair_id=pair.id,
                winner=None,
                status="backend_error",
                error=f"{self.path} has no judgment for this pair (by pair_id, or by prompt and answers)",
                judge_model=self.name,
                template_hash=self.template_hash,
            )
        line, swapped, _ = found
        return line.judgment(pair.id, swapped, self.template_hash)

    def usage(self) -> TokenUsage:
        return TokenUsage()  # the tokens were spent where the judgments were made
