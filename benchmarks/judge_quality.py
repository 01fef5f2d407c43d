"""Judge quality: `rlaif judge eval` for each judge configuration on the human-labelled sets, with routing.

    .venv/bin/python benchmarks/judge_quality.py          # about 40 min on 2 CPU cores

Configurations (all that run here, on the CPU):
- smollm2-logprob: SmolLM2-135M-Instruct in-process, p(A) from the label tokens after the prefilled `[[`;
- smollm2-verdict: the same model writing the verdict (LLMBar Natural only: it always writes `[[A]]`);
- minilm-rm: the MiniLM-L6 reward model of the training stage (`rlaif train reward` on hh-rlhf with the
  recipe of benchmarks/reward_model_cpu.py, all but the last 300 pairs; trained once into
  .bench/reward-minilm), p(A) = sigmoid(rA - rB);
- minilm-rm-full: the same reward model on whole sets (MT-Bench 200, PandaLM 999, hh-rlhf the 300 held
  out of its training): fast, and enough routed items for a routing efficiency that means something;
- ensemble: the mean p(A) of smollm2-logprob and minilm-rm (LLMBar Natural and hh-rlhf).
Sets (../shared/data): LLMBar Natural (all 100), MT-Bench human votes and PandaLM (the first --items),
hh-rlhf harmless (the last --items, held out from the reward model's training).
`--only NAME ...` runs some configurations and replaces their rows in an existing results file.

Every row of judge_quality.json and every judge_eval file carries its own date, machine, versions and the
exact `rlaif judge eval` command; the file's top-level provenance is the last benchmark command.

Each evaluation also reports the routing efficiency: simulated reviewers give the human label for the
routed 10%; (merged - judge) / (oracle - judge), beside routing at random. Reference figures from
../shared/data/README.md are put beside the table. Writes benchmarks/results/judge_quality.json and one
judge_eval JSON per configuration and set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import RLAIF, ROOT, provenance, shown_command, write_results  # noqa: E402
from rlaif.run_files import write_json_atomic  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
REWARD_MODEL = ROOT / ".bench" / "reward-minilm"
HH = DATA / "hh_rlhf" / "harmless_base_test_0000_1799.jsonl.gz"
FULL_SETS = 1000  # items per set for the "-full" configurations: all of each set (hh-rlhf: its held-out 300)

REFERENCES = [
    {
        "judge": "GPT-3.5-turbo (PandaLM test set, from its files)",
        "set": "pandalm",
        "agreement_with_ties": 0.698,
        "agreement": 0.774,
    },
    {
        "judge": "PandaLM-7B (PandaLM test set, from its files)",
        "set": "pandalm",
        "agreement_with_ties": 0.668,
        "agreement": 0.710,
    },
    {
        "judge": "GPT-4 (MT-Bench human votes, published)",
        "set": "mt_bench_human",
        "agreement_with_ties": 0.66,
        "agreement": 0.85,
    },
    {
        "judge": "humans with each other (MT-Bench, published)",
        "set": "mt_bench_human",
        "agreement_with_ties": 0.63,
        "agreement": 0.81,
    },
    {"judge": "always A or always B (any set)", "set": "any", "agreement": "0.42-0.58"},
]


def sets(items: int) -> dict[str, list[str]]:
    """Each set's `rlaif judge eval` arguments: all of LLMBar Natural, `items` of the others."""
    return {
        "llmbar_natural": ["--data", str(DATA / "llmbar/natural.json"), "--format", "llmbar"],
        "mt_bench_human": [
            "--data",
            str(DATA / "llmbar/mt_bench_human.json"),
            "--format",
            "llmbar",
            "--limit",
            str(items),
        ],
        "pandalm": ["--data", str(DATA / "pandalm/testset-v1.json"), "--format", "pandalm", "--limit", str(items)],
        "hh_rlhf": ["--data", str(HH), "--format", "hh-rlhf", "--last", str(min(items, 300))],
    }


