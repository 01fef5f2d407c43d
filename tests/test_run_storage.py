"""Run directories on object storage (run.dir: s3://...), against a real S3-protocol server on loopback: moto's
server mode, a stand-in for AWS that speaks the S3 API over HTTP (conditional writes included), started here.
The models are tests/scripted_openai_server.py (a stand-in for a model server, over real HTTP)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import datasets
import pytest

from benchmarks.harness import free_port
from rlaif.config import load_config
from rlaif.flows.label import label_pipeline
from rlaif.flows.merge import merge_flow
from rlaif.run_storage import RunStorage
from tests.review_fixtures import RLAIF
from tests.scripted_openai_server import ScriptedOpenAIServer
from tests.test_labeling_flow import fake_judge_or_policy, judgments_of, prompts_file, scripted_overrides

BUCKET = "runs"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[dict[str, str]]:
    """moto's S3 server on a loopback port, with a bucket; the environment a client reaches it with (the
    credentials are moto's placeholders, read from the environment as real ones would be)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    environment = {
        "AWS_ACCESS_KEY_ID": "placeholder",
        "AWS_SECRET_ACCESS_KEY": "placeholder",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        import s3fs

        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(BUCKET)
        yield environment
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


def run_overrides(server: ScriptedOpenAIServer, folder: Path, run_dir: str, *extra: str) -> list[str]:
    return scripted_overrides(
        server,
        prompts_file(folder, 20),
        Path("unused"),
        f"run.dir={run_dir}",
        f"review.db=sqlite:///{folder / 'review.db'}",
        "merge.on_pending=judge",
        "train.reward.epochs=1",
        "train.reward.max_length=64",
        "train.eval_size=6",
        *extra,
    )


def label_merge_train(overrides: list[str], merge_command: bool = False) -> dict:
    """The label flow, the merge flow (or `rlaif merge RUN_DIR`), then `rlaif train reward` (the commands in this
    process: CliRunner); the reward report."""
    from typer.testing import CliRunner

    from rlaif.cli.main import app

    config = load_config(None, overrides)
    asyncio.run(label_pipeline(config))
    if merge_command:
        # Its local copy goes where the stored run's copies go by default: under HOME, here the test's folder.
        home = {"HOME": str(config.run.directory().parent / "home")}
        merged = CliRunner().invoke(app, ["merge", config.run.dir, "--on-pending", "judge"], env=home)
        assert merged.exit_code == 0, merged.output[-3000:]
    else:
        asyncio.run(merge_flow(config))
    trained = CliRunner().invoke(app, ["train", "reward", *[item for o in overrides for item in ("--set", o)]])
    assert trained.exit_code == 0, trained.output[-3000:]
    return json.loads(trained.stdout)


def rows(dataset_folder: Path) -> list[dict]:
    return sorted(datasets.load_from_disk(str(dataset_folder)).to_list(), key=lambda row: row["pair_id"])


def test_a_run_on_s3_labels_merges_and_trains_as_on_local_disk(s3_endpoint, tmp_path):
    """A label run, its merge (`rlaif merge s3://...`) and the reward model (`rlaif train reward`) on
    s3://runs/first, worked on in local copies: the store then
    holds the run (every shard, the merged dataset, the model), another machine's copy pulled from it has the
    dataset of the same run on local disk, and the reward model scored the held-out pairs the same."""
    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as server:
        (tmp_path / "disk").mkdir()
        on_disk = label_merge_train(run_overrides(server, tmp_path / "disk", str(tmp_path / "disk" / "run")))
        (tmp_path / "s3").mkdir()
        stored = label_merge_train(
            run_overrides(server, tmp_path / "s3", f"s3://{BUCKET}/first", f"run.local_copy={tmp_path / 'copy-a'}"),
            merge_command=True,
        )
    elsewhere = RunStorage(f"s3://{BUCKET}/first", tmp_path / "copy-b")
    assert elsewhere.pull() > 0
    copy = tmp_path / "copy-b"
    assert rows(copy / "dataset") == rows(tmp_path / "disk" / "run" / "dataset")
    assert sorted(p.name for p in (copy / "judgments").iterdir()) == sorted(
        p.name for p in (tmp_path / "disk" / "run" / "judgments").iterdir()
    )
    assert json.loads((copy / "train" / "reward" / "eval_report.json").read_text())["accuracy"] == on_disk["accuracy"]
    assert stored["accuracy"] == on_disk["accuracy"] and (copy / "train" / "reward" / "model.safetensors").is_file()
    assert not elsewhere.fs.exists(f"{BUCKET}/first/claims") or not elsewhere.fs.ls(f"{BUCKET}/first/claims")
    assert elsewhere.pull() == 0  # nothing changed on the store since


