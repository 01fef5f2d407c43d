"""GPU training benchmarks: DPO with our defaults against TRL's defaults on the same data in the same run,
and PPO steps per second and peak memory.

    python benchmarks/training_gpu.py dpo --tokenizer DIR --out results.json [--pairs 1024] [--batch 16]
    python benchmarks/training_gpu.py ppo --tokenizer DIR --out results.json [--batch 64] [--new-tokens 128]

Models are built from config with random weights (the speed of a step does not depend on the
weights): DPO on a Qwen2-0.5B-shaped model, PPO on a SmolLM2-135M-shaped policy with a value model of
the same shape. DPO data are variable-length pairs (prompt 32-256, answers 32-512 tokens of random
text); tokens/s count the real (unpadded) tokens of the prompt+chosen and prompt+rejected sequences
(the same count whichever batch layout a run uses), and the wall time includes the set-up
(tokenization, the reference pass when precomputed). `--diagnose` adds runs of ours with one lever
changed at a time. `--tiny` shrinks everything for a quick check on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import platform
import random
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


TINY_SHAPE = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
SMOLLM2_SHAPE = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3
)


def smollm2_shaped_config(tiny: bool) -> Any:
    """A Llama config of SmolLM2-135M's shape (or a tiny one), for models built with random weights."""
    from transformers import LlamaConfig

    shape = TINY_SHAPE if tiny else SMOLLM2_SHAPE
    return LlamaConfig(vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True, **shape)


def environment() -> dict[str, Any]:
    import transformers
    import trl

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "python": platform.python_version(),
        "command": " ".join(["python", *sys.argv]),
    }


def random_text(tokenizer: Any, rng: random.Random, tokens: int) -> str:
    return tokenizer.decode([rng.randrange(200, 49000) for _ in range(tokens)], skip_special_tokens=True)


def variable_length_pairs(tokenizer: Any, count: int, seed: int, scale: float = 1.0) -> Any:
    import datasets

    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt = random_text(tokenizer, rng, int(rng.randint(32, 256) * scale))
        rows.append(
            {
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [
                    {"role": "assistant", "content": random_text(tokenizer, rng, int(rng.randint(32, 512) * scale))}
                ],
                "rejected": [
                    {"role": "assistant", "content": random_text(tokenizer, rng, int(rng.randint(32, 512) * scale))}
                ],
            }
        )
    return datasets.Dataset.from_list(rows)


def qwen2_half_billion(tokenizer_dir: str, folder: Path, tiny: bool) -> str:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    shape = (
        TINY_SHAPE
        if tiny
        else dict(
            hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2
        )
    )
    config = Qwen2Config(
        vocab_size=151936, max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=1e6, **shape
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.save_pretrained(folder)
    return str(folder)


def real_tokens(trainer: Any, max_length: int | None) -> int:
    total = 0
    for row in trainer.train_dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]):
        for side in ("chosen_ids", "rejected_ids"):
            length = len(row["prompt_ids"]) + len(row[side])
            total += min(length, max_length) if max_length else length
    return total


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def trl_default_arguments(output_dir: Path, batch: int, **changes: Any) -> Any:
    """TRL's DPOConfig defaults, but for what a benchmark fixes: the batch size, one epoch, no saving or
    reporting, and bf16 only on a GPU, as ours (TRL turns it on on a CPU too). `changes` set other fields."""
    from trl import DPOConfig

    on_gpu = torch.cuda.is_available()
    return DPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch,
        bf16=on_gpu,
        num_train_epochs=1,
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        use_cpu=not on_gpu,
        **changes,
    )


