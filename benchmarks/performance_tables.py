"""Markdown tables of the labeling, sampling and judging benchmarks' results files, for the README's
Performance section.

    .venv/bin/python benchmarks/performance_tables.py

Reads benchmarks/results/labeling_throughput_fake*.json, labeling_scale_fake.json,
labeling_real_server_smollm2.json, judge_quality.json, sampling_cpu_smollm2.json,
judging_cpu_smollm2.json and reliability.json (the Reliability section's, written by `make reliability`;
those that exist) and prints their tables, so that what the README shows is what the files hold.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _runs(repeats: int) -> str:
    return f"medians of {repeats} runs" if repeats > 1 else "one run each"


def throughput_table(document: dict[str, Any]) -> str:
    """Pairs/s end to end per contender at equal prompts in flight, the ratios, and the concurrency achieved."""
    lines = [
        f"{document['pairs']:,} pairs, both orders; {_runs(document['summary'][0]['rlaif']['repeats'])}; "
        f"{document['machine']}; {document['date']}",
        "",
        "| prompts in flight | delay ms per prompt | rlaif | rlaif-logprob | rlaif-batched | plain | distilabel "
        "| rlaif / plain | rlaif / distilabel | batched / plain | steady: rlaif, batched, plain "
        "| mean in flight: rlaif, plain, distilabel | rlaif start-up + shutdown |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in document["summary"]:

        def rate(contender: str, key: str = "pairs_per_s", row: dict[str, Any] = row) -> str:
            return _cell(row[contender][key]) if contender in row else "n/a"

        overhead = f"{row['rlaif']['startup_s']:.1f} + {row['rlaif']['shutdown_s']:.1f} s" if "rlaif" in row else "n/a"
        steady = ", ".join(rate(c, "steady_pairs_per_s") for c in ("rlaif", "rlaif-batched", "plain"))
        in_flight = ", ".join(rate(c, "mean_prompts_in_flight") for c in ("rlaif", "plain", "distilabel"))
        lines.append(
            f"| {row['concurrency']} | {row['delay_ms']:g} | {rate('rlaif')} | {rate('rlaif-logprob')} | "
            f"{rate('rlaif-batched')} | {rate('plain')} | {rate('distilabel')} | {_cell(row.get('rlaif/plain'), 2)} | "
            f"{_cell(row.get('rlaif/distilabel'), 2)} | {_cell(row.get('rlaif-batched/plain'), 2)} | {steady} | "
            f"{in_flight} | {overhead} |"
        )
    return "\n".join(lines)


def startup_table(document: dict[str, Any]) -> str:
    """rlaif label's time to its first request in each setting, and the steps it is made of."""
    steps = document["steps_s"]
    first = document["first_request_s"]
    lines = [
        f"{document['pairs']} pairs; medians of {document['repeats']} runs; {document['machine']}; {document['date']}",
        "",
        "| `rlaif label` to its first request | seconds |",
        "|---|---|",
        f"| with a running Prefect server | {first['running server']:.2f} |",
        f"| - the interpreter | {steps['interpreter_s']:.2f} |",
        f"| - the command's imports (config, review store, merge) | {steps['cli_imports_s']:.2f} |",
        f"| - the flow's imports (Prefect, openai) | {steps['flow_imports_s']:.2f} |",
        f"| - the rest (flow run, planning, clients) | {steps['rest_with_running_server_s']:.2f} |",
        f"| with a temporary Prefect server (PREFECT_API_URL unset) | {first['temporary server']:.2f} |",
        f"| - the temporary server's start, measured alone | {steps['temporary_server_start_s']:.2f} |",
        f"| with a temporary server, the first time (new database) | {first['temporary server, first use']:.2f} |",
        f"| - its first start, measured alone | {steps['temporary_server_first_start_s']:.2f} |",
    ]
    return "\n".join(lines)


