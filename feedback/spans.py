"""Token spans of the *action content* inside a step's sampled text (SERL reweights only these
tokens; reasoning around them keeps the plain GRPO advantage).

An action text may hold reasoning around the command the env executes: ``<think>...</think>
<action>click[Buy Now]</action>``. The content is found, in this order:

1. the span the environment reports: ``step.info["action_span"] = [start_char, end_char)`` into the
   text that ``env.step`` received (``step.action_text``) - an env that parses the action knows
   exactly what it executed;
2. else the first finder of ``ACTION_PATTERNS`` that matches, each written to agree with the env's
   own parser: ``<action>...</action>`` (the LAST closed block, as ALFWorld and WebShop read it),
   ``<tool_call>...</tool_call>`` (from the first block to the last: every block is a call),
   a bare call (BFCL's ``[cd(folder='docs'), ls()]`` or ``ls()``, a JSON tool call or list of
   them, inside a fenced block if there is one, after a closing ``</think>``), WebShop's
   ``search[...]`` / ``click[...]`` (the LAST keyword, its argument running to the text's final
   ``]`` as WebShop's parser reads it);
3. else the whole action.

``char_to_token_span`` maps characters onto the exact sampled ids with the policy's own ``decode``
(prefix decoding, so no re-tokenization is involved): the result is the smallest [start, end) token
range whose decoded text covers the characters.

>>> decode = lambda ids: "".join(map(chr, ids))          # a character-level tokenizer
>>> text = "I will buy. <action>click[Buy Now]</action>"
>>> ids = [ord(c) for c in text]
>>> action_token_span(text, ids, decode)
(20, 34)
>>> action_char_span("<think>call ls</think>[cd(folder='docs'), ls()]")
(22, 47)
>>> action_token_span(text, ids, decode, reported=[26, 33])   # the env said: "Buy Now"
(26, 33)
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence, Union

from agentgym.parsing import tag_spans

__all__ = ["ACTION_PATTERNS", "ACTION_SPAN_KEY", "action_char_span", "char_to_token_span", "action_token_span",
           "reported_char_span", "step_action_span"]

ACTION_SPAN_KEY = "action_span"  # step info key: [start_char, end_char) of the executed action in action_text

Finder = Callable[[str], "tuple[int, int] | None"]


def _strip(text: str, start: int, end: int, chars: str | None = None) -> tuple[int, int] | None:
    """[start, end) shrunk past leading/trailing ``chars`` (whitespace by default); None if empty."""
    while start < end and (text[start].isspace() if chars is None else text[start] in chars):
        start += 1
    while end > start and (text[end - 1].isspace() if chars is None else text[end - 1] in chars):
        end -= 1
    return (start, end) if end > start else None


def _tag_blocks(text: str, tag: str) -> list[tuple[int, int]]:
    """Content spans of the closed ``<tag>...</tag>`` blocks, exactly as the envs find them."""
    return tag_spans(text, tag)


def _action_tag(text: str) -> tuple[int, int] | None:
    blocks = _tag_blocks(text, "action")  # the env executes the last block (even an empty one)
    return blocks[-1] if blocks and blocks[-1][1] > blocks[-1][0] else None


def _tool_calls(text: str) -> tuple[int, int] | None:
    blocks = [b for b in (_strip(text, *b) for b in _tag_blocks(text, "tool_call")) if b]
    return (blocks[0][0], blocks[-1][1]) if blocks else None


_CALL_START = re.compile(r"(?:\[\s*)?(?:[A-Za-z_][\w.]*\s*\(|\{)")


_TRAILING_SPECIAL = re.compile(r"(?:<\|[^|<>\s]{1,40}\|>\s*)+\Z")  # <|im_end|>, <|eot_id|> ... at the end


def _bare_call(text: str) -> tuple[int, int] | None:
    original = text
    special = _TRAILING_SPECIAL.search(text)
    if special is not None:
        text = text[:special.start()]
    start = 0
    think = text.lower().rfind("</think>")
    if think >= 0:
        start = think + len("</think>")
    end = len(text)
    fence_open = text.rfind("```", start)
    if fence_open >= 0:  # the last closed fenced block, as BFCL's parser reads it
        fence_open = text.rfind("```", start, fence_open)
        if fence_open >= 0:
            close = text.find("```", fence_open + 3)
            head = re.compile(r"[a-zA-Z0-9_+-]*\s*\n?").match(text, fence_open + 3).end()
            start, end = head, close
    span = _strip(text, start, end, None)
    if span is None:
        return None
    span = _strip(text, span[0], span[1], "` \t\r\n")
    if span is None:
        return None
    s, e = span
    if not _CALL_START.match(text, s, e) or text[:s].strip() == "" and original[e:].strip() == "":
        return None  # no call, or the call is the whole text: nothing to narrow
    if (text[s] == "[" and text[e - 1] == "]") or (text[s] == "{" and text[e - 1] == "}") or \
            (text[s] not in "[{" and text[e - 1] == ")"):
        return span
    return None


_WEBSHOP_KEYWORD = re.compile(r"\b(search|click)\s*\[", re.IGNORECASE)


def _webshop(text: str) -> tuple[int, int] | None:
    matches = list(_WEBSHOP_KEYWORD.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    stripped_end = len(text.rstrip())
    if stripped_end > last.end() and text[stripped_end - 1] == "]":
        return last.start(), stripped_end
    close = text.find("]", last.end())
    return (last.start(), close + 1) if close >= 0 else None


ACTION_PATTERNS: dict[str, Union[re.Pattern[str], Finder]] = {
    # SERL's format and ALFWorld's / WebShop's wrapper: the last <action>...</action> is executed
    "action_tag": _action_tag,
    # Hermes / Qwen JSON tool calls (BFCL, WebShop, ALFWorld's `act` tool): every block is a call
    "tool_call": _tool_calls,
    # BFCL's Python call list / a bare call / a bare JSON call, optionally fenced
    "call": _bare_call,
    # WebShop's commands
    "webshop": _webshop,
}


def action_char_span(text: str, patterns: dict[str, Any] | None = None) -> tuple[int, int] | None:
    """[start, end) characters of the action content: the first finder (or regex: its LAST match,
    group 1) of ``patterns`` that finds one, else None."""
    for pattern in (patterns or ACTION_PATTERNS).values():
        if isinstance(pattern, re.Pattern):
            matches = list(pattern.finditer(text))
            if matches:
                m = matches[-1]
                if m.end(1) > m.start(1):
                    return m.start(1), m.end(1)
            continue
        found = pattern(text)
        if found is not None and 0 <= found[0] < found[1] <= len(text):
            return found
    return None


def reported_char_span(reported: Any, text: str) -> tuple[int, int] | None:
    """An env-reported ``[start, end)`` (``info["action_span"]``) checked against ``text``: two ints
    with ``0 <= start < end <= len(text)``, else None."""
    if not isinstance(reported, (list, tuple)) or len(reported) != 2:
        return None
    start, end = reported
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
        return None
    return (start, end) if 0 <= start < end <= len(text) else None


class _Inconsistent(Exception):
    pass


def char_to_token_span(ids: Sequence[int], span: tuple[int, int], decode: Callable[[list[int]], str],
                       full: str | None = None) -> tuple[int, int] | None:
    """Smallest token range covering characters ``span`` of ``decode(ids)``; None if decoding of
    prefixes is not consistent with the full text (then callers keep the whole action).

    Binary search over prefix lengths (O(log n) decodes, each prefix checked to be a prefix of the
    full text; incomplete UTF-8 at a prefix's end decodes to U+FFFD and is not counted)."""
    start_char, end_char = span
    ids = list(ids)
    n = len(ids)
    full = decode(ids) if full is None else full
    cache = {0: 0, n: len(full)}

    def length(i: int) -> int:
        if i not in cache:
            prefix = decode(ids[:i]).rstrip("\ufffd")
            if not full.startswith(prefix):
                raise _Inconsistent
            cache[i] = len(prefix)
        return cache[i]

    def first(pred: Callable[[int], bool]) -> int | None:  # smallest i in [0, n) with pred(length(i + 1))
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if pred(length(mid + 1)):
                hi = mid
            else:
                lo = mid + 1
        return lo if lo < n else None

    try:
        start = first(lambda chars: chars > start_char)
        last = first(lambda chars: chars >= end_char)
        if start is None or last is None or last < start:
            return None
        # the prefix lengths must be monotone where we looked
        if length(start) > start_char or length(last + 1) < end_char or (last > 0 and length(last) >= end_char):
            return None
    except _Inconsistent:
        return None
    return start, last + 1


def action_token_span(text: str, ids: Sequence[int], decode: Callable[[list[int]], str] | None,
                      patterns: dict[str, Any] | None = None, *, reported: Any = None) -> tuple[int, int]:
    """The action content's token span (see the module doc): the env-reported characters
    ``reported`` (into ``text``) when valid, else the patterns; the whole action ``(0, len(ids))``
    when no narrower one is found."""
    whole = (0, len(ids))
    if decode is None or not ids:
        return whole
    try:
        full = decode(list(ids))
        # ``text`` is what the env saw (the decoded ids without the end-of-turn token); search it
        # where it sits inside the decoding of the ids, else the decoding itself (special tokens
        # may decode differently).
        offset = full.find(text) if text else -1
        chars = reported_char_span(reported, text) if offset >= 0 else None
        if chars is None:
            searched = text if offset >= 0 else full
            chars = action_char_span(searched, patterns)
            if offset < 0:
                offset = 0
        if chars is None:
            return whole
        found = char_to_token_span(ids, (chars[0] + offset, chars[1] + offset), decode, full)
    except Exception:  # a decoder that cannot handle a prefix: keep the whole action
        return whole
    return found if found is not None else whole


def step_action_span(step: Any, decode: Callable[[list[int]], str] | None,
                     patterns: dict[str, Any] | None = None) -> tuple[int, int]:
    """``action_token_span`` of a ``Step``, with the env's ``info["action_span"]`` when it set one."""
    info = getattr(step, "info", None) or {}
    return action_token_span(step.action_text, step.action_ids, decode, patterns,
                             reported=info.get(ACTION_SPAN_KEY))
