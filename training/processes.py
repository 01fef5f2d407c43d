"""The processes a training stage runs in: one, or several under `accelerate launch` or torchrun, and the
order in which they write what they share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def training_processes() -> Any:
    """accelerate's view of the stage's processes: one, or several under `accelerate launch` or torchrun.

    Made for the CPU where there is no GPU, as the trainers then train there: on a CPU that is the only
    way several processes know of each other before their trainer starts (else each would clear and
    write the run's files as if alone).
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Under several processes, the main process runs the block first, then each node's main process,
    then the others: work that writes a cache (data files, dataset maps) is done once, then read."""
    processes = training_processes()
    with processes.main_process_first(), processes.local_main_process_first():
        yield
