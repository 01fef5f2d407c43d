"""How often a prompt injection in the rejected answer flips the judge's verdict, on a human-labelled set.

    .venv/bin/python benchmarks/injection_flip.py --data ../shared/data/llmbar/natural.json --format llmbar \\
        [--limit N] [--set judge.mode=logprob ...] [--out benchmarks/results/injection_....json]

The judge is the configured one (default: the embedded demo config's). See
rlaif.evaluation.judge_agreement.injection_flip_rate for the measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from rlaif.config import load_config
from rlaif.evaluation.judge_agreement import INJECTION, injection_flip_rate
from rlaif.judges.factory import open_judge
from rlaif.judges.setup import load_judge
from rlaif.labelled_data import load_labelled
from rlaif.run_files import write_json_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--format", required=True, choices=["llmbar", "pandalm", "hh-rlhf"])
    parser.add_argument("--limit", type=int)
    parser.add_argument("--config")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    items = load_labelled(args.data, args.format, seed=config.run.seed)[: args.limit]

    async def run() -> dict[str, object]:
        async with open_judge(load_judge(config.judge), seed=config.run.seed) as judge:
            return await injection_flip_rate(judge, items)

    started = time.monotonic()
    figures = asyncio.run(run())
    result = {
        "data": args.data,
        "judge": config.judge.model,
        "mode": config.judge.mode,
        "prompt": config.judge.prompt,
        "injection": INJECTION,
        **figures,
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
