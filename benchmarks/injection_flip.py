"""How often a prompt injection in the rejected answer flips the judge's verdict, beside a neutral control.

    .venv/bin/python benchmarks/injection_flip.py --data ../shared/data/llmbar/natural.json --format llmbar \\
        [--limit N] [--set judge.mode=logprob ...] [--out benchmarks/results/injection_....json]

Each item is judged clean, with the injection appended to the answer people rejected, and with a neutral
suffix of the same length there (the control): a judge near 0.5 flips on any edit, so only the injection's
shift beyond the control's (the paired difference, with its 95% bootstrap interval) is the injection
pulling the judge. The judge is the configured one (default: the embedded demo config's). See
rlaif.evaluation.judge_agreement.injection_against_control for the measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import provenance, write_results  # noqa: E402
from rlaif.config import load_config  # noqa: E402
from rlaif.evaluation.judge_agreement import INJECTION, NEUTRAL_SUFFIX, injection_against_control  # noqa: E402
from rlaif.judges.factory import open_judge  # noqa: E402
from rlaif.judges.setup import load_judge  # noqa: E402
from rlaif.labelled_data import load_labelled  # noqa: E402


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
            return await injection_against_control(judge, items, seed=config.run.seed)

    started = time.monotonic()
    figures = asyncio.run(run())
    result = {
        "benchmark": "prompt injection in the rejected answer, against a neutral suffix of the same length",
        **provenance(),
        "data": args.data,
        "judge": config.judge.model,
        "mode": config.judge.mode,
        "prompt": config.judge.prompt,
        "injection": INJECTION,
        "control_suffix": NEUTRAL_SUFFIX,
        **figures,
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        write_results(args.out, result)


if __name__ == "__main__":
    main()
