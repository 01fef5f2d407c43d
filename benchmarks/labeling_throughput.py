"""Labeling throughput: this pipeline against the plain openai loop and distilabel, same endpoint, same run.

    .venv/bin/python benchmarks/labeling_throughput.py                     # the whole matrix (about 25 min)
    .venv/bin/python benchmarks/labeling_throughput.py --concurrency 16 --delay-ms 0 --repeats 1   # a quick look

Every contender judges the same pairs in both orders (the peers' own data generator: a 20-word question,
two 80-word answers) against the fake endpoint (benchmarks/fake_openai_server.py), with retries off and
fresh caches, at each concurrency and server delay, `--repeats` times:
- `rlaif`: `rlaif label` as a process against a Prefect server (started once, as a team runs one): the
  real flows with their task runs, both orders, routing into the SQLite review queue and the written
  shards. The candidates are written beforehand as finished sampling shards, so the run pairs, judges and
  routes. Verdict mode through chat requests, as the peers.
- `rlaif-batched`: the same, in logprob mode with `judge.prompts_per_request` (many prompts per
  completions request, what vLLM and SGLang take), the pipeline's way past the per-request ceiling.
- `plain`: the peer harness's `baseline_openai.py` (AsyncOpenAI + semaphore), from a scratch copy.
- `distilabel`: the peer harness's `distilabel_bench.py` (UltraFeedback + OpenAILLM, distilabel 1.5.3 in
  `.bench/venv-distilabel`, made on first use), from a scratch copy.

Each is timed as a whole process (pairs/s end to end = pairs / process wall), and split by the server's
first and last request into start-up, steady state and shutdown. Concurrency is checked at the server
(peak requests in flight). Medians over the repeats; ratios of the medians. JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (  # noqa: E402
    RLAIF,
    ROOT,
    FakeEndpoint,
    distilabel_python,
    fake_endpoint,
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

CONTENDERS = ("rlaif", "rlaif-batched", "plain", "distilabel")


def judge_for(endpoint: FakeEndpoint, contender: str, concurrency: int, batch: int) -> dict[str, Any]:
    """rlaif's judge config for a contender: verdict mode as the peers, or logprob with many prompts per request."""
    if contender == "rlaif-batched":
        return judge_section(
            endpoint.base_url,
            "fake-judge",
            concurrency,
            mode="logprob",
            prompts_per_request=batch,
            chat_template_from="smollm2-135m-instruct",
        )
    return judge_section(endpoint.base_url, "fake-judge", concurrency)


def run_once(
    contender: str,
    pairs: list[dict[str, Any]],
    concurrency: int,
    delay_ms: float,
    endpoint: FakeEndpoint,
    env: dict[str, str],
    harness: Path,
    workdir: Path,
    batch: int,
) -> dict[str, Any]:
    count = len(pairs)
    if contender.startswith("rlaif"):
        folder = scratch_dir(f"{contender}-c{concurrency}-d{delay_ms:g}-")
        config = write_ready_run(folder, pairs, judge_for(endpoint, contender, concurrency, batch))
        command, cwd = [RLAIF, "label", str(config)], folder
    elif contender == "plain":
        command = [sys.executable, "baseline_openai.py", "--concurrency", str(concurrency), "--pairs", str(count)]
        command += ["--base-url", endpoint.base_url]
        cwd = harness
    else:
        command = [str(distilabel_python()), "distilabel_bench.py", "--concurrency", str(concurrency)]
        command += ["--pairs", str(count), "--delay-ms", str(delay_ms)]
        cwd = harness
    endpoint.prepare(delay_ms)
    timing = timed_process(command, endpoint, env, cwd)
    result: dict[str, Any] = {
        "contender": contender,
        "concurrency": concurrency,
        "delay_ms": delay_ms,
        "pairs": count,
        "pairs_per_s": round(count / timing.wall_s, 1),
        "steady_pairs_per_s": round(count / timing.steady_s, 1) if timing.steady_s else None,
        **{k: v for k, v in asdict(timing).items() if k not in ("stdout", "stderr", "server")},
        "server_requests": timing.server.get("requests"),
        "server_prompts": timing.server.get("prompts"),
        "server_peak_in_flight": timing.server.get("max_in_flight"),
    }
    if contender.startswith("rlaif"):
        report = json.loads((folder / "run" / "report.json").read_text())
        result.update(judged_ok=report["judged_ok"], routed=report["routed_to_review"])
        if report["judged_ok"] != count:
            raise RuntimeError(f"{contender}: {report['judged_ok']} of {count} pairs judged ok: {report}")
    else:
        own = json.loads(timing.stdout.strip().splitlines()[-1])
        result.update(parsed=own.get("parsed"))
    return result


