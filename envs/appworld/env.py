"""``agentgym/AppWorld-v0``: the AppWorld engine behind the agentgym text interface.

The agent writes Python against ``apis.<app>.<api>(...)`` (in a fenced code block, or as a tool
call); an isolated AppWorld worker runs it; the episode ends when the agent calls
``apis.supervisor.complete_task(...)`` or at the step limit (40, as in the AppWorld paper's ReAct
setup). The reward is AppWorld's own evaluator's pass fraction, computed by a separate grader
process that alone can see the ground truth.

>>> import gymnasium as gym, agentgym                             # doctest: +SKIP
>>> env = gym.make("agentgym/AppWorld-v0")                      # doctest: +SKIP
>>> obs, info = env.reset(options={"task_id": "notecreate_1"})  # doctest: +SKIP
>>> obs, r, term, trunc, info = env.step("```python\\nprint(apis.supervisor.show_profile())\\n```")  # doctest: +SKIP

The tasks are the project's own (see ``worker/tasks.py``), built in AppWorld's on-disk format by
``agentgym data appworld``; point ``root=`` at an official AppWorld root to run its tasks instead
(call them AppWorld-engine tasks, not "the AppWorld benchmark", unless that data is used).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, ClassVar

from agentgym.env import AgentEnv, EnvReply, EnvReset
from agentgym.envs.appworld.screen import screen_code
from agentgym.envs.appworld.workers import (AppWorldPaths, WorkerError, WorkerProcess, mirror_without_ground_truth,
                                             new_experiment_name)
from agentgym.types import Feedback, FeedbackKind, Message

__all__ = ["AppWorldEnv", "parse_action", "TOOLS"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
_TOOL_TAG = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def _tool(name: str, description: str, params: dict[str, str]) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": {k: {"type": "string", "description": v}
                                                        for k, v in params.items()},
                       "required": list(params)}}}


TOOLS = [
    _tool("execute", "Run Python code in the AppWorld shell; `apis.<app>.<api>(...)` calls the apps.",
          {"code": "Python code to run; print what you want to see."}),
    _tool("show_app_descriptions", "List the apps and what they do.", {}),
    _tool("show_api_descriptions", "List the APIs of one app.", {"app_name": "An app name, e.g. 'spotify'."}),
    _tool("show_api_doc", "Show the full documentation of one API.",
          {"app_name": "An app name.", "api_name": "An API name of that app."}),
]

SYSTEM_PROMPT = """You are an agent acting for your supervisor, {name} ({email}, phone {phone}), inside AppWorld, \
a world of simulated apps. Solve the task by writing Python code; each action is run in a persistent shell \
where `apis.<app_name>.<api_name>(...)` calls an app. Put the code in one ```python fenced block (or call the \
`execute` tool). Use `apis.api_docs.show_api_descriptions(app_name=...)` and \
`apis.api_docs.show_api_doc(app_name=..., api_name=...)` to read the documentation; \
`apis.supervisor.show_account_passwords()` gives the passwords for logging in. \
Only standard modules such as json, re, math, datetime, collections and itertools may be imported. \
When the task is done, call `apis.supervisor.complete_task(answer=...)` (answer only for questions, \
otherwise `apis.supervisor.complete_task()`). Apps: {apps}. Today is {datetime}."""


def _tool_code(name: str, arguments: dict[str, Any]) -> tuple[str | None, str | None]:
    """Code for a tool call, or an error message."""
    if name == "execute":
        code = arguments.get("code")
        if not isinstance(code, str):
            return None, f"The execute tool needs a string argument 'code', got {code!r:.80}."
        return code, None
    if name == "show_app_descriptions":
        return "print(apis.api_docs.show_app_descriptions())", None
    wanted = {"show_api_descriptions": ("app_name",), "show_api_doc": ("app_name", "api_name")}.get(name)
    if wanted is None:
        return None, f"Unknown tool {name!r}; tools: {', '.join(t['function']['name'] for t in TOOLS)}."
    values = []
    for key in wanted:
        value = arguments.get(key)
        if not isinstance(value, str) or not _IDENT.match(value):
            return None, f"The {name} tool needs an identifier argument {key!r}, got {value!r:.80}."
        values.append(f"{key}={value!r}")
    return f"print(apis.api_docs.{name}({', '.join(values)}))", None


def parse_action(text: str) -> tuple[str | None, str | None]:
    """(code, None) from a fenced block or a tool call in ``text``, else (None, why not).

    >>> parse_action("Let me look.\\n```python\\nprint(1)\\n```")
    ('print(1)\\n', None)
    >>> parse_action('<tool_call>{"name": "show_api_doc", "arguments": {"app_name": "venmo", "api_name": "login"}}</tool_call>')[0]
    "print(apis.api_docs.show_api_doc(app_name='venmo', api_name='login'))"
    """
    blocks = _FENCE.findall(text)
    if blocks:
        return "\n".join(blocks), None
    candidates = _TOOL_TAG.findall(text) or ([text.strip()] if text.strip().startswith("{") else [])
    for candidate in candidates:
        try:
            call = json.loads(candidate)
        except json.JSONDecodeError as exc:
            return None, f"The tool call is not valid JSON: {exc}."
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None, f"A tool call needs a 'name' and 'arguments', got {candidate[:120]!r}."
        arguments = call.get("arguments") or {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return None, f"The tool call arguments are not a JSON object: {arguments[:120]!r}."
        if not isinstance(arguments, dict):
            return None, f"The tool call arguments must be an object, got {type(arguments).__name__}."
        return _tool_code(call["name"], arguments)
    return None, ("No code found. Put Python code in a ```python fenced block, or call the `execute` tool.")


