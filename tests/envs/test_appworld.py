"""AppWorld env: real AppWorld workers and the real OS sandbox on the project's generated tasks.

Needs the AppWorld virtualenv, built tasks and bubblewrap (scripts/setup_appworld.sh); skips with
the reason only when they are absent. One env (sandbox + apps worker + grader) is shared per module
to keep the default run short; tests that kill processes check that the next reset still works.
The attacks on the sandbox itself (screen off) are in test_appworld_sandbox.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from agentgym.envs.appworld.env import MAX_ACTION_CHARS, TOOLS, AppWorldEnv, parse_action
from agentgym.envs.appworld.sandbox import sandbox_problem
from agentgym.envs.appworld.screen import screen_code
from agentgym.envs.appworld.workers import AppWorldPaths
from agentgym.types import FeedbackKind

PATHS = AppWorldPaths.default()
PROBLEM = PATHS.missing() or sandbox_problem()
needs_appworld = pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM))
NOOP = "```python\napis.supervisor.complete_task()\n```"


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def kinds(info) -> set[str]:
    return {f.kind.value for f in info["feedback"]}


def ground_truth(env: AppWorldEnv, task_id: str) -> Path:
    return env.root / "data" / "tasks" / task_id / "ground_truth"


# ----------------------------------------------------------------------------- pure parts
def test_parse_action_reads_fences_and_tool_calls():
    assert parse_action("x\n```python\nprint(1)\n```\nand\n```\nprint(2)\n```")[0] == "print(1)\n\nprint(2)\n"
    code, err = parse_action('{"name": "execute", "arguments": {"code": "print(3)"}}')
    assert (code, err) == ("print(3)", None)
    code, err = parse_action('<tool_call>{"name": "show_api_descriptions", "arguments": "{\\"app_name\\": \\"venmo\\"}"}</tool_call>')
    assert code == "print(apis.api_docs.show_api_descriptions(app_name='venmo'))"
    assert parse_action("just words")[0] is None
    assert "not valid JSON" in parse_action("<tool_call>{nope</tool_call>")[1]
    # tool arguments never become code unless they are plain identifiers
    code, err = parse_action('{"name": "show_api_doc", "arguments": {"app_name": "x\')\\nimport os#", "api_name": "a"}}')
    assert code is None and "identifier" in err
    assert "Unknown tool" in parse_action('{"name": "rm_rf", "arguments": {}}')[1]
    assert {t["function"]["name"] for t in TOOLS} >= {"execute", "show_api_doc"}


@pytest.mark.parametrize("text", [
    "<tool_call>" + " " * 5000,                       # took 115 s with the old regex
    "<tool_call>" + " " * 5000 + "</tool_call>",
    "<tool_call>" * 5000,                             # ~55 KB of unclosed tags (8-15 s before)
    "```python\n" + " " * 60_000,                     # an unclosed fence
    "```" * 20_000,
    "{" + " " * 60_000,
])
def test_parse_action_is_linear_on_hostile_text(text):
    assert len(text) <= MAX_ACTION_CHARS
    started = time.perf_counter()
    code, problem = parse_action(text)
    assert time.perf_counter() - started < 0.05 and code is None and problem


def test_parse_action_refuses_oversized_text_with_a_clear_message():
    started = time.perf_counter()
    code, problem = parse_action("<tool_call>" * 10_000)  # ~110 KB
    assert time.perf_counter() - started < 0.01
    assert code is None and f"at most {MAX_ACTION_CHARS} are accepted" in problem and "110000" in problem


@pytest.mark.parametrize("code, needle", [
    ("import os\nos.posix_spawn('/bin/sh', ['sh'], {})", "import of 'os'"),
    ("from pathlib import Path\nPath('x').read_text()", "import from 'pathlib'"),
    ("from appworld.apps.simple_note.models import Note", "import from 'appworld"),
    ("import signal\nsignal.signal(14, lambda *a: None)\nwhile True: pass", "import of 'signal'"),
    ("__import__('os').system('id')", "'__import__'"),
    ("import subprocess", "import of 'subprocess'"),
    ("import ctypes", "import of 'ctypes'"),
    ("import sys", "import of 'sys'"),
    ("import importlib", "import of 'importlib'"),
    ("x = ().__class__.__base__.__subclasses__()", "dunder attribute '__class__'"),
    ("open('/etc/passwd').read()", "'open'"),
    ("import io", "import of 'io'"),
    ("getattr(apis, '__dict__')", "'getattr'"),
    ("requester.request('admin', 'x')", "'requester'"),
    ("f = (lambda: 0)\nf.__globals__", "'__globals__'"),
])
def test_screen_blocks_escape_vectors(code, needle):
    message = screen_code(code)
    assert message is not None and message.startswith("Blocked:") and needle in message, message


def test_screen_allows_ordinary_task_code():
    code = ("import json, math\nfrom collections import Counter\n"
            "songs = apis.spotify.show_song_library(access_token='t', page_limit=20)\n"
            "print(json.dumps(Counter(s['title'] for s in songs)))")
    assert screen_code(code) is None
    assert screen_code("def f(:\n") is None  # syntax errors are AppWorld's to report


# ----------------------------------------------------------------------------- with workers
@pytest.fixture(scope="module")
def env():
    if PROBLEM is not None:
        pytest.skip(PROBLEM)
    environment = AppWorldEnv(split="train", execution_timeout=5, http_margin=3, max_observation_chars=5000)
    yield environment
    environment.close()


@needs_appworld
def test_registered_id_makes_the_env_and_workers_start_lazily():
    import gymnasium as gym

    import agentgym  # noqa: F401

    made = gym.make("agentgym/AppWorld-v0", split="dev", execution_timeout=5)
    try:
        env = made.unwrapped
        assert isinstance(env, AppWorldEnv) and env.max_steps == 40 and env.http_timeout == 15
        assert not env.apps.alive and not env.grader.alive and not env.sandbox.alive  # lazy start
    finally:
        made.close()


@needs_appworld
def test_check_env_and_seeded_reset(env):
    from gymnasium.utils.env_checker import check_env

    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0)
    again, _ = env.reset(seed=0)
    assert obs == again and info["task"]["id"] in env.task_ids and obs == info["task"]["instruction"]
    assert info["tools"] == TOOLS and "apis.supervisor.complete_task" in info["messages"][0].content


@needs_appworld
def test_dataset_covers_apps_difficulties_and_splits(env):
    tasks = sorted(p.name for p in (env.root / "data" / "tasks").iterdir())
    assert len(tasks) >= 40
    meta = [json.loads((ground_truth(env, t) / "metadata.json").read_text()) for t in tasks]
    assert {m["difficulty"] for m in meta} == {1, 2, 3}
    assert len({a for m in meta for a in m["apps"]}) >= 6
    splits = {s: (env.root / "data" / "datasets" / f"{s}.txt").read_text().split() for s in ("train", "dev", "test")}
    assert sorted(sum(splits.values(), [])) == tasks and all(splits.values())
    # the episode root holds no ground truth at all
    assert not list((env.play_root / "data").rglob("ground_truth"))


@needs_appworld
@pytest.mark.parametrize("task_id", ["notecreate_1", "todocomplete_2", "grouprequest_1"])
def test_solution_passes_noop_and_wrong_solution_fail(env, task_id):
    gt = ground_truth(env, task_id)
    obs, info = env.reset(options={"task_id": task_id})
    obs, reward, terminated, truncated, info = env.step(fenced((gt / "solution.py").read_text()))
    assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True), obs
    outcome = [f for f in info["feedback"] if f.kind is FeedbackKind.OUTCOME][0]
    assert outcome.payload["failures"] == [] and outcome.payload["success"] is True
    reference = [f for f in info["feedback"] if f.kind is FeedbackKind.REFERENCE]
    assert reference and "apis.supervisor.complete_task" in reference[0].text
    assert "state_diff" in kinds(info)

    env.reset(options={"task_id": task_id})
    _, reward, terminated, _, info = env.step(NOOP)
    assert terminated and reward < 1.0 and not info["success"]

    wrong = json.loads((gt / "wrong.json").read_text())
    env.reset(options={"task_id": task_id})
    _, reward, terminated, _, info = env.step(fenced(wrong["code"]))
    assert terminated and 0.0 < reward < 1.0 and wrong["fails"] in info["failures"], info["failures"]
    outcome = [f for f in info["feedback"] if f.kind is FeedbackKind.OUTCOME][0]
    assert wrong["fails"] in outcome.text


@needs_appworld
def test_multi_step_episode_with_state_diff_errors_and_tool_calls(env):
    env.reset(options={"task_id": "notecount_1"})
    obs, reward, terminated, truncated, info = env.step(
        '{"name": "show_api_doc", "arguments": {"app_name": "simple_note", "api_name": "search_notes"}}')
    assert "page_limit" in obs and not terminated and kinds(info) == {"observation"}
    obs, _, _, _, info = env.step(fenced("print(apis.simple_note.no_such_api())"))
    assert obs.startswith("Execution failed") and "error" in kinds(info)
    obs, _, _, _, info = env.step("I think I should look around first.")
    assert "No code found" in obs and kinds(info) == {"error"}
    creds = ("p = apis.supervisor.show_profile()\n"
             "pw = {a['account_name']: a['password'] for a in apis.supervisor.show_account_passwords()}\n"
             "t = apis.simple_note.login(username=p['email'], password=pw['simple_note'])['access_token']\n"
             "apis.simple_note.create_note(access_token=t, title='scratch', content='x')")
    obs, _, terminated, _, info = env.step(fenced(creds))
    diff = [f for f in info["feedback"] if f.kind is FeedbackKind.STATE_DIFF]
    assert not terminated and diff and "simple_note" in diff[0].payload["changes"], obs
    assert diff[0].payload["changes"]["simple_note"] == {"notes": {"insert": 1}}


@needs_appworld
def test_step_limit_truncates_and_grades(env):
    env.max_steps = 2
    try:
        env.reset(options={"task_id": "notecreate_2"})
        assert env.step(fenced("x = 1"))[3] is False
        obs, reward, terminated, truncated, info = env.step(fenced("x = 2"))
        assert truncated and not terminated and "outcome" in kinds(info) and reward < 1.0
    finally:
        env.max_steps = 40


# ----------------------------------------------------------------------------- escapes
ESCAPES = {
    "posix_spawn": "import os\nos.posix_spawn('/bin/touch', ['/bin/touch', '/tmp/agentgym_pwned'], {})",
    "pathlib_ground_truth": "from pathlib import Path\nprint(Path('{gt}/answer.json').read_text())",
    "appworld_models_write": ("from appworld.apps.simple_note.models import Note\n"
                              "Note.create(user_id=1, title='x', content='y').save()"),
    "sigalrm_then_loop": "import signal\nsignal.signal(14, lambda *a: None)\nwhile True:\n    pass",
    "dunder_import_os": "__import__('os').system('touch /tmp/agentgym_pwned')",
}


@needs_appworld
@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_screen_blocks_with_error_feedback_and_next_episode_is_clean(env, name):
    """The screen (a first filter, on by default) ends the episode with a clear message; that the
    same code cannot escape without the screen is test_appworld_sandbox.py's job."""
    env.reset(options={"task_id": "notecreate_3"})
    code = ESCAPES[name].replace("{gt}", str(ground_truth(env, "notecreate_3")))
    obs, reward, terminated, truncated, info = env.step(fenced(code))
    assert terminated and reward == 0.0 and obs.startswith("Execution failed") and "Blocked" in obs
    assert info["feedback"][0].kind is FeedbackKind.ERROR and info["feedback"][0].payload["type"] == "blocked_code"
    assert not Path("/tmp/agentgym_pwned").exists()
    # the next episode starts clean and is solvable
    env.reset(options={"task_id": "notecreate_3"})
    _, reward, *_ = env.step(fenced((ground_truth(env, "notecreate_3") / "solution.py").read_text()))
    assert reward == 1.0


