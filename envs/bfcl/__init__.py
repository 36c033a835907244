"""BFCL v3 (Berkeley Function Calling Leaderboard) environments on the pinned ``bfcl-eval`` wheel.

- ``agentgym/BFCLMultiTurn-v0``: multi-turn, multi-step function calling against the real stateful
  backends (file system, trading bot, travel, ...), graded by the official ``multi_turn_checker``.
- ``agentgym/BFCLSingleTurn-v0``: one-step episodes graded by the official AST checker.

Importing ``bfcl_eval`` writes result folders under ``BFCL_PROJECT_ROOT`` (site-packages by
default); this package points it at agentgym's data directory before anything imports it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from agentgym.paths import data_dir

os.environ.setdefault("BFCL_PROJECT_ROOT", str(data_dir("bfcl")))

BFCL_VERSION = "2026.3.23"


def bfcl_package_root() -> Path:
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"bfcl-eval is not installed; install it with `pip install --no-deps bfcl-eval=={BFCL_VERSION} mpmath` "
            "(./setup.sh does this)")
    return Path(list(spec.submodule_search_locations)[0])