class AppWorldEnv(AgentEnv):
    """AppWorld tasks in isolated workers (see the module docstring).

    Keyword arguments: ``split`` (train/dev/test, the dataset ``reset`` samples from),
    ``root`` (an AppWorld root to grade with; default ``$APPWORLD_ROOT`` if set, else the
    project's built root), ``play_root`` (the root episodes run in; default the built root without
    ground truth, or a symlink mirror of ``root`` without its ``ground_truth`` folders), ``execution_timeout``
    (seconds per action inside AppWorld), ``http_margin`` (extra seconds before the worker is
    SIGKILLed), ``max_observation_chars``, ``restart_every`` (episodes per worker),
    ``worker_mem_mb``, ``terminate_on_violation`` (end the episode when the screen blocks code).
    """

    default_max_steps: ClassVar[int] = 40

    def __init__(self, *, split: str = "train", root: str | Path | None = None,
                 play_root: str | Path | None = None, execution_timeout: int = 20, http_margin: float = 10.0,
                 max_observation_chars: int = 20_000, restart_every: int = 200, worker_mem_mb: int = 3072,
                 terminate_on_violation: bool = True, max_steps: int | None = None,
                 render_mode: str | None = None):
        super().__init__(max_steps=max_steps, render_mode=render_mode)
        self.paths = AppWorldPaths.default()
        if root is None and os.environ.get("APPWORLD_ROOT"):
            root = os.environ["APPWORLD_ROOT"]  # a user's official AppWorld data, loaded unchanged
        if not self.paths.venv_python.exists() or (root is None and self.paths.missing()):
            raise RuntimeError(self.paths.missing())
        self.root = Path(root).resolve() if root is not None else self.paths.root
        if not (self.root / "data" / "tasks").is_dir():
            raise FileNotFoundError(f"no AppWorld tasks under {self.root / 'data' / 'tasks'}")
        if play_root is not None:
            self.play_root = Path(play_root)
        elif root is None:
            self.play_root = self.paths.play
        else:  # any other root: episodes run on a symlink mirror without ground_truth/
            digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
            self.play_root = mirror_without_ground_truth(self.root, self.paths.base / f"play-{digest}")
        self.split = split
        self.task_ids = self._load_split(split)
        self.execution_timeout = int(execution_timeout)
        self.http_timeout = self.execution_timeout + float(http_margin)
        self.max_observation_chars = int(max_observation_chars)
        self.terminate_on_violation = terminate_on_violation
        deny = (self.root / "data",)  # the episode worker reads its own play root only
        self.worker = WorkerProcess("episode", self.play_root, self.paths, restart_every=restart_every,
                                    max_output_chars=max(self.max_observation_chars, 1000) * 4,
                                    mem_mb=worker_mem_mb, deny_read=deny)
        self.grader = WorkerProcess("grade", self.root, self.paths, restart_every=restart_every,
                                    mem_mb=worker_mem_mb)
        self.paths.link_experiments(self.root, self.play_root)
        self.experiment_name = new_experiment_name()
        self.task_id: str | None = None
        self._graded = False

    # ------------------------------------------------------------------ tasks
    def _load_split(self, split: str) -> list[str]:
        path = self.root / "data" / "datasets" / f"{split}.txt"
        if not path.is_file():
            known = sorted(p.stem for p in (self.root / "data" / "datasets").glob("*.txt"))
            raise ValueError(f"unknown AppWorld split {split!r}; available: {known}")
        return [line.strip().split(":")[0] for line in path.read_text().splitlines() if line.strip()]

    def _ground_truth(self, task_id: str) -> Path:
        return self.root / "data" / "tasks" / task_id / "ground_truth"

    # ------------------------------------------------------------------ gymnasium hooks
    def _reset(self, options: dict[str, Any]) -> EnvReset:
        task_id = options.get("task_id")
        if task_id is None:
            task_id = self.task_ids[int(self.np_random.integers(len(self.task_ids)))]
        if not isinstance(task_id, str) or not (self.root / "data" / "tasks" / task_id).is_dir():
            raise ValueError(f"unknown AppWorld task_id {task_id!r} under {self.root / 'data' / 'tasks'}")
        self.grader.prestart()  # both workers import AppWorld at the same time
        self.worker.ensure()
        try:
            opened = self.worker.call("/open", {"task_id": task_id, "experiment_name": self.experiment_name,
                                                "timeout_seconds": self.execution_timeout},
                                      timeout=self.http_timeout + 60)
        except WorkerError:
            self.worker.start()  # one clean retry on a fresh worker: a reset must not fail by chance
            opened = self.worker.call("/open", {"task_id": task_id, "experiment_name": self.experiment_name,
                                                "timeout_seconds": self.execution_timeout},
                                      timeout=self.http_timeout + 60)
        self.task_id = task_id
        self._graded = False
        sup = opened["supervisor"]
        system = SYSTEM_PROMPT.format(name=f"{sup['first_name']} {sup['last_name']}", email=sup["email"],
                                      phone=sup["phone_number"], apps=", ".join(opened["app_descriptions"]),
                                      datetime=opened["datetime"])
        metadata = self._metadata(task_id)
        task = {"id": task_id, "instruction": opened["instruction"], "supervisor": sup,
                "datetime": opened["datetime"], "split": self.split,
                "difficulty": metadata.get("difficulty"), "apps": metadata.get("apps")}
        return EnvReset(messages=[Message(role="system", content=system),
                                  Message(role="user", content=opened["instruction"])],
                        task=task, tools=TOOLS, info={"worker_pid": self.worker.pid})

    def _metadata(self, task_id: str) -> dict[str, Any]:
        path = self._ground_truth(task_id) / "metadata.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _step(self, action: str) -> EnvReply:
        code, problem = parse_action(action)
        if code is None:
            return self._reply(problem, [self._fb(FeedbackKind.ERROR, problem, type="parse_error")])
        blocked = screen_code(code)
        if blocked is not None:
            text = "Execution failed. Traceback:\n" + blocked
            feedback = [self._fb(FeedbackKind.ERROR, text, type="blocked_code")]
            if self.terminate_on_violation:
                feedback.append(self._fb(FeedbackKind.OUTCOME, "Episode ended: the code was blocked by the "
                                         "sandbox screen.", success=False, reward=0.0, cause="blocked_code"))
                self._finish_episode()
                return EnvReply(messages=[Message(role="user", content=text)], terminated=True,
                                feedback=feedback, info={"success": False, "cause": "blocked_code"})
            return self._reply(text, feedback)
        try:
            result = self.worker.call("/execute", {"code": code}, timeout=self.http_timeout)
        except WorkerError as exc:
            return self._worker_failed(exc)
        output = result["output"]
        if result["output_chars"] > self.max_observation_chars or result["truncated"]:
            output = (output[: self.max_observation_chars] +
                      f"\n[output truncated: {result['output_chars']} characters, showing "
                      f"{self.max_observation_chars}]")
        feedback = [self._fb(FeedbackKind.OBSERVATION, output, chars=result["output_chars"])]
        if output.startswith("Execution failed"):
            feedback.append(self._fb(FeedbackKind.ERROR, output, type="execution_error"))
        if result["changes"]:
            lines = [f"{app}.{table}: " + ", ".join(f"{n} {op}" for op, n in ops.items())
                     for app, tables in result["changes"].items() for table, ops in tables.items()]
            feedback.append(self._fb(FeedbackKind.STATE_DIFF, "\n".join(lines), changes=result["changes"]))
        at_limit = self.step_count >= self.max_steps
        if not result["completed"] and not at_limit:
            return EnvReply(messages=[Message(role="user", content=output)], feedback=feedback)
        return self._grade(output, feedback, completed=result["completed"])

    # ------------------------------------------------------------------ helpers
    def _fb(self, kind: FeedbackKind, text: str, **payload: Any) -> Feedback:
        return Feedback(kind=kind, step=0, text=text, payload=payload)

    def _reply(self, text: str, feedback: list[Feedback]) -> EnvReply:
        return EnvReply(messages=[Message(role="user", content=text)], feedback=feedback)

    def _grade(self, output: str, feedback: list[Feedback], *, completed: bool) -> EnvReply:
        try:
            self.grader.ensure()
            report = self.grader.call("/evaluate", {"task_id": self.task_id,
                                                    "experiment_name": self.experiment_name},
                                      timeout=self.http_timeout + 60)
        except WorkerError as exc:
            return self._worker_failed(exc, stage="evaluate")
        num = max(int(report["num_tests"]), 1)
        passes = len(report["passes"])
        reward = passes / num
        failed = [f["requirement"] for f in report["failures"]]
        text = (f"{passes}/{num} tests passed." + ("" if not failed else
                " Failed: " + "; ".join(failed)))
        feedback.append(self._fb(FeedbackKind.OUTCOME, text, success=bool(report["success"]), reward=reward,
                                 passes=[p["requirement"] for p in report["passes"]], failures=failed,
                                 traces=[f["trace"] for f in report["failures"]], completed=completed))
        solution = self._ground_truth(self.task_id) / "solution.py"
        if solution.is_file():
            feedback.append(Feedback(kind=FeedbackKind.REFERENCE, step=0, text=solution.read_text(),
                                     payload={"task_id": self.task_id}, source="env"))
        self._finish_episode()
        return EnvReply(messages=[Message(role="user", content=output)], reward=reward,
                        terminated=completed, feedback=feedback,
                        info={"success": bool(report["success"]), "passes": passes, "num_tests": num,
                              "failures": failed})

    def _worker_failed(self, exc: WorkerError, stage: str = "execute") -> EnvReply:
        """A worker timed out, crashed or failed: the episode ends truncated when its world is gone
        (timeout, crash) or when grading failed; a plain server error is an error observation."""
        text = f"Execution failed: the AppWorld worker {exc.cause} during {stage} ({exc})."
        feedback = [self._fb(FeedbackKind.ERROR, text, type=f"worker_{exc.cause}", stage=stage)]
        if exc.cause in ("timeout", "crashed") or stage == "evaluate":
            if stage == "evaluate":
                self.grader.kill()
            self.worker.kill()  # respawned on the next reset; the episode's world is gone
            return EnvReply(messages=[Message(role="user", content=text)], truncated=True, feedback=feedback,
                            info={"truncated_cause": f"worker_{exc.cause}", "success": False})
        return self._reply(text, feedback)

    def _finish_episode(self) -> None:
        if self.worker.alive:
            try:
                self.worker.call("/close", {}, timeout=self.http_timeout)
            except WorkerError:
                self.worker.kill()

    def close(self) -> None:
        for proc in (getattr(self, "worker", None), getattr(self, "grader", None)):
            if proc is not None:
                proc.kill()
        name = getattr(self, "experiment_name", None)
        if name is not None:  # this env's episode outputs (end states) are of no use after it
            shutil.rmtree(self.root / "experiments" / "outputs" / name, ignore_errors=True)
        super().close()

    def __del__(self):  # workers must not outlive a forgotten env
        try:
            self.close()
        except Exception:
            pass
