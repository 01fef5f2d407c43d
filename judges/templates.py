"""Judge prompt templates: a YAML header and a Jinja2 body in one file, checked when loaded.

    ---
    name: helpfulness
    version: 1
    modes: [verdict, logprob]         # judge modes the template is written for
    labels: {a: A, b: B, tie: C}      # what the judge writes for "A is better", "B is better", a tie
    output: brackets                  # brackets: [[A]]; json: {"verdict": "A"}
    variables: [question, answer_a, answer_b]
    system: You are an impartial judge...
    prefill: "[["                     # optional: the judge's reply starts with this (verdict first)
    principles: [...]                 # optional: one is drawn per pair into {{ principle }}
    ---
    <the user message, a Jinja2 template>

The body renders in a sandbox with StrictUndefined. At load time the header is validated, the body
parsed, and its variables checked against what the pipeline provides: an unknown variable, a
required one the body never uses, or a bad header fails naming the file and line, before any model
call. The template's hash (of the file's bytes) is stored on every judgment.

Templates are code from outside the project, so the sandbox is strict: no attribute that starts with
an underscore, no method that changes a value, no `str.format` reaching attributes, ranges of at most
100,000, and no `*` or `**` that would build a string, list or number large enough to exhaust memory.
A template that tries fails with TemplateError naming the file, at load time when its first render
reaches the attempt, else at the render that does.

Candidate answers are untrusted: before rendering, anything in them that looks like the template's
delimiters (`<answer_a>`, `</question>`, ...) or a verdict (`[[A]]`) is defused, so an answer cannot
close its own fence or plant a label.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import jinja2
import yaml
from jinja2 import meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlaif.errors import ExpectedError
from rlaif.schema import content_id

TEMPLATE_SUFFIX = ".md.j2"
# What the pipeline provides to every template, and what a pairwise template must use.
PROVIDED_VARIABLES = {"question", "conversation", "answer_a", "answer_b", "principle", "labels"}
REQUIRED_VARIABLES = {"question", "answer_a", "answer_b"}
FENCE_TAGS = ("question", "conversation", "answer_a", "answer_b", "principle")
_FENCE_PATTERN = re.compile(r"<\s*/?\s*(" + "|".join(FENCE_TAGS) + r")\s*>", re.IGNORECASE)
_VERDICT_PATTERN = re.compile(r"\[\[")


class TemplateError(ExpectedError, ValueError):
    """A template that cannot be used; the message names the file and line."""


MAX_BUILT_SIZE = 1_000_000  # the longest string or list a template may build with `*`; the largest `**` result


class JudgeSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, also refusing `*` and `**` that would build something huge."""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: object, right: object) -> object:
        if operator == "*":
            for sized, times in ((left, right), (right, left)):
                if isinstance(sized, str | list | tuple) and isinstance(times, int):
                    if len(sized) * times > MAX_BUILT_SIZE:
                        raise SecurityError(f"the template builds a value of {len(sized) * times} items")
        if operator == "**" and isinstance(left, int | float) and isinstance(right, int | float):
            if abs(right) > 64 or abs(left) ** min(abs(right), 64) > MAX_BUILT_SIZE**2:
                raise SecurityError(f"the template computes {left} ** {right}, too large")
        return super().call_binop(context, operator, left, right)


