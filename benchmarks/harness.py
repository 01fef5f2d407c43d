"""What the labeling benchmarks share: the fake endpoint and a Prefect server as child processes, the peer
harness copied to a scratch folder, the synthetic pairs written as a ready-to-judge run, timing of a whole
process against the server's own counters, the provenance every results file carries, and repeated runs
of contenders in alternating order.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from rlaif.run_files import write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
PEER_HARNESS = ROOT.parent / "shared" / "bench" / "distilabel"
VENV_BIN = Path(sys.executable).parent
RLAIF = str(VENV_BIN / "rlaif")
FAKE_PORT = 8765  # the peer harness's distilabel script has this port built in


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(url: str, timeout_s: float, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s; log: {log}")


@contextmanager
def child_process(
    command: list[str], health_url: str, log: Path, env: dict[str, str] | None = None, timeout_s: float = 60.0
) -> Iterator[subprocess.Popen[bytes]]:
    """A server as a child process, healthy before the block runs, stopped after it."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until(health_url, timeout_s, process, log)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


class FakeEndpoint:
    """The fake OpenAI-compatible server (benchmarks/fake_openai_server.py) and its counters."""

    def __init__(self, port: int = FAKE_PORT) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def call(self, path: str, method: str = "GET") -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", method=method, data=b"" if method == "POST" else None
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def prepare(self, delay_ms: float) -> None:
        self.call(f"/config?delay_ms={delay_ms}", "POST")
        self.call("/reset", "POST")

    def stats(self) -> dict[str, Any]:
        return self.call("/stats")


@contextmanager
def fake_endpoint(workdir: Path, completions: str = "list", port: int = FAKE_PORT) -> Iterator[FakeEndpoint]:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise RuntimeError(f"port {port} is taken: stop whatever listens there (the peer harness needs it)")
    command = [sys.executable, str(ROOT / "benchmarks" / "fake_openai_server.py"), "--port", str(port)]
    command += ["--completions", completions]
    with child_process(command, f"http://127.0.0.1:{port}/stats", workdir / "fake_server.log"):
        yield FakeEndpoint(port)


