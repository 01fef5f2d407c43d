"""Crash and resume, and two workers on one run.

`rlaif label` is killed with SIGKILL at a seeded point of its own progress, then run again to the end.
Each kill aims at a phase (sampling, judging, routing) and a point in it, watched in the run directory:
after the n-th candidate shard file, after the n-th judgment shard file, or a moment after the last
judgment shard (routing and the report). Aiming at the run's own files, not at a clock taken from
another run, keeps the kills where they claim to land; each trial records the phase it landed in. The
short variant lands one kill in each phase; the long one (20 trials) asserts that every phase got
several and writes the records to benchmarks/results/reliability_kills.json.

Each rerun must end with exactly the judgments of an uninterrupted run (same pair ids, same labels; the
judge here is deterministic), none twice, no half-written shard readable as data, and repeat model
calls only for the shards that were in flight at the kill. Two `rlaif label` processes started
together on one run must split its shards between them and give the single-worker result.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from rlaif.flows.shard_runner import SHARDS_IN_FLIGHT
from rlaif.review.store import ReviewStore
from tests.scripted_openai_server import ScriptedOpenAIServer, judge_prompt
from tests.test_labeling_flow import RLAIF, fake_judge_or_policy, prompts_file, scripted_overrides

PROMPTS, PER_SHARD, CANDIDATES = 40, 4, 3
SHARDS = PROMPTS // PER_SHARD
PAIRS_PER_SHARD = PER_SHARD * 3  # all pairs of 3 candidates
ROWS = {"prompts": PER_SHARD, "candidates": PER_SHARD * CANDIDATES, "pairs": PAIRS_PER_SHARD, "judgments": 12}
QUESTION = re.compile(r"Question number (\d+):")
PHASES = ("sampling", "judging", "routing")
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "reliability_kills.json"
LONG_TRIALS: list[dict] = []  # the long variant's records, checked and written by its last test


@dataclass
class Outcome:
    judgments: dict[str, tuple]  # pair id -> (winner, p_a, status)
    routing: list[str]  # lines of routing.jsonl
    review_items: int
    judge_bodies: list[str]
    policy_bodies: list[str]


def label_command(server: ScriptedOpenAIServer, tmp_path: Path, run: Path) -> list[str]:
    overrides = scripted_overrides(
        server,
        prompts_file(tmp_path, PROMPTS),
        run,
        f"run.prompts_per_shard={PER_SHARD}",
        "judge.max_concurrency=2",
        "policy.max_concurrency=1",  # sampling lasts long enough for some kills to land in it
    )
    return [RLAIF, "label", *sum((["--set", o] for o in overrides), [])]


def body_key(body: dict) -> str:
    return json.dumps(body, sort_keys=True)


def shard_of(body: dict) -> int:
    text = judge_prompt(body) if body["model"] == "judge" else body["messages"][-1]["content"]
    return int(QUESTION.search(text).group(1)) // PER_SHARD


def check_shard_files(run: Path) -> dict[str, set[int]]:
    """Every shard file that exists is whole: all its rows parse and it has its full count. Returns the
    indices of the finished shards of each step."""
    finished: dict[str, set[int]] = {}
    for step, rows in ROWS.items():
        finished[step] = set()
        for path in (run / step).glob("*.jsonl"):
            lines = path.read_text(encoding="utf-8").splitlines()
            assert len(lines) == rows, f"{path} has {len(lines)} rows, not {rows}"
            for line in lines:
                json.loads(line)
            finished[step].add(int(path.name.split("-")[1]))
    return finished


def outcome(run: Path, server: ScriptedOpenAIServer) -> Outcome:
    judgments: dict[str, tuple] = {}
    for path in (run / "judgments").glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            assert row["pair_id"] not in judgments, "a pair judged twice"
            judgments[row["pair_id"]] = (row["winner"], row["p_a"], row["status"])
    with ReviewStore.open(f"sqlite:///{run.parent / 'review.db'}") as store:
        items = sum(store.stats(name)["total"] for name in store.runs())
    return Outcome(
        judgments=judgments,
        routing=(run / "routing.jsonl").read_text(encoding="utf-8").splitlines(),
        review_items=items,
        judge_bodies=[body_key(b) for b in server.requests if b["model"] == "judge"],
        policy_bodies=[body_key(b) for b in server.requests if b["model"] == "policy"],
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Outcome:
    """The single-worker, uninterrupted run that every trial is compared with."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    with ScriptedOpenAIServer(reply=fake_judge_or_policy, delay_s=0.05) as server:
        result = subprocess.run(label_command(server, tmp_path, tmp_path / "run"), capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        done = outcome(tmp_path / "run", server)
    assert len(done.judgments) == SHARDS * PAIRS_PER_SHARD and done.review_items > 0
    return done


def kill_target(seed: int) -> tuple[str, str, int, float]:
    """Where a trial's kill aims (seeded): (phase, the step whose shard files it counts, how many, then how long
    to wait). Phases take turns by seed, so any three consecutive trials cover all three; the point within the
    phase is drawn from the seed."""
    rng = random.Random(seed)
    phase = PHASES[seed % len(PHASES)]
    if phase == "routing":  # routing starts once the last judgment shard is written, and takes well under 0.1 s
        return phase, "judgments", SHARDS, 0.0
    # Up to SHARDS - 2 finished shards: the step still has shards to do when the kill lands.
    return phase, "candidates" if phase == "sampling" else "judgments", rng.randint(1, SHARDS - 2), 0.0


def shard_files(run: Path, step: str) -> int:
    """Finished shard files of a step (written by rename, so a file that is there is whole)."""
    return len(list((run / step).glob("shard-*.jsonl")))


def phase_at_kill(run: Path, finished: dict[str, set[int]]) -> str:
    """The phase the run was in when it was killed, from what it had written."""
    if len(finished["candidates"]) < SHARDS:
        return "sampling"
    if len(finished["judgments"]) < SHARDS:
        return "judging"
    return "routing" if not (run / "report.json").exists() else "after the report"


def kill_and_resume(tmp_path: Path, seed: int, expected: Outcome) -> dict:
    """Kill a run at its seeded target point, resume it, and check the result; returns what happened."""
    run = tmp_path / "run"
    target, step, count, wait_s = kill_target(seed)
    with ScriptedOpenAIServer(reply=fake_judge_or_policy, delay_s=0.05) as server:
        command = label_command(server, tmp_path, run)
        started = time.monotonic()
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        while shard_files(run, step) < count and process.poll() is None:
            time.sleep(0.005)
        time.sleep(wait_s)
        kill_at = time.monotonic() - started
        os.killpg(process.pid, signal.SIGKILL)  # the run and its temporary Prefect server
        process.wait()
        server.wait_until_no_client_is_connected()  # the killed run's last requests are recorded
        finished_at_kill = check_shard_files(run) if run.exists() else {step: set() for step in ROWS}
        landed_in = phase_at_kill(run, finished_at_kill)
        before = len(server.requests)
        rerun = subprocess.run(command, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        check_shard_files(run)
        got = outcome(run, server)
        killed_requests = server.requests[:before]
        resumed_requests = server.requests[before:]
    assert got.judgments == expected.judgments  # same ids, same labels
    assert got.routing == expected.routing and got.review_items == expected.review_items
    # Calls made twice: only those of shards that were in flight at the kill, two at most per step.
    resumed = Counter(body_key(b) for b in resumed_requests)
    repeated = [b for b in killed_requests if resumed[body_key(b)]]
    for model, model_step in (("judge", "judgments"), ("policy", "candidates")):
        shards = {shard_of(b) for b in repeated if b["model"] == model}
        assert not shards & finished_at_kill[model_step], f"{model} calls repeated for shards finished before the kill"
        assert len(shards) <= SHARDS_IN_FLIGHT
    assert Counter(got.judge_bodies) == Counter(expected.judge_bodies) + Counter(
        body_key(b) for b in repeated if b["model"] == "judge"
    )
    return {
        "seed": seed,
        "target": f"{target}: {count} {step} shards" + (f" + {wait_s:.2f} s" if wait_s else ""),
        "landed_in": landed_in,
        "kill_at_s": round(kill_at, 2),
        "candidate_shards_at_kill": len(finished_at_kill["candidates"]),
        "judgment_shards_at_kill": len(finished_at_kill["judgments"]),
        "repeated_judge_calls": sum(1 for b in repeated if b["model"] == "judge"),
        "repeated_policy_calls": sum(1 for b in repeated if b["model"] == "policy"),
    }


@pytest.mark.parametrize("seed", range(3))
def test_killed_in_each_phase_then_resumed_gives_the_uninterrupted_result(tmp_path, uninterrupted, seed, figures):
    trial = kill_and_resume(tmp_path, seed, uninterrupted)
    print(trial)
    figures.setdefault("kill_and_resume", []).append(trial)
    assert trial["landed_in"] == PHASES[seed]  # seeds 0, 1, 2: sampling, judging, routing


@pytest.mark.long
@pytest.mark.parametrize("seed", range(3, 23))
def test_long_twenty_more_kills_at_seeded_points(tmp_path, uninterrupted, seed, figures):
    trial = kill_and_resume(tmp_path, seed, uninterrupted)
    print(trial)
    LONG_TRIALS.append(trial)
    figures.setdefault("kill_and_resume", []).append(trial)


@pytest.mark.long
def test_long_kills_landed_in_every_phase():
    """The twenty trials above cover sampling, judging and routing, several times each; their records go to
    benchmarks/results/reliability_kills.json with the machine, versions, date and command."""
    from benchmarks.harness import provenance, write_results

    landed = Counter(trial["landed_in"] for trial in LONG_TRIALS)
    assert len(LONG_TRIALS) == 20, "run the whole long variant (make reliability)"
    write_results(
        RESULTS,
        {
            **provenance(),
            "command": "make reliability (tests/reliability/test_crash_resume.py, long variant)",
            "landed_in": dict(landed),
            "repeated_calls_by_phase": {
                phase: {
                    "judge": [t["repeated_judge_calls"] for t in LONG_TRIALS if t["landed_in"] == phase],
                    "policy": [t["repeated_policy_calls"] for t in LONG_TRIALS if t["landed_in"] == phase],
                }
                for phase in sorted(landed)
            },
            "trials": LONG_TRIALS,
        },
    )
    assert all(landed[phase] >= 4 for phase in PHASES), landed


def test_two_workers_on_one_run_split_its_shards_and_give_the_single_worker_result(tmp_path, uninterrupted, figures):
    expected = uninterrupted
    run = tmp_path / "run"
    with ScriptedOpenAIServer(reply=fake_judge_or_policy, delay_s=0.05) as server:
        command = label_command(server, tmp_path, run)
        workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in "ab"]
        logs = [worker.communicate(timeout=600)[0] for worker in workers]
        assert [worker.returncode for worker in workers] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
        check_shard_files(run)
        got = outcome(run, server)
    assert got.judgments == expected.judgments
    assert got.routing == expected.routing and got.review_items == expected.review_items
    # Claimed, not duplicated: every call made once, as by one worker, and both workers judged shards.
    assert Counter(got.judge_bodies) == Counter(expected.judge_bodies)
    assert Counter(got.policy_bodies) == Counter(expected.policy_bodies)
    judged_by = [len(re.findall(r"judged shard \d+/", log)) for log in logs]
    assert sum(judged_by) == SHARDS and min(judged_by) > 0, judged_by
    print(f"two workers judged {judged_by} shards")
    figures["two_workers"] = {"judgment_shards_by_worker": judged_by}
