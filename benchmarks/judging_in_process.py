"""In-process judging: the transformers backend running each batch's shared opening once, against the same
backend running every prompt whole; same judge, same pairs, same run, in alternating order.

    .venv/bin/python benchmarks/judging_in_process.py --data ../shared/data/llmbar/natural.json --format llmbar \
        --limit 24 --repeats 3 --out benchmarks/results/judging_cpu_smollm2.json

The judge is the demo's: SmolLM2-135M-Instruct (a known name is prepared on first use) in logprob mode with
the default `helpfulness` prompt, both orders of every pair, 8 prompts per batch. Its prompts share the
chat template's opening, the judge's system prompt and its instructions. Reports seconds and pairs/s of
each (the median run, every run beside it) and the largest difference in p(A) between the two, which
should be float rounding only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import median_runs, provenance  # noqa: E402


def main() -> None:
    import torch
    import transformers

    from rlaif.evaluation.judge_agreement import as_pair
    from rlaif.generation.transformers_backend import SHARED_OPENING_MIN_TOKENS, TransformersBackend
    from rlaif.judges.pairwise import PairwiseLLMJudge
    from rlaif.judges.templates import load_template
    from rlaif.labelled_data import load_labelled
    from rlaif.models import resolve_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="A human-labelled file (see ../shared/data/README.md).")
    parser.add_argument("--format", required=True, choices=["llmbar", "pandalm", "hh-rlhf"])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="A folder or a known model name.")
    parser.add_argument("--limit", type=int, default=24, help="Pairs judged per run (both orders each).")
    parser.add_argument("--batch", type=int, default=8, help="Prompts per forward pass (the demo's judge: 8).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    pairs = [pair for item in load_labelled(args.data, args.format) if (pair := as_pair(item))][: args.limit]
    backend = TransformersBackend(resolve_model(args.model, say=print), batch_size=args.batch)
    judge = PairwiseLLMJudge(backend, load_template("helpfulness"), "logprob", name=args.model)
    p_a: dict[bool, list[float | None]] = {}

    def run(shared_opening: bool) -> dict[str, Any]:
        backend.shared_opening_min_tokens = SHARED_OPENING_MIN_TOKENS if shared_opening else sys.maxsize
        before = backend.usage.prompt_tokens
        started = time.perf_counter()
        judgments = asyncio.run(judge.judge(pairs))
        seconds = time.perf_counter() - started
        p_a[shared_opening] = [judgment.p_a for judgment in judgments]
        return {
            "name": "shared opening once per batch" if shared_opening else "every prompt whole",
            "seconds": round(seconds, 2),
            "pairs": len(pairs),
            "prompt_tokens": backend.usage.prompt_tokens - before,
            "pairs_per_s": round(len(pairs) / seconds, 3),
        }

    runs = median_runs([lambda: run(False), lambda: run(True)], args.repeats, key="pairs_per_s")
    differences = [abs(a - b) for a, b in zip(p_a[True], p_a[False], strict=True) if a is not None and b is not None]
    document = {
        "benchmark": "in-process logprob judging, shared opening once per batch vs every prompt whole",
        **provenance({"torch": torch.__version__, "transformers": transformers.__version__}),
        "data": args.data,
        "model": args.model,
        "batch": args.batch,
        "repeats": args.repeats,
        "runs": runs,
        "ratio_shared_vs_whole": round(runs[1]["pairs_per_s"] / runs[0]["pairs_per_s"], 3),
        "max_p_a_difference": max(differences, default=None),
        "judged_both_ways": len(differences),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
