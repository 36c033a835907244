"""``agentgym/AppWorld-v0``: the AppWorld engine behind the agentgym text interface.

The agent writes Python against ``apis.<app>.<api>(...)`` (in a fenced code block, or as a tool
call). Three processes per env, and a trust boundary between them (see ``sandbox.py``):

- the code runs in a fresh OS-sandboxed process per episode (bubblewrap: nobody, no network, no
  view of AppWorld, its data or the grader; seccomp; rlimits), forked from a pre-loaded template;
- its ``apis`` calls come back here and go to the apps worker, the AppWorld process that holds the
  episode's databases (play root, no ground truth) and runs the apps' own API code;
- the grader, a third process that alone sees the ground truth, scores the saved end state.

The episode ends when the agent calls ``apis.supervisor.complete_task(...)`` or at the step limit
(40, as in the AppWorld paper's ReAct setup). The reward is AppWorld's own evaluator's pass fraction.

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
from typing import Any

from agentgym.env import AgentEnv, EnvReply, EnvReset
from agentgym.envspec import EnvDefaults
from agentgym.envs.appworld.sandbox import Episode, Sandbox, SandboxError
from agentgym.envs.appworld.screen import screen_code
from agentgym.envs.appworld.worker.server import NAME
from agentgym.envs.appworld.workers import (WORKER_USER, AppWorldPaths, WorkerError, WorkerProcess,
                                             mirror_without_ground_truth, new_experiment_name, prepare_outputs,
                                             unreadable_by_workers, worker_identity)
from agentgym.types import Feedback, FeedbackKind, Message

__all__ = ["AppWorldEnv", "parse_action", "TOOLS", "MAX_ACTION_CHARS"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ACTION_CHARS = 64_000  # a task's solution is 1-5 KB; longer actions are refused, not parsed


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


def _fenced_blocks(text: str) -> list[str]:
    """Bodies of closed ```python / ```py / ``` blocks, in one left-to-right pass (str.find only:
    linear time, whatever the input; blocks tagged with another language are skipped)."""
    blocks, pos = [], 0
    while (start := text.find("```", pos)) >= 0:
        newline = text.find("\n", start + 3)
        if newline < 0:
            break
        end = text.find("```", newline + 1)
        if end < 0:
            break
        if text[start + 3:newline].strip(" \t\r") in ("", "python", "py"):
            blocks.append(text[newline + 1:end])
        pos = end + 3
    return blocks


def _tool_tags(text: str) -> list[str]:
    """Stripped bodies of closed <tool_call>...</tool_call> tags (linear, like ``_fenced_blocks``)."""
    open_tag, close_tag = "<tool_call>", "</tool_call>"
    bodies, pos = [], 0
    while (start := text.find(open_tag, pos)) >= 0:
        end = text.find(close_tag, start + len(open_tag))
        if end < 0:
            break
        bodies.append(text[start + len(open_tag):end].strip())
        pos = end + len(close_tag)
    return bodies


def parse_action(text: str, max_chars: int = MAX_ACTION_CHARS) -> tuple[str | None, str | None]:
    """(code, None) from a fenced block or a tool call in ``text``, else (None, why not).

    Linear in ``len(text)`` and refuses texts over ``max_chars`` outright (model text is hostile:
    a regex with nested lazy groups took minutes on 5 K spaces).

    >>> parse_action("Let me look.\\n```python\\nprint(1)\\n```")
    ('print(1)\\n', None)
    >>> parse_action('<tool_call>{"name": "show_api_doc", "arguments": {"app_name": "venmo", "api_name": "login"}}</tool_call>')[0]
    "print(apis.api_docs.show_api_doc(app_name='venmo', api_name='login'))"
    """
    if len(text) > max_chars:
        return None, (f"The action is {len(text)} characters long; at most {max_chars} are accepted. "
                      "Send shorter code in one ```python block.")
    blocks = _fenced_blocks(text)
    if blocks:
        return "\n".join(blocks), None
    candidates = _tool_tags(text) or ([text.strip()] if text.strip().startswith("{") else [])
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