def test_two_label_runs_on_one_stored_run_make_each_model_call_once(s3_endpoint, tmp_path):
    """Two `rlaif label` processes on s3://runs/shared at once, each with a local copy of its own (as on two
    machines): together they send the model calls of one run, and the store holds that run's judgments."""
    with ScriptedOpenAIServer(reply=fake_judge_or_policy, delay_s=0.01) as server:
        (tmp_path / "disk").mkdir()
        asyncio.run(
            label_pipeline(load_config(None, run_overrides(server, tmp_path / "disk", str(tmp_path / "disk" / "run"))))
        )
        one_run = len(server.requests)
        (tmp_path / "s3").mkdir()
        overrides = run_overrides(server, tmp_path / "s3", f"s3://{BUCKET}/shared")

        def worker(name: str) -> subprocess.Popen[bytes]:
            sets = [item for o in [*overrides, f"run.local_copy={tmp_path / name}"] for item in ("--set", o)]
            with (tmp_path / f"{name}.log").open("w") as log:
                return subprocess.Popen(
                    [RLAIF, "label", *sets], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **s3_endpoint}
                )

        workers = [worker(name) for name in ("copy-1", "copy-2")]
        deadline = time.monotonic() + 300
        for worker in workers:
            worker.wait(timeout=max(1, deadline - time.monotonic()))
        logs = [(tmp_path / f"{name}.log").read_text() for name in ("copy-1", "copy-2")]
        assert [worker.returncode for worker in workers] == [0, 0], logs
        both = len(server.requests) - one_run
    assert both == one_run, (both, one_run)
    merged_view = RunStorage(f"s3://{BUCKET}/shared", tmp_path / "copy-3")
    merged_view.pull()
    verdicts = sorted((j.pair_id, j.winner) for j in judgments_of(tmp_path / "copy-3"))
    assert verdicts == sorted((j.pair_id, j.winner) for j in judgments_of(tmp_path / "disk" / "run"))


def test_a_claim_on_the_store_is_held_once_let_go_and_taken_over_from_a_dead_holder(s3_endpoint, tmp_path):
    storage = RunStorage(f"s3://{BUCKET}/claims-test", tmp_path / "copy")
    claim = storage.try_claim("judgments-shard-00000")
    assert claim is not None and storage.try_claim("judgments-shard-00000") is None
    claim.release()
    again = storage.try_claim("judgments-shard-00000")
    assert again is not None
    again._stop.set()  # its holder dies: no renewal, no release
    expired = json.dumps({"holder": "dead", "expires": time.time() - 1}).encode()
    storage.fs.pipe_file(f"{storage.root}/claims/judgments-shard-00000", expired)
    assert storage.try_claim("judgments-shard-00000") is not None


def test_a_shard_another_worker_stored_since_the_last_pull_is_recorded_as_stored(s3_endpoint, tmp_path):
    """Two workers upload the same written-once shard: the later one finds it stored already and records the
    stored copy, although its listing of that folder (read and cached at its pull) predates the shard. (That
    stale listing made the later worker fail with FileNotFoundError under load.)"""
    url = f"s3://{BUCKET}/race"
    first, second = (RunStorage(url, tmp_path / name, {"skip_instance_cache": True}) for name in ("1", "2"))
    for storage in (first, second):
        (storage.local / "prompts").mkdir(parents=True)
        for number in (0, 1):
            (storage.local / "prompts" / f"shard-{number}.jsonl").write_text(f"{number}\n")
    first.put_once(first.local / "prompts" / "shard-0.jsonl")
    assert second.pull() == 1  # its listing of prompts/ now holds shard 0 only
    first.put_once(first.local / "prompts" / "shard-1.jsonl")
    second.put_once(second.local / "prompts" / "shard-1.jsonl")
    assert second._state["prompts/shard-1.jsonl"]["etag"] == first._state["prompts/shard-1.jsonl"]["etag"]


def test_a_pull_takes_what_changed_on_the_store_and_keeps_what_changed_here(s3_endpoint, tmp_path):
    """Two local copies of one stored run: each pull takes the files new or changed on the store (by ETag), a
    file changed locally since is kept (and pushed at the end), and a training cache never leaves the machine."""
    url = f"s3://{BUCKET}/copies"
    first, second = RunStorage(url, tmp_path / "first"), RunStorage(url, tmp_path / "second")
    first.local.mkdir()
    (first.local / "report.json").write_text("1")
    (first.local / "train" / "datasets-cache").mkdir(parents=True)
    (first.local / "train" / "datasets-cache" / "rows.arrow").write_text("cache")
    assert first.push_changed() == 1 and second.pull() == 1
    assert (second.local / "report.json").read_text() == "1" and not (second.local / "train").exists()
    time.sleep(0.05)  # a change is told by size and modification time, which moves in steps of a few ms
    (first.local / "report.json").write_text("2")
    assert first.push_changed() == 1 and second.pull() == 1 and (second.local / "report.json").read_text() == "2"
    time.sleep(0.05)
    (second.local / "report.json").write_text("3")  # changed here, not pushed yet
    assert second.pull() == 0 and (second.local / "report.json").read_text() == "3"
    assert second.push_changed() == 1 and first.pull() == 1 and (first.local / "report.json").read_text() == "3"