def progress_line(result: dict[str, Any]) -> str:
    return (
        f"{result['contender']:14} c={result['concurrency']:<3} delay={result['delay_ms']:g} ms "
        f"{result['pairs_per_s']:8.1f} pairs/s (start-up {result['startup_s']} s, steady {result['steady_s']} s, "
        f"shutdown {result['shutdown_s']} s, peak in flight {result['server_peak_in_flight']})"
    )


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per contender and setting, with the ratios of rlaif's medians to each peer's."""
    keys = sorted({(r["concurrency"], r["delay_ms"]) for r in runs})
    table = []
    for concurrency, delay in keys:
        row: dict[str, Any] = {"concurrency": concurrency, "delay_ms": delay}
        for contender in CONTENDERS:
            mine = [
                r for r in runs if (r["contender"], r["concurrency"], r["delay_ms"]) == (contender, concurrency, delay)
            ]
            if mine:
                row[contender] = {
                    "pairs_per_s": median([r["pairs_per_s"] for r in mine]),
                    "steady_pairs_per_s": median([r["steady_pairs_per_s"] or 0 for r in mine]),
                    "startup_s": median([r["startup_s"] or 0 for r in mine]),
                    "shutdown_s": median([r["shutdown_s"] or 0 for r in mine]),
                    "peak_in_flight": max(r["server_peak_in_flight"] or 0 for r in mine),
                    "repeats": len(mine),
                }
        for ours in ("rlaif", "rlaif-batched"):
            for peer in ("plain", "distilabel"):
                if ours in row and peer in row:
                    row[f"{ours}/{peer}"] = round(row[ours]["pairs_per_s"] / row[peer]["pairs_per_s"], 2)
        table.append(row)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--delay-ms", type=float, nargs="+", default=[0.0, 50.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--prompts-per-request", type=int, default=64, help="rlaif-batched: prompts per request")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/labeling_throughput_fake.json"))
    args = parser.parse_args()

    workdir = scratch_dir("rlaif-bench-")
    harness = peer_harness(workdir)
    if "distilabel" in args.contenders:
        distilabel_python()
    pairs = synthetic_pairs(harness, args.pairs)
    runs: list[dict[str, Any]] = []
    with fake_endpoint(workdir) as endpoint, prefect_server(workdir) as (env, prefect_startup_s):
        print(f"Prefect server up in {prefect_startup_s} s; fake endpoint at {endpoint.base_url}", flush=True)
        for delay in args.delay_ms:
            for concurrency in args.concurrency:
                for repeat in range(args.repeats):
                    for contender in args.contenders:
                        result = run_once(
                            contender,
                            pairs,
                            concurrency,
                            delay,
                            endpoint,
                            env,
                            harness,
                            workdir,
                            args.prompts_per_request,
                        )
                        result["repeat"] = repeat
                        runs.append(result)
                        print(progress_line(result), flush=True)
    table = summarize(runs)
    document = {
        "benchmark": "labeling throughput against the fake endpoint, both orders, retries off, fresh caches",
        **provenance(),
        "pairs": args.pairs,
        "prompts_per_request": args.prompts_per_request,
        "prefect_server_startup_s": prefect_startup_s,
        "summary": table,
        "runs": runs,
    }
    print(json.dumps(table, indent=2))
    write_results(args.out, document)


if __name__ == "__main__":
    main()
