"""Labeling at scale: 1k, 10k and 100k pairs through `rlaif label` on the fake endpoint.

    .venv/bin/python benchmarks/labeling_scale.py            # 1k, 10k, 100k (about 10 min)
    .venv/bin/python benchmarks/labeling_scale.py --pairs 1000 10000 --mode verdict

For each size: wall time of the whole process, pairs per second, peak resident memory of the process,
requests the endpoint served, and the Prefect task runs of the flow run (asked of the Prefect server);
then the same run merged (`rlaif merge --on-pending judge`): wall time and peak resident memory.
Cost should grow linearly with the pairs and memory stay flat: prompts, candidates, pairs and judgments
are streamed shard by shard, never held for the whole run, and the merge streams its rows to disk.
Candidates are written beforehand as finished sampling shards (as in labeling_throughput.py); the run
pairs, judges both orders, routes and enqueues.
`--mode batched` (default): logprob judging, `judge.prompts_per_request` prompts per completions request;
`--mode verdict`: one chat request per order, as the peers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (  # noqa: E402
    RLAIF,
    ROOT,
    fake_endpoint,
    peer_harness,
    prefect_server,
    provenance,
    scratch_dir,
    synthetic_pairs,
    timed_process,
    write_ready_run,
    write_results,
)
from benchmarks.labeling_throughput import judge_for  # noqa: E402

FLOW_RUN = re.compile(r"flow-run/([0-9a-f-]{36})")


def task_runs_of(api_url: str, stderr: str) -> int:
    """How many task runs the run's flow run had, asked of the Prefect server."""
    found = FLOW_RUN.search(stderr)
    if not found:
        raise RuntimeError("no flow run id in the output of rlaif label")
    body = json.dumps({"flow_runs": {"id": {"any_": [found.group(1)]}}}).encode()
    request = urllib.request.Request(
        f"{api_url}/task_runs/count", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(json.loads(response.read()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--mode", choices=["batched", "verdict"], default="batched")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--prompts-per-request", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/labeling_scale_fake.json"))
    args = parser.parse_args()

    workdir = scratch_dir("rlaif-scale-")
    harness = peer_harness(workdir)
    contender = "rlaif-batched" if args.mode == "batched" else "rlaif"
    rows: list[dict[str, Any]] = []
    with fake_endpoint(workdir) as endpoint, prefect_server(workdir) as (env, _):
        for count in args.pairs:
            folder = scratch_dir(f"rlaif-scale-{count}-")
            judge = judge_for(endpoint, contender, args.concurrency, args.prompts_per_request)
            config = write_ready_run(folder, synthetic_pairs(harness, count), judge)
            endpoint.prepare(0)
            timing = timed_process([RLAIF, "label", str(config)], endpoint, env, folder)
            report = json.loads((folder / "run" / "report.json").read_text())
            if report["judged_ok"] != count:
                raise RuntimeError(f"{count} pairs: {report['judged_ok']} judged ok")
            row = {
                "pairs": count,
                "wall_s": timing.wall_s,
                "pairs_per_s": round(count / timing.wall_s, 1),
                "steady_pairs_per_s": round(count / timing.steady_s, 1) if timing.steady_s else None,
                "startup_s": timing.startup_s,
                "shutdown_s": timing.shutdown_s,
                "cpu_s": timing.cpu_s,
                "peak_rss_mib": timing.peak_rss_mib,
                "server_requests": timing.server["requests"],
                "server_prompts": timing.server["prompts"],
                "task_runs": task_runs_of(env["PREFECT_API_URL"], timing.stderr),
                "routed": report["routed_to_review"],
            }
            merged = timed_process([RLAIF, "merge", str(folder / "run"), "--on-pending", "judge"], None, env, folder)
            row.update(merge_wall_s=merged.wall_s, merge_peak_rss_mib=merged.peak_rss_mib)
            rows.append(row)
            print(json.dumps(row), flush=True)
    document = {
        "benchmark": f"labeling at scale on the fake endpoint, mode {args.mode}, concurrency {args.concurrency}",
        **provenance(),
        "mode": args.mode,
        "concurrency": args.concurrency,
        "prompts_per_request": args.prompts_per_request if args.mode == "batched" else 1,
        "rows": rows,
    }
    write_results(args.out, document)


if __name__ == "__main__":
    main()