@needs_appworld
def test_huge_print_is_truncated_and_worker_stays_usable(env):
    env.reset(options={"task_id": "notecount_2"})
    obs, _, terminated, truncated, info = env.step(fenced("print('x' * 20_000_000)"))
    assert not terminated and not truncated
    assert len(obs) < 5200 and "output truncated: 20000001 characters" in obs
    obs, *_ = env.step(fenced("print('still here')"))
    assert obs.strip() == "still here"


@needs_appworld
def test_long_c_level_call_is_killed_and_the_next_episode_gets_a_fresh_process(env):
    env.reset(options={"task_id": "notecount_3"})
    old_pid = env.episode.pid
    started = time.monotonic()
    # sum over a range runs in C: SIGALRM cannot interrupt it, the hard deadline + SIGKILL does
    obs, reward, terminated, truncated, info = env.step(fenced("print(sum(range(10**12)))"))
    assert time.monotonic() - started < env.http_timeout + 3
    assert truncated and not terminated and info["truncated_cause"] == "sandbox_timeout"
    assert info["feedback"][0].kind is FeedbackKind.ERROR and "killed" in info["feedback"][0].text
    env.reset(options={"task_id": "notecount_3"})
    assert env.episode.pid != old_pid and env.sandbox.alive
    _, reward, *_ = env.step(fenced((ground_truth(env, "notecount_3") / "solution.py").read_text()))
    assert reward == 1.0


