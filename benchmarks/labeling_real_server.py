"""Labeling throughput against a real model server: `transformers serve` with SmolLM2-135M-Instruct on the CPU.

    .venv/bin/python benchmarks/labeling_real_server.py            # 16 pairs, concurrency 4, 3 repeats (~10 min)

The same pairs (the peers' data generator) are judged in both orders, alternately by:
- `plain`: the peer harness's `baseline_openai.py` (one chat request per order, max_tokens 16);
- `rlaif`: `rlaif label` in verdict mode through chat requests (max_tokens 16), as the peer;
- `rlaif-prefill`: `rlaif label` in verdict mode with `judge.prompts_per_request`, which on this server
  means one prompt per completions request with the reply prefilled up to the verdict (`[[`), so the
  verdict is the first token and the reply stops at `]]`.
Each is timed as a whole process against a Prefect server of its own. A reply without a verdict is asked
again once by rlaif (the peer records nothing), so rlaif's requests are counted too and the comparison
is given per pair and per request.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (  # noqa: E402
    RLAIF,
    ROOT,
    judge_section,
    median,
    peer_harness,
    prefect_server,
    provenance,
    scratch_dir,
    synthetic_pairs,
    timed_process,
    write_ready_run,
    write_results,
)
from rlaif.generation.server_launcher import ManagedServer  # noqa: E402
from rlaif.models import prepare_model  # noqa: E402

JUDGE_REQUESTS = re.compile(r"judge: (\d+) requests")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/labeling_real_server_smollm2.json"))
    args = parser.parse_args()

    workdir = scratch_dir("rlaif-real-")
    harness = peer_harness(workdir)
    pairs = synthetic_pairs(harness, args.pairs)
    model = str(prepare_model("smollm2-135m-instruct"))
    runs: list[dict[str, Any]] = []
    with ManagedServer("transformers", model, startup_timeout_s=600) as server, prefect_server(workdir) as (env, _):
        for repeat in range(args.repeats):
            for contender in ("plain", "rlaif", "rlaif-prefill"):
                if contender == "plain":
                    command = [sys.executable, "baseline_openai.py", "--concurrency", str(args.concurrency)]
                    command += ["--pairs", str(args.pairs), "--base-url", server.base_url, "--model", model]
                    cwd = harness
                else:
                    folder = scratch_dir(f"{contender}-real-")
                    prefill = {"prompts_per_request": 8, "chat_template_from": model}
                    prefill = prefill if contender == "rlaif-prefill" else {}
                    judge = judge_section(server.base_url, model, args.concurrency, timeout_s=600, **prefill)
                    command, cwd = [RLAIF, "label", str(write_ready_run(folder, pairs, judge))], folder
                timing = timed_process(command, None, env, cwd)
                if contender == "plain":
                    own = json.loads(timing.stdout.strip().splitlines()[-1])
                    requests, parsed = own["requests"], own["parsed"]
                else:
                    report = json.loads((folder / "run" / "report.json").read_text())
                    requests = int(JUDGE_REQUESTS.findall(timing.stderr)[-1])
                    parsed = report["judged_ok"]
                row = {
                    "contender": contender,
                    "repeat": repeat,
                    "wall_s": timing.wall_s,
                    "pairs_per_s": round(args.pairs / timing.wall_s, 3),
                    "requests": requests,
                    "requests_per_s": round(requests / timing.wall_s, 3),
                    "parsed": parsed,
                }
                runs.append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for contender in ("plain", "rlaif", "rlaif-prefill"):
        mine = [r for r in runs if r["contender"] == contender]
        summary[contender] = {
            "pairs_per_s": median([r["pairs_per_s"] for r in mine]),
            "requests_per_s": median([r["requests_per_s"] for r in mine]),
            "requests": median([r["requests"] for r in mine]),
            "parsed": median([r["parsed"] for r in mine]),
        }
    for contender in ("rlaif", "rlaif-prefill"):
        summary[f"{contender}/plain pairs_per_s"] = round(
            summary[contender]["pairs_per_s"] / summary["plain"]["pairs_per_s"], 2
        )
    document = {
        "benchmark": "labeling throughput against transformers serve with SmolLM2-135M-Instruct (CPU)",
        **provenance(),
        "pairs": args.pairs,
        "concurrency": args.concurrency,
        "summary": summary,
        "runs": runs,
    }
    print(json.dumps(summary, indent=2))
    write_results(args.out, document)


if __name__ == "__main__":
    main()