def review_load_table(document: dict[str, Any]) -> str:
    """The review service under closed-loop reviewers: earlier services (the file's `before`, each measured in the
    same session with the same load generator; ratios against the first) and now with 1 and N server processes
    (`--workers`)."""
    earlier, runs = document["before"], document["runs"]
    first = runs[0]

    def row(name: str, run: dict[str, Any], ratio: str = "") -> str:
        latency = run["latency_ms"]
        return (
            f"| {name} | {run['requests_per_s']:.1f}{ratio} | {latency['next']['p50']:.0f} / "
            f"{latency['next']['p95']:.0f} | {latency['label']['p50']:.0f} / {latency['label']['p95']:.0f} |"
        )

    lines = [
        f"{first['reviewers']} reviewers as closed loops, {first['seconds']:.0f} s each, {first['items']:,} items, "
        f"{document['database']}; {document['machine']}; {document['date']}",
        "",
        "| service | requests/s | next p50 / p95 ms | label p50 / p95 ms |",
        "|---|---|---|---|",
    ]
    base = earlier[0]["requests_per_s"]
    for before in earlier:
        ratio = "" if before is earlier[0] else f" ({before['requests_per_s'] / base:.2f}x)"
        lines.append(row(f"before: {before['service']}", before, ratio))
    for run in runs:
        name = "now, 1 process" if run["workers"] == 1 else f"now, `--workers {run['workers']}`"
        lines.append(row(name, run, f" ({run['requests_per_s'] / base:.2f}x)"))
    return "\n".join(lines)


