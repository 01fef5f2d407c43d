"""Sampling throughput of the in-process transformers backend against a plain `model.generate` loop,
same prompts, same settings, same run.

    python benchmarks/sampling.py --model NAME_OR_DIR --out results.json [--prompts 128] [--n 4] [--max-tokens 256]
    python benchmarks/sampling.py --tokenizer DIR --out results.json   # SmolLM2-135M-shaped, random weights

`--model` takes a trained model, a folder or a known name (`smollm2-135m-instruct`, prepared on first
use): its next-token distributions are peaked, as in real use. `--tokenizer` builds a
SmolLM2-135M-shaped model from config instead (random weights: flat distributions, and it rarely stops
early, so every answer runs to max_tokens); `--tiny` makes that one tiny. The backend groups requests
by settings, batches prompts of similar length, runs the opening a batch's prompts share once and each
prompt once for its n answers, and samples with `rlaif.generation.nucleus_sampling`; the plain loop takes the
prompts in the given order and uses `num_return_sequences` and transformers' own top-p. `--repeats` runs
each contender several times, in alternating order, and reports the median run of each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import median_runs, provenance, write_results  # noqa: E402

TEMPERATURE, TOP_P = 0.8, 0.95  # every run samples with these (the pipeline's defaults)


def build_model(tokenizer_dir: str, folder: Path, tiny: bool) -> str:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from benchmarks.training_gpu import smollm2_shaped_config

    torch.manual_seed(0)
    LlamaForCausalLM(smollm2_shaped_config(tiny)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return str(folder)


def plain_loop(
    model_path: str, texts: list[str], args: argparse.Namespace, nucleus_sampler: bool = False
) -> dict[str, Any]:
    """The peer: model.generate over the prompts in order, batch by batch, bf16 on a GPU; or
    (nucleus_sampler) the same loop sampling as the backend does, to show that lever alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlaif.generation.nucleus_sampling import NucleusSampler

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.bfloat16 if device == "cuda" else torch.float32
    ).to(device)
    started = time.perf_counter()
    generated = 0
    for start in range(0, len(texts), args.batch):
        chat = [
            tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
            for t in texts[start : start + args.batch]
        ]
        inputs = tokenizer(chat, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.inference_mode():
            if nucleus_sampler:
                sampling = dict(do_sample=False, logits_processor=[NucleusSampler(TEMPERATURE, TOP_P)])
                inputs = {name: tensor.repeat_interleave(args.n, dim=0) for name, tensor in inputs.items()}
            else:  # top_k off, as in the backend (and OpenAI-style APIs): top-p over the whole vocabulary
                sampling = dict(
                    do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, top_k=None, num_return_sequences=args.n
                )
            out = model.generate(
                **inputs, **sampling, max_new_tokens=args.max_tokens, pad_token_id=tokenizer.pad_token_id
            )
        new = out[:, inputs["input_ids"].shape[1] :]
        generated += int((new != tokenizer.pad_token_id).sum())
    seconds = time.perf_counter() - started
    return {
        "name": "plain model.generate loop" + (", with rlaif's nucleus sampler" if nucleus_sampler else ""),
        "seconds": round(seconds, 2),
        "tokens": generated,
        "tokens_per_s": round(generated / seconds, 1),
    }


def plain_loop_in_thread(model_path: str, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The plain loop run through `asyncio.to_thread`, as the backend runs: isolates the worker thread's cost."""
    figures = asyncio.run(asyncio.to_thread(plain_loop, model_path, texts, args))
    return {**figures, "name": "plain model.generate loop, in a worker thread"}


def backend(
    model_path: str, texts: list[str], args: argparse.Namespace, in_calling_thread: bool = False
) -> dict[str, Any]:
    """The backend as the pipeline calls it, or (in_calling_thread) its batching loop without the worker thread."""
    from rlaif.generation.protocol import GenerationRequest
    from rlaif.generation.transformers_backend import TransformersBackend

    engine = TransformersBackend(model_path, batch_size=args.batch)
    requests = [
        GenerationRequest(
            messages=[{"role": "user", "content": t}],
            n=args.n,
            temperature=TEMPERATURE,
            top_p=TOP_P,
            max_tokens=args.max_tokens,
            seed=i,
        )
        for i, t in enumerate(texts)
    ]
    started = time.perf_counter()
    if in_calling_thread:
        engine._generate_all(requests, None)
    else:
        asyncio.run(engine.generate(requests))
    seconds = time.perf_counter() - started
    tokens = engine.usage.completion_tokens
    return {
        "name": "rlaif transformers backend" + (", in the calling thread" if in_calling_thread else ""),
        "seconds": round(seconds, 2),
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="A trained model: a folder, or a known name such as smollm2-135m-instruct.")
    source.add_argument("--tokenizer", help="A tokenizer folder, for a SmolLM2-135M-shaped model with random weights.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/rlaif-sampling")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16, help="Prompts per generate call (both sides).")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument(
        "--repeats", type=int, default=1, help="Runs of each contender, in alternating order; medians are reported."
    )
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="Also run the plain loop with the backend's sampler, the plain loop in a worker thread and the "
        "backend without one.",
    )
    args = parser.parse_args()
    folder = Path(args.work)
    folder.mkdir(parents=True, exist_ok=True)
    if args.model:
        from rlaif.models import resolve_model

        model_path = resolve_model(args.model, say=print)  # a known name is prepared on first use
    else:
        model_path = build_model(args.tokenizer, folder / "model", args.tiny)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rng = random.Random(0)
    texts = [
        tokenizer.decode([rng.randrange(200, 49000) for _ in range(rng.randint(16, 256))], skip_special_tokens=True)
        for _ in range(args.prompts)
    ]
    plain_loop(model_path, texts[: args.batch], args)  # warm-up (CUDA kernels, allocator)
    contenders = [
        lambda: plain_loop(model_path, texts, args),
        lambda: backend(model_path, texts, args),
    ]
    if args.diagnose:  # each lever alone: the sampler, the worker thread, the batching loop
        contenders += [
            lambda: plain_loop(model_path, texts, args, nucleus_sampler=True),
            lambda: plain_loop_in_thread(model_path, texts, args),
            lambda: backend(model_path, texts, args, in_calling_thread=True),
        ]
    runs = median_runs(contenders, args.repeats)

    results = {
        "benchmark": "sampling, in-process transformers backend vs plain generate loop",
        "model": args.model or ("tiny Llama" if args.tiny else "SmolLM2-135M-shaped (random weights)"),
        "prompts": args.prompts,
        "n": args.n,
        "batch": args.batch,
        "max_tokens": args.max_tokens,
        "temperature": TEMPERATURE,
        "top_p": TOP_P,
        "repeats": args.repeats,
        "runs": runs,
        "ratio_backend_vs_plain": round(runs[1]["tokens_per_s"] / runs[0]["tokens_per_s"], 3),
        **provenance(accelerator=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"),
    }
    print(json.dumps(results, indent=2))
    write_results(args.out, results)


if __name__ == "__main__":
    main()
