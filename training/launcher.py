"""A training stage in processes of its own under `accelerate launch`: one per GPU with the configured
accelerate file (DDP, DeepSpeed ZeRO-2/3, FSDP: configs/accelerate/), or several CPU processes over gloo
where there is no GPU. The rlaif-train flow's task starts it (`train.launcher: accelerate`), passes the
run's effective config as a file, shows the processes' log as it comes and reports how they ended.

The launched command is `rlaif train STAGE --keep-finished`, so a rerun keeps a stage already trained
on the same data and settings and continues one stopped mid-run from its checkpoint, as in-process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlaif.config import Config, dump_config
from rlaif.run_files import write_text_atomic
from rlaif.training.stages import Stage, stage_output

LOG_TAIL_LINES = 40  # of the processes' log, in the error when they fail


class LaunchFailed(RuntimeError):
    """The launched training processes ended with an error; the message holds the end of their log."""


def launch_command(config: Config, stage: Stage, config_file: Path, model: str | None = None) -> list[str]:
    """The `accelerate launch` command line of a stage, with the run's config in `config_file`."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if config.train.accelerate_config:
        command += ["--config_file", config.train.accelerate_config]
    if config.train.num_processes:
        command += ["--num_processes", str(config.train.num_processes)]
        if config.train.num_processes > 1 and not config.train.accelerate_config:
            command += ["--multi_gpu"]  # several processes on one machine: torchrun underneath (gloo on a CPU)
    command += ["-m", "rlaif.cli", "train", stage, str(config_file), "--out", str(stage_output(config, stage))]
    command += ["--keep-finished", *(["--model", model] if model else [])]
    return command


def launch_stage(config: Config, stage: Stage, say: Callable[[str], None], model: str | None = None) -> dict[str, Any]:
    """Train one stage under `accelerate launch` and return its report; LaunchFailed when it fails."""
    out = stage_output(config, stage)
    out.parent.mkdir(parents=True, exist_ok=True)
    config_file = out.parent / f".{stage}-launch-config.yaml"  # the effective config, overrides included
    write_text_atomic(config_file, dump_config(config))
    command = launch_command(config, stage, config_file, model)
    processes = config.train.num_processes or "the accelerate config's"
    say(f"{stage}: accelerate launch, {processes} processes: {' '.join(command)}")
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    try:
        with tempfile.TemporaryFile("w+") as report_out:
            process = subprocess.Popen(command, stdout=report_out, stderr=subprocess.PIPE, text=True)
            assert process.stderr is not None
            try:
                for line in process.stderr:
                    tail.append(line.rstrip())
                    say(f"{stage}: {line.rstrip()}")
                code = process.wait()
            finally:
                if process.poll() is None:  # the flow run was cancelled or crashed: its training stops too
                    process.terminate()
                    process.wait()
            report_out.seek(0)
            printed = report_out.read()
    finally:
        config_file.unlink(missing_ok=True)
    if code != 0:
        log = "\n".join(tail)
        raise LaunchFailed(f"accelerate launch of the {stage} stage exited with code {code}; its log ends:\n{log}")
    return json.loads(printed)
