"""The pipeline's records: prompts, candidates, pairs, judgments, review items, preference records.

Every record is an immutable pydantic model that refuses unknown fields. Ids are content hashes,
so the same input gives the same id on every run: that is what lets a rerun skip finished work and
never judge a pair twice.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

Role = Literal["system", "user", "assistant"]
Winner = Literal["a", "b", "tie"]
JudgmentStatus = Literal["ok", "parse_error", "backend_error"]
# gold: an item with a known answer (review.gold), mixed into the queue to measure each reviewer
ReviewReason = Literal["failed", "audit", "low_confidence", "below_threshold", "reward_disagreement", "gold"]
ReviewStatus = Literal["pending", "claimed", "done", "skipped"]
ReviewLabel = Literal["a", "b", "tie", "both_bad"]
LabelSource = Literal["judge", "human"]
ContrastKind = Literal["over_refusal", "reasonable_refusal"]  # see rlaif.pipeline.refusal_contrast

ID_LENGTH = 16  # hex characters of sha256: 64 bits, collision-free at millions of records


def check_run_name(name: str) -> str:
    """A run's name as given, or ValueError: it names a folder (runs/<name>) and is part of the review page's
    addresses, so it cannot be empty, '.' or '..', or hold '/' or '\\'."""
    if not name.strip() or name in (".", "..") or any(c in name for c in "/\\"):
        raise ValueError(
            f"run name {name!r}: use a name without '/' or '\\' (not empty, '.' or '..'); "
            "it names the run's folder and appears in the review page's addresses"
        )
    return name


def content_id(*parts: Any) -> str:
    """A stable id for JSON-serialisable parts: sha256 of their canonical JSON, shortened."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:ID_LENGTH]


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot hash a {type(value).__name__}")


class Record(BaseModel):
    """Base of all records: immutable, strict about field names."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Message(Record):
    role: Role
    content: str


def _fill_id(data: Any, make_id: Any) -> Any:
    """Fill a missing `id` from the record's content (ids given explicitly are checked by callers)."""
    if isinstance(data, dict) and not data.get("id"):
        data = {**data, "id": make_id(data)}
    return data


class PromptItem(Record):
    """One prompt: a conversation that ends with a user turn, plus where it came from."""

    id: str = ""
    messages: tuple[Message, ...] = Field(min_length=1)
    source: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _id(cls, data: Any) -> Any:
        return _fill_id(data, lambda d: content_id("prompt", [_message_dict(m) for m in d.get("messages", [])]))

    @model_validator(mode="after")
    def _ends_with_user(self) -> PromptItem:
        if self.messages[-1].role != "user":
            raise ValueError("the last message of a prompt must have role 'user'")
        if not any(m.content.strip() for m in self.messages if m.role == "user"):
            raise ValueError("the prompt is empty")
        return self

    def chat(self) -> list[dict[str, str]]:
        """The messages as plain dicts, as chat APIs and chat templates take them."""
        return [m.model_dump() for m in self.messages]


def _message_dict(message: Any) -> dict[str, Any]:
    return message.model_dump() if isinstance(message, BaseModel) else dict(message)


class Candidate(Record):
    """One sampled answer to a prompt. Its id depends on the prompt and the text only."""

    id: str = ""
    prompt_id: str
    text: str
    model: str
    sample_index: int = 0
    finish_reason: str | None = None
    completion_tokens: int | None = None
    contrast: ContrastKind | None = None  # a steered refusal added by pairs.refusal_contrast; None: an ordinary answer

    @model_validator(mode="before")
    @classmethod
    def _id(cls, data: Any) -> Any:
        return _fill_id(data, lambda d: content_id("candidate", d.get("prompt_id"), d.get("text")))


class Pair(Record):
    """Two candidates for one prompt, in the A/B order shown to the judge.

    The id does not depend on the order, so a pair is judged once whichever way round it was drawn.
    """

    id: str = ""
    prompt: PromptItem
    a: Candidate
    b: Candidate
    strategy: str = "all"
    swapped: bool = False  # True when A/B is the reverse of the order the candidates were sampled in

    @model_validator(mode="before")
    @classmethod
    def _id(cls, data: Any) -> Any:
        def make(d: dict[str, Any]) -> str:
            ids = sorted(_id_of(d.get(side), Candidate) for side in ("a", "b"))
            return content_id("pair", _id_of(d.get("prompt"), PromptItem), ids)

        return _fill_id(data, make)

    @model_validator(mode="after")
    def _same_prompt(self) -> Pair:
        if self.a.prompt_id != self.prompt.id or self.b.prompt_id != self.prompt.id:
            raise ValueError("both candidates of a pair must answer the pair's prompt")
        if self.a.id == self.b.id:
            raise ValueError("a pair needs two different candidates")
        return self


