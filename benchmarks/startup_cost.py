"""What `rlaif label` costs before its first request, step by step, with and without a running Prefect server.

    .venv/bin/python benchmarks/startup_cost.py [--repeats 3]     # about 3 min

A tiny run (10 pairs, ready to judge, against the fake endpoint) is labeled as a whole process in three
settings, in rotating order, `--repeats` times each:
- `running server`: PREFECT_API_URL points at a Prefect server started once (what a team runs);
- `temporary server`: PREFECT_API_URL unset, so Prefect starts a temporary server for the command, with a
  Prefect home that has been used before (its database exists);
- `temporary server, first use`: the same with a new Prefect home (the database is created and migrated).
Beside them, the steps as processes of their own: the interpreter, the command's imports, the flow's
imports, and the temporary server's start alone (first use and later). Medians. JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (  # noqa: E402
    RLAIF,
    ROOT,
    FakeEndpoint,
    fake_endpoint,
    judge_section,
    median,
    prefect_server,
    provenance,
    scratch_dir,
    startup_steps,
    timed_process,
    write_ready_run,
    write_results,
)

SETTINGS = ("running server", "temporary server", "temporary server, first use")
PAIRS = 10

# The temporary server's start alone: what Prefect does when a command needs the API and none is set
SERVER_START = """
import time
from prefect.server.api.server import SubprocessASGIServer
server = SubprocessASGIServer()
started = time.monotonic()
server.start()
print(time.monotonic() - started)
server.stop()
"""


def tiny_pairs() -> list[dict[str, Any]]:
    return [
        {"instruction": f"Question {i}: what is {i} plus {i}?", "answer_a": f"{2 * i}.", "answer_b": f"{2 * i + 1}."}
        for i in range(PAIRS)
    ]


def temporary_env(base: dict[str, str], home: Path) -> dict[str, str]:
    """The environment of a command with no Prefect server set: Prefect starts a temporary one."""
    env = {key: value for key, value in base.items() if key != "PREFECT_API_URL"}
    return {**env, "PREFECT_HOME": str(home), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}


def label_once(setting: str, endpoint: FakeEndpoint, server_env: dict[str, str], workdir: Path, index: int) -> float:
    """Wall seconds to the first request of `rlaif label` on a fresh tiny run in one setting."""
    folder = workdir / f"run-{index}"
    config = write_ready_run(folder, tiny_pairs(), judge_section(endpoint.base_url, "fake-judge", 4))
    if setting == "running server":
        env = server_env
    elif setting == "temporary server":
        env = temporary_env(server_env, workdir / "home-used")
    else:
        env = temporary_env(server_env, workdir / f"home-new-{index}")
    endpoint.prepare(0)
    timing = timed_process([RLAIF, "label", str(config)], endpoint, env, folder)
    return timing.startup_s or 0.0


def server_start(env: dict[str, str]) -> float:
    done = subprocess.run([sys.executable, "-c", SERVER_START], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the temporary server did not start:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/startup_cost.json"))
    args = parser.parse_args()
    workdir = scratch_dir("rlaif-startup-")
    first_request: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    with fake_endpoint(workdir) as endpoint, prefect_server(workdir) as (env, server_up_s):
        # the used home is used once before it is measured
        server_start(temporary_env(env, workdir / "home-used"))
        index = 0
        for repeat in range(args.repeats):
            for setting in SETTINGS[repeat % 3 :] + SETTINGS[: repeat % 3]:
                index += 1
                first_request[setting].append(label_once(setting, endpoint, env, workdir, index))
                print(f"{setting:28} first request after {first_request[setting][-1]:.2f} s", flush=True)
        starts_new = [server_start(temporary_env(env, workdir / f"home-start-{i}")) for i in range(args.repeats)]
        starts_used = [server_start(temporary_env(env, workdir / "home-used")) for _ in range(args.repeats)]
    steps = startup_steps(args.repeats)
    imports = steps["interpreter_s"] + steps["cli_imports_s"] + steps["flow_imports_s"]
    running = median(first_request["running server"])
    document = {
        "benchmark": "rlaif label's start-up: time to the first request, with and without a Prefect server",
        **provenance(),
        "pairs": PAIRS,
        "repeats": args.repeats,
        "first_request_s": {setting: round(median(times), 3) for setting, times in first_request.items()},
        "first_request_each_s": {setting: [round(t, 3) for t in times] for setting, times in first_request.items()},
        "steps_s": {
            **steps,
            "rest_with_running_server_s": round(running - imports, 3),
            "temporary_server_start_s": round(median(starts_used), 3),
            "temporary_server_first_start_s": round(median(starts_new), 3),
        },
        "dedicated_server_start_s": server_up_s,
    }
    print(json.dumps(document, indent=2))
    write_results(args.out, document)


if __name__ == "__main__":
    main()