def configurations() -> dict[str, tuple[list[str], list[str] | None]]:
    """Each configuration's config overrides, and the sets it runs on (None: all)."""
    ensemble = json.dumps(
        [
            {"backend": "transformers", "model": "smollm2-135m-instruct", "mode": "logprob", "prompt": "helpfulness"},
            {"backend": "transformers", "model": str(REWARD_MODEL), "mode": "reward_model"},
        ]
    )
    return {
        "smollm2-logprob": (["judge.mode=logprob"], None),
        "smollm2-verdict": (["judge.mode=verdict"], ["llmbar_natural"]),
        "minilm-rm": (["judge.mode=reward_model", f"judge.model={REWARD_MODEL}"], None),
        # fast enough for whole sets (hh-rlhf: the 300 pairs held out of its training): routing
        # efficiency needs more than the 5 routed items of a 50-item set
        "minilm-rm-full": (["judge.mode=reward_model", f"judge.model={REWARD_MODEL}"], None),
        "ensemble": ([f"judge.ensemble={ensemble}"], ["llmbar_natural", "hh_rlhf"]),
    }


def train_reward_model() -> None:
    """The training stage's MiniLM reward model (benchmarks/reward_model_cpu.py's recipe), once."""
    if (REWARD_MODEL / "eval_report.json").is_file():
        return
    print(f"training the MiniLM reward model into {REWARD_MODEL} (once, about 8 min)", flush=True)
    command = [RLAIF, "train", "reward", "--data", str(HH), "--format", "hh-rlhf", "--out", str(REWARD_MODEL)]
    command += ["--set", "train.eval_size=300", "--set", "train.reward.max_length=128"]
    subprocess.run(command, check=True, capture_output=True, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=50, help="items of MT-Bench, PandaLM and hh-rlhf")
    parser.add_argument(
        "--only", nargs="*", help="configurations to run (default: all); their rows replace theirs in --out"
    )
    parser.add_argument("--out", default=str(RESULTS / "judge_quality.json"))
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"the human-labelled sets are not beside the project ({DATA})")
    train_reward_model()
    rows: list[dict[str, Any]] = []
    for name, (overrides, only_sets) in configurations().items():
        if args.only and name not in args.only:
            continue
        for set_name, data_args in sets(FULL_SETS if name.endswith("-full") else args.items).items():
            if only_sets and set_name not in only_sets:
                continue
            out = RESULTS / f"judge_eval_{name}_{set_name}.json"
            command = [RLAIF, "judge", "eval", *data_args, "--out", str(out)]
            command += [item for override in overrides for item in ("--set", override)]
            print(f"{name} on {set_name} ...", flush=True)
            subprocess.run(command, check=True, capture_output=True, text=True)
            # the row and the report each carry their own provenance: rows of one file may come from
            # different runs (--only), and a report is read on its own
            own = {**provenance(), "command": shown_command(command)}
            report = {**json.loads(out.read_text()), **own}
            write_json_atomic(out, report)
            row = {
                "judge": name,
                "set": set_name,
                **own,
                "n": report["n"],
                "agreement": report["agreement"],
                "agreement_with_ties": report["agreement_with_ties"],
                "position_consistency": report["position_consistency"],
                "tie_rate": report["tie_rate"],
                "parse_error_rate": report["parse_error_rate"],
                "ece": report["ece"],
                "routing": report["routing"],
                "wall_s": report["wall_s"],
                "result_file": str(out.relative_to(ROOT)),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    earlier = json.loads(Path(args.out).read_text()) if args.only and Path(args.out).is_file() else {}
    ran = {row["judge"] for row in rows}
    rows = [r for r in earlier.get("rows", []) if r["judge"] not in ran] + rows
    document = {
        "benchmark": "judge quality on the human-labelled sets, with routing efficiency",
        **provenance(),
        "items": args.items,
        "earlier_commands": [*earlier.get("earlier_commands", []), earlier["command"]] if earlier else [],
        "rows": rows,
        "references": REFERENCES,
        "reward_model": json.loads((REWARD_MODEL / "eval_report.json").read_text()).get("accuracy"),
    }
    write_results(args.out, document)


if __name__ == "__main__":
    main()
