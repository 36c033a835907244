"""The ``agentgym`` command.

Sub-commands are a registry of ``name -> "module:function"`` strings, so a sub-command's
dependencies load only when it runs, and a plugin adds one by adding a line here.
Each function takes the remaining argv and returns an exit code.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable

import gymnasium

import agentgym  # noqa: F401  (registers the envs; the parent package of this module, imported already)

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("agentgym.train:main", "train a policy (default: HINT-SD on BFCL v3 multi-turn, see README)"),
    "eval": ("agentgym.evaluation:eval_main", "evaluate a policy or a run's checkpoint on an env split"),
    "diagnose": ("agentgym.diagnose:main", "measure the teacher signal (teacher_gain) of feedback sources x learners "
                                           "before training"),
    "bench": ("agentgym.bench:main", "run the benchmarks in benchmarks/ (agentgym bench NAME)"),
    "report": ("agentgym.report:main", "write a self-contained HTML report of a run folder"),
    "view": ("agentgym.report:view_main", "write an HTML view of a trajectories .jsonl file"),
    "envs": ("agentgym.cli:list_envs", "list the registered environments"),
    "data": ("agentgym.cli:data", "build or fetch benchmark data: agentgym data {webshop,alfworld,appworld} ..."),
    "serve": ("agentgym.serve:main", "serve an env as an OpenEnv server: agentgym serve ENV_ID [--port P] [--max-sessions N]"),
}

DATA_COMMANDS: dict[str, str] = {
    "webshop": "agentgym.envs.webshop.data:main",
    "alfworld": "agentgym.envs.alfworld.data:main",
    "appworld": "agentgym.envs.appworld.data:main",
}


def _load(target: str) -> Callable[[list[str]], int]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def list_envs(argv: list[str]) -> int:
    for env_id in sorted(k for k in gymnasium.registry if k.startswith("agentgym/")):
        print(env_id)
    return 0


def data(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(f"usage: agentgym data {{{','.join(DATA_COMMANDS)}}} [options] (agentgym data NAME --help: its options)")
        return 0
    if not argv or argv[0] not in DATA_COMMANDS:
        print(f"usage: agentgym data {{{','.join(DATA_COMMANDS)}}} [options]; got {argv[:1]}", file=sys.stderr)
        return 2
    return _load(DATA_COMMANDS[argv[0]])(argv[1:])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: agentgym COMMAND [options]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<8} {help_text}")
        return 0 if argv else 2
    name = argv[0]
    if "" not in sys.path and "." not in sys.path:
        # As `python -m`: plugin modules in the working folder import by name (--import my_plugins,
        # --env.id my_plugins:my/Env-v0) without PYTHONPATH=.
        sys.path.insert(0, "")
    if name not in COMMANDS:
        print(f"agentgym: unknown command {name!r}; choose from {sorted(COMMANDS)}", file=sys.stderr)
        return 2
    return int(_load(COMMANDS[name][0])(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
