"""The errors that end a run or an evaluation, and the one mapping from errors to the exit codes of
``agentgym train``, ``agentgym eval`` and ``agentgym diagnose``.

A command's user error (a wrong setting, an unknown plugin name, a bad value) exits with status 2;
a run that cannot go on (most episodes fail at reset, every evaluation episode errored, a damaged
checkpoint, an unreachable policy server) exits with status 1. Both print one line, no traceback.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

from agentgym.agents.base import PolicyError
from agentgym.config import ConfigError
from agentgym.errors import CheckpointError
from agentgym.plugins import UnknownPluginError

__all__ = ["TrainingError", "USAGE_ERRORS", "RUN_ERRORS", "run_command", "check_evaluation_ran"]


class TrainingError(RuntimeError):
    """The run cannot produce a meaningful result (e.g. most episodes fail at reset); the message
    names the cause. The CLI exits with status 1."""


USAGE_ERRORS = (ConfigError, UnknownPluginError, ValueError)  # exit status 2: what was asked for is wrong
RUN_ERRORS = (TrainingError, CheckpointError, PolicyError)  # exit status 1: the run cannot go on


def run_command(command: str, body: Callable[[], int]) -> int:
    """``body()``'s exit code; a usage error prints ``agentgym COMMAND: message`` and gives 2, a run
    error the same line and 1."""
    try:
        return body()
    except USAGE_ERRORS as exc:
        code = 2
        message = exc
    except RUN_ERRORS as exc:
        code = 1
        message = exc
    print(f"agentgym {command}: {message}", file=sys.stderr)
    return code


def check_evaluation_ran(trajs: Sequence[Any], what: str, env_id: str) -> None:
    """Raise ``TrainingError`` when every evaluation episode of ``what`` (``update 3``, ``seed 0``)
    errored: its numbers would measure the error, not the policy."""
    if trajs and all(t.error for t in trajs):
        raise TrainingError(f"every evaluation episode ({len(trajs)}) of {what} errored on {env_id}: {trajs[0].error}")