def scale_table(document: dict[str, Any]) -> str:
    lines = [
        f"mode {document['mode']}, concurrency {document['concurrency']}, "
        f"{document['prompts_per_request']} prompts per request; {document['machine']}; {document['date']}",
        "",
        "| pairs | wall s | pairs/s | steady pairs/s | peak RSS MiB | requests | Prefect task runs "
        "| merge wall s | merge peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in document["rows"]:
        lines.append(
            f"| {row['pairs']:,} | {_cell(row['wall_s'])} | {_cell(row['pairs_per_s'])} | "
            f"{_cell(row['steady_pairs_per_s'])} | {_cell(row['peak_rss_mib'])} | {row['server_requests']:,} | "
            f"{row['task_runs']} | {_cell(row.get('merge_wall_s'))} | {_cell(row.get('merge_peak_rss_mib'))} |"
        )
    return "\n".join(lines)


def real_server_table(document: dict[str, Any]) -> str:
    summary = document["summary"]
    lines = [
        f"{document['pairs']} pairs, concurrency {document['concurrency']}; {document['machine']}; {document['date']}",
        "",
        "| contender | pairs/s | requests | requests/s | verdicts read |",
        "|---|---|---|---|---|",
    ]
    for contender in ("plain", "rlaif", "rlaif-prefill"):
        row = summary[contender]
        # the peer counts replies with a verdict; rlaif counts pairs judged ok (both orders read)
        parsed = (
            f"{row['parsed']:g} of {2 * document['pairs']} replies"
            if contender == "plain"
            else f"{row['parsed']:g} of {document['pairs']} pairs"
        )
        lines.append(
            f"| {contender} | {row['pairs_per_s']:.3f} | {row['requests']:g} | {row['requests_per_s']:.3f} | {parsed} |"
        )
    return "\n".join(lines)


def quality_table(document: dict[str, Any]) -> str:
    lines = [
        f"{document['machine']}; {document['date']}",
        "",
        "| judge | set | n | agreement | with ties | position consistency | tie rate | ECE | routing efficiency "
        "| at random | merged / judge alone |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in document["rows"]:
        routing = row["routing"]
        lines.append(
            f"| {row['judge']} | {row['set']} | {row['n']} | {_cell(row['agreement'], 3)} | "
            f"{_cell(row['agreement_with_ties'], 3)} | {_cell(row['position_consistency'], 3)} | "
            f"{_cell(row['tie_rate'], 3)} | {_cell(row['ece'], 3)} | {_cell(routing.get('efficiency'), 2)} | "
            f"{_cell(routing.get('random_efficiency'), 2)} | {_cell(routing.get('merged'), 3)} / "
            f"{_cell(routing.get('judge'), 3)} |"
        )
    for reference in document["references"]:
        lines.append(
            f"| {reference['judge']} | {reference['set']} | | {_cell(reference.get('agreement'), 3)} | "
            f"{_cell(reference.get('agreement_with_ties'), 3)} | | | | | | |"
        )
    return "\n".join(lines)


def sampling_table(document: dict[str, Any]) -> str:
    plain = document["runs"][0]["tokens_per_s"]
    repeats = document.get("repeats", 1)
    # files from before temperature and top_p were recorded: every such run sampled at 0.8 / 0.95; files from
    # before the harness's provenance name the device only
    lines = [
        f"{document['prompts']} prompts x {document['n']} answers, up to {document['max_tokens']} new tokens, "
        f"temperature {document.get('temperature', 0.8)}, top_p {document.get('top_p', 0.95)}, "
        f"{document['batch']} prompts per generate call; "
        + (f"median of {repeats} runs in alternating order; " if repeats > 1 else "one run each; ")
        + f"{document['model']}; {document.get('machine') or document['device']}; {document['date']}",
        "",
        "| run | seconds | tokens | tokens/s | / plain loop | tokens/s of each run |",
        "|---|---|---|---|---|---|",
    ]
    for run in document["runs"]:
        lines.append(
            f"| {run['name']} | {_cell(run['seconds'])} | {_cell(run['tokens'])} | {_cell(run['tokens_per_s'])} | "
            f"{run['tokens_per_s'] / plain:.2f} | {', '.join(_cell(v) for v in run['tokens_per_s_each'])} |"
        )
    return "\n".join(lines)


def judging_table(document: dict[str, Any]) -> str:
    whole = document["runs"][0]["pairs_per_s"]
    lines = [
        f"{document['runs'][0]['pairs']} pairs of {'/'.join(Path(document['data']).parts[-2:])}, both orders, "
        "logprob mode, "
        f"{document['batch']} prompts per batch, median of {document['repeats']} runs in alternating order; "
        f"{document['model']}; {document['machine']}; {document['date']}",
        "",
        "| run | seconds | prompt tokens | pairs/s | / every prompt whole | pairs/s of each run |",
        "|---|---|---|---|---|---|",
    ]
    for run in document["runs"]:
        lines.append(
            f"| {run['name']} | {_cell(run['seconds'])} | {_cell(run['prompt_tokens'])} | "
            f"{_cell(run['pairs_per_s'], 3)} | {run['pairs_per_s'] / whole:.2f} | "
            f"{', '.join(_cell(v, 3) for v in run['pairs_per_s_each'])} |"
        )
    lines += ["", f"Largest difference in p(A) between the two: {document['max_p_a_difference']:.1e}"]
    return "\n".join(lines)


FAULT_NAMES = {
    "drop": "dropped connections",
    "429": "429s",
    "500": "500s",
    "slow": "answers past the timeout",
    "truncated": "truncated",
    "nonsense": "nonsense",
}


def _span(values: list[int]) -> str:
    """The range of some counts: "3", or "0 to 24"."""
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low} to {high}"


def reliability_table(document: dict[str, Any]) -> str:
    """The README's Reliability table, from `make reliability`'s results file (tests/reliability/conftest.py)."""
    figures, tests = document["figures"], document["tests"]
    lines = [
        f"{tests['collected']} tests, {tests['failed']} failed; {document['machine']}; {document['date']}",
        "",
        "| check | figures |",
        "|---|---|",
    ]
    trials = figures.get("kill_and_resume", [])
    if trials:
        by_phase = {}
        for trial in trials:
            by_phase.setdefault(trial["landed_in"], []).append(trial)
        phases = "; ".join(
            f"{phase}: {len(runs)} kills, repeated judge calls {_span([t['repeated_judge_calls'] for t in runs])}, "
            f"repeated policy calls {_span([t['repeated_policy_calls'] for t in runs])}"
            for phase, runs in sorted(by_phase.items())
        )
        short = sum(1 for trial in trials if trial["seed"] < 3)  # seeds 0-2: the short variant, one per phase
        lines.append(
            f"| kill -9 and resume | {len(trials)} trials ({short} short, {len(trials) - short} long), each equal to "
            f"the uninterrupted run; {phases} |"
        )
    runs = figures.get("endpoint_faults", [])
    if runs:
        faults = {kind: sum(run["faults"].get(kind, 0) for run in runs) for kind in FAULT_NAMES}
        injected = ", ".join(f"{faults[kind]:,} {name}" for kind, name in FAULT_NAMES.items())
        lines.append(
            f"| endpoint faults | {len(runs)} runs, {sum(r['requests'] for r in runs):,} requests: {injected}; "
            f"{sum(r['pairs'] for r in runs):,} pairs, {sum(r['judge_failed'] for r in runs)} judged as failed "
            "and routed |"
        )
    if "dead_endpoint" in figures:
        dead = figures["dead_endpoint"]
        lines.append(
            f"| dead endpoint | stopped after {dead['requests']} requests (bound {dead['bound']}), "
            f"{dead['seconds']} s including start-up |"
        )
    if "two_workers" in figures:
        split = " / ".join(str(count) for count in figures["two_workers"]["judgment_shards_by_worker"])
        lines.append(f"| two workers | judgment shards split {split}; model calls equal to one worker's |")
    for key, name in (
        ("postgresql_crash_2s", "PostgreSQL crash, 2 s down"),
        ("sqlite_locked_3s", "SQLite locked 3 s"),
        ("review_10_reviewers", "review, 10 reviewers, 5 s"),
        ("review_load_50", "review load, 50 reviewers, 60 s"),
    ):
        if key in figures:
            run = figures[key]
            latency = run["latency_ms"]
            lines.append(
                f"| {name} | {run['requests']:,} requests ({run['requests_per_s']}/s); "
                f"{run['unavailable_503_retried']} answered 503 and retried; next p50 / p95 / max "
                f"{latency['next']['p50']:.0f} / {latency['next']['p95']:.0f} / {latency['next']['max']:.0f} ms, "
                f"label {latency['label']['p50']:.0f} / {latency['label']['p95']:.0f} / "
                f"{latency['label']['max']:.0f} ms; {run['errors']} errors; {run['labels_lost']} of "
                f"{run['labels_acknowledged']:,} acknowledged labels lost |"
            )
    if "test_hostile_inputs" in document.get("tests_by_module", {}):
        lines.append(f"| hostile inputs | {document['tests_by_module']['test_hostile_inputs']} cases, no traceback |")
    return "\n".join(lines)


STRATEGY_NAMES = {
    "random": "random",
    "least_confident": "least confident (fixed routing, 3% audit)",
    "calibrated_own_audit": "calibrated on the run's 3% audit",
    "calibrated_earlier_runs": "calibrated on earlier runs' reviewed pairs",
}


def routing_quality_table(document: dict[str, Any]) -> str:
    """The README's table of routing strategies and certified levels on real LLM judges (routing_quality.py)."""
    lines = [
        f"{document['items']} PandaLM pairs ({document['human_ties']} human ties) and 300 held-out hh-rlhf pairs; "
        f"{document['machine']}; {document['date'][:10]}",
        "",
        "| judge | strategy | review share | judge alone | merged | oracle | routing efficiency | "
        "judge-kept agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for judge, figures in document["judges"].items():
        for strategy, row in figures["strategies"].items():
            name = (
                STRATEGY_NAMES.get(strategy) or f"certified, target {strategy.split('_')[1]}, risk {document['risk']}"
            )
            lines.append(
                f"| {judge} | {name} | {_cell(row['review_share'], 3)} | {_cell(row['judge'], 3)} | "
                f"{_cell(row['merged'], 3)} | {_cell(row['oracle'], 3)} | {_cell(row['efficiency'], 2)} | "
                f"{_cell(row.get('judge_kept_agreement'), 3)} |"
            )
    lines += [
        "",
        "| judge | target | calibration set | coverage (splits meeting it) | splits certified | of them missing it | "
        "review share | judge-kept agreement (mean, min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for judge, figures in document["judges"].items():
        for target, row in figures["coverage"].items():
            lines.append(
                f"| {judge} | {target} | {row['calibration_set']} | {_cell(row['coverage'], 3)} of {row['splits']} | "
                f"{row['certified_splits']} | "
                f"{row['misses']} | {_cell(row['review_share_mean'], 3)} | {_cell(row['achieved_agreement_mean'], 3)}, "
                f"{_cell(row['achieved_agreement_min'], 3)} |"
            )
    rounds = {
        judge: figures["reward_round"] for judge, figures in document["judges"].items() if "reward_round" in figures
    }
    if rounds:
        lines += [
            "",
            "| judge | second round | review share (first + second) | merged after the first | "
            "merged after the second | oracle | labels people overturned | routing efficiency |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for judge, round_ in rounds.items():
            for name, key in (("random", "random"), ("the reward model contradicts", "reward_model_contradicts")):
                row = round_[key]
                lines.append(
                    f"| {judge} | {name} | {_cell(round_['first_round_share'], 2)} + "
                    f"{_cell(round_['second_round_share'], 3)} | {_cell(round_['merged_after_first'], 3)} | "
                    f"{_cell(row['merged'], 3)} | {_cell(round_['oracle'], 3)} | {_cell(row['overturned_share'], 2)} | "
                    f"{_cell(row['efficiency'], 2)} |"
                )
    return "\n".join(lines)


def human_labels_table(document: dict[str, Any]) -> str:
    """The README's table of what the human labels bought (human_labels_value.py)."""
    lines = [
        f"{document['data']}; judge label accuracy on the pool {_cell(document['judge_accuracy_on_pool'], 3)}; "
        f"{document['machine']}; {document['date'][:10]}",
        "",
        "| pool labels | label accuracy | reward model test accuracy per seed | mean | "
        "against judge only (95% interval) |",
        "|---|---|---|---|---|",
    ]
    for name, row in document["conditions"].items():
        seeds = ", ".join(_cell(a, 3) for a in row["accuracy"])
        versus = row["against_judge_only"]
        lines.append(
            f"| {name} | {_cell(statistics.fmean(row['label_accuracy']), 3)} | {seeds} | {_cell(row['mean'], 3)} | "
            f"{versus['mean']:+.3f} ({versus['ci95'][0]:+.3f} to {versus['ci95'][1]:+.3f}) |"
        )
    return "\n".join(lines)


def refusal_contrast_table(document: dict[str, Any]) -> str:
    """The README's table of the refusal rates with and without contrast pairs (refusal_contrast.py)."""
    setup = document["setup"]
    lines = [
        f"{setup['train_prompts_per_kind']} harmful + {setup['train_prompts_per_kind']} benign training prompts, "
        f"{setup['eval_prompts_per_kind']} held-out of each; DPO {setup['dpo_steps']} steps of "
        f"{setup['dpo_batch_size']} pairs, learning rate {setup['learning_rate']:g}, seed {setup['seed']}; "
        f"{document['machine']}; {document['date'][:10]}",
        "",
        "| model | pairs (contrast) | harmful refused: judge-model reader | harmful: refusal phrases "
        "| benign refused: judge-model reader | benign: refusal phrases |",
        "|---|---|---|---|---|---|",
    ]

    def rate(row: dict[str, Any], refused: str, total: str) -> str:
        if not row[total]:
            return "n/a"
        low, high = row["ci95"]
        return f"{row[refused]}/{row[total]} ({100 * row['rate']:.0f}%, {100 * low:.0f}-{100 * high:.0f}%)"

    def cells(refusals: dict[str, Any], name: str) -> str:
        return " | ".join(
            f"{rate(refusals[kind][name], 'refused', 'decided')} | "
            f"{rate(refusals[kind][name]['by_phrase'], 'refused', 'replies')}"
            for kind in ("harmful", "benign")
        )

    for arm, label in (("without", "trained without contrast pairs"), ("with", "trained with contrast pairs")):
        row = document["arms"][arm]
        contrast = sum(v["pairs"] for v in ((row["contrast"] or {}).get("pairs") or {}).values())
        lines.append(f"| {label} | {row['pairs']} ({contrast}) | {cells(row['refusals'], 'policy')} |")
    reference = document["arms"]["without"]["refusals"]
    lines.append(f"| SmolLM2-135M-Instruct (the start) | - | {cells(reference, 'reference')} |")
    gaps = document["with_minus_without"]

    def gap(kind: str, reading: str) -> str:
        row = gaps[kind][reading]
        low, high = row["ci95"]
        return f"{100 * row['difference']:+.0f} points ({100 * low:+.0f} to {100 * high:+.0f})"

    lines.append(
        "| with minus without (95% interval) | | "
        + " | ".join(f"{gap(k, 'judge_model')} | {gap(k, 'refusal_phrases')}" for k in ("harmful", "benign"))
        + " |"
    )
    return "\n".join(lines)


def scale_memory_text(document: dict[str, Any]) -> str:
    """The README's claim that labeling memory stays flat, from the scale benchmark's peak RSS."""
    rows = document["rows"]
    peaks = [row["peak_rss_mib"] for row in rows]
    return f"{min(peaks):.0f}-{max(peaks):.0f} MiB from {rows[0]['pairs']:,} to {rows[-1]['pairs']:,} pairs"


def startup_text(document: dict[str, Any]) -> str:
    """A temporary Prefect server's cost to a command, from startup_cost.py."""
    first = document["first_request_s"]
    return (
        f"{first['running server']:.1f} s to the first request with a running server, "
        f"{first['temporary server']:.1f} s with a temporary one, "
        f"{first['temporary server, first use']:.1f} s the first time (new database)"
    )


# Figures the README states in its text, each made from a results file: the test finds each in the README.
def review_load_text(document: dict[str, Any]) -> str:
    """The review service's gain over the first earlier service in its file (`before`), as the Reliability section
    states it."""
    before = document["before"][0]["requests_per_s"]
    one, two = (run["requests_per_s"] / before for run in document["runs"][:2])
    return f"{one:.2f}x the requests per second on one process, {two:.2f}x on two"


TEXT_FIGURES = (
    ("labeling_scale_fake.json", scale_memory_text),
    ("startup_cost.json", startup_text),
    ("review_load.json", review_load_text),
)


def text_figures() -> list[str]:
    """The README's figures in running text, from the results files that exist."""
    return [render(document) for name, render in TEXT_FIGURES if (document := _load(name))]


def main() -> None:
    for name, render in (
        ("labeling_throughput_fake.json", throughput_table),
        ("startup_cost.json", startup_table),
        ("labeling_scale_fake.json", scale_table),
        ("labeling_real_server_smollm2.json", real_server_table),
        ("judge_quality.json", quality_table),
        ("sampling_cpu_smollm2.json", sampling_table),
        ("judging_cpu_smollm2.json", judging_table),
        ("reliability.json", reliability_table),
        ("routing_quality.json", routing_quality_table),
        ("human_labels_value.json", human_labels_table),
        ("refusal_contrast.json", refusal_contrast_table),
        ("review_load.json", review_load_table),
    ):
        document = _load(name)
        if document:
            print(f"### {name}\n\n{render(document)}\n\n`{document['command']}`\n")
    print("### figures in the README's text\n")
    for figure in text_figures():
        print(f"`{figure}`")


if __name__ == "__main__":
    main()