@contextmanager
def prefect_server(workdir: Path) -> Iterator[tuple[dict[str, str], float]]:
    """A Prefect server of its own (as a team runs one), and the environment that points flows at it.

    Yields (environment, seconds it took to come up)."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(workdir / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
    }
    started = time.monotonic()
    command = [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with child_process(command, f"http://127.0.0.1:{port}/api/health", workdir / "prefect.log", env, timeout_s=180):
        yield env, round(time.monotonic() - started, 2)


def peer_harness(workdir: Path) -> Path:
    """A scratch copy of the shared peer harness (it is never run from, nor copied into, the project)."""
    if not PEER_HARNESS.is_dir():
        raise RuntimeError(f"the peer harness is not beside the project ({PEER_HARNESS})")
    scratch = workdir / "peer"
    shutil.copytree(PEER_HARNESS, scratch, dirs_exist_ok=True)
    (scratch / "cache").mkdir(exist_ok=True)
    return scratch


def distilabel_python(root: Path = ROOT / ".bench" / "venv-distilabel") -> Path:
    """A virtual environment with distilabel 1.5.3 (the peer), made on first use (about a minute), its openai
    client pinned to this environment's version, so that every contender talks through the same client."""
    python = root / "bin" / "python"
    openai_pin = f"openai=={metadata.version('openai')}"
    if not python.exists():
        print(f"creating {root} with distilabel[openai]==1.5.3 and {openai_pin} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    ready = f"import importlib.metadata as m, distilabel; assert m.version('openai') == '{openai_pin[8:]}'"
    if subprocess.run([str(python), "-c", ready], capture_output=True).returncode != 0:
        command = [str(python), "-m", "pip", "install", "-q", "distilabel[openai]==1.5.3", openai_pin, "requests"]
        subprocess.run(command, check=True)
    return python


def synthetic_pairs(harness: Path, count: int) -> list[dict[str, Any]]:
    """The peers' own data generator: `count` pairs of a 20-word question and two 80-word answers."""
    sys.path.insert(0, str(harness))
    try:
        from data import make_pairs  # the peer harness's module
    finally:
        sys.path.remove(str(harness))
    return make_pairs(count)


def judge_section(base_url: str, model: str, concurrency: int, **settings: Any) -> dict[str, Any]:
    """The judge config every benchmark starts from: verdict mode through the openai backend at `base_url`,
    retries off, 16 tokens (as the peers' plain loop asks); `settings` add to it or replace."""
    return {
        "backend": "openai",
        "model": model,
        "base_urls": [base_url],
        "max_concurrency": concurrency,
        "max_retries": 0,
        "max_tokens": 16,
        "mode": "verdict",
        **settings,
    }


def write_ready_run(folder: Path, pairs: list[dict[str, Any]], judge: dict[str, Any]) -> Path:
    """A config whose candidates are already sampled: `rlaif label` with it only pairs, judges and routes.

    Each question becomes a prompt with its two answers as the two candidates, written as the finished
    candidate shards the sampling step would have made (one pair per prompt).
    """
    from rlaif.config import load_config
    from rlaif.judges.setup import load_judge
    from rlaif.pipeline.prompt_sources import load_configured_prompts
    from rlaif.pipeline.shard_plan import plan_shards
    from rlaif.run_directory import RunDirectory
    from rlaif.run_files import write_jsonl_atomic
    from rlaif.schema import Candidate

    folder.mkdir(parents=True, exist_ok=True)
    prompts_file = folder / "prompts.jsonl"
    with prompts_file.open("w", encoding="utf-8") as out:
        for pair in pairs:
            out.write(json.dumps({"prompt": pair["instruction"]}) + "\n")
    config = {
        "run": {"name": folder.name, "dir": str(folder / "run")},
        "prompts": {"path": str(prompts_file)},
        "policy": {"backend": "openai", "model": "bench-policy", "base_urls": [judge["base_urls"][0]]},
        "sampling": {"n": 2},
        "pairs": {"strategy": "all"},
        "judge": judge,
        "review": {"db": f"sqlite:///{folder / 'review.db'}"},
    }
    config_file = folder / "config.yaml"
    config_file.write_text(json.dumps(config, indent=2))
    loaded = load_config(config_file)
    answers = iter(pairs)
    run = RunDirectory(loaded.run.directory())
    identity = load_judge(loaded.judge).identity()
    for plan in plan_shards(run, loaded, load_configured_prompts(loaded.prompts), identity):
        candidates = []
        for prompt in plan.read_prompts():
            pair = next(answers)
            for index, text in enumerate((pair["answer_a"], pair["answer_b"])):
                candidates.append(Candidate(prompt_id=prompt.id, text=text, model="bench-policy", sample_index=index))
        write_jsonl_atomic(plan.candidates, candidates)
    return config_file


@dataclass
class ProcessTiming:
    """A process's wall and CPU time and peak memory, split by the server's first and last request."""

    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    startup_s: float | None  # process start -> first request at the server
    steady_s: float | None  # first request -> last response
    shutdown_s: float | None  # last response -> process exit
    server: dict[str, Any]
    stdout: str
    stderr: str


# Runs the command and reports its rusage. Linux counts a process's memory before exec in its peak RSS, and
# a process forked from this one (which holds the benchmark's data) starts as large as this one: the small
# wrapper forks the measured command instead, as GNU time does.
MEASURED = """
import json, os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"cpu_s": usage.ru_utime + usage.ru_stime, "max_rss_kib": usage.ru_maxrss}, out)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def timed_process(command: list[str], endpoint: FakeEndpoint | None, env: dict[str, str], cwd: Path) -> ProcessTiming:
    """Run a command to completion, timing it against the endpoint's counters (which the caller reset)."""
    with tempfile.TemporaryDirectory() as scratch:
        usage_file = Path(scratch) / "usage.json"
        started = time.time()
        wrapped = [sys.executable, "-c", MEASURED, str(usage_file), *command]
        done = subprocess.run(wrapped, capture_output=True, text=True, env=env, cwd=cwd)
        ended = time.time()
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        usage = json.loads(usage_file.read_text())
    stdout, stderr = done.stdout, done.stderr
    server = endpoint.stats() if endpoint else {}
    first, last = server.get("first_ts") or None, server.get("last_ts") or None
    return ProcessTiming(
        wall_s=round(ended - started, 3),
        cpu_s=round(usage["cpu_s"], 3),
        peak_rss_mib=round(usage["max_rss_kib"] / 1024, 1),
        startup_s=round(first - started, 3) if first else None,
        steady_s=round(last - first, 3) if first and last else None,
        shutdown_s=round(ended - last, 3) if last else None,
        server=server,
        stdout=stdout,
        stderr=stderr,
    )


# rlaif's start-up up to its first request: the interpreter, the command's modules, the flow's modules
# (imported with the garbage collector paused, as `rlaif label` imports them)
STARTUP_STEPS = {
    "interpreter": "pass",
    "cli_imports": "import rlaif.cli.main",
    "flow_imports": "import gc, rlaif.cli.main; gc.disable(); "
    "import rlaif.flows.label, rlaif.generation.openai_backend",
}


def startup_steps(repeats: int) -> dict[str, float]:
    """Median wall seconds of each step of STARTUP_STEPS as a process of its own, each step the time it adds."""
    walls = {}
    for name, code in STARTUP_STEPS.items():
        times = []
        for _ in range(repeats):
            started = time.monotonic()
            subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            times.append(time.monotonic() - started)
        walls[name] = median(times)
    return {
        "interpreter_s": round(walls["interpreter"], 3),
        "cli_imports_s": round(walls["cli_imports"] - walls["interpreter"], 3),
        "flow_imports_s": round(walls["flow_imports"] - walls["cli_imports"], 3),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def shown_command(command: list[str]) -> str:
    """A command as a person would type it from the project's folder (../ for what is beside it): paths
    are shortened where they start, at the start of an argument or after its `=`."""
    text = " ".join(str(part) for part in command)
    text = re.sub(rf"(?<![^\s=]){re.escape(str(ROOT))}/", "", text)
    return re.sub(rf"(?<![^\s=]){re.escape(str(ROOT.parent))}/", "../", text)


def provenance(extra_versions: dict[str, str] | None = None, accelerator: str = "CPU only") -> dict[str, Any]:
    """Machine, versions, date and the exact command, for every results file (`accelerator`: the GPU, if one ran it)."""
    versions = {"python": platform.python_version()}
    for package in (
        "rlaif-pipeline",
        "openai",
        "prefect",
        "pydantic",
        "httpx2",
        "aiohttp",
        "torch",
        "transformers",
        "trl",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    versions.update(extra_versions or {})
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores ({cpu_model()}), "
        f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, {accelerator}",
        "versions": versions,
        "command": shown_command(["python", *sys.argv]),
    }


def write_results(out: str | Path, document: dict[str, Any]) -> None:
    """A benchmark's results file, written atomically (its folder made when missing), and where it went."""
    write_json_atomic(Path(out), document)
    print(f"written: {out}")


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def median_runs(
    contenders: list[Callable[[], dict[str, Any]]], repeats: int, key: str = "tokens_per_s"
) -> list[dict[str, Any]]:
    """Each contender `repeats` times, in turn, the order reversed every other round (so that a machine
    slowing down or warming up over the run does not favour whoever goes first); per contender, the
    run with the median `key` (the lower middle one for an even count), each run's `key` beside it."""
    each: list[list[dict[str, Any]]] = [[] for _ in contenders]
    for round_ in range(repeats):
        order = list(range(len(contenders)))
        for index in order if round_ % 2 == 0 else order[::-1]:
            each[index].append(contenders[index]())
            print(json.dumps(each[index][-1]), flush=True)
    medians = []
    for runs in each:
        ranked = sorted(runs, key=lambda run: run[key])
        medians.append({**ranked[(len(ranked) - 1) // 2], f"{key}_each": [run[key] for run in runs]})
    return medians
