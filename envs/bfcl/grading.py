"""The official BFCL multi-turn checker, run with per-episode isolation.

``multi_turn_checker`` re-executes the decoded calls of every turn (and the ground truth) and
compares backend state and responses after each turn. Its executor caches backend instances in the
module globals of ``multi_turn_utils`` under ``f"{model_name}_..."``; two gradings of the same entry
under one model name would share state. Each grading here uses a fresh unique model name and
removes what it cached afterwards, and restores the process-wide precision settings.

The strings handed to the checker are the canonical keyword-form calls that our own dispatcher
executed (``name(key=repr(value))`` built from validated identifiers and JSON literals), never
model text.
"""

from __future__ import annotations

import re
import threading
import uuid
from typing import Any

from agentgym.envs.bfcl.backends import _ProcessGlobals

_LOCK = threading.Lock()  # the checker mutates module globals; grade one episode at a time


def grade_multi_turn(decoded: list[list[list[str]]], entry: Any) -> dict[str, Any]:
    """The official verdict for one episode: ``{"valid": bool, "error_type", "error_message"}``.

    ``decoded`` is ``[turn][step][call string]`` with empty steps left out, as the official
    evaluation runner passes it.
    """
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    if len(decoded) != len(entry.ground_truth):
        return {"valid": False, "error_type": "multi_turn:force_terminated",
                "error_message": f"the episode ended after {len(decoded)} of {len(entry.ground_truth)} turns"}
    model_name = f"agentgym_{uuid.uuid4().hex}"
    prefix = re.sub(r"[-./:]", "_", model_name)
    with _LOCK, _ProcessGlobals():
        try:
            verdict = multi_turn_checker(decoded, entry.ground_truth, entry.raw,
                                         f"multi_turn_{entry.category}", model_name)
        except Exception as exc:  # the checker asserts on malformed input; that is a failed episode
            verdict = {"valid": False, "error_type": "multi_turn:checker_error",
                       "error_message": f"{type(exc).__name__}: {exc}"}
        finally:
            stale = [k for k in vars(multi_turn_utils) if k.startswith(prefix)]
            for key in stale:
                delattr(multi_turn_utils, key)
    return {"valid": bool(verdict.get("valid")), "error_type": verdict.get("error_type"),
            "error_message": verdict.get("error_message")}
