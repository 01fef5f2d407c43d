"""The one small protocol that sampling and judging use to get text (and log-probabilities) from a model.

Backends: `openai` (any OpenAI-compatible endpoint, `rlaif.generation.openai_backend`) and `transformers`
(in-process, `rlaif.generation.transformers_backend`); `rlaif.generation.factory.open_backend` builds the
one a config section names. This module knows none of them.

A backend takes a batch of requests and returns, for each, either its generations or the
`BackendError` that ended it: one failed request never hides the results of the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rlaif.errors import ExpectedError


class BackendError(ExpectedError, RuntimeError):
    """A request that failed for good (after retries); the message says where and why, never a secret."""


class EndpointFailure(BackendError):
    """A request that failed for good because of the endpoint (unreachable, timing out, 5xx, 429, garbled
    answers), not because of what was asked: these count towards the endpoint's circuit breaker."""


class EndpointDown(BackendError):
    """No endpoint is answering (every circuit breaker is open): the run stops rather than failing each
    remaining request one by one."""


@dataclass(frozen=True)
class GenerationRequest:
    """One chat request. `n` answers are wanted; `top_logprobs` asks for token log-probabilities."""

    messages: Sequence[dict[str, str]]
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    top_logprobs: int | None = None
    prefill: str | None = None  # start of the assistant's reply, continued by the model (see supports_prefill)
    stop: tuple[str, ...] = ()  # end the reply at the first of these strings
    json_schema: dict[str, Any] | None = None  # openai backend: constrain the reply (servers that honour it)


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token, its log-probability, and the most likely alternatives at that position."""

    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str | None = None
    completion_tokens: int | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass
class TokenUsage:
    """Counts of what a backend has done, for reports and cost accounting."""

    requests: int = 0
    failed_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        self.prompt_tokens += prompt_tokens or 0
        self.completion_tokens += completion_tokens or 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.requests + other.requests,
            self.failed_requests + other.failed_requests,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


RequestResult = list[Generation] | BackendError
Progress = Callable[[int], None]  # called with the number of requests finished so far


class GenerationBackend(Protocol):
    """What sampling and judging need from a model."""

    model_name: str
    usage: TokenUsage
    supports_prefill: bool  # whether `prefill` is honoured; a backend that cannot ignores it

    async def generate(
        self, requests: Sequence[GenerationRequest], progress: Progress | None = None
    ) -> list[RequestResult]:
        """Answers for each request, in order; a failed request gives its BackendError in its place."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and models."""
        ...
