"""Sampling from the real SmolLM2: in-process and through a real `transformers serve` on loopback."""

from __future__ import annotations

import asyncio
import math

import pytest

from rlaif.config import SamplingSection
from rlaif.generation.openai_backend import OpenAIBackend
from rlaif.generation.protocol import GenerationRequest
from rlaif.generation.server_launcher import ManagedServer, ServerError
from rlaif.generation.transformers_backend import TransformersBackend
from rlaif.pipeline.prompt_sources import load_prompts
from rlaif.pipeline.sample import sample_candidates

SAMPLING = SamplingSection(n=4, temperature=1.0, top_p=0.95, max_tokens=24)


def assert_four_distinct_per_prompt(result, prompts):
    assert not result.failures and not result.short
    for prompt in prompts:
        texts = [c.text for c in result.candidates if c.prompt_id == prompt.id]
        assert len(texts) == 4 and len(set(texts)) == 4, texts
        assert all(text.strip() for text in texts)


@pytest.fixture(scope="module")
def in_process(smollm2_dir):
    return TransformersBackend(str(smollm2_dir), batch_size=8)


def test_in_process_backend_samples_four_distinct_candidates(in_process, mt_bench_file):
    prompts = load_prompts(mt_bench_file, limit=3)
    result = asyncio.run(sample_candidates(in_process, prompts, SAMPLING, run_seed=1, model_label="smollm2"))
    assert_four_distinct_per_prompt(result, prompts)
    assert {c.model for c in result.candidates} == {"smollm2"}
    assert in_process.usage.completion_tokens > 0


def test_in_process_sampling_is_reproducible_for_a_seed(in_process, mt_bench_file):
    prompts = load_prompts(mt_bench_file, limit=2)
    first = asyncio.run(sample_candidates(in_process, prompts, SAMPLING, run_seed=3))
    again = asyncio.run(sample_candidates(in_process, prompts, SAMPLING, run_seed=3))
    assert [c.id for c in first.candidates] == [c.id for c in again.candidates]


def test_in_process_sampling_from_the_narrowest_nucleus_is_greedy_decoding(in_process):
    messages = [{"role": "user", "content": "Name three colours."}]
    greedy = GenerationRequest(messages=messages, max_tokens=16)
    narrowest = GenerationRequest(messages=messages, max_tokens=16, temperature=0.9, top_p=1e-6, seed=5)
    [by_argmax], [by_sampler] = asyncio.run(in_process.generate([greedy, narrowest]))
    assert by_sampler.text == by_argmax.text and by_argmax.completion_tokens > 0


@pytest.mark.parametrize("n", [1, 3])
def test_in_process_answers_from_a_shared_prompt_cache_are_those_of_whole_prompts(in_process, n):
    """The shared opening runs once per batch and each prompt once for its n answers; greedy answers and
    log-probs must be those of `generate` on whole, left-padded prompts."""
    import torch

    from rlaif.generation.transformers_backend import SHARED_OPENING_MIN_TOKENS

    system = {"role": "system", "content": "You judge answers. Be brief, exact and fair; say only what is asked."}
    questions = ["Is the sky blue?", "Name a fruit that is yellow and long, and say where it grows.", "Hi"]
    requests = [
        GenerationRequest(messages=[system, {"role": "user", "content": q}], n=n, max_tokens=12, top_logprobs=2)
        for q in questions
    ]
    tokenizer, model = in_process.tokenizer, in_process.model
    texts = [
        tokenizer.apply_chat_template(list(r.messages), tokenize=False, add_generation_prompt=True) for r in requests
    ]
    assert in_process._encode(texts)[1] >= SHARED_OPENING_MIN_TOKENS  # the batch does share an opening
    results = asyncio.run(in_process.generate(requests))
    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        whole = model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=12,
            return_dict_in_generate=True,
            output_logits=True,
            pad_token_id=tokenizer.pad_token_id,
        )
    logprobs = torch.stack(whole.logits, dim=1).log_softmax(dim=-1)
    new_tokens = whole.sequences[:, inputs["input_ids"].shape[1] :]
    for row, generations in enumerate(results):
        assert len(generations) == n
        expected = tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
        for generation in generations:
            assert generation.text == expected
            for step, item in enumerate(generation.logprobs):
                assert item.logprob == pytest.approx(float(logprobs[row, step, new_tokens[row, step]]), abs=1e-3)


def test_the_shared_opening_leaves_every_prompt_a_token_of_its_own(in_process):
    """A prompt that is the opening of another still has its last token outside the shared part."""
    tokenizer = in_process.tokenizer
    texts = ["The quick brown fox jumps over the lazy dog", "The quick brown fox jumps over the lazy dog again"]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    inputs, shared = in_process._encode(texts)
    assert shared == len(rows[0]) - 1
    for row, ids, mask in zip(rows, inputs["input_ids"].tolist(), inputs["attention_mask"].tolist(), strict=True):
        assert [token for token, kept in zip(ids, mask, strict=True) if kept] == row
        assert ids[:shared] == row[:shared] and ids[-1] == row[-1]


def test_in_process_logprobs_are_the_models_own(in_process):
    request = GenerationRequest(
        messages=[{"role": "user", "content": "Is the sky blue? Answer yes or no."}], max_tokens=4, top_logprobs=5
    )
    [[generation]] = asyncio.run(in_process.generate([request]))
    assert generation.logprobs and len(generation.logprobs) == generation.completion_tokens
    for item in generation.logprobs:
        # greedy decoding picks the most likely token, which is the top alternative
        assert max(item.top.values()) == pytest.approx(item.logprob, abs=1e-5)
        assert sum(math.exp(v) for v in item.top.values()) <= 1.0 + 1e-5
        assert item.logprob <= 0


def test_transformers_serve_gives_four_distinct_candidates_through_the_openai_backend(smollm2_dir, mt_bench_file):
    prompts = load_prompts(mt_bench_file, limit=3)
    with ManagedServer("transformers", str(smollm2_dir), startup_timeout_s=300) as server:

        async def sample():
            backend = OpenAIBackend([server.base_url], server.served_model, max_concurrency=2, timeout_s=120)
            try:
                return await sample_candidates(backend, prompts, SAMPLING, run_seed=1), backend.usage
            finally:
                await backend.aclose()

        result, usage = asyncio.run(sample())
    assert_four_distinct_per_prompt(result, prompts)
    assert usage.completion_tokens > 0 and usage.failed_requests == 0


def test_a_server_that_fails_to_start_reports_its_log(tmp_path):
    with pytest.raises(ServerError) as error:
        ManagedServer("transformers", str(tmp_path / "no-model-here"), startup_timeout_s=120).start()
    message = str(error.value)
    assert "exited with code" in message and "no-model-here" in message


def test_in_process_stop_strings_end_the_reply_like_a_server(in_process):
    request = GenerationRequest(
        messages=[{"role": "user", "content": "Count from one to ten in words, separated by commas."}],
        prefill="one, two, three",
        max_tokens=40,
        stop=(",",),
    )
    [[generation]] = asyncio.run(in_process.generate([request]))
    assert "," not in generation.text and generation.finish_reason == "stop"
    assert generation.completion_tokens < 40  # it stopped at the comma, not at max_tokens
