"""Token spans of the *action* inside a step's sampled text (SERL reweights only these tokens).

An action text may hold reasoning around the command the env executes: ``<think>...</think>
<action>click[Buy Now]</action>``. ``action_char_span`` finds the command in characters (the
``ACTION_PATTERNS`` registry, tried in order), and ``char_to_token_span`` maps it onto the exact
sampled ids with the policy's own ``decode`` (incremental decoding, so no re-tokenization is
involved): the result is the smallest [start, end) token range whose decoded text covers the
characters.

>>> decode = lambda ids: "".join(map(chr, ids))          # a character-level tokenizer
>>> text = "I will buy. <action>click[Buy Now]</action>"
>>> ids = [ord(c) for c in text]
>>> action_token_span(text, ids, decode)
(20, 34)
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

__all__ = ["ACTION_PATTERNS", "action_char_span", "char_to_token_span", "action_token_span"]

ACTION_PATTERNS: dict[str, re.Pattern[str]] = {
    # SERL's format: the executed command sits inside <action>...</action>
    "action_tag": re.compile(r"<action>(.*?)</action>", re.DOTALL | re.IGNORECASE),
    # WebShop's commands
    "webshop": re.compile(r"((?:search|click)\[[^\]]*\])", re.IGNORECASE),
}


def action_char_span(text: str, patterns: dict[str, re.Pattern[str]] | None = None) -> tuple[int, int] | None:
    """[start, end) characters of the LAST match of the first pattern that matches, else None."""
    for pattern in (patterns or ACTION_PATTERNS).values():
        matches = list(pattern.finditer(text))
        if matches:
            m = matches[-1]
            if m.end(1) > m.start(1):
                return m.start(1), m.end(1)
    return None


def char_to_token_span(ids: Sequence[int], span: tuple[int, int], decode: Callable[[list[int]], str],
                       ) -> tuple[int, int] | None:
    """Smallest token range covering characters ``span`` of ``decode(ids)``; None if decoding of
    prefixes is not consistent with the full text (then callers keep the whole action)."""
    start_char, end_char = span
    lengths = [0]
    full = decode(list(ids))
    for i in range(1, len(ids) + 1):
        prefix = decode(list(ids[:i]))
        if not full.startswith(prefix.rstrip("\ufffd")):
            return None
        lengths.append(len(prefix))
    # first token whose end passes start_char; first token whose end reaches end_char
    start = next((i for i in range(len(ids)) if lengths[i + 1] > start_char), None)
    end = next((i + 1 for i in range(len(ids)) if lengths[i + 1] >= end_char), None)
    if start is None or end is None or end <= start:
        return None
    return start, end


def action_token_span(text: str, ids: Sequence[int], decode: Callable[[list[int]], str] | None,
                      patterns: dict[str, re.Pattern[str]] | None = None) -> tuple[int, int]:
    """The action's token span; the whole action ``(0, len(ids))`` when no narrower one is found."""
    whole = (0, len(ids))
    if decode is None or not ids:
        return whole
    try:
        # search the decoding of the ids (not ``text``): special tokens may decode differently
        chars = action_char_span(decode(list(ids)), patterns)
        if chars is None:
            return whole
        found = char_to_token_span(ids, chars, decode)
    except Exception:  # a decoder that cannot handle a prefix: keep the whole action
        return whole
    return found if found is not None else whole