@needs_appworld
def test_killing_a_worker_mid_episode_truncates_with_the_cause(env):
    env.reset(options={"task_id": "phonetext_1"})
    os.kill(env.apps.pid, signal.SIGKILL)
    obs, reward, terminated, truncated, info = env.step(fenced("print(1)"))
    assert truncated and not terminated and info["truncated_cause"] == "worker_crashed"
    assert "crashed" in info["feedback"][0].payload["type"]
    obs, info = env.reset(options={"task_id": "phonetext_1"})
    assert "Text my contact" in obs
    _, reward, *_ = env.step(fenced((ground_truth(env, "phonetext_1") / "solution.py").read_text()))
    assert reward == 1.0


@needs_appworld
def test_python_timeout_keeps_the_episode_process(env):
    env.reset(options={"task_id": "notecount_4"})
    pid = env.episode.pid
    obs, _, terminated, truncated, _ = env.step(fenced("x = 41\nwhile True:\n    pass"))
    assert "timed out" in obs and not truncated and env.episode.pid == pid
    assert env.step(fenced("print(x + 1)"))[0].strip() == "42"  # the shell state survives


@needs_appworld
@pytest.mark.slow  # starts its own pair of workers
def test_official_layout_root_loads_through_the_same_loader(tmp_path, monkeypatch):
    """$APPWORLD_ROOT pointing at a root in the official layout (ground truth inside each task):
    the env mirrors it without ground truth for episodes and grades with the original. (Under /tmp,
    not pytest's private tmp_path: run as root, the workers' unprivileged user must read it.)"""
    official = Path(tempfile.mkdtemp(prefix="appworld-official-")) / "appworld_root"
    official.parent.chmod(0o755)
    (official / "data" / "tasks").mkdir(parents=True)
    src = PATHS.root / "data"
    for name in ("base_dbs", "api_docs"):
        (official / "data" / name).symlink_to(src / name)
    for task in ("venmopay_1", "spotifyartist_1"):
        (official / "data" / "tasks" / task).symlink_to(src / "tasks" / task)
    (official / "data" / "datasets").mkdir()
    (official / "data" / "datasets" / "dev.txt").write_text("venmopay_1\nspotifyartist_1\n")
    monkeypatch.setenv("APPWORLD_ROOT", str(official))
    env = AppWorldEnv(split="dev")
    try:
        assert env.root == official.resolve() and env.play_root != env.root
        assert not list((env.play_root / "data").rglob("ground_truth"))
        for task in ("venmopay_1", "spotifyartist_1"):
            env.reset(options={"task_id": task})
            _, reward, terminated, *_ = env.step(fenced((src / "tasks" / task / "ground_truth" / "solution.py").read_text()))
            assert (reward, terminated) == (1.0, True)
    finally:
        env.close()
        shutil.rmtree(official.parent)
