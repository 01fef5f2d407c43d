"""A run's judge requests for a provider's batch API, and the batch output back as imported judgments.

Batch APIs (OpenAI's Batch API, `vllm run-batch`) judge at about half the price of live requests, hours later.
`batch_request_lines` writes each pair twice (A shown first, then B), rendered with the run's judge template,
in the OpenAI Batch input format: `{"custom_id": "<pair id>-ab", "method": "POST", "url":
"/v1/chat/completions", "body": {...}}`. `imported_judgment_lines` reads the output file (one
`{"custom_id": ..., "response": {"status_code": 200, "body": <chat completion>}, "error": ...}` a line),
parses each reply's verdict with the template's labels, and gives the lines of the imported-judgments format
(`rlaif.judges.imported`), verdicts named in the pair's own A/B terms. A request that failed or a reply
without a readable verdict is a null verdict (the pair fails, and goes to people, if both orders did).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rlaif.judges.imported import JudgmentsFileError
from rlaif.judges.pairwise import judge_messages
from rlaif.judges.templates import JudgeTemplate
from rlaif.judges.verdicts import VerdictParseError, parse_verdict
from rlaif.run_files import read_jsonl
from rlaif.schema import Pair

ORDERS = ("ab", "ba")
_IN_PAIR_TERMS = {"ab": {"a": "a", "b": "b", "tie": "tie"}, "ba": {"a": "b", "b": "a", "tie": "tie"}}


def template_identity(template: JudgeTemplate) -> str:
    """What the imported judgments name as their template: the template's name and content hash."""
    return f"{template.header.name}@{template.hash}"


def batch_request_lines(
    pairs: Iterable[Pair], template: JudgeTemplate, model: str, temperature: float, max_tokens: int, seed: int
) -> Iterator[dict[str, Any]]:
    """Two OpenAI Batch input lines per pair, one per order."""
    for pair in pairs:
        for order in ORDERS:
            messages, _ = judge_messages(template, pair, order == "ba", seed)
            yield {
                "custom_id": f"{pair.id}-{order}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens},
            }


def imported_judgment_lines(path: Path, template: JudgeTemplate, judge: str) -> list[dict[str, Any]]:
    """The imported-judgments lines of a batch output file, one per pair, in the order pairs first appear.
    A line that is not a batch output line raises JudgmentsFileError naming the file and line."""
    verdicts: dict[str, dict[str, str | None]] = {}
    replies: dict[str, dict[str, str]] = {}
    for number, row in read_jsonl(path, JudgmentsFileError):
        custom_id = row.get("custom_id") if isinstance(row, dict) else None
        if not isinstance(custom_id, str) or custom_id[-3:] not in ("-ab", "-ba"):
            raise JudgmentsFileError(f"{path}:{number}: custom_id: not a request of `rlaif judge export-requests`")
        pair_id, order = custom_id[:-3], custom_id[-2:]
        text = _reply_text(row)
        verdict = None
        if text is not None:
            try:
                verdict = _IN_PAIR_TERMS[order][parse_verdict(text, template.header.labels, template.header.output)]
            except VerdictParseError:
                verdict = None
        verdicts.setdefault(pair_id, {})[order] = verdict
        replies.setdefault(pair_id, {})[order] = text if text is not None else f"error: {row.get('error')}"
    return [
        {
            "pair_id": pair_id,
            "judge": judge,
            "template": template_identity(template),
            "verdicts": [by_order.get(order) for order in ORDERS],
            "reasons": [replies[pair_id].get(order, "missing from the batch output") for order in ORDERS],
        }
        for pair_id, by_order in verdicts.items()
    ]


def _reply_text(row: dict[str, Any]) -> str | None:
    """The reply of a successful batch request, else None."""
    response = row.get("response") or {}
    if row.get("error") or response.get("status_code", 200) != 200:
        return None
    try:
        content = response["body"]["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None
