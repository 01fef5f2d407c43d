"""Crash and resume, and two workers on one run.

`rlaif label` is killed with SIGKILL at a random moment (seeded), then run again to the end. Each
rerun must end with exactly the judgments of an uninterrupted run (same pair ids, same labels; the
judge here is deterministic), none twice, no half-written shard readable as data, and repeat judge
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

from rlaif.flows.label import SHARDS_IN_FLIGHT
from rlaif.review.store import ReviewStore
from tests.scripted_openai_server import ScriptedOpenAIServer, judge_prompt
from tests.test_labeling_flow import RLAIF, fake_judge_or_policy, prompts_file, scripted_overrides

PROMPTS, PER_SHARD, CANDIDATES = 40, 4, 3
SHARDS = PROMPTS // PER_SHARD
PAIRS_PER_SHARD = PER_SHARD * 3  # all pairs of 3 candidates
ROWS = {"prompts": PER_SHARD, "candidates": PER_SHARD * CANDIDATES, "pairs": PAIRS_PER_SHARD, "judgments": 12}
QUESTION = re.compile(r"Question number (\d+):")


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
def uninterrupted(tmp_path_factory) -> tuple[Outcome, tuple[float, float]]:
    """The single-worker, uninterrupted run that every trial is compared with, and when (seconds from its
    start) its first and last model calls were made: the window the kills aim at."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    with ScriptedOpenAIServer(reply=fake_judge_or_policy, delay_s=0.05) as server:
        started = time.monotonic()
        result = subprocess.run(label_command(server, tmp_path, tmp_path / "run"), capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        done = outcome(tmp_path / "run", server)
        window = (server.request_times[0] - started, server.request_times[-1] - started)
    assert len(done.judgments) == SHARDS * PAIRS_PER_SHARD and done.review_items > 0
    return done, window


def kill_and_resume(tmp_path: Path, seed: int, uninterrupted: tuple[Outcome, tuple[float, float]]) -> dict:
    """Kill a run at a random moment from just before its first model call to just after its last (routing
    and the report come then), resume it, and check the result; returns what happened."""
    expected, (first_call, last_call) = uninterrupted
    run = tmp_path / "run"
    kill_at = random.Random(seed).uniform(first_call - 0.5, last_call + 1.0)
    with ScriptedOpenAIServer(reply=fake_judge_or_policy, delay_s=0.05) as server:
        command = label_command(server, tmp_path, run)
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        time.sleep(kill_at)
        os.killpg(process.pid, signal.SIGKILL)  # the run and its temporary Prefect server
        process.wait()
        server.wait_until_no_client_is_connected()  # the killed run's last requests are recorded
        finished_at_kill = check_shard_files(run) if run.exists() else {step: set() for step in ROWS}
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
    for model, step in (("judge", "judgments"), ("policy", "candidates")):
        shards = {shard_of(b) for b in repeated if b["model"] == model}
        assert not shards & finished_at_kill[step], f"{model} calls repeated for shards finished before the kill"
        assert len(shards) <= SHARDS_IN_FLIGHT
    assert Counter(got.judge_bodies) == Counter(expected.judge_bodies) + Counter(
        body_key(b) for b in repeated if b["model"] == "judge"
    )
    return {
        "seed": seed,
        "kill_at_s": round(kill_at, 2),
        "judgment_shards_at_kill": len(finished_at_kill["judgments"]),
        "repeated_judge_calls": sum(1 for b in repeated if b["model"] == "judge"),
        "repeated_policy_calls": sum(1 for b in repeated if b["model"] == "policy"),
    }


@pytest.mark.parametrize("seed", range(3))
def test_killed_at_a_random_moment_then_resumed_gives_the_uninterrupted_result(tmp_path, uninterrupted, seed):
    print(kill_and_resume(tmp_path, seed, uninterrupted))


@pytest.mark.long
@pytest.mark.parametrize("seed", range(3, 23))
def test_long_twenty_more_kills_at_random_moments(tmp_path, uninterrupted, seed):
    print(kill_and_resume(tmp_path, seed, uninterrupted))


def test_two_workers_on_one_run_split_its_shards_and_give_the_single_worker_result(tmp_path, uninterrupted):
    expected, _ = uninterrupted
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
