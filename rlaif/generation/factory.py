"""Opening the generation backend a config section describes, with the server it asks for started around it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from rlaif.config import ConfigError, ModelSection, read_api_key
from rlaif.generation.chat_template import ChatTemplate, ChatTemplateError
from rlaif.generation.protocol import BackendError, GenerationBackend
from rlaif.models import resolve_model

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def open_backend(
    section: ModelSection, where: str = "policy", say: Callable[[str], None] = log.info
) -> AsyncIterator[GenerationBackend]:
    """The backend a config section describes; a server it asks for is started and stopped around it."""
    model = resolve_model(section.model, say=say)
    if section.backend == "transformers":
        from rlaif.generation.transformers_backend import TransformersBackend

        backend: GenerationBackend = TransformersBackend(
            model, device=section.device, dtype=section.dtype, batch_size=section.batch_size
        )
        try:
            yield backend
        finally:
            await backend.aclose()
        return

    from rlaif.generation.openai_backend import OpenAIBackend
    from rlaif.generation.server_launcher import ManagedServer
    from rlaif.generation.shared_limit import open_shared_limit

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
        shared = None
        if section.shared_limit:
            shared = await stack.enter_async_context(
                open_shared_limit(section.shared_limit, section.max_concurrency, say)
            )
        backend = OpenAIBackend(
            base_urls=base_urls,
            model=model_name,
            api_key=api_key,
            max_concurrency=section.max_concurrency,
            timeout_s=section.timeout_s,
            max_retries=section.max_retries,
            max_failures_in_row=section.max_failures_in_row,
            cool_down_s=section.cool_down_s,
            shared_slot=shared.slot if shared else None,
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
    folder = resolve_model(section.chat_template_from or section.model, say=say)
    try:
        return ChatTemplate.from_model_dir(folder)
    except ChatTemplateError as exc:
        raise ConfigError(
            f"{where}.prompts_per_request needs the model's chat template: {exc}; "
            f"set {where}.chat_template_from to a local folder of the model (its tokenizer files suffice)"
        ) from None