def _id_of(value: Any, model: type[PromptItem] | type[Candidate]) -> str:
    """The id of a record given as a model or as a plain dict (validated to compute its id)."""
    return value.id if isinstance(value, model) else model.model_validate(value).id


class Judgment(Record):
    """A judge's verdict on a pair, judged in both orders and combined.

    `p_a` is the combined probability that A is better; `confidence` how far that is from a coin flip.
    A failure is never a silent label: it has `status` parse_error or backend_error and `winner` None.
    """

    id: str = ""
    pair_id: str
    winner: Winner | None
    p_a: float | None = Field(default=None, ge=0.0, le=1.0)
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    status: JudgmentStatus
    order_disagreement: bool = False
    judge_disagreement: bool = False  # ensembles: the member judges preferred different answers
    raw_outputs: tuple[str, ...] = ()
    judge_model: str
    template_hash: str
    principle: str | None = None
    error: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _id(cls, data: Any) -> Any:
        return _fill_id(
            data,
            lambda d: content_id("judgment", d.get("pair_id"), d.get("judge_model"), d.get("template_hash")),
        )

    @model_validator(mode="after")
    def _failure_has_no_label(self) -> Judgment:
        if self.status != "ok" and self.winner is not None:
            raise ValueError(f"a judgment with status {self.status!r} cannot carry a winner")
        if self.status == "ok" and self.p_a is None:
            raise ValueError("a judgment with status 'ok' needs p_a")
        return self

    @classmethod
    def not_judged(cls, pair_id: str, why: str, judge: str = "") -> Judgment:
        """A stand-in for a pair the judge never saw (a gold pair, a pair only people ranked): a failure
        status with `why` as its error, so nothing reads it as a verdict; `judge` names the stand-in."""
        return cls(
            pair_id=pair_id, winner=None, status="backend_error", error=why, judge_model=judge, template_hash=judge
        )


class ReviewItem(Record):
    """A pair waiting for, or labelled by, a person. `label` refers to the pair's stored A/B order."""

    id: str = ""
    run_id: Annotated[str, AfterValidator(check_run_name)]
    pair_id: str
    reason: ReviewReason
    status: ReviewStatus = "pending"
    label: ReviewLabel | None = None
    reviewer: str | None = None
    comment: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _id(cls, data: Any) -> Any:
        return _fill_id(data, lambda d: content_id("review", d.get("run_id"), d.get("pair_id")))


class PreferenceRecord(Record):
    """One row of the final dataset, in TRL's conversational prompt/chosen/rejected form, with provenance."""

    prompt: tuple[Message, ...]
    chosen: tuple[Message, ...]
    rejected: tuple[Message, ...]
    prompt_id: str
    pair_id: str
    label: ReviewLabel  # in the pair's A/B order: a, b, tie or both_bad (the last two only when kept)
    label_source: LabelSource
    judge_label: ReviewLabel | None = None  # the judge's own label (a, b or tie), whoever labelled the row
    review_reason: ReviewReason | None = None  # why people were asked; None when the pair was not routed
    flagged: bool = False  # people were asked but did not answer: the judge's label stands in
    reviewers: tuple[str, ...] = ()
    ranked: bool = False  # people's label comes from their ranking of all the prompt's answers (ranking mode)
    # With review.strength: how much better people found the chosen answer (much | slightly).
    human_strength: Literal["much", "slightly"] | None = None
    tags: tuple[str, ...] = ()  # tags people put on the pair (review.tags)
    judge: str | None = None
    template_hash: str | None = None
    confidence: float | None = None
    # With review.target_agreement: the calibrated probability that people agree with the judge's label.
    calibrated_agreement: float | None = None
    policy_models: tuple[str, ...] = ()
    contrast: ContrastKind | None = None  # the pair holds a refusal-contrast candidate of this kind

    def to_row(self) -> dict[str, Any]:
        """A plain dict, as written to dataset files (TRL reads `prompt`, `chosen`, `rejected`)."""
        return self.model_dump(mode="json")