def time_dpo(name: str, build: Any, max_length: int | None) -> dict[str, Any]:
    """Set-up and training timed apart, with the peak memory of each (the previous run's trainer freed first)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer = build()
    setup_s = time.perf_counter() - started
    setup_peak = peak_gib()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trained = time.perf_counter()
    result = trainer.train()
    train_s = time.perf_counter() - trained
    train_peak = peak_gib()
    tokens = real_tokens(trainer, max_length)
    figures = {
        "name": name,
        "setup_s": round(setup_s, 2),
        "train_s": round(train_s, 2),
        "wall_s": round(setup_s + train_s, 2),
        "steps": result.global_step,
        "real_tokens": tokens,
        "tokens_per_s_train": round(tokens / train_s),
        "tokens_per_s_wall": round(tokens / (setup_s + train_s)),
        "train_loss": result.training_loss,
        "peak_memory_gib": max(setup_peak, train_peak) if setup_peak is not None and train_peak is not None else None,
        "peak_memory_setup_gib": setup_peak,
        "peak_memory_train_gib": train_peak,
    }
    print(json.dumps(figures), flush=True)
    del trainer
    return figures


def bench_dpo(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    from rlaif.config import DPOSection
    from rlaif.training.dpo import build_dpo_trainer, dpo_arguments

    work = Path(args.work)
    model_path = qwen2_half_billion(args.tokenizer, work / "model", args.tiny)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data = variable_length_pairs(tokenizer, args.pairs, seed=0, scale=0.1 if args.tiny else 1.0)
    on_gpu = torch.cuda.is_available()

    def trl_defaults() -> Any:
        arguments = trl_default_arguments(work / "trl", args.batch)
        return DPOTrainer(model=model_path, args=arguments, train_dataset=data, processing_class=tokenizer)

    settings = DPOSection(batch_size=args.batch, epochs=1, max_length=1024)

    def ours(settings_changes: dict[str, Any] | None = None, **config_changes: Any) -> Any:
        """Ours, or ours with some settings or DPOConfig fields changed: which of our levers buys what."""
        changed = settings.model_copy(update=settings_changes or {})
        config = dataclasses.replace(dpo_arguments(changed, work / "ours", 0, len(data)), **config_changes)
        return build_dpo_trainer(data, None, changed, model_path, work / "ours", seed=0, arguments=config)

    runs = [time_dpo("trl_defaults", trl_defaults, 1024), time_dpo("ours", ours, 1024)]
    if args.diagnose:
        runs += [
            time_dpo(
                "ours, reference pass at 4x the training batch size",
                lambda: ours(precompute_ref_batch_size=4 * args.batch),
                1024,
            ),
            time_dpo("ours, reference forward in every step", lambda: ours({"precompute_ref_log_probs": False}), 1024),
            time_dpo("ours, TRL's two rows per pair", lambda: ours({"shared_prompt": False}), 1024),
            time_dpo("ours, random order", lambda: ours({"group_by_length": False}), 1024),
            time_dpo(
                "ours + gradient checkpointing (TRL's default)", lambda: ours({"gradient_checkpointing": True}), 1024
            ),
        ]
        if on_gpu and importlib.util.find_spec("liger_kernel"):
            runs.append(time_dpo("ours + Liger layer kernels", lambda: ours(use_liger_kernel=True), 1024))
    ratio = runs[1]["tokens_per_s_wall"] / runs[0]["tokens_per_s_wall"]
    return {
        "benchmark": "dpo",
        "model": "Qwen2-0.5B-shaped (random weights)" if not args.tiny else "tiny Qwen2",
        "pairs": args.pairs,
        "batch": args.batch,
        "data": "prompt 32-256, answers 32-512 tokens (random text)",
        "runs": runs,
        "speedup_wall_ours_vs_trl_defaults": round(ratio, 3),
        **environment(),
    }


def bench_ppo(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import LlamaForCausalLM, LlamaModel

    from rlaif.config import PPOSection
    from rlaif.training.ppo import PPOTrainer, ValueModel, token_bonus_reward

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = smollm2_shaped_config(args.tiny)
    torch.manual_seed(0)
    policy = LlamaForCausalLM(config).to(device)
    reference = LlamaForCausalLM(config).to(device)
    reference.load_state_dict(policy.state_dict())
    value_model = ValueModel(LlamaModel(config), config.hidden_size).to(device)
    settings = PPOSection(
        batch_size=args.batch, mini_batch_size=max(1, args.batch // 4), ppo_epochs=2, max_new_tokens=args.new_tokens
    )
    trainer = PPOTrainer(policy, reference, value_model, token_bonus_reward(1000), settings, 0, None)
    rng = random.Random(0)
    prompts = [[rng.randrange(200, 49000) for _ in range(rng.randint(32, 128))] for _ in range(args.batch * 8)]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.step(rng.sample(prompts, args.batch))  # warm-up
    steps = []
    for _ in range(args.steps):
        stats = trainer.step(rng.sample(prompts, args.batch))
        steps.append(stats)
        print(json.dumps({k: round(v, 4) for k, v in stats.items()}), flush=True)
    seconds = sum(s["seconds"] for s in steps)
    return {
        "benchmark": "ppo",
        "model": "SmolLM2-135M-shaped policy + value model (random weights)" if not args.tiny else "tiny Llama",
        "batch": args.batch,
        "mini_batch": settings.mini_batch_size,
        "ppo_epochs": settings.ppo_epochs,
        "max_new_tokens": args.new_tokens,
        "steps_timed": args.steps,
        "steps_per_s": round(args.steps / seconds, 4),
        "rollouts_per_s": round(args.steps * args.batch / seconds, 2),
        "generated_tokens_per_s": round(sum(s["response_length"] for s in steps) * args.batch / seconds, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "bf16_autocast": trainer.bf16,
        **environment(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["dpo", "ppo"])
    parser.add_argument("--tokenizer", required=True, help="A folder with the SmolLM2 tokenizer files.")
    parser.add_argument("--out", required=True, help="Results JSON.")
    parser.add_argument("--work", default="/tmp/rlaif-bench", help="Scratch folder for the models.")
    parser.add_argument("--pairs", type=int, help="DPO pairs (default 1024; 64 with --tiny).")
    parser.add_argument("--batch", type=int, help="Batch size (default 16; 8 with --tiny).")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--tiny", action="store_true", help="Tiny models and data: a quick check on a CPU.")
    parser.add_argument("--diagnose", action="store_true", help="DPO: also time ours with one lever changed at a time.")
    args = parser.parse_args()
    if args.pairs is None:
        args.pairs = 64 if args.tiny else 1024
    if args.batch is None:
        args.batch = 8 if args.tiny else 16
    shutil.rmtree(args.work, ignore_errors=True)
    Path(args.work).mkdir(parents=True)
    results = bench_dpo(args) if args.which == "dpo" else bench_ppo(args)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