def test_a_stored_run_needs_a_shared_review_database():
    """Refused at the start, naming the key: the default review database would be a file on one machine."""
    from rlaif.config import ConfigError

    with pytest.raises(ConfigError, match=r"run.dir s3://runs/x is on object storage: set review.db"):
        load_config(None, ["run.dir=s3://runs/x"])


def test_a_stored_run_through_dask_workers_with_local_copies_of_their_own(s3_endpoint, tmp_path, monkeypatch):
    """run.dir on S3 and run.task_runner dask, each Dask worker with a HOME (so a local copy) of its own, as on
    machines of their own, sharing no folder with the flow: the judgments of a one-process run on local disk,
    and each worker's copy holds the shards it worked on, fetched from and uploaded to the store."""
    from tests.test_task_runners import DaskCluster

    cluster = DaskCluster(tmp_path, own_homes=True)
    cluster.start()
    try:
        with ScriptedOpenAIServer(reply=fake_judge_or_policy) as server:
            (tmp_path / "disk").mkdir()
            on_disk = load_config(None, run_overrides(server, tmp_path / "disk", str(tmp_path / "disk" / "run")))
            asyncio.run(label_pipeline(on_disk))
            calls = len(server.requests)
            (tmp_path / "s3").mkdir()
            monkeypatch.setenv("HOME", str(tmp_path / "flow-home"))  # the flow's local copy, under its HOME
            cluster_run = [f"s3://{BUCKET}/clustered", "run.task_runner=dask", f"run.cluster_address={cluster.address}"]
            asyncio.run(label_pipeline(load_config(None, run_overrides(server, tmp_path / "s3", *cluster_run))))
            assert len(server.requests) - calls == calls
    finally:
        cluster.stop()
    view = RunStorage(f"s3://{BUCKET}/clustered", tmp_path / "view")
    view.pull()
    assert sorted((j.pair_id, j.winner) for j in judgments_of(tmp_path / "view")) == sorted(
        (j.pair_id, j.winner) for j in judgments_of(tmp_path / "disk" / "run")
    )
    worked = [len(list((tmp_path / f"worker-{n}-home").glob(".cache/rlaif/runs/*/judgments/*.jsonl"))) for n in (0, 1)]
    assert sum(worked) == 4 and min(worked) > 0, worked  # 20 prompts in shards of 5, split between the workers


def test_prompts_a_merged_dataset_and_a_model_folder_are_read_from_the_store(s3_endpoint, tmp_path, monkeypatch):
    """prompts.path, train.data and a model path may be URLs: each is copied into ~/.cache/rlaif/inputs/ (here
    under the test's HOME) and read from there; a file changed on the store is copied again."""
    import s3fs

    from rlaif.config import PromptsSection
    from rlaif.models import resolve_model
    from rlaif.pipeline.prompt_sources import PromptSourceError, iter_configured_prompts
    from rlaif.run_storage import local_input
    from rlaif.training.data import load_preferences

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    prompts = prompts_file(tmp_path, 5)
    fs.put_file(str(prompts), f"{BUCKET}/inputs/prompts.jsonl")
    from_store = list(iter_configured_prompts(PromptsSection(path=f"s3://{BUCKET}/inputs/prompts.jsonl")))
    assert from_store == list(iter_configured_prompts(PromptsSection(path=str(prompts))))
    with pytest.raises(PromptSourceError, match="s3://runs/inputs/none.jsonl: no such file or folder on the store"):
        list(iter_configured_prompts(PromptsSection(path=f"s3://{BUCKET}/inputs/none.jsonl")))

    pair = {"role": "user", "content": "Which?"}
    rows = [{"prompt": [pair], "chosen": [{"role": "assistant", "content": f"good {i}"}],
             "rejected": [{"role": "assistant", "content": f"bad {i}"}], "label": "a"} for i in range(4)]  # fmt: skip
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "merged"))
    fs.put(str(tmp_path / "merged"), f"{BUCKET}/inputs/merged", recursive=True)
    loaded = load_preferences(str(local_input(f"s3://{BUCKET}/inputs/merged")), "merged")
    assert [row["chosen"][0]["content"] for row in loaded] == [f"good {i}" for i in range(4)]

    fs.pipe_file(f"{BUCKET}/inputs/model/config.json", b'{"version": 1}')
    folder = Path(resolve_model(f"s3://{BUCKET}/inputs/model"))
    assert json.loads((folder / "config.json").read_text()) == {"version": 1}
    fs.pipe_file(f"{BUCKET}/inputs/model/config.json", b'{"version": 2}')
    assert json.loads((Path(resolve_model(f"s3://{BUCKET}/inputs/model")) / "config.json").read_text()) == {
        "version": 2
    }
