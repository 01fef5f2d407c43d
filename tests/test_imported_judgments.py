"""Imported judgments (`judge.mode: imported`): a bad file stops the run before anything is judged, naming file
and line; a good one becomes the run's judgments (matched by pair id or by prompt and answers, in either order),
and a pair it has no verdict for is a failure that goes to people."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from rlaif.config import ConfigError, load_config
from rlaif.flows.label import label_pipeline
from rlaif.judges.imported import ImportedJudge, JudgmentsFileError
from rlaif.judges.setup import load_judge
from rlaif.schema import Candidate, Pair, PromptItem
from tests.scripted_openai_server import ScriptedOpenAIServer
from tests.test_labeling_flow import judgments_of, prompts_file, scripted_overrides
from tests.test_merge import pairs_of


def pair(question: str, first: str, second: str) -> Pair:
    prompt = PromptItem(messages=[{"role": "user", "content": question}])
    return Pair(
        prompt=prompt,
        a=Candidate(prompt_id=prompt.id, text=first, model="m"),
        b=Candidate(prompt_id=prompt.id, text=second, model="m"),
        strategy="all",
    )


def write_lines(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


GOOD = {"prompt": "Name a prime.", "answer_a": "7", "answer_b": "8", "judge": "gpt-4o", "verdicts": ["a", "a"]}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"judgments.jsonl:2: not valid JSON"),
        ({**GOOD, "judge": None}, r"judgments.jsonl:2: judge: Input should be a valid string"),
        ({**GOOD, "p_a": 0.7}, r"judgments.jsonl:2: line: Value error, give exactly one of verdicts and p_a"),
        ({**GOOD, "verdicts": ["a", "b", "a"]}, r"judgments.jsonl:2: verdicts: List should have at most 2 items"),
        ({**GOOD, "verdicts": ["A"]}, r"judgments.jsonl:2: verdicts.0: Input should be 'a', 'b' or 'tie'"),
        ({**GOOD, "pair_id": "abc"}, r"judgments.jsonl:2: line: Value error, give pair_id or prompt"),
        ({**GOOD, "answer_b": "9", "judge": "other"}, r"judgments.jsonl:2: a second judge or template"),
        ({**GOOD, "verdicts": ["b"]}, r"judgments.jsonl:2: the same pair as line 1, judged differently"),
        ({**GOOD, "p_a": None, "verdicts": None}, r"judgments.jsonl:2: line: Value error, give exactly one"),
    ],
)
def test_a_bad_line_is_named_and_nothing_is_imported(tmp_path, line, message):
    path = write_lines(tmp_path / "judgments.jsonl", [GOOD, line])
    with pytest.raises(JudgmentsFileError, match=message):
        ImportedJudge(path)
    section = load_config(None, ["judge.mode=imported", f"judge.judgments={path}"]).judge
    with pytest.raises(JudgmentsFileError, match=message):
        load_judge(section)  # the run stops when it loads its judge, before any model or shard


def test_the_config_needs_the_file():
    with pytest.raises(ConfigError, match="mode imported needs `judgments`"):
        load_config(None, ["judge.mode=imported"])


def test_verdicts_by_content_in_either_order_by_id_and_missing(tmp_path):
    known = pair("Name a prime.", "7", "8")
    by_id = pair("Name a colour.", "red", "loud")
    unknown = pair("Name a city.", "Paris", "Blue")
    path = write_lines(
        tmp_path / "judgments.jsonl",
        [
            {"prompt": "Name a prime.", "answer_a": "8", "answer_b": "7", "judge": "gpt-4o", "verdicts": ["b", "b"]},
            {"pair_id": by_id.id, "judge": "gpt-4o", "p_a": 0.9, "reasons": ["red is a colour"]},
            GOOD,  # the same pair as line 1 in the other order, same verdict: not a conflict
        ],
    )
    judge = ImportedJudge(path)
    swapped, from_id, missing = asyncio.run(judge.judge([known, by_id, unknown]))
    # Line 1 stores the pair the other way round: its "b" (7) is A here.
    assert (swapped.winner, swapped.p_a, swapped.order_disagreement) == ("a", 1.0, False)
    assert swapped.status == "ok" and swapped.judge_model == "gpt-4o"
    assert (from_id.winner, from_id.p_a, from_id.raw_outputs) == ("a", 0.9, ("red is a colour",))
    assert missing.status == "backend_error" and "has no judgment for this pair" in (missing.error or "")


def test_a_labeling_run_with_imported_judgments(tmp_path):
    """A first run with a scripted judge gives the pairs; a second run of the same prompts imports verdicts for
    all but one of them (some by id, some by content with the answers swapped) instead of calling a judge."""
    prompts = prompts_file(tmp_path, 4)
    with ScriptedOpenAIServer() as server:
        asyncio.run(label_pipeline(load_config(None, scripted_overrides(server, prompts, tmp_path / "first"))))
        pairs = sorted(pairs_of(tmp_path / "first").values(), key=lambda p: p.id)
        lines = []
        for index, p in enumerate(pairs[1:]):
            if index % 2:
                lines.append({"pair_id": p.id, "judge": "batch-judge", "verdicts": ["a", "a"]})
            else:  # by content, stored the other way round
                lines.append(
                    {
                        "prompt": [m.model_dump() for m in p.prompt.messages],
                        "answer_a": p.b.text,
                        "answer_b": p.a.text,
                        "judge": "batch-judge",
                        "verdicts": ["a", "a"],
                    }
                )
        path = write_lines(tmp_path / "judgments.jsonl", lines)
        config = load_config(
            None,
            scripted_overrides(server, prompts, tmp_path / "second", "judge.mode=imported", f"judge.judgments={path}"),
        )
        requests_before = len(server.requests)
        report = asyncio.run(label_pipeline(config))
    judge_requests = [r for r in server.requests[requests_before:] if r.get("model") == "judge"]
    assert judge_requests == []  # nothing was judged by a model
    judgments = {j.pair_id: j for j in judgments_of(tmp_path / "second")}
    assert set(judgments) == {p.id for p in pairs}
    assert judgments[pairs[0].id].status == "backend_error"  # no verdict for it: a failure, routed to people
    for index, p in enumerate(pairs[1:]):
        assert judgments[p.id].winner == ("a" if index % 2 else "b") and judgments[p.id].judge_model == "batch-judge"
    assert report["routed_by_reason"].get("failed") == 1
