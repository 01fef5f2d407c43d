"""Hostile and malformed inputs: prompt files, configs and judge templates.

Each is given to `rlaif label` as a user would give it; each must end in one clear error line that
names the file, line or key (exit status 2, no traceback, no model call, no run directory), or in the
documented handling (left out or truncated, and counted in report.json).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess

import pytest
from typer.testing import CliRunner

from rlaif.cli.main import app
from rlaif.config import load_config
from rlaif.flows.label import label_pipeline
from rlaif.judges.templates import load_template
from rlaif.run_directory import read_records
from rlaif.schema import Candidate
from tests.scripted_openai_server import ScriptedOpenAIServer
from tests.test_labeling_flow import RLAIF, fake_judge_or_policy, scripted_overrides

CANARY = "sk-canary-3f9a1c77e2"
UNREACHABLE = ["policy.backend=openai", "policy.base_urls=[http://127.0.0.1:9/v1]", "policy.model=m"]

# (name, file bytes, what the error says after "error: FILE:")
PROMPT_FILES = [
    ("bad_json", b'{"prompt": "fine"}\n{"prompt": "unclosed"\n', r":2: not valid JSON"),
    ("not_an_object", b"[1, 2, 3]\n", r":1: expected a JSON object, got list"),
    ("prompt_not_a_string", b'{"prompt": 42}\n', r":1: field 'prompt' must be a string, got int"),
    ("messages_not_a_list", b'{"messages": "hello"}\n', r":1: field 'messages' must be a non-empty list"),
    ("bad_role", b'{"messages": [{"role": "wizard", "content": "hi"}]}\n', r":1: messages.0.role"),
    ("content_not_text", b'{"messages": [{"role": "user", "content": {"x": 1}}]}\n', r":1: messages\[0\].content"),
    ("no_prompt_field", b'{"question": "hi"}\n', r":1: needs a 'prompt' string or a 'messages' list"),
    ("invalid_utf8", b'{"prompt": "fine"}\n{"prompt": "\xc3\x28"}\n', r":2: not valid UTF-8 \(byte"),
    ("lone_surrogate", b'{"prompt": "half \\ud800 a character"}\n', r":1: a \\ud800-\\udfff escape without its pair"),
    ("nested_too_deep", b"[" * 200_000 + b"]" * 200_000 + b"\n", r":1: not valid JSON"),
    ("duplicate_ids", b'{"id": 7, "prompt": "one"}\n{"id": 7, "prompt": "two"}\n', r":2: id 7 is already the id"),
    ("empty_prompt", b'{"prompt": "fine"}\n\n{"prompt": "   "}\n', r":3: prompt: the prompt is empty"),
    (
        "all_too_long",
        b'{"prompt": "' + b"x" * 300 + b'"}\n',
        r": no usable prompts found \(0 duplicates, 1 too long skipped",
    ),
]

# Judge template bodies that try to leave the sandbox (each after the variables a template must use).
ESCAPES = [
    "{{ question.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ question|attr('__class__') }}",
    "{{ '{0.__class__.__base__}'.format(question) }}",
    "{{ labels.update({'a': 'B'}) }}",
    "{% for c in ().__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ range(10**9)|list|length }}",
    "{{ 'x' * 10**10 }}",
    "{{ 10 ** 10 ** 10 }}",
    "{{ question.encode.__self__ }}",
    "{{ 1 / 0 }}",
    "{{ question + 1 }}",
]


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """`rlaif ...` in-process (these failures come before Prefect starts), from a scratch directory."""
    monkeypatch.chdir(tmp_path)

    def invoke(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, list(args))
        return result.exit_code, result.output

    return invoke


def sets(*items: str) -> list[str]:
    return [part for item in items for part in ("--set", item)]


def check_clear_failure(code: int, output: str, starts: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {starts}"), line


@pytest.mark.parametrize(("name", "content", "says"), PROMPT_FILES, ids=[case[0] for case in PROMPT_FILES])
def test_a_malformed_prompt_file_fails_naming_its_line(cli, tmp_path, name, content, says):
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(content)
    code, output = cli("label", *sets(f"prompts.path={path}", "prompts.max_chars=100", "run.dir=run", *UNREACHABLE))
    check_clear_failure(code, output, str(path))
    assert re.search(says, output), output
    assert not (tmp_path / "run").exists()


def test_a_prompt_over_max_chars_can_be_refused_by_policy(cli, tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"prompt": "short"}) + "\n" + json.dumps({"prompt": "x" * 500}) + "\n")
    code, output = cli(
        "label",
        *sets(f"prompts.path={path}", "prompts.max_chars=100", "prompts.too_long=error", "run.dir=run", *UNREACHABLE),
    )
    check_clear_failure(code, output, f"{path}:2: the prompt has 500 characters, over prompts.max_chars=100")


CONFIG_CASES = [
    ("wrong_type_set", None, ["sampling.n=three"], "sampling.n"),
    ("wrong_type_file", "sampling:\n  n: [1, 2]\n", [], "sampling.n"),
    ("negative", "sampling:\n  n: -4\n", [], "sampling.n"),
    ("unknown_key", "judge:\n  temprature: 0.5\n", [], "judge.temprature"),
    ("not_a_mapping", "- just\n- a list\n", [], "config.yaml: the top level must be a mapping of sections, not list"),
    ("bad_yaml", "judge: {mode: [verdict\n", [], "config.yaml:2: not valid YAML: expected ',' or ']'"),
    ("secret_in_file", f"judge:\n  api_key: {CANARY}\n", [], "judge.api_key"),
    ("secret_by_set", None, [f"policy.api_key={CANARY}"], "policy.api_key"),
    ("python_tag", "judge: !!python/object/apply:os.system ['echo pwned']\n", [], "config.yaml:1: not valid YAML"),
]


@pytest.mark.parametrize(("name", "text", "overrides", "names"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_a_bad_config_fails_naming_the_key_and_never_echoes_a_secret(cli, tmp_path, name, text, overrides, names):
    args = ["label"]
    if text is not None:
        (tmp_path / "config.yaml").write_text(text)
        args.append(str(tmp_path / "config.yaml"))
    code, output = cli(*args, *sets(*overrides))
    check_clear_failure(code, output, "")
    assert names and names in output, output
    assert CANARY not in output and "pwned" not in output


@pytest.mark.parametrize("escape", ESCAPES)
def test_a_template_that_tries_to_leave_the_sandbox_is_refused_before_any_model_call(cli, tmp_path, escape):
    template = tmp_path / "evil.md.j2"
    template.write_text(
        "---\nname: evil\nmodes: [verdict, logprob]\n---\nQ {{ question }}\nA {{ answer_a }}\nB {{ answer_b }}\n"
        + escape
        + "\n"
    )
    code, output = cli("label", *sets(f"judge.prompt={template}", "run.dir=run", *UNREACHABLE))
    check_clear_failure(code, output, f"{template}:")
    assert f"{template}:8:" in output or f"{template}:7:" in output  # the escape's line (or the line it joins)
    assert not (tmp_path / "run").exists()


def test_candidate_text_is_data_never_template_code(tmp_path):
    template = load_template("helpfulness")
    hostile = "{{ 7*7 }} {% for x in range(3) %}loop{% endfor %} {{ cycler.__init__ }}"
    [*_, user] = template.render("question", hostile, "other answer")
    assert hostile in user["content"] and "49" not in user["content"]


def test_an_escape_in_a_branch_the_first_render_skips_fails_the_run_naming_the_template(tmp_path):
    """The escape only runs when a candidate answer contains a trigger: the run stops at the first such render
    with the template's file and line, instead of a traceback or a judgment built from it."""
    template = tmp_path / "sleeper.md.j2"
    template.write_text(
        "---\nname: sleeper\nmodes: [verdict]\n---\nQ {{ question }}\nA {{ answer_a }}\nB {{ answer_b }}\n"
        "{% if 'seed=' in answer_a %}{{ answer_a.__class__.__mro__ }}{% endif %}\n"
    )
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(4)))
    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as server:
        overrides = scripted_overrides(server, prompts, tmp_path / "run", f"judge.prompt={template}")

        result = subprocess.run([RLAIF, "label", *sets(*overrides)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {template}:8: the template fails to render: access to attribute '__class__'")
    assert not list((tmp_path / "run").glob("judgments/*.jsonl"))
    assert all(r["model"] != "judge" for r in server.requests)


def test_empty_duplicate_and_too_long_prompts_are_left_out_or_truncated_and_counted(tmp_path, prefect_server):
    lines = [
        {"prompt": "What is the boiling point of water?"},
        {"prompt": "What is the boiling point of water?"},  # a duplicate
        {"prompt": "Explain tides. " + "Really, in detail. " * 40},  # over max_chars
        {"prompt": "Name a prime number."},
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as server:
        for policy in ("skip", "truncate"):
            run = tmp_path / policy
            overrides = scripted_overrides(server, prompts, run, "prompts.max_chars=200", f"prompts.too_long={policy}")
            report = asyncio.run(label_pipeline(load_config(None, overrides)))
            counts = report["prompts_left_out_or_truncated"]
            assert json.loads((run / "report.json").read_text())["prompts_left_out_or_truncated"] == counts
            assert counts["duplicates"] == 1
            if policy == "skip":
                assert counts["too_long_skipped"] == 1 and counts["truncated"] == 0 and report["prompts"] == 2
            else:
                assert counts["too_long_skipped"] == 0 and counts["truncated"] == 1 and report["prompts"] == 3
                sent = [r["messages"][-1]["content"] for r in server.requests if r["model"] == "policy"]
                assert all(len(text) <= 200 for text in sent) and any(
                    text.startswith("Explain tides.") for text in sent
                )
    candidates = [
        c for path in (tmp_path / "truncate").glob("candidates/*.jsonl") for c in read_records(path, Candidate)
    ]
    assert len(candidates) == 9
