"""ALFWorld (text household tasks) on the real engine: TextWorld 1.7 + ALFWorld 0.4.2's PDDL domain,
grammar and handcoded expert.

One episode per reset over one game folder: ``reset(options={"game": PATH})`` plays that game
(a folder or its ``game.tw-pddl``); otherwise the seed picks one from the env's game pool - the
``games`` argument (folders searched recursively), else ``$ALFWORLD_DATA`` in the official layout
(``json_2.1.1/{train,valid_seen,valid_unseen}``), else agentgym's generated games and the rebuilt
shared trial (``agentgym data alfworld --rebuild-trial DIR`` / ``--generate N``).

The action is the raw command text (``go to fridge 1``). Tolerated, and stated here so nothing is
implicit: surrounding whitespace, an ``<action>...</action>`` wrapper (the last one wins), a
trailing period, upper case, repeated inner spaces, and a JSON tool call
``{"name": "act", "arguments": {"command": "..."}}``. A command the game does not admit gets
ALFWorld's own answer, ``Nothing happens.``, plus error feedback; the episode goes on.

Observations: a step's observation is the engine's text byte for byte. The reset observation is
reshaped: TextWorld's ``-= Welcome to TextWorld, ALFRED! =-`` banner is dropped and the task line
(``Your task is to: ...``, last in the engine's text) comes first, then a blank line and the room.

>>> import gymnasium as gym, agentgym                                      # doctest: +SKIP
>>> env = gym.make("agentgym/ALFWorld-v0", games="data/alfworld/rebuilt")   # doctest: +SKIP
>>> obs, info = env.reset(seed=0)                                          # doctest: +SKIP
>>> obs.splitlines()[0]                                                    # doctest: +SKIP
'Your task is to: heat some potato and put it in sinkbasin.'
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from agentgym.envspec import EnvDefaults
from agentgym.evaluation import category_accuracy
from agentgym.env import AgentEnv, EnvReply, EnvReset
from agentgym.parsing import tag_contents
from agentgym.types import Feedback, FeedbackKind, Message

from .engine import Engine, install_translation_cache
from .textcache import DEFAULT_SIZE, LRUMemo, install_text_caches
from .games import TASK_TYPES, GameInfo, default_game_dirs, find_games

__all__ = ["ALFWorldEnv", "parse_command", "NOTHING_HAPPENS", "SYSTEM_PROMPT"]

NOTHING_HAPPENS = "Nothing happens."
MAX_COMMAND_CHARS = 200  # the longest admissible ALFWorld command is ~60 characters
SYSTEM_PROMPT = (
    "You are in a text household simulator (ALFWorld). Each turn, reply with exactly one command "
    "from the admissible commands, e.g. 'go to fridge 1', 'take apple 1 from countertop 2', "
    "'heat apple 1 with microwave 1', 'move apple 1 to diningtable 1'. Call the tool `act` or write "
    "the command as plain text.")


# Expert plans shared by the envs of one process (bounded; grown to the game pool by _size_caches).
_PLANS = LRUMemo(None, maxsize=256)
_BANNER = re.compile(r"^\s*-= Welcome to TextWorld, ALFRED! =-\s*", re.S)
_TASK_LINE = re.compile(r"^Your task is to: .*$", re.M)


def parse_command(text: str) -> str:
    """Normalise raw model text into an ALFWorld command (see the module docstring for the rules).

    >>> parse_command("  <action>Go to  Fridge 1.</action> ")
    'go to fridge 1'
    >>> parse_command('{"name": "act", "arguments": {"command": "look"}}')
    'look'
    """
    text = text.strip()
    if text.startswith("{"):
        try:  # json.loads only parses data; nothing is evaluated
            call = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or nested too deep for the decoder
            call = None
        if isinstance(call, dict) and isinstance(call.get("arguments"), dict):
            command = call["arguments"].get("command")
            if isinstance(command, str):
                text = command
    tags = tag_contents(text, "action")  # linear; a regex findall is quadratic on unclosed tags
    if tags:
        text = tags[-1]
    # split/join leaves no trailing blank, so this strips exactly the trailing periods (and the
    # blanks between them) that a loop of "drop one '.', rstrip" would, in one pass.
    return " ".join(text.split()).lower().rstrip(" .")


class ALFWorldEnv(AgentEnv):
    """ALFWorld as an ``AgentEnv`` (see the module docstring).

    Arguments: ``games`` (a folder, a game file, or a list of them; default: see module docstring),
    ``split`` (official split name for ``$ALFWORLD_DATA``), ``task_types`` (subset of the six),
    ``reference_plan`` ("reset": the expert's full plan is computed once per episode from the start
    state, and every step carries the expert's next command from the current state; "step": the full
    plan is recomputed from the current state at every step - exact but O(steps) engine replays;
    "off"), ``expert_max_steps`` (cap on an expert rollout), ``plan_cache_size`` (expert plans kept per
    process, at least the game pool's size), ``text_cache`` (memoised TextWorld template parsing, see
    ``textcache``; False runs TextWorld's own code, for side-by-side checks).
    """

    # Envs of one process may be stepped from several threads (``agentgym serve`` sessions): every
    # engine call runs under the process's planner lock (engine.py / planner.py).
    SUPPORTS_CONCURRENT_SESSIONS = True
    # Headline: ALFWorld's success rate (%) overall and per task type.
    defaults = EnvDefaults(max_steps=50, max_new_tokens=48, category_field="task_type",
                           headline=lambda rows: {"success_rate": 100.0 * sum(r.success for r in rows) / len(rows),
                                                  **category_accuracy(rows, "success")},
                           data_hint="set ALFWORLD_DATA, or build games with `agentgym data "
                           "alfworld --generate N` / `--rebuild-trial DIR` (./setup.sh rebuilds the shared trial)")

    def tasks(self) -> list[dict[str, Any]]:
        return [{"game": g.path} for g in self.games]

    def __init__(self, games: str | os.PathLike | Iterable[str | os.PathLike] | None = None, *,
                 split: str = "train", task_types: Iterable[str] = TASK_TYPES,
                 reference_plan: str = "reset", expert_max_steps: int = 60, max_steps: int | None = None,
                 render_mode: str | None = None, plan_cache_size: int = 256, text_cache: bool = True,
                 step_timeout_s: float | None | str = "default"):
        super().__init__(max_steps=max_steps, render_mode=render_mode, step_timeout_s=step_timeout_s)
        if reference_plan not in ("reset", "step", "off"):
            raise ValueError(f"reference_plan must be 'reset', 'step' or 'off', got {reference_plan!r}")
        self.task_types = tuple(task_types)
        unknown = set(self.task_types) - set(TASK_TYPES)
        if unknown:
            raise ValueError(f"unknown task types {sorted(unknown)}; choose from {TASK_TYPES}")
        self.reference_plan = reference_plan
        self.expert_max_steps = expert_max_steps
        self.split = split
        if games is None:
            self._roots = default_game_dirs(split)
        elif isinstance(games, (str, os.PathLike)):
            self._roots = [(Path(games), "custom")]
        else:
            self._roots = [(Path(g), "custom") for g in games]
        self._pool: list[GameInfo] | None = None  # found lazily: a path-only env must not scan disk
        self._engine: Engine | None = None
        if plan_cache_size < 1:
            raise ValueError(f"plan_cache_size must be >= 1, got {plan_cache_size!r}")
        self._plan_cache_size = plan_cache_size
        self.text_cache = bool(text_cache)
        self._history: list[str] = []
        self._state: dict[str, Any] = {}
        self._game: dict[str, Any] = {}
        self._episode_seed = 0

    # ------------------------------------------------------------------ games
    @property
    def games(self) -> list[GameInfo]:
        """The game pool the seed draws from (scanned on first use)."""
        if self._pool is None:
            pool: list[GameInfo] = []
            for root, origin in self._roots:
                pool.extend(find_games([root], task_types=self.task_types, origin=origin))
            self._pool = pool
        return self._pool

    def _resolve_game(self, options: dict[str, Any]) -> str:
        game = options.get("game")
        if game is not None:
            if not isinstance(game, (str, os.PathLike)):
                raise TypeError(f"options['game'] must be a path, got {type(game).__name__}")
            path = Path(game)
            if path.is_dir():
                path = path / "game.tw-pddl"
            if not path.is_file() or not (path.parent / "traj_data.json").is_file():
                raise FileNotFoundError(f"options['game']={str(game)!r} is not an ALFWorld game folder "
                                        "(game.tw-pddl + traj_data.json)")
            return str(path.resolve())
        if not self.games:
            where = ", ".join(str(root) for root, _ in self._roots)
            raise FileNotFoundError(
                f"no ALFWorld games found in {where}. Point games= or $ALFWORLD_DATA at a game folder, "
                "or build some: `agentgym data alfworld --generate 60` (generated ALFWorld-engine games) "
                "or `agentgym data alfworld --rebuild-trial PATH`.")
        index = int(self.np_random.integers(len(self.games)))
        return str(Path(self.games[index].path).resolve())

    # ------------------------------------------------------------------ AgentEnv hooks
    def _reset(self, options: dict[str, Any]) -> EnvReset:
        gamefile = self._resolve_game(options)
        if self._engine is None:
            self._engine = Engine(text_cache=self.text_cache)
            self._size_caches()
        # The expert's tie-breaks draw from a fixed seed: its plan is a property of the game.
        self._episode_seed = 0
        state = self._engine.start(gamefile, seed=self._episode_seed)
        traj = json.loads((Path(gamefile).parent / "traj_data.json").read_text())
        game_meta = json.loads(Path(gamefile).read_text()).get("agentgym") or {}
        self._history = []
        self._state = state
        intro = _BANNER.sub("", state["feedback"]).strip()
        match = _TASK_LINE.search(intro)
        task_line = match.group(0) if match else ""
        room = _TASK_LINE.sub("", intro).strip()
        observation = f"{task_line}\n\n{room}" if task_line else intro
        origin = game_meta.get("origin") or self._origin_of(gamefile)
        self._game = {"id": str(traj.get("task_id", Path(gamefile).parent.name)), "game": gamefile,
                      "task_type": traj.get("task_type"), "pddl_params": traj.get("pddl_params", {}),
                      "instruction": task_line.removeprefix("Your task is to: "),
                      "origin": origin, "generated": origin == "generated",
                      "floor_plan": (traj.get("scene") or {}).get("floor_plan")}
        self._plan, self._plan_won = ([], False)
        if self.reference_plan != "off":
            self._plan, self._plan_won = self._initial_plan(gamefile)
        info = {"admissible_commands": list(state["admissible_commands"]),
                "expert_plan": list(self._plan), "won": False}
        return EnvReset(messages=[Message(role="system", content=SYSTEM_PROMPT),
                                  Message(role="user", content=observation)],
                        task=self._game, tools=self._tools(state["admissible_commands"]), info=info)

    def _step(self, action: str) -> EnvReply:
        step = self.step_count - 1
        command = parse_command(action)
        feedback: list[Feedback] = []
        problem = self._refusal(command, action)
        if problem is None:
            state, won = self._engine.step(command)
            self._history.append(command)
            self._state = state
            observation = state["feedback"]  # the engine's text unchanged (``help`` ends in a newline)
            if observation.strip() == NOTHING_HAPPENS:
                problem = (f"Command {command!r} is not admissible here; the game answered "
                           f"'{NOTHING_HAPPENS}'")
        else:
            won, observation = bool(self._state.get("won")), NOTHING_HAPPENS
        admissible = list(self._state["admissible_commands"])
        if problem is not None:
            feedback.append(Feedback(kind=FeedbackKind.ERROR, step=step, text=problem,
                                     payload={"type": "inadmissible_command", "command": command[:MAX_COMMAND_CHARS],
                                              "admissible_commands": admissible}))
        feedback.append(Feedback(kind=FeedbackKind.OBSERVATION, step=step, text=observation,
                                 payload={"command": command[:MAX_COMMAND_CHARS], "won": won,
                                          "admissible_commands": admissible}))
        if self.reference_plan != "off" and not won:
            feedback.append(self._reference(step))
        truncated_now = not won and self.step_count >= self.max_steps
        if won or truncated_now:
            verdict = "won" if won else "step limit reached"
            feedback.append(Feedback(kind=FeedbackKind.OUTCOME, step=step,
                                     text=f"Episode over: {verdict} after {self.step_count} steps.",
                                     payload={"won": won, "steps": self.step_count,
                                              "task_type": self._game.get("task_type"),
                                              "expert_plan_length": len(self._plan)}))
        self.tools = self._tools(admissible)
        return EnvReply(messages=[Message(role="user", content=observation)], reward=1.0 if won else 0.0,
                        terminated=won, feedback=feedback,
                        info={"admissible_commands": admissible, "won": won, "command": command})

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _refusal(command: str, raw: str) -> str | None:
        """Why a command is not even sent to the engine (it would answer 'Nothing happens.')."""
        if not command:
            return f"Empty command (got {raw[:80]!r}); reply with one admissible command."
        if len(command) > MAX_COMMAND_CHARS:
            return (f"Command of {len(command)} characters is longer than any ALFWorld command "
                    f"({MAX_COMMAND_CHARS} max); reply with one admissible command.")
        if not command.isascii() or not command.isprintable():
            return f"Command {command[:80]!r} has characters no ALFWorld command has."
        return None

    def _reference(self, step: int) -> Feedback:
        expert_next = list(self._state.get("extra.expert_plan") or [])
        next_command = expert_next[0] if expert_next else None
        if self.reference_plan == "step":
            plan, won = self._engine.expert_rollout(self._history, self._episode_seed, self.expert_max_steps)
            scope = "current_state"
        else:
            plan, won = self._plan, self._plan_won
            scope = "episode_start"
        return Feedback(kind=FeedbackKind.REFERENCE, step=step, source="alfworld-handcoded-expert",
                        text=f"Expert's next command: {next_command}",
                        payload={"next_command": next_command, "plan": list(plan), "plan_scope": scope,
                                 "plan_wins": won})

    def _size_caches(self) -> None:
        """Grow the process-wide caches to this env's game pool (never shrinks them; bounded)."""
        pool = len(self._pool) if self._pool is not None else 0
        _PLANS.resize(max(self._plan_cache_size, pool))
        install_translation_cache(maxsize=min(max(32, pool + 8), 512))
        if self.text_cache:
            install_text_caches(maxsize=min(max(DEFAULT_SIZE, 64 * pool), 65_536))

    def _initial_plan(self, gamefile: str) -> tuple[list[str], bool]:
        """The expert's plan from the start state: a function of the game file (the expert's
        tie-breaks are seeded with 0), so it is cached per process - every env of a worker or of the
        trainer shares it - keyed by the file and its size and modification time."""
        stat = os.stat(gamefile)
        key = (gamefile, stat.st_size, stat.st_mtime_ns, self._episode_seed, self.expert_max_steps)
        def rollout() -> tuple[tuple[str, ...], bool]:
            plan, won = self._engine.expert_rollout([], self._episode_seed, self.expert_max_steps)
            return tuple(plan), won
        plan, won = _PLANS.get(key, rollout)
        return list(plan), won

    def _origin_of(self, gamefile: str) -> str:
        for game in self._pool or []:
            if str(Path(game.path).resolve()) == gamefile:
                return game.origin
        return "custom"

    @staticmethod
    def _tools(admissible: list[str]) -> list[dict[str, Any]]:
        return [{"type": "function", "function": {
            "name": "act",
            "description": ("Send one command to the household. Admissible now: "
                            + "; ".join(admissible)),
            "parameters": {"type": "object",
                           "properties": {"command": {"type": "string", "enum": list(admissible),
                                                      "description": "One admissible command."}},
                           "required": ["command"]}}}]

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        super().close()
