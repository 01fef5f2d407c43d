"""The one small protocol that sampling and judging use to get text (and log-probabilities) from a model.

Backends: `openai` (any OpenAI-compatible endpoint, see `rlaif.openai_backend`) and `transformers`
(in-process, see `rlaif.transformers_backend`). `open_backend` builds the one a config section names,
launching a local server first when the section asks for one.

A backend takes a batch of requests and returns, for each, either its generations or the
`BackendError` that ended it: one failed request never hides the results of the others.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from rlaif.config import ConfigError, ModelSection, read_api_key

if TYPE_CHECKING:
    from rlaif.chat_template import ChatTemplate

log = logging.getLogger(__name__)


class BackendError(RuntimeError):
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


@contextlib.asynccontextmanager
async def open_backend(
    section: ModelSection, where: str = "policy", say: Callable[[str], None] = log.info
) -> AsyncIterator[GenerationBackend]:
    """The backend a config section describes; a server it asks for is started and stopped around it."""
    from rlaif.models import resolve_model

    model = resolve_model(section.model, say=say)
    if section.backend == "transformers":
        from rlaif.transformers_backend import TransformersBackend

        backend: GenerationBackend = TransformersBackend(
            model, device=section.device, dtype=section.dtype, batch_size=section.batch_size
        )
        try:
            yield backend
        finally:
            await backend.aclose()
        return

    from rlaif.model_server import ManagedServer
    from rlaif.openai_backend import OpenAIBackend

    api_key = read_api_key(section.api_key_env, where)
    async with contextlib.AsyncExitStack() as stack:
        base_urls = list(section.base_urls)
        model_name = model
        if section.server.launch:
            server = ManagedServer(
                kind=section.server.launch,
                model=model,
                executable=section.server.executable,
                extra_args=section.server.extra_args,
                startup_timeout_s=section.server.startup_timeout_s,
                say=say,
            )
            stack.enter_context(server)
            base_urls = [server.base_url]
            model_name = server.served_model
        if not base_urls:
            raise BackendError(f"{where}: backend openai needs base_urls or server.launch")
        backend = OpenAIBackend(
            base_urls=base_urls,
            model=model_name,
            api_key=api_key,
            max_concurrency=section.max_concurrency,
            timeout_s=section.timeout_s,
            max_retries=section.max_retries,
            max_failures_in_row=section.max_failures_in_row,
            n_mode=section.n_mode,
            continue_final_message=section.continue_final_message,
            prompts_per_request=section.prompts_per_request,
            chat_template=_chat_template(section, where, say) if section.prompts_per_request > 1 else None,
        )
        stack.push_async_callback(backend.aclose)
        if section.prompts_per_request > 1:
            found = await backend.probe_completions()
            say(f"{where}: {COMPLETIONS_SUPPORT[found]} ({backend.model_name} at {base_urls[0]})")
        yield backend


COMPLETIONS_SUPPORT = {
    "list": "the completions API takes a list of prompts: many prompts per request",
    "single": "the completions API takes one prompt per request: one prompt per request",
    "none": "no completions API: one chat request per prompt",
}


def _chat_template(section: ModelSection, where: str, say: Callable[[str], None]) -> ChatTemplate:
    from rlaif.chat_template import ChatTemplate, ChatTemplateError
    from rlaif.models import resolve_model

    folder = resolve_model(section.chat_template_from or section.model, say=say)
    try:
        return ChatTemplate.from_model_dir(folder)
    except ChatTemplateError as exc:
        raise ConfigError(
            f"{where}.prompts_per_request needs the model's chat template: {exc}; "
            f"set {where}.chat_template_from to a local folder of the model (its tokenizer files suffice)"
        ) from None
