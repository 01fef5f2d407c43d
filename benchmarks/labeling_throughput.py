"""Labeling throughput: this pipeline against the plain openai loop and distilabel, same endpoint, same run.

    .venv/bin/python benchmarks/labeling_throughput.py                     # 1,000 pairs, 16 and 64 in flight (~15 min)
    .venv/bin/python benchmarks/labeling_throughput.py --concurrency 16 --delay-ms 0 --repeats 1   # a quick look

Every contender judges the same pairs in both orders (the peers' own data generator: a 20-word question,
two 80-word answers) against the fake endpoint (benchmarks/fake_openai_server.py: the delay is charged per
prompt and prompts run side by side, as on a batching server), with retries off and fresh caches, at each
concurrency and delay, `--repeats` times, the contenders' order rotated every repeat. Concurrency is the
prompts in flight, the same for every contender:
- `rlaif`: `rlaif label` as a process against a Prefect server (started once, as a team runs one): the
  real flows with their task runs, both orders, routing into the SQLite review queue and the written
  shards. The candidates are written beforehand as finished sampling shards, so the run pairs, judges and
  routes. Verdict mode through chat requests, as the peers.
- `rlaif-logprob`: the same in logprob mode (p(A) from the label token's log-probabilities), one prompt per
  request: what the mode alone changes.
- `rlaif-batched`: logprob mode with `judge.prompts_per_request` (many prompts per completions request,
  what vLLM and SGLang take) at the same prompts in flight: concurrency C is C / k requests of k prompts
  (k = min(--prompts-per-request, C)); not run at concurrency 1, where it is `rlaif-logprob`. What it
  buys is fewer round trips, not server time.
- `plain`: the peer harness's `baseline_openai.py` (AsyncOpenAI + semaphore), from a scratch copy.
- `distilabel`: the peer harness's `distilabel_bench.py` (UltraFeedback + OpenAILLM, distilabel 1.5.3 in
  `.bench/venv-distilabel`, made on first use, openai pinned), from a scratch copy.

Each is timed as a whole process (pairs/s end to end = pairs / process wall), and split by the server's
first and last request into start-up, steady state and shutdown; rlaif's start-up is further split into
the interpreter, its imports, and the rest (config, the flow run, planning). Concurrency is checked at
the server: the peak requests in flight, and the prompts in flight averaged over the active window (how
much of the nominal concurrency a client achieved). Medians over the
repeats; ratios of the medians. JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from dataclasses import asdict
from importlib import metadata
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
    startup_steps,
    synthetic_pairs,
    timed_process,
    write_ready_run,
    write_results,
)

CONTENDERS = ("rlaif", "rlaif-logprob", "rlaif-batched", "plain", "distilabel")
OURS = ("rlaif", "rlaif-logprob", "rlaif-batched")
PEERS = ("plain", "distilabel")


def batch_shape(concurrency: int, batch: int) -> tuple[int, int]:
    """(requests in flight, prompts per request) for `concurrency` prompts in flight, at most `batch` each."""
    per_request = max(1, min(batch, concurrency))
    return max(1, concurrency // per_request), per_request


def judge_for(endpoint: FakeEndpoint, contender: str, concurrency: int, batch: int) -> dict[str, Any]:
    """rlaif's judge config for a contender: verdict mode as the peers, logprob, or logprob batched."""
    if contender == "rlaif-batched":
        requests, per_request = batch_shape(concurrency, batch)
        return judge_section(
            endpoint.base_url,
            "fake-judge",
            requests,
            mode="logprob",
            prompts_per_request=per_request,
            chat_template_from="smollm2-135m-instruct",
        )
    if contender == "rlaif-logprob":
        return judge_section(endpoint.base_url, "fake-judge", concurrency, mode="logprob")
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
    if contender in OURS:
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
        "server_mean_prompts_in_flight": timing.server.get("mean_prompts_in_flight"),
    }
    if contender in OURS:
        report = json.loads((folder / "run" / "report.json").read_text())
        result.update(judged_ok=report["judged_ok"], routed=report["routed_to_review"])
        if report["judged_ok"] != count:
            raise RuntimeError(f"{contender}: {report['judged_ok']} of {count} pairs judged ok: {report}")
    else:
        own = json.loads(timing.stdout.strip().splitlines()[-1])
        result.update(parsed=own.get("parsed"))
    return result


def peer_versions() -> dict[str, dict[str, str]]:
    """The versions each contender ran with: the plain loop runs in this environment, distilabel in its own."""
    script = "import importlib.metadata as m, json, platform; print(json.dumps({'python': platform.python_version(), "
    script += "**{p: m.version(p) for p in ('distilabel', 'openai')}}))"
    distilabel = json.loads(
        subprocess.run([str(distilabel_python()), "-c", script], check=True, capture_output=True, text=True).stdout
    )
    plain = {"python": platform.python_version(), "openai": metadata.version("openai")}
    return {"plain": plain, "distilabel": distilabel}


def order_of(contenders: list[str], repeat: int) -> list[str]:
    """The contenders rotated by `repeat`, so that each goes first as often as the others over the repeats."""
    shift = repeat % len(contenders)
    return contenders[shift:] + contenders[:shift]


def progress_line(result: dict[str, Any]) -> str:
    return (
        f"{result['contender']:14} c={result['concurrency']:<3} delay={result['delay_ms']:g} ms "
        f"{result['pairs_per_s']:8.1f} pairs/s (start-up {result['startup_s']} s, steady {result['steady_s']} s, "
        f"shutdown {result['shutdown_s']} s, requests in flight: peak {result['server_peak_in_flight']}, "
        f"prompts in flight: mean {result['server_mean_prompts_in_flight']})"
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
                    "mean_prompts_in_flight": median([r["server_mean_prompts_in_flight"] or 0 for r in mine]),
                    "repeats": len(mine),
                }
        for ours in OURS:
            for peer in PEERS:
                if ours in row and peer in row:
                    row[f"{ours}/{peer}"] = round(row[ours]["pairs_per_s"] / row[peer]["pairs_per_s"], 2)
        table.append(row)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
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
                    for contender in order_of(args.contenders, repeat):
                        if contender == "rlaif-batched" and concurrency < 2:
                            continue  # one prompt in flight: one prompt per request, rlaif-logprob itself
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
    startup = startup_steps(args.repeats)
    for row in table:
        if "rlaif" in row:  # what is left of rlaif's start-up: config, the flow run, planning, opening the clients
            imports = startup["interpreter_s"] + startup["cli_imports_s"] + startup["flow_imports_s"]
            row["rlaif"]["startup_breakdown"] = {**startup, "rest_s": round(row["rlaif"]["startup_s"] - imports, 3)}
    document = {
        "benchmark": "labeling throughput against the fake endpoint, both orders, retries off, fresh caches",
        **provenance(),
        "pairs": args.pairs,
        "prompts_per_request": args.prompts_per_request,
        "prefect_server_startup_s": prefect_startup_s,
        "contender_versions": peer_versions() if "distilabel" in args.contenders else None,
        "startup_steps": startup,
        "summary": table,
        "runs": runs,
    }
    print(json.dumps(table, indent=2))
    write_results(args.out, document)


if __name__ == "__main__":
    main()
