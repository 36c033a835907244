"""BFCL v3 data as the pinned ``bfcl-eval`` wheel ships it: entries, ground truths, function docs,
and the train / eval / test split the HINT-SD reference uses.

>>> entries = load_multi_turn(["base"])
>>> len(entries), entries[0].id
(200, 'multi_turn_base_0')
>>> [len(split_ids(["base", "long_context"], s)) for s in ("train", "eval", "test", "all")]
[200, 40, 160, 400]
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from agentgym.envs.bfcl import bfcl_package_root

MULTI_TURN_CATEGORIES = ("base", "miss_func", "miss_param", "long_context")
DEFAULT_CATEGORIES = ("base", "long_context")  # HINT-SD's BFCL setting
SPLITS = ("train", "eval", "test", "all")
SPLIT_RATIOS = {"train": 0.5, "eval": 0.1, "test": 0.4}
SPLIT_SEED = 42

# Single-turn categories graded by the AST checker (Python only; Java/JS need tree-sitter).
SINGLE_TURN_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance",
                          "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
                          "live_irrelevance", "live_relevance")
FILE_PREFIX = "BFCL_v4_"  # this bfcl-eval release names files v4; the multi-turn data are v3's

# JSON Schema types for BFCL's Python-flavoured parameter types.
_TYPE_MAP = {"dict": "object", "float": "number", "tuple": "array", "list": "array",
             "integer": "integer", "string": "string", "boolean": "boolean", "array": "array",
             "number": "number", "object": "object", "any": None, "int": "integer", "str": "string",
             "bool": "boolean", "String": "string", "Boolean": "boolean"}


def data_root() -> Path:
    return bfcl_package_root() / "data"


@functools.lru_cache(maxsize=None)
def _read_jsonl(path: Path) -> tuple[dict[str, Any], ...]:
    with open(path, encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh if line.strip())


@dataclass(frozen=True)
class MultiTurnEntry:
    """One BFCL multi-turn task: its turns, backend configuration and ground truth."""

    id: str
    category: str  # "base" | "miss_func" | "miss_param" | "long_context"
    turns: list[list[dict[str, Any]]]
    initial_config: dict[str, Any]
    involved_classes: list[str]
    ground_truth: list[list[str]]
    excluded_functions: list[str] = field(default_factory=list)
    missed_functions: dict[int, list[str]] = field(default_factory=dict)  # turn -> names revealed then
    path: list[str] = field(default_factory=list)

    @property
    def long_context(self) -> bool:
        return self.category == "long_context"

    @property
    def raw(self) -> dict[str, Any]:
        """The entry in the official dict shape, as ``multi_turn_checker`` takes it."""
        out = {"id": self.id, "question": self.turns, "initial_config": self.initial_config,
               "involved_classes": self.involved_classes, "path": self.path,
               "excluded_function": self.excluded_functions}
        if self.missed_functions:
            out["missed_function"] = {str(k): v for k, v in self.missed_functions.items()}
        return out


def _check_categories(categories: Iterable[str]) -> list[str]:
    if isinstance(categories, str):
        categories = [categories]
    cats = list(dict.fromkeys(c.removeprefix("multi_turn_") for c in categories))
    bad = [c for c in cats if c not in MULTI_TURN_CATEGORIES]
    if bad or not cats:
        raise ValueError(f"unknown BFCL multi-turn category {bad or cats!r}; choose from {MULTI_TURN_CATEGORIES}")
    return cats


@functools.lru_cache(maxsize=None)
def _load_category(category: str) -> tuple[MultiTurnEntry, ...]:
    name = f"{FILE_PREFIX}multi_turn_{category}.json"
    questions = _read_jsonl(data_root() / name)
    answers = {a["id"]: a["ground_truth"] for a in _read_jsonl(data_root() / "possible_answer" / name)}
    out = []
    for q in questions:
        out.append(MultiTurnEntry(
            id=q["id"], category=category, turns=q["question"], initial_config=q["initial_config"],
            involved_classes=list(q["involved_classes"]), ground_truth=answers[q["id"]],
            excluded_functions=list(q.get("excluded_function", [])),
            missed_functions={int(k): list(v) for k, v in q.get("missed_function", {}).items()},
            path=list(q.get("path", []))))
    return tuple(out)


def load_multi_turn(categories: Iterable[str] = DEFAULT_CATEGORIES) -> list[MultiTurnEntry]:
    """Entries of the given categories, in official order (category names sorted, as BFCL does)."""
    cats = _check_categories(categories)
    return [e for c in sorted(f"multi_turn_{c}" for c in cats)
            for e in _load_category(c.removeprefix("multi_turn_"))]


@functools.lru_cache(maxsize=None)
def entries_by_id() -> dict[str, MultiTurnEntry]:
    return {e.id: e for c in MULTI_TURN_CATEGORIES for e in _load_category(c)}


def get_entry(task_id: str) -> MultiTurnEntry:
    try:
        return entries_by_id()[task_id]
    except KeyError:
        raise KeyError(f"no BFCL multi-turn entry with id {task_id!r} (ids look like 'multi_turn_base_0')") from None


def split_ids(categories: Iterable[str], split: str, seed: int = SPLIT_SEED) -> list[str]:
    """Entry ids of one split: the categories' entries concatenated in sorted category order,
    shuffled with ``random.seed(seed)``, then 50 % train, 10 % eval, 40 % test (int() sizes)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    ids = [e.id for e in load_multi_turn(categories)]
    if split == "all":
        return ids
    random.Random(seed).shuffle(ids)
    n = len(ids)
    sizes = [int(n * SPLIT_RATIOS[s]) for s in ("train", "eval", "test")]
    start = {"train": 0, "eval": sizes[0], "test": sizes[0] + sizes[1]}[split]
    return ids[start:start + sizes[("train", "eval", "test").index(split)]]


@functools.lru_cache(maxsize=None)
def function_docs(class_name: str) -> tuple[dict[str, Any], ...]:
    """The official function docs (BFCL format) of one backend class."""
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

    return _read_jsonl(data_root() / "multi_turn_func_doc" / MULTI_TURN_FUNC_DOC_FILE_MAPPING[class_name])


def to_json_schema(node: Any) -> Any:
    """BFCL's parameter schema ("dict", "float", "tuple", "any") -> JSON Schema."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "type" and isinstance(value, str):
            mapped = _TYPE_MAP.get(value, value)
            if mapped is not None:
                out["type"] = mapped
        elif key in ("properties",) and isinstance(value, dict):
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        elif isinstance(value, (dict, list)):
            out[key] = to_json_schema(value)
        else:
            out[key] = value
    return out


def tool_schema(doc: dict[str, Any]) -> dict[str, Any]:
    """One BFCL function doc as an OpenAI-style tool (``{"type": "function", "function": ...}``)."""
    params = to_json_schema(doc.get("parameters", {"type": "dict", "properties": {}}))
    params.setdefault("type", "object")
    params.setdefault("properties", {})
    return {"type": "function",
            "function": {"name": doc["name"], "description": doc.get("description", ""), "parameters": params}}
