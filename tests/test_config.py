"""Config loading: the embedded default, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlaif.config import ConfigError, apply_overrides, default_config_path, load_config, read_api_key


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_embedded_default_is_the_demo_config():
    assert default_config_path().name == "demo.yaml"
    config = load_config()
    assert config.policy.model == "smollm2-135m-instruct"
    assert config.prompts.path.endswith("mt_bench/question.jsonl")


def test_unknown_key_in_file_is_named_with_its_path(tmp_path):
    path = write(tmp_path, "sampling:\n  n: 2\n  temprature: 0.5\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert f"{path}: unknown key 'sampling.temprature'" in str(error.value)


def test_unknown_section_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'polcy'"):
        load_config(write(tmp_path, "polcy:\n  model: x\n"))


def test_unknown_key_from_set_names_the_override():
    with pytest.raises(ConfigError, match=r"--set policy.modle: unknown key 'policy.modle'"):
        load_config(None, ["policy.modle=foo"])


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "sampling:\n  n: many\n"))
    assert "sampling.n" in str(error.value) and "'many'" in str(error.value)


def test_a_secret_in_the_config_is_refused_with_a_hint(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "policy:\n  api_key: sk-abc\n"))
    assert "unknown key 'policy.api_key'" in str(error.value) and "api_key_env" in str(error.value)


def test_overrides_are_parsed_as_yaml_values():
    config = load_config(
        None,
        [
            "sampling.n=6",
            "sampling.temperature=0.3",
            "run.name=nightly",
            "policy.base_urls=[http://a/v1, http://b/v1]",
            "policy.backend=openai",
        ],
    )
    assert config.sampling.n == 6 and config.sampling.temperature == 0.3
    assert config.run.name == "nightly" and config.run.directory() == Path("runs/nightly")
    assert config.policy.base_urls == ["http://a/v1", "http://b/v1"]


def test_malformed_overrides_are_refused():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["sampling.n"])
    with pytest.raises(ConfigError, match="sampling.n is a value, not a section"):
        apply_overrides({"sampling": {"n": 2}}, ["sampling.n.x=1"])


def test_bad_yaml_and_missing_file_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "run: [unclosed\n"))
    with pytest.raises(ConfigError, match="cannot read config .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_server_launch_needs_the_openai_backend():
    with pytest.raises(ConfigError, match="need backend: openai"):
        load_config(None, ["policy.server.launch=transformers"])


def test_api_key_comes_from_the_named_environment_variable(monkeypatch):
    monkeypatch.setenv("RLAIF_TEST_KEY", "sk-canary")
    assert read_api_key("RLAIF_TEST_KEY", "judge") == "sk-canary"
    assert read_api_key(None, "judge") is None
    monkeypatch.delenv("RLAIF_TEST_KEY")
    with pytest.raises(ConfigError, match="judge.api_key_env names RLAIF_TEST_KEY, but .* not set") as error:
        read_api_key("RLAIF_TEST_KEY", "judge")
    assert "sk-canary" not in str(error.value)


def test_the_readme_demo_column_gives_the_embedded_configs_values():
    """The configuration table's `demo.yaml` column: for each key of a row, the embedded config's value where
    it differs from the code's default, else "as default"."""
    import re
    from pathlib import Path

    from rlaif.config import Config

    code, demo = Config().model_dump(mode="json"), load_config(None).model_dump(mode="json")

    def value(tree: dict, key: str) -> object:
        for part in key.split("."):
            tree = tree[part]
        return tree

    def shown(item: object) -> str:
        return "`none`" if item is None else f"`{str(item).lower() if isinstance(item, bool) else item}`"

    lines = (Path(__file__).parents[1] / "README.md").read_text().splitlines()
    start = lines.index("| key | default | `demo.yaml` (no config given) | meaning |") + 2
    checked = 0
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        key_cell, _, demo_cell, *_ = line.strip("| ").split(" | ")
        keys: list[str] = []
        for token in re.findall(r"`([^`]+)`", key_cell):
            keys.append(keys[0].rsplit(".", 1)[0] + token if token.startswith(".") else token)
        if keys[0].endswith("*"):
            continue
        cells = [shown(value(demo, k)) if value(demo, k) != value(code, k) else None for k in keys]
        expected = ", ".join(c or "as default" for c in cells) if any(cells) else "as default"
        assert demo_cell == expected, line
        checked += 1
    assert checked > 30
