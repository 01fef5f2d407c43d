"""What every training stage shares: its processes, its tokenizer (with a pad token) and how it asks
for gradient checkpointing."""

from __future__ import annotations

import contextlib
import dataclasses
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


def load_tokenizer(model_path: str) -> Any:
    """The model's tokenizer; models without a pad token pad with their end-of-sequence token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def checkpointing_argument(config_class: type, enabled: bool) -> dict[str, bool]:
    """The keyword that sets gradient checkpointing in a TRL config class, always given explicitly.

    TRL's configs turn it on by default; our stages default to off (faster, more memory). Newer
    transformers (5.24 here) call it `activation_checkpointing` and warn on every run about the old name,
    which goes in v6; older releases know only the old name.
    """
    fields = {field.name for field in dataclasses.fields(config_class)}
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return {name: enabled}