class Labels(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    a: str = "A"
    b: str = "B"
    tie: str | None = "C"


class TemplateHeader(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    version: int | str = 1
    modes: list[Literal["verdict", "logprob"]] = Field(default_factory=lambda: ["verdict", "logprob"], min_length=1)
    labels: Labels = Field(default_factory=Labels)
    output: Literal["brackets", "json"] = "brackets"
    variables: list[str] = Field(default_factory=lambda: sorted(REQUIRED_VARIABLES))
    system: str | None = None
    prefill: str | None = None
    principles: list[str] | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _principles_not_empty(self) -> TemplateHeader:
        if self.principles is not None and not self.principles:
            raise ValueError("principles, when given, must list at least one principle")
        return self


@dataclass(frozen=True)
class JudgeTemplate:
    """A loaded, checked template."""

    path: Path
    header: TemplateHeader
    body: str
    hash: str
    _compiled: jinja2.Template
    _system: jinja2.Template | None
    body_line: int = 1  # the file's line where the body starts

    @property
    def name(self) -> str:
        return self.header.name

    def draw_principle(self, seed: int, pair_id: str) -> str | None:
        """One principle per pair (Constitutional AI), the same on every run for the same seed."""
        if not self.header.principles:
            return None
        return random.Random(content_id("principle", seed, pair_id)).choice(self.header.principles)

    def render(
        self, question: str, answer_a: str, answer_b: str, conversation: str = "", principle: str | None = None
    ) -> list[dict[str, str]]:
        """The chat messages for one judge call; all text from the pair is fenced first."""
        values = {
            "question": fence(question),
            "conversation": fence(conversation),
            "answer_a": fence(answer_a),
            "answer_b": fence(answer_b),
            "principle": principle or "",
            "labels": self.header.labels.model_dump(),
        }
        messages = []
        try:
            if self._system is not None:
                messages.append({"role": "system", "content": self._system.render(values).strip()})
            messages.append({"role": "user", "content": self._compiled.render(values).strip()})
        except Exception as exc:  # noqa: BLE001 - whatever a template's expressions raise is the template's fault
            # (a sandbox refusal, an undefined name, 1/0, a range too large), here or in a branch the load-time
            # render did not take
            raise TemplateError(f"{self.path}:{self._line_of(exc)}: the template fails to render: {exc}") from None
        return messages

    def _line_of(self, exc: Exception) -> int:
        """The file line of a render error: Jinja's own, else the template's frame in the traceback."""
        line = getattr(exc, "lineno", None)
        frame = exc.__traceback__
        while not line and frame is not None:
            if frame.tb_frame.f_code.co_filename == "<template>":  # Jinja maps these frames to template lines
                line = frame.tb_lineno
            frame = frame.tb_next
        return self.body_line + (line or 1) - 1


def fence(text: str) -> str:
    """Defuse text from a candidate: no delimiter tags of ours, no [[verdict]] markers."""
    text = _FENCE_PATTERN.sub(lambda m: f"[{m.group(1)} tag removed]", text)
    return _VERDICT_PATTERN.sub("[ [", text)


def bundled_templates_dir() -> Path:
    return Path(str(resources.files("rlaif.bundled.prompts")))


def bundled_template_names() -> list[str]:
    return sorted(p.name[: -len(TEMPLATE_SUFFIX)] for p in bundled_templates_dir().glob(f"*{TEMPLATE_SUFFIX}"))


def resolve_template_path(reference: str) -> Path:
    """A path to a template file, or the name of a bundled template."""
    path = Path(reference).expanduser()
    if path.is_file():
        return path
    bundled = bundled_templates_dir() / f"{reference}{TEMPLATE_SUFFIX}"
    if bundled.is_file():
        return bundled
    raise TemplateError(
        f"judge template {reference!r} is neither a file nor a bundled template ({', '.join(bundled_template_names())})"
    )


def load_template(reference: str, mode: str | None = None) -> JudgeTemplate:
    """Load and check a template; `mode`, when given, must be one the template is written for."""
    path = resolve_template_path(reference)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TemplateError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    header_lines, body, body_first_line = _split(path, text)
    header = _parse_header(path, header_lines)
    if mode is not None and mode not in header.modes:
        raise TemplateError(
            f"{path}:{_line_of(header_lines, 'modes')}: judge mode {mode!r} is not among "
            f"the template's modes {header.modes}"
        )
    environment = JudgeSandbox(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
    compiled = _compile(environment, path, body, body_first_line, header, header_lines)
    system = None
    if header.system is not None:
        system = _compile_system(environment, path, header, header_lines)
    template = JudgeTemplate(
        path=path,
        header=header,
        body=body,
        hash=hashlib.sha256(raw).hexdigest()[:16],
        _compiled=compiled,
        _system=system,
        body_line=body_first_line,
    )
    _trial_render(template, path)
    return template


def _split(path: Path, text: str) -> tuple[list[str], str, int]:
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise TemplateError(f"{path}:1: a template starts with a '---' line, then its YAML header")
    for index in range(1, len(lines)):
        if lines[index].strip() == "---":
            body = "\n".join(lines[index + 1 :])
            if not body.strip():
                raise TemplateError(f"{path}:{index + 2}: the template body (after the header) is empty")
            return lines[1:index], body, index + 2
    raise TemplateError(f"{path}:1: the YAML header is not closed by a '---' line")


def _parse_header(path: Path, header_lines: list[str]) -> TemplateHeader:
    try:
        data = yaml.safe_load("\n".join(header_lines))
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 2 if exc.problem_mark else 2
        raise TemplateError(f"{path}:{line}: bad YAML header: {exc.problem}") from None
    if not isinstance(data, dict):
        raise TemplateError(f"{path}:2: the header must be a YAML mapping")
    try:
        return TemplateHeader.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0]) if error["loc"] else ""
        where = ".".join(str(p) for p in error["loc"])
        problem = "unknown header key" if error["type"] == "extra_forbidden" else error["msg"]
        raise TemplateError(f"{path}:{_line_of(header_lines, key)}: {where}: {problem}") from None


def _line_of(header_lines: list[str], key: str) -> int:
    """The file line of a top-level header key (the header starts on line 2)."""
    for index, line in enumerate(header_lines):
        if re.match(rf"{re.escape(key)}\s*:", line):
            return index + 2
    return 2


def _compile(
    environment: jinja2.Environment,
    path: Path,
    body: str,
    first_line: int,
    header: TemplateHeader,
    header_lines: list[str],
) -> jinja2.Template:
    try:
        tree = environment.parse(body)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{path}:{first_line + (exc.lineno or 1) - 1}: {exc.message}") from None
    used = meta.find_undeclared_variables(tree)
    unknown = sorted(used - PROVIDED_VARIABLES)
    if unknown:
        line = first_line + _body_line(body, unknown[0]) - 1
        raise TemplateError(
            f"{path}:{line}: unknown variable '{unknown[0]}' (templates get: {', '.join(sorted(PROVIDED_VARIABLES))})"
        )
    undeclared = sorted(set(header.variables) - PROVIDED_VARIABLES)
    if undeclared:
        raise TemplateError(
            f"{path}:{_line_of(header_lines, 'variables')}: variables lists unknown "
            f"'{undeclared[0]}' (templates get: {', '.join(sorted(PROVIDED_VARIABLES))})"
        )
    required = REQUIRED_VARIABLES | set(header.variables) | ({"principle"} if header.principles else set())
    missing = sorted(required - used)
    if missing:
        raise TemplateError(
            f"{path}:{first_line}: the body never uses '{{{{ {missing[0]} }}}}', which the template needs"
        )
    return environment.from_string(tree)


def _compile_system(
    environment: jinja2.Environment, path: Path, header: TemplateHeader, header_lines: list[str]
) -> jinja2.Template:
    line = _line_of(header_lines, "system")
    assert header.system is not None
    try:
        tree = environment.parse(header.system)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{path}:{line}: system: {exc.message}") from None
    unknown = sorted(meta.find_undeclared_variables(tree) - PROVIDED_VARIABLES)
    if unknown:
        raise TemplateError(f"{path}:{line}: system: unknown variable '{unknown[0]}'")
    return environment.from_string(tree)


def _body_line(body: str, name: str) -> int:
    for index, line in enumerate(body.splitlines()):
        if re.search(rf"\b{re.escape(name)}\b", line):
            return index + 1
    return 1


def _trial_render(template: JudgeTemplate, path: Path) -> None:
    """Render once with sample values, so errors that only show at render time show now."""
    template.render("question", "answer one", "answer two", principle=template.draw_principle(0, "trial"))
