"""DPO peak memory on the CPU: ours against TRL's defaults, each with gradient checkpointing on and off.

    .venv/bin/python benchmarks/dpo_memory_cpu.py        # ~20 min on 2 cores

TRL's DPOConfig turns gradient checkpointing on by default (each layer's activations are recomputed in
the backward pass instead of kept); ours leaves it off (`train.dpo.gradient_checkpointing`). This
measures what that choice costs in memory and time, on the model of the GPU benchmark
(benchmarks/training_gpu.py: Qwen2-0.5B-shaped, random weights) with pairs at half its lengths (prompt
16-128, answers 16-256 tokens), 8 pairs, batch 2, one epoch. Each run is a process of its own, so its
peak resident memory is its own; set-up (loading, tokenizing, ours' reference pass) and training are
reported apart.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import ROOT, provenance, write_results  # noqa: E402
from benchmarks.training_gpu import qwen2_half_billion, trl_default_arguments, variable_length_pairs  # noqa: E402

RUNS = ("trl_defaults", "trl_without_checkpointing", "ours", "ours_with_checkpointing")
PAIRS, BATCH, SCALE = 8, 2, 0.5


def peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def build_trainer(name: str, model_path: str, work: Path) -> Any:
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    from rlaif.config import DPOSection
    from rlaif.training.dpo import build_dpo_trainer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data = variable_length_pairs(tokenizer, PAIRS, seed=0, scale=SCALE)
    if name.startswith("trl"):
        checkpointing = {"gradient_checkpointing": False} if name == "trl_without_checkpointing" else {}
        arguments = trl_default_arguments(work / name, BATCH, **checkpointing)
        return DPOTrainer(model=model_path, args=arguments, train_dataset=data, processing_class=tokenizer)
    settings = DPOSection(batch_size=BATCH, epochs=1, gradient_checkpointing=name == "ours_with_checkpointing")
    return build_dpo_trainer(data, None, settings, model_path, work / name, seed=0)


def measure(name: str, model_path: str, work: Path) -> dict[str, Any]:
    """One run in this process: set-up and training timed apart, peak RSS after each."""
    started = time.perf_counter()
    trainer = build_trainer(name, model_path, work)
    setup_s, setup_peak = time.perf_counter() - started, peak_rss_gib()
    trained = time.perf_counter()
    result = trainer.train()
    return {
        "name": name,
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "setup_s": round(setup_s, 1),
        "train_s": round(time.perf_counter() - trained, 1),
        "steps": result.global_step,
        "peak_rss_setup_gib": setup_peak,
        "peak_rss_gib": peak_rss_gib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default=str(ROOT / ".models" / "smollm2-135m-instruct"))
    parser.add_argument("--work", default="/tmp/rlaif-dpo-memory", help="Scratch folder for the model.")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/dpo_memory_cpu.json"))
    parser.add_argument("--run", choices=RUNS, help=argparse.SUPPRESS)  # one run, in the child process
    args = parser.parse_args()
    work = Path(args.work)
    model_path = str(work / "model")
    if args.run:
        print(json.dumps(measure(args.run, model_path, work)), flush=True)
        return
    if not Path(args.tokenizer).is_dir():
        raise SystemExit(f"no tokenizer folder at {args.tokenizer}: run `.venv/bin/rlaif models prepare` first")
    work.mkdir(parents=True, exist_ok=True)
    qwen2_half_billion(args.tokenizer, Path(model_path), tiny=False)
    runs = []
    for name in RUNS:
        command = [sys.executable, "-W", "ignore", __file__, "--run", name, "--work", str(work)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"run {name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    by_name = {run["name"]: run for run in runs}
    summary = {
        "ours / trl_defaults peak": round(by_name["ours"]["peak_rss_gib"] / by_name["trl_defaults"]["peak_rss_gib"], 2),
        "checkpointing saves, trl GiB": round(
            by_name["trl_without_checkpointing"]["peak_rss_gib"] - by_name["trl_defaults"]["peak_rss_gib"], 2
        ),
        "checkpointing saves, ours GiB": round(
            by_name["ours"]["peak_rss_gib"] - by_name["ours_with_checkpointing"]["peak_rss_gib"], 2
        ),
    }
    import torch
    import transformers
    import trl

    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}
    document = {
        "benchmark": "DPO peak memory on the CPU, gradient checkpointing on and off",
        **provenance(versions),
        "model": "Qwen2-0.5B-shaped (random weights)",
        "pairs": PAIRS,
        "batch": BATCH,
        "data": "prompt 16-128, answers 16-256 tokens (random text)",
        "summary": summary,
        "runs": runs,
    }
    print(json.dumps(summary, indent=2))
    write_results(args.out, document)


if __name__ == "__main__":
    main()