def appworld_headline(rows) -> dict[str, float]:
    """AppWorld's published numbers (%): task goal completion (TGC: tasks whose every test passes) and
    scenario goal completion (SGC: scenarios, the task id before its last ``_N``, whose every task
    passes), each for one sample per task (K samples: the mean over sample indices)."""
    from collections import defaultdict
    tgc, sgc = [], []
    for member in sorted({r.member for r in rows}):
        mine = [r for r in rows if r.member == member]
        scenarios: dict[str, list[bool]] = defaultdict(list)
        for r in mine:
            scenarios[r.task_id.rsplit("_", 1)[0]].append(r.success)
        tgc.append(100.0 * sum(r.success for r in mine) / len(mine))
        sgc.append(100.0 * sum(all(v) for v in scenarios.values()) / len(scenarios))
    return {"task_goal_completion": sum(tgc) / len(tgc), "scenario_goal_completion": sum(sgc) / len(sgc)}


class AppWorldEnv(AgentEnv):
    """AppWorld tasks: agent code in an OS sandbox, apps and grader in their own processes (see the
    module docstring).

    Keyword arguments: ``split`` (train/dev/test, the dataset ``reset`` samples from),
    ``root`` (an AppWorld root to grade with; default ``$APPWORLD_ROOT`` if set, else the
    project's built root), ``play_root`` (the root the apps worker loads worlds from; default the
    built root without ground truth, or a symlink mirror of ``root`` without its ``ground_truth``
    folders), ``execution_timeout`` (seconds per action; past it the code gets a timeout error),
    ``http_margin`` (extra seconds before the episode process or a worker is SIGKILLed),
    ``max_observation_chars``, ``max_action_chars`` (longer actions are refused unparsed),
    ``restart_every`` (episodes per worker), ``worker_mem_mb`` (apps worker and grader),
    ``sandbox_mem_mb`` (address space of the episode process), ``screen`` (run the static screen
    first: a filter with clear messages, not the boundary; tests switch it off to attack the
    sandbox itself), ``terminate_on_violation`` (end the episode when the screen blocks code).
    """

    defaults = EnvDefaults(train_kwargs={"split": "train"}, eval_kwargs={"split": "dev"}, max_steps=40, max_new_tokens=384,
                           category_field="difficulty", headline=lambda rows: appworld_headline(rows),
                           data_hint="run ./setup.sh (it builds the AppWorld virtualenv and the project's tasks), "
                                     "or set APPWORLD_ROOT to an official AppWorld root")

    def tasks(self) -> list[dict[str, Any]]:
        return [{"task_id": t} for t in self.task_ids]

    def __init__(self, *, split: str = "train", root: str | Path | None = None,
                 play_root: str | Path | None = None, execution_timeout: int = 20, http_margin: float = 10.0,
                 max_observation_chars: int = 20_000, max_action_chars: int = MAX_ACTION_CHARS,
                 restart_every: int = 200, worker_mem_mb: int = 3072, sandbox_mem_mb: int = 1024,
                 screen: bool = True, terminate_on_violation: bool = True, max_steps: int | None = None,
                 render_mode: str | None = None, step_timeout_s: float | None | str = "default"):
        super().__init__(max_steps=max_steps, render_mode=render_mode, step_timeout_s=step_timeout_s)
        worker_identity()  # run as root: the unprivileged worker user must exist (a clear error if not)
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
        if self.task_ids:  # run as root, the workers' user must be able to read the AppWorld data
            sample = self.task_ids[0]
            unreadable = unreadable_by_workers(self.paths.venv_python, [self.play_root / "data" / "tasks" / sample / "specs.json",
                                                                 self.root / "data" / "tasks" / sample /
                                                                 "ground_truth"])
            if unreadable:
                raise PermissionError(
                    f"run as root, agentgym starts the AppWorld workers as the unprivileged user {WORKER_USER}, "
                    f"which cannot read {', '.join(unreadable)}: make them readable by that user (e.g. "
                    "chmod o+rx on their folders) or run agentgym as an ordinary user")
        self.execution_timeout = int(execution_timeout)
        self.http_timeout = self.execution_timeout + float(http_margin)
        self.max_observation_chars = int(max_observation_chars)
        self.max_action_chars = int(max_action_chars)
        self.screen = bool(screen)
        self.terminate_on_violation = terminate_on_violation
        self.paths.link_experiments(self.root, self.play_root)
        self.experiment_name = new_experiment_name()
        outputs = prepare_outputs(self.root, self.experiment_name)  # the workers' one writable folder
        self.apps = WorkerProcess("apps", self.play_root, self.paths, restart_every=restart_every,
                                  mem_mb=worker_mem_mb, ipython_dir=outputs / "ipython")
        self.sandbox = Sandbox(mem_mb=sandbox_mem_mb, cpu_seconds=max(60, self.default_max_steps *
                                                                      self.execution_timeout))
        self.episode: Episode | None = None
        self._apps_failure: WorkerError | None = None
        self.grader = WorkerProcess("grade", self.root, self.paths, restart_every=restart_every,
                                    mem_mb=worker_mem_mb, ipython_dir=outputs / "ipython")
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
        if not isinstance(task_id, str) or not NAME.match(task_id) or \
                not (self.root / "data" / "tasks" / task_id).is_dir():
            raise ValueError(f"unknown AppWorld task_id {task_id!r} under {self.root / 'data' / 'tasks'}")
        self._close_episode()  # whatever the last episode left running dies here
        self.grader.prestart()  # both workers import AppWorld at the same time
        self.apps.ensure()
        request = {"task_id": task_id, "experiment_name": self.experiment_name}
        try:
            opened = self.apps.call("/open", request, timeout=self.http_timeout + 60)
        except WorkerError:
            self.apps.start()  # one clean retry on a fresh worker: a reset must not fail by chance
            opened = self.apps.call("/open", request, timeout=self.http_timeout + 60)
        try:
            self.episode = self.sandbox.spawn()  # a fresh process: nothing of the last episode
        except SandboxError:
            self.sandbox.start()
            self.episode = self.sandbox.spawn()
        self.task_id = task_id
        self._graded = False
        self._apps_failure = None
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
                        task=task, tools=TOOLS, info={"worker_pid": self.apps.pid, "sandbox_pid": self.episode.pid})

    def _metadata(self, task_id: str) -> dict[str, Any]:
        path = self._ground_truth(task_id) / "metadata.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _step(self, action: str) -> EnvReply:
        code, problem = parse_action(action, self.max_action_chars)
        if code is None:
            return self._reply(problem, [self._fb(FeedbackKind.ERROR, problem, type="parse_error")])
        code = code.strip()  # the text screened is exactly the text run
        blocked = screen_code(code) if self.screen else None
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
        if self.episode is None:
            return self._sandbox_failed(SandboxError("the episode has no sandboxed process", "crashed"))
        try:
            result = self.episode.execute(code, relay=self._relay, timeout=self.execution_timeout,
                                          hard_timeout=self.http_timeout,
                                          max_output_chars=max(self.max_observation_chars, 1000) * 4)
        except SandboxError as exc:
            return self._sandbox_failed(exc)
        if self._apps_failure is not None:
            return self._worker_failed(self._apps_failure)
        try:
            status = self.apps.call("/step_end", {}, timeout=self.http_timeout)
        except WorkerError as exc:
            return self._worker_failed(exc)
        output = result["output"]
        if result["chars"] > self.max_observation_chars:
            output = (output[: self.max_observation_chars] +
                      f"\n[output truncated: {result['chars']} characters, showing "
                      f"{self.max_observation_chars}]")
        feedback = [self._fb(FeedbackKind.OBSERVATION, output, chars=result["chars"],
                             api_calls=result["api_calls"])]
        if output.startswith("Execution failed"):
            feedback.append(self._fb(FeedbackKind.ERROR, output, type="execution_error"))
        if status["changes"]:
            lines = [f"{app}.{table}: " + ", ".join(f"{n} {op}" for op, n in ops.items())
                     for app, tables in status["changes"].items() for table, ops in tables.items()]
            feedback.append(self._fb(FeedbackKind.STATE_DIFF, "\n".join(lines), changes=status["changes"]))
        at_limit = self.step_count >= self.max_steps
        if not status["completed"] and not at_limit:
            return EnvReply(messages=[Message(role="user", content=output)], feedback=feedback)
        return self._grade(output, feedback, completed=status["completed"])

    def _relay(self, app: str, api: str, args: dict) -> dict:
        """One API call from the sandbox, forwarded to the apps worker (its only way to the apps)."""
        if self._apps_failure is not None:
            return {"error": "the AppWorld apps worker is gone; the episode ends", "type": "Exception"}
        try:
            return self.apps.call("/api", {"app": app, "api": api, "args": args}, timeout=self.http_timeout)
        except WorkerError as exc:
            if exc.cause != "error":
                self._apps_failure = exc
            return {"error": f"the API call failed in the AppWorld apps worker: {exc}", "type": "Exception"}

    # ------------------------------------------------------------------ helpers
    def _fb(self, kind: FeedbackKind, text: str, **payload: Any) -> Feedback:
        return Feedback(kind=kind, step=0, text=text, payload=payload)

    def _reply(self, text: str, feedback: list[Feedback]) -> EnvReply:
        return EnvReply(messages=[Message(role="user", content=text)], feedback=feedback)

    def _grade(self, output: str, feedback: list[Feedback], *, completed: bool) -> EnvReply:
        self._close_episode()  # no agent code runs while the end state is saved and graded
        try:
            self.apps.call("/save", {}, timeout=self.http_timeout + 60)
        except WorkerError as exc:
            return self._worker_failed(exc, stage="save")
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
        if exc.cause in ("timeout", "crashed") or stage in ("evaluate", "save"):
            if stage == "evaluate":
                self.grader.kill()
            self._close_episode()
            self.apps.kill()  # respawned on the next reset; the episode's world is gone
            return EnvReply(messages=[Message(role="user", content=text)], truncated=True, feedback=feedback,
                            info={"truncated_cause": f"worker_{exc.cause}", "success": False})
        return self._reply(text, feedback)

    def _sandbox_failed(self, exc: SandboxError) -> EnvReply:
        """The episode process overran the hard deadline (it ignored or outlived the timeout) or
        died (a limit, a crash): it is gone, so the episode ends truncated, ungraded."""
        what = {"timeout": f"did not finish within {self.http_timeout:.0f}s and was killed",
                "crashed": "died (a resource limit or a crash)"}.get(exc.cause, f"failed ({exc.cause})")
        text = f"Execution failed: the sandboxed code {what}."
        feedback = [self._fb(FeedbackKind.ERROR, text, type=f"sandbox_{exc.cause}", detail=str(exc)[:500])]
        self._finish_episode()
        return EnvReply(messages=[Message(role="user", content=text)], truncated=True, feedback=feedback,
                        info={"truncated_cause": f"sandbox_{exc.cause}", "success": False})

    def _close_episode(self) -> None:
        episode, self.episode = getattr(self, "episode", None), None
        if episode is not None:
            episode.close()

    def _finish_episode(self) -> None:
        self._close_episode()
        if self.apps.alive:
            try:
                self.apps.call("/close", {}, timeout=self.http_timeout)
            except WorkerError:
                self.apps.kill()

    def close(self) -> None:
        try:
            self._close_episode()
        except Exception:
            pass
        for proc in (getattr(self, "apps", None), getattr(self, "grader", None), getattr(self, "sandbox", None)):
            if proc is not None:
                proc.close()
        name = getattr(self, "experiment_name", None)
        if name is not None:  # this env's episode outputs (end states) are of no use after it
            shutil.rmtree(self.root / "experiments" / "outputs" / name, ignore_errors=True)
        super().close()

    def __del__(self):  # workers must not outlive a forgotten env
        try:
            self.close()
        except Exception:
            pass
