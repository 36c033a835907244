"""Where each action token sits in the action TEXT, so a learner's token span can be highlighted.

Trajectories store token ids, not character offsets. The report gets offsets, in this order, from:

1. ``step.info["action_token_offsets"]``: ``[[start, end], ...]`` character offsets into
   ``action_text``, one pair per action id, when the rollout recorded them (trusted if they are
   well-formed: as many pairs as ids, ordered, inside the text);
2. the run's tokenizer: re-encoding ``action_text`` with offsets when that reproduces the sampled
   ids exactly (the common case for scripted and greedy policies), else decoding growing prefixes of
   the ids and aligning them with the text (exact for sampled, non-canonical tokenizations too);
3. nothing: the caller then highlights the whole action and says so on the page.

>>> class Chars:  # a character-level "tokenizer": id = code point
...     def decode(self, ids, skip_special_tokens=True): return "".join(map(chr, ids))
>>> token_char_offsets("ab", [97, 98], tokenizer=Chars())
[(0, 1), (1, 2)]
>>> char_span([(0, 1), (1, 2)], (1, 2))
(1, 2)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from agentgym.paths import data_dir

__all__ = ["token_char_offsets", "char_span", "load_tokenizer", "MAX_PREFIX_DECODE_TOKENS"]

# Prefix decoding costs O(n^2) characters; beyond this many action tokens the report falls back to
# whole-action highlighting rather than stall on a runaway generation.
MAX_PREFIX_DECODE_TOKENS = 4096


def _recorded(info: dict[str, Any], n_ids: int, text_len: int) -> list[tuple[int, int]] | None:
    raw = info.get("action_token_offsets")
    if not isinstance(raw, list) or len(raw) != n_ids:
        return None
    out, last = [], 0
    for pair in raw:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int) for v in pair)):
            return None
        start, end = pair
        if not (0 <= start <= end <= text_len) or start < last:
            return None
        out.append((start, end))
        last = start
    return out


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # binary search on the first mismatch: prefixes compare in C
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _by_reencoding(text: str, ids: Sequence[int], tokenizer: Any) -> list[tuple[int, int]] | None:
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except Exception:  # slow tokenizers have no offset mapping; prefix decoding still works
        return None
    got = list(enc["input_ids"])
    if got != list(ids[: len(got)]):
        return None
    # Trailing ids beyond the re-encoding (an EOS, say) are special tokens that decode to nothing.
    tail = list(ids[len(got):])
    if tail and tokenizer.decode(tail, skip_special_tokens=True) != "":
        return None
    return [tuple(p) for p in enc["offset_mapping"]] + [(len(text), len(text))] * len(tail)


def _by_prefix_decoding(text: str, ids: Sequence[int], tokenizer: Any) -> list[tuple[int, int]] | None:
    if len(ids) > MAX_PREFIX_DECODE_TOKENS:
        return None
    # Policies differ in whether the action text keeps special tokens (a sampled <|im_start|> in
    # the middle of an action, say): use whichever decoding reproduces the text.
    skip = next((s for s in (True, False) if tokenizer.decode(list(ids), skip_special_tokens=s) == text), None)
    if skip is None:
        # A trailing stop token the policy cut from the text: align the ids without it.
        stop = len(ids) - 1
        if stop > 0 and tokenizer.decode(list(ids[:stop]), skip_special_tokens=False) == text:
            head = _by_prefix_decoding(text, ids[:stop], tokenizer)
            return None if head is None else head + [(len(text), len(text))]
        return None
    # A prefix ending inside a multi-byte character decodes to U+FFFD; the aligned length stops
    # before it, so that character belongs to the token that completes it.
    ends = [_common_prefix_len(tokenizer.decode(list(ids[:i]), skip_special_tokens=skip), text)
            for i in range(1, len(ids) + 1)]
    out, start = [], 0
    for end in ends:
        end = max(end, start)
        out.append((start, end))
        start = end
    return out


def token_char_offsets(text: str, ids: Sequence[int], *, info: dict[str, Any] | None = None,
                       tokenizer: Any = None) -> list[tuple[int, int]] | None:
    """Character ``(start, end)`` of every id in ``text`` (code points), or None when unknown."""
    if not ids:
        return None
    recorded = _recorded(info or {}, len(ids), len(text))
    if recorded is not None:
        return recorded
    if tokenizer is None:
        return None
    return _by_reencoding(text, ids, tokenizer) or _by_prefix_decoding(text, ids, tokenizer)


def char_span(offsets: Sequence[tuple[int, int]], span: tuple[int, int]) -> tuple[int, int]:
    """The characters covered by the token span ``[start, end)`` (clamped to the action)."""
    start, end = max(0, span[0]), min(len(offsets), span[1])
    if start >= end:
        pos = offsets[start][0] if start < len(offsets) else (offsets[-1][1] if offsets else 0)
        return pos, pos
    return offsets[start][0], max(offsets[i][1] for i in range(start, end))


def load_tokenizer(name: str | os.PathLike | None) -> tuple[Any, str]:
    """``(tokenizer or None, why)``: a local folder, a built-in model name (``tiny``, ``smollm2``:
    see ``agentgym.agents.models``) or a cached hub id, loaded offline. Never raises."""
    if not name:
        return None, "no model named in the run's config or summary"
    try:
        from transformers import AutoTokenizer  # optional: the report renders without a tokenizer
    except ImportError as exc:
        return None, f"transformers is not importable ({exc})"
    source = str(name)
    if not Path(source).is_dir():
        # Built-in models live in the data dir under their builder's folder name, which is also
        # the display name `agentgym train` writes to summary.json (modulo case).
        built = {"tiny": "tiny-qwen2-chat", "smollm2": "smollm2-135m-instruct"}
        for folder in (built.get(source), source, source.lower()):
            if folder and "/" not in folder and (data_dir("models") / folder / "BUILD.json").is_file():
                source = str(data_dir("models") / folder)
                break
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True), f"tokenizer of {name}"
    except Exception as exc:
        return None, f"could not load a tokenizer for {name!r} offline ({type(exc).__name__}: {str(exc)[:200]})"
