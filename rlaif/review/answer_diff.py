"""What differs between two near-identical answers, word by word, for the review page's diff view: such
answers are hard to compare side by side (the one changed number hides in two long texts)."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from markupsafe import Markup, escape

NEAR_IDENTICAL = 0.8  # at least this share of words in common: the page offers the diff view
MAX_WORDS = 20_000  # longer answers get no diff
_WORDS = re.compile(r"(\S+)(\s*)")  # each word with the whitespace after it, so that line breaks survive


@dataclass(frozen=True)
class AnswerDiff:
    """Answer 2 against answer 1: the HTML (removed words in <del>, added in <ins>, the rest as text, all
    escaped), and the share of words the two have in common."""

    html: Markup
    similarity: float


def answer_diff(first: str, second: str) -> AnswerDiff | None:
    """The word diff from `first` to `second` when they are near-identical (at least NEAR_IDENTICAL of their
    words in common); None otherwise, or when either is empty or too long. Words are compared without the
    whitespace around them. The cheap upper bounds on the similarity come first: a full diff of two long,
    different texts took 31 s (7,000 words each)."""
    old, new = _WORDS.findall(first), _WORDS.findall(second)
    if not old or not new or len(old) + len(new) > 2 * MAX_WORDS:
        return None
    matcher = difflib.SequenceMatcher(None, [w for w, _ in old], [w for w, _ in new], autojunk=False)
    if matcher.real_quick_ratio() < NEAR_IDENTICAL or matcher.quick_ratio() < NEAR_IDENTICAL:
        return None
    similarity = matcher.ratio()
    if similarity < NEAR_IDENTICAL:
        return None
    parts = [str(escape(first[: len(first) - len(first.lstrip())]))]  # any leading whitespace
    for operation, old_start, old_end, new_start, new_end in matcher.get_opcodes():
        if operation == "equal":
            parts.append(str(escape(_text(old[old_start:old_end]))))
            continue
        removed, added = _text(old[old_start:old_end]), _text(new[new_start:new_end])
        # The whitespace after the change is not part of it (a replaced word keeps its space or line break).
        after = (new[new_end - 1] if added else old[old_end - 1])[1]
        if new_start and parts[-1] and not parts[-1][-1].isspace():  # words added after the old text's last one
            parts.append(str(escape(new[new_start - 1][1])))
        if removed:
            parts.append(f"<del>{escape(removed.rstrip())}</del>")
        if added:
            parts.append(f"<ins>{escape(added.rstrip())}</ins>")
        parts.append(str(escape(after)))
    return AnswerDiff(Markup("".join(parts)), round(similarity, 3))


def _text(words: list[tuple[str, str]]) -> str:
    return "".join(word + space for word, space in words)
