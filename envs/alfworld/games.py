"""ALFWorld game folders: writing one the way ALFWorld's generator does, rebuilding the shared
three-agent debug trial as a one-agent game, and finding games on disk.

A game folder holds ``traj_data.json`` (task type and ``pddl_params``, read by the handcoded expert)
and ``game.tw-pddl``: JSON with ``pddl_domain`` (the wheel's ``alfred.pddl``), ``grammar`` (the
wheel's ``alfred.twl2`` with the task line filled in by ``alfworld.agents.utils.misc
.add_task_to_grammar``), ``pddl_problem`` and ``solvable``.

>>> from agentgym.envs.alfworld.games import rebuild_trial          # doctest: +SKIP
>>> rebuild_trial("../shared/data/alfworld/debug-trial", "data/alfworld/rebuilt")  # doctest: +SKIP
PosixPath('data/alfworld/rebuilt/trial_T20190908_231731_054988/game.tw-pddl')
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import alfworld
import alfworld.gen.goal_library as goal_library
from alfworld.agents.utils.misc import add_task_to_grammar
from alfworld.gen.utils import py_util

from agentgym.paths import data_dir

__all__ = ["TASK_TYPES", "GameInfo", "ALFWORLD_DATA_FILES", "fix_pddl_names", "goal_pddl", "write_game",
           "rebuild_trial", "find_games", "official_split_dir", "default_game_dirs"]

# ALFWorld's six task types (alfworld.agents.environment.alfred_tw_env.TASK_TYPES).
TASK_TYPES = ("pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
              "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place")
ALFWORLD_DATA_FILES = Path(alfworld.__file__).resolve().parent / "data"
OFFICIAL_SPLITS = ("train", "valid_seen", "valid_unseen")


def fix_pddl_names(text: str) -> str:
    """ALFRED ids (``Cabinet|+00.68|+00.50|-02.20``) -> PDDL names, and ``#`` -> ``-`` for types.

    The same substitution as ``alfworld.gen.game_states.planned_game_state.PlannedGameState
    .fix_pddl_str_chars`` (that module imports cv2 and THOR, so it cannot be imported here).
    """
    return py_util.multireplace(text, {"-": "_minus_", "#": "-", "|": "_bar_", "+": "_plus_",
                                       ".": "_dot_", ",": "_comma_"})


def goal_pddl(task_type: str, pddl_params: dict[str, Any]) -> str:
    """The ``(:goal ...)`` block (plus the problem's closing parenthesis) from ALFWorld's goal library."""
    if task_type not in goal_library.gdict:
        raise ValueError(f"unknown ALFWorld task type {task_type!r}; known: {sorted(goal_library.gdict)}")
    text = goal_library.gdict[task_type]["pddl"].format(
        obj=pddl_params["object_target"], recep=pddl_params.get("parent_target", ""),
        toggle=pddl_params.get("toggle_target", ""), mrecep=pddl_params.get("mrecep_target", ""))
    return fix_pddl_names(text).strip() + "\n"


def task_grammar(traj_data: dict[str, Any], seed: int) -> str:
    """``alfred.twl2`` with the task line filled in, the template drawn reproducibly from ``seed``."""
    grammar = (ALFWORLD_DATA_FILES / "alfred.twl2").read_text()
    outer = random.getstate()  # add_task_to_grammar draws its template from the global `random`
    random.seed(seed)
    try:
        return add_task_to_grammar(grammar, traj_data)
    finally:
        random.setstate(outer)


def write_game(folder: Path, traj_data: dict[str, Any], pddl_problem: str, *, solvable: bool,
               template_seed: int = 0, extra: dict[str, Any] | None = None) -> Path:
    """Write ``traj_data.json`` and ``game.tw-pddl`` into ``folder``; returns the game file path."""
    folder.mkdir(parents=True, exist_ok=True)
    game = {"pddl_domain": (ALFWORLD_DATA_FILES / "alfred.pddl").read_text(),
            "grammar": task_grammar(traj_data, template_seed),
            "pddl_problem": pddl_problem,
            "solvable": bool(solvable)}
    if extra:
        game.update(extra)
    (folder / "traj_data.json").write_text(json.dumps(traj_data, indent=1))
    path = folder / "game.tw-pddl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(game))
    tmp.replace(path)  # atomic: a reader never sees half a game
    return path


def one_agent_problem(problem: str) -> str:
    """Keep the first of a problem's agents (renamed ``agent1``, as ALFWorld's games name it)."""
    agents = re.findall(r"^\s*(\w+) - agent\s*$", problem, flags=re.M)
    if not agents:
        raise ValueError("the PDDL problem declares no agent")
    for name in agents[1:]:
        problem = re.sub(rf"^\s*{re.escape(name)} - agent\s*\n", "", problem, flags=re.M)
        problem = re.sub(rf"^\s*\(atLocation {re.escape(name)} [^)]*\)\s*\n", "", problem, flags=re.M)
    return re.sub(rf"\b{re.escape(agents[0])}\b", "agent1", problem)


def rebuild_trial(source: str | os.PathLike, destination: str | os.PathLike | None = None) -> Path:
    """Rebuild an ALFRED trial folder (``traj_data.json`` + ``initial_state.pddl``) as a one-agent game.

    The shared debug trial names three agents and carries a debug goal; the rebuilt game has one
    agent, the goal of its task type from ALFWorld's goal library, the wheel's domain, and the
    wheel's grammar with the task line - what ALFWorld's own generator writes.
    """
    source = Path(source)
    traj_path, problem_path = source / "traj_data.json", source / "initial_state.pddl"
    for path in (traj_path, problem_path):
        if not path.is_file():
            raise FileNotFoundError(f"not an ALFRED trial folder: {path} is missing")
    traj_data = json.loads(traj_path.read_text())
    problem = one_agent_problem(problem_path.read_text())
    start = problem.find("(:goal")
    if start < 0:
        raise ValueError(f"{problem_path} has no (:goal ...) block")
    problem = problem[:start] + goal_pddl(traj_data["task_type"], traj_data["pddl_params"])
    task_id = traj_data.get("task_id") or source.name
    destination = Path(destination) if destination is not None else data_dir("alfworld", "rebuilt")
    return write_game(destination / task_id, traj_data, problem, solvable=True, template_seed=0,
                      extra={"agentgym": {"origin": "rebuilt-trial", "source": str(source.resolve())}})


@dataclass(frozen=True)
class GameInfo:
    """One playable game found on disk."""

    path: str  # the game.tw-pddl file
    task_type: str
    task_id: str
    origin: str  # "official", "generated", "rebuilt-trial" or "custom"


def _read_game(game_file: Path, origin: str) -> GameInfo | None:
    traj_file = game_file.parent / "traj_data.json"
    if not traj_file.is_file():
        return None
    try:
        game = json.loads(game_file.read_text())
        traj = json.loads(traj_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not game.get("solvable", False):  # ALFWorld skips games not checked solvable, so do we
        return None
    meta = game.get("agentgym") or {}
    return GameInfo(path=str(game_file), task_type=str(traj.get("task_type", "")),
                    task_id=str(traj.get("task_id", game_file.parent.name)),
                    origin=str(meta.get("origin", origin)))


def find_games(roots: Iterable[str | os.PathLike], *, task_types: Iterable[str] = TASK_TYPES,
               origin: str = "custom") -> list[GameInfo]:
    """Every solvable game under ``roots`` (sorted by path), filtered to ``task_types``.

    Follows ``AlfredTWEnv.collect_game_files``: a game is a folder with ``traj_data.json`` and a
    ``game.tw-pddl`` marked solvable; ``movable`` and ``Sliced`` trials are skipped.
    """
    wanted = set(task_types)
    found: list[GameInfo] = []
    for root in roots:
        root = Path(root)
        files = [root] if root.is_file() else sorted(root.rglob("game.tw-pddl")) if root.is_dir() else []
        for game_file in files:
            if "movable" in str(game_file.parent) or "Sliced" in str(game_file.parent):
                continue
            info = _read_game(game_file, origin)
            if info is not None and info.task_type in wanted:
                found.append(info)
    return sorted(found, key=lambda g: g.path)


def official_split_dir(split: str) -> Path | None:
    """``$ALFWORLD_DATA``'s folder for ``split`` (``json_2.1.1/<split>`` or ``<split>``), if present."""
    if split not in OFFICIAL_SPLITS:
        raise ValueError(f"split must be one of {OFFICIAL_SPLITS}, got {split!r}")
    root = os.environ.get("ALFWORLD_DATA")
    if not root:
        return None
    for candidate in (Path(root) / "json_2.1.1" / split, Path(root) / split):
        if candidate.is_dir():
            return candidate
    return None


def default_game_dirs(split: str = "train") -> list[tuple[Path, str]]:
    """Where the env looks when given no games: the official split if ``$ALFWORLD_DATA`` has it,
    otherwise the generated games and the rebuilt trial in agentgym's data directory."""
    official = official_split_dir(split)
    if official is not None:
        return [(official, "official")]
    return [(data_dir("alfworld", "generated", create=False), "generated"),
            (data_dir("alfworld", "rebuilt", create=False), "rebuilt-trial")]
