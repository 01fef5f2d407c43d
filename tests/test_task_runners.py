"""Shard tasks on a real Dask cluster (run.task_runner: dask): a scheduler and two workers, each a process of
its own on loopback, started here with `dask scheduler` and `dask worker`. The models are
tests/scripted_openai_server.py (a stand-in for a model server, over real HTTP)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor as ThreadPool
from pathlib import Path

import pytest

from benchmarks.harness import free_port
from rlaif.config import load_config
from rlaif.flows.label import label_pipeline
from tests.scripted_openai_server import ScriptedOpenAIServer
from tests.test_labeling_flow import fake_judge_or_policy, judgments_of, prompts_file, scripted_overrides

DASK = str(Path(sys.executable).parent / "dask")
PROMPTS, PER_SHARD, N = 20, 5, 3
JUDGE_CALLS_PER_SHARD = PER_SHARD * 3 * 2  # 3 pairs of 3 answers per prompt, both orders


class DaskCluster:
    """`dask scheduler` and two `dask worker` processes (one thread each), their output in `folder`; with
    `own_homes`, each worker has a HOME of its own (`folder/<worker>-home`), as on machines of their own."""

    def __init__(self, folder: Path, own_homes: bool = False) -> None:
        self.folder, self.own_homes = folder, own_homes
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def _start(self, name: str, *arguments: str) -> subprocess.Popen[bytes]:
        environment = os.environ.copy()
        if self.own_homes and name.startswith("worker"):
            environment["HOME"] = str(self.folder / f"{name}-home")
        with (self.folder / f"{name}.log").open("ab") as out:
            return subprocess.Popen([DASK, *arguments], stdout=out, stderr=subprocess.STDOUT, env=environment)

    def start(self) -> None:
        port = self.address.rsplit(":", 1)[1]
        self.scheduler = self._start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard")
        self.workers = [self.start_worker(f"worker-{number}") for number in range(2)]
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        return self._start(
            name, "worker", self.address, "--nthreads", "1", "--no-dashboard", "--name", name, "--host", "127.0.0.1"
        )

    def shard_tasks_finished(self, name: str) -> int:
        """How many shard task runs finished on the worker `name`, from the Prefect log lines in its output."""
        lines = (self.folder / f"{name}.log").read_text(errors="replace").splitlines()
        return sum("-shard-" in line and "Finished in state Completed" in line for line in lines)

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[DaskCluster]:
    cluster = DaskCluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def label_run(server: ScriptedOpenAIServer, folder: Path, *extra: str) -> dict:
    overrides = scripted_overrides(
        server, prompts_file(folder, PROMPTS), folder / "run", f"run.prompts_per_shard={PER_SHARD}", *extra
    )
    return asyncio.run(label_pipeline(load_config(None, overrides)))


def verdicts(run_dir: Path) -> list[tuple[str, str, str | None]]:
    return sorted((j.pair_id, j.status, j.winner) for j in judgments_of(run_dir))


def test_a_label_run_on_a_dask_cluster_gives_the_judgments_of_a_one_process_run(dask_cluster, tmp_path):
    """The same label run in one process and through the Dask cluster: the same judgments and report, the same
    model calls, the shard tasks run by the Dask workers (both of them), none in the flow's process."""
    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as server:
        (tmp_path / "local").mkdir()
        local = label_run(server, tmp_path / "local")
        calls_in_one_process = len(server.requests)
        (tmp_path / "dask").mkdir()
        clustered = label_run(
            server, tmp_path / "dask", "run.task_runner=dask", f"run.cluster_address={dask_cluster.address}"
        )
        calls_on_the_cluster = len(server.requests) - calls_in_one_process
    assert verdicts(tmp_path / "dask" / "run") == verdicts(tmp_path / "local" / "run")
    assert len(verdicts(tmp_path / "local" / "run")) == PROMPTS * N
    for key in ("pairs", "judged_ok", "routed_to_review", "routed_by_reason"):
        assert clustered[key] == local[key], key
    assert calls_on_the_cluster == calls_in_one_process
    by_worker = [dask_cluster.shard_tasks_finished(f"worker-{number}") for number in range(2)]
    assert sum(by_worker) == 2 * PROMPTS // PER_SHARD and min(by_worker) > 0, by_worker  # sample and judge shards
    # What the workers' models spent reaches the run's cost ledger.
    assert clustered["cost"]["stages"]["judging"]["judge"]["requests"] == PROMPTS * N * 2


def test_a_dask_worker_killed_mid_run_repeats_only_its_shard(dask_cluster, tmp_path):
    """A Dask worker SIGKILLed while it judges a shard: the run completes through the other worker with the
    judgments of a one-process run, and the model calls repeated are at most those of the shard it held."""
    with ScriptedOpenAIServer(reply=fake_judge_or_policy, delay_s=0.02) as server:
        (tmp_path / "local").mkdir()
        label_run(server, tmp_path / "local")
        calls_in_one_process = len(server.requests)
        judge_calls = sum(body["model"] == "judge" for body in server.requests)

        def kill_a_worker_mid_judging() -> None:
            while sum(body["model"] == "judge" for body in server.requests) < judge_calls + 10:
                time.sleep(0.01)
            dask_cluster.workers[0].send_signal(signal.SIGKILL)

        (tmp_path / "dask").mkdir()
        with ThreadPool() as pool:
            killer = pool.submit(kill_a_worker_mid_judging)
            label_run(server, tmp_path / "dask", "run.task_runner=dask", f"run.cluster_address={dask_cluster.address}")
            assert killer.done() and dask_cluster.workers[0].poll() == -signal.SIGKILL
        repeated = len(server.requests) - 2 * calls_in_one_process
    assert verdicts(tmp_path / "dask" / "run") == verdicts(tmp_path / "local" / "run")
    assert 0 <= repeated <= JUDGE_CALLS_PER_SHARD, repeated


def test_a_label_run_through_a_local_ray_instance_gives_the_judgments_of_a_one_process_run(tmp_path):
    """run.task_runner ray without an address, in a process that has started Ray on this machine (prefect-ray
    uses it): the judgments of a one-process run, the shard tasks run by Ray's worker processes (their log
    files say so)."""
    import ray

    ray_files = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must fit in 107 bytes
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(ray_files))
    try:
        with ScriptedOpenAIServer(reply=fake_judge_or_policy) as server:
            (tmp_path / "local").mkdir()
            local = label_run(server, tmp_path / "local")
            (tmp_path / "ray-run").mkdir()
            clustered = label_run(server, tmp_path / "ray-run", "run.task_runner=ray")
    finally:
        ray.shutdown()
    assert verdicts(tmp_path / "ray-run" / "run") == verdicts(tmp_path / "local" / "run")
    assert clustered["routed_by_reason"] == local["routed_by_reason"]
    logs = (ray_files / "session_latest" / "logs").glob("worker-*")
    finished = sum(
        "-shard-" in line and "Finished in state Completed" in line
        for log in logs
        for line in log.read_text(errors="replace").splitlines()
    )
    shutil.rmtree(ray_files, ignore_errors=True)
    assert finished == 2 * PROMPTS // PER_SHARD


def test_a_cluster_run_refuses_servers_it_would_launch_in_every_shard():
    """server.launch with a cluster task runner would start a model server in each shard task: refused at the
    start, naming the key and what to do instead."""
    from rlaif.config import ConfigError

    with pytest.raises(ConfigError, match=r"run.task_runner dask: judge.server.launch would start a server in every"):
        load_config(None, ["run.task_runner=dask", "judge.backend=openai", "judge.server.launch=transformers"])
