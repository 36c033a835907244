"""Attacks on the AppWorld OS sandbox, with the static screen switched OFF (``screen=False``).

Every escape route issue 14 found is replayed here against the real thing: real AppWorld workers,
bubblewrap, namespaces, seccomp. Each test asserts that the attack failed, that the reward was not
raised above what a no-op scores on that task, and that the next episode is clean. The screen is
never relied on: these tests would pass with ``screen_code`` deleted.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from agentgym.envs.appworld.env import AppWorldEnv, parse_action
from agentgym.envs.appworld.sandbox import sandbox_problem
from agentgym.envs.appworld.workers import AppWorldPaths

PATHS = AppWorldPaths.default()
PROBLEM = PATHS.missing() or sandbox_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM))
COMPLETE = "\napis.supervisor.complete_task()"


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def env():
    environment = AppWorldEnv(split="train", screen=False, execution_timeout=3, http_margin=3,
                              max_observation_chars=4000)
    yield environment
    environment.close()


@pytest.fixture(scope="module")
def noop(env):
    """No-op reward per task, measured before any attack (the ceiling an attack must not pass)."""
    cache: dict[str, float] = {}

    def reward(task_id: str) -> float:
        if task_id not in cache:
            env.reset(options={"task_id": task_id})
            cache[task_id] = env.step(fenced("apis.supervisor.complete_task()"))[1]
        return cache[task_id]

    return reward


def gt(env: AppWorldEnv, task_id: str) -> Path:
    return env.root / "data" / "tasks" / task_id / "ground_truth"


def attack(env: AppWorldEnv, task_id: str, code: str):
    """Run ``code`` (then complete the task) in a fresh episode; returns (observation, reward, info)."""
    env.reset(options={"task_id": task_id})
    obs, reward, terminated, truncated, info = env.step(fenced(code))
    if not (terminated or truncated):  # the attack code itself did not end the episode
        obs2, reward, terminated, truncated, info = env.step(fenced("apis.supervisor.complete_task()"))
    return obs, reward, info


def assert_clean_next_episode(env: AppWorldEnv, task_id: str = "notecreate_1") -> None:
    """A fresh episode after the attack: the solution scores 1.0, a no-op does not."""
    env.reset(options={"task_id": task_id})
    assert env.step(fenced((gt(env, task_id) / "solution.py").read_text()))[1] == 1.0
    env.reset(options={"task_id": task_id})
    assert env.step(fenced("apis.supervisor.complete_task()"))[1] < 1.0


# ----------------------------------------------------------------------------- ground truth
def test_ground_truth_is_not_in_view_even_through_proc_self_root(env, noop):
    task = "notecount_1"
    answer = gt(env, task) / "answer.json"
    code = f"""
import os
found = []
for path in [{str(answer)!r}, '/proc/self/root' + {str(answer)!r}, {str(env.root)!r}, {str(env.play_root)!r},
             {str(PATHS.base)!r}, '/work', '/root', '/proc/1/root/etc/passwd', '/etc/passwd']:
    try:
        found.append((path, open(path).read()[:50]))
    except Exception as exc:
        found.append((path, type(exc).__name__))
print(found)
print(sorted(os.listdir('/')))
answer = None
for path in [{str(answer)!r}, '/proc/self/root' + {str(answer)!r}]:
    try:
        answer = int(open(path).read())
    except Exception:
        pass
apis.supervisor.complete_task(answer=answer)
"""
    obs, reward, info = attack(env, task, code)
    assert "FileNotFoundError" in obs and "IsADirectoryError" not in obs, obs
    assert '["bin", "dev", "jail", "lib", "lib64", "sbin", "usr"]' in obs, obs
    assert reward <= noop(task)
    assert_clean_next_episode(env)


def test_submitting_an_answer_read_from_disk_fails(env, noop):
    """The true answer file is nowhere in the sandbox's filesystem, by any path or walk."""
    task = "notecount_1"
    code = """
import os
names = {'answer.json', 'evaluation.py', 'test_data.json', 'private_data.json', 'simple_note.db', 'supervisor.db'}
hits = [os.path.join(d, f) for d, _, fs in os.walk('/') for f in fs if f in names]
print(hits)
apis.supervisor.complete_task(answer=(open(hits[0]).read() if hits else None))
"""
    obs, reward, info = attack(env, task, code)
    assert obs.strip() == "[]", obs
    assert reward <= noop(task)


# ----------------------------------------------------------------------------- app database
def test_writing_the_app_database_directly_fails(env, noop):
    task = "notecreate_2"
    dbs = [str(p) for p in (env.play_root / "data" / "base_dbs").glob("*.db")][:3]
    outputs = str(env.root / "experiments" / "outputs" / env.experiment_name)
    code = f"""
errors = []
try:
    import appworld
except Exception as exc:
    errors.append(('import appworld', type(exc).__name__))
import sqlite3
for path in {dbs!r} + [{outputs!r} + '/tasks/{task}/dbs/simple_note.db', '/tmp/x.db', '/x.db']:
    try:
        con = sqlite3.connect(path)
        con.execute('create table t (x)')
        errors.append((path, 'WROTE'))
    except Exception as exc:
        errors.append((path, type(exc).__name__))
print(errors)
"""
    obs, reward, info = attack(env, task, code + COMPLETE)
    assert "WROTE" not in obs and "ModuleNotFoundError" in obs, obs
    assert reward <= noop(task)
    assert_clean_next_episode(env)


# ----------------------------------------------------------------------------- host files
def test_deleting_renaming_truncating_files_outside_fails(env, noop, tmp_path):
    task = "notecreate_3"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.chmod(tmp_path, 0o777)
    os.chmod(victim, 0o666)  # even a world-writable file on the host is out of reach
    evaluation = gt(env, task) / "evaluation.py"
    before = {p: digest(p) for p in (victim, evaluation, env.play_root / "data" / "base_dbs" / "simple_note.db")}
    code = f"""
import os, shutil
results = []
for op, fn in [('remove', lambda p: os.remove(p)), ('rename', lambda p: os.rename(p, p + '.x')),
               ('truncate', lambda p: open(p, 'w').close()), ('rmtree', lambda p: shutil.rmtree(os.path.dirname(p))),
               ('chmod', lambda p: os.chmod(p, 0))]:
    for path in {[str(p) for p in before]!r} + ['/usr/lib/python3.11/os.py', '/jail/zygote.py']:
        try:
            fn(path)
            results.append((op, path, 'DONE'))
        except Exception as exc:
            results.append((op, type(exc).__name__))
print(results)
"""
    obs, reward, info = attack(env, task, code + COMPLETE)
    assert "DONE" not in obs and ("OSError" in obs or "FileNotFoundError" in obs), obs
    assert {p: digest(p) for p in before} == before
    assert reward <= noop(task)


def test_renaming_over_the_grader_fails_and_noop_still_scores_low(env, noop):
    task = "notecreate_4"
    evaluation = gt(env, task) / "evaluation.py"
    before = digest(evaluation)
    passing = "def evaluate(*args, **kwargs):\n    pass\n"
    code = f"""
import os
for target in [{str(evaluation)!r}, '/proc/self/root' + {str(evaluation)!r}]:
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target + '.new', 'w') as f:
            f.write({passing!r})
        os.replace(target + '.new', target)
        print('REPLACED', target)
    except Exception as exc:
        print(type(exc).__name__)
"""
    obs, reward, info = attack(env, task, code + COMPLETE)
    assert "REPLACED" not in obs and digest(evaluation) == before, obs
    assert reward <= noop(task)
    env.reset(options={"task_id": task})  # from then on a no-op still scores what it scored
    assert env.step(fenced("apis.supervisor.complete_task()"))[1] == noop(task)


# ----------------------------------------------------------------------------- in-process guards
def test_switching_off_in_process_guards_changes_nothing(env, noop):
    """The old audit hook's switch lived in the worker's __main__. Here there is nothing to switch
    off that matters: clear every guard-like global of the sandbox's own __main__, then escape."""
    task = "notecreate_5"
    code = """
import sys, os
main = sys.modules['__main__']
for name in list(vars(main)):
    if name.isupper() or name in ('seccomp', '_confine', '_GUARD'):
        setattr(main, name, None)
sys.addaudithook(lambda *a: None)
results = []
for attempt in [lambda: os.posix_spawn('/usr/bin/python3', ['python3', '-c', 'pass'], {}),
                lambda: os.fork(), lambda: os.execv('/usr/bin/python3', ['python3', '-c', 'pass']),
                lambda: open('/jail/pwned', 'w')]:
    try:
        attempt()
        results.append('ESCAPED')
    except Exception as exc:
        results.append(type(exc).__name__)
print(results)
"""
    obs, reward, info = attack(env, task, code + COMPLETE)
    assert "ESCAPED" not in obs and "PermissionError" in obs, obs
    assert reward <= noop(task)


def test_spawning_a_shell_fails(env, noop, tmp_path):
    task = "notecount_2"
    marker = tmp_path / "shell_ran"
    code = f"""
import os, subprocess, pty
results = []
for attempt in [lambda: os.system('touch {marker}'),
                lambda: subprocess.run(['/bin/sh', '-c', 'touch {marker}']),
                lambda: os.posix_spawn('/bin/sh', ['sh', '-c', 'touch {marker}'], {{}}),
                lambda: os.execv('/bin/sh', ['sh', '-c', 'touch {marker}']),
                lambda: os.execv('/usr/bin/python3', ['python3', '-c', 'open("{marker}", "w")']),
                lambda: pty.spawn('/bin/sh')]:
    try:
        results.append(repr(attempt()))
    except BaseException as exc:
        results.append(type(exc).__name__)
print(results)
print(os.path.exists('/bin/sh'), os.path.exists('/usr/bin/sh'))
"""
    obs, reward, info = attack(env, task, code + COMPLETE)
    assert not marker.exists()
    assert "PermissionError" in obs and "False False" in obs, obs
    assert reward <= noop(task)


def test_network_and_listening_sockets_fail(env, noop):
    task = "notecount_3"
    env.reset(options={"task_id": task})
    worker_socket = str(env.apps.socket_path)  # the apps worker's real unix socket on the host
    code = f"""
import socket
results = []
for attempt in [lambda: socket.socket().bind(('0.0.0.0', 0)),
                lambda: socket.create_server(('127.0.0.1', 0)),
                lambda: socket.create_connection(('127.0.0.1', 8000), timeout=1),
                lambda: socket.socket(socket.AF_UNIX).connect({worker_socket!r}),
                lambda: socket.socket(socket.AF_UNIX).connect('/run/x'),
                lambda: socket.getaddrinfo('pypi.org', 443)]:
    try:
        attempt()
        results.append('OPEN')
    except Exception as exc:
        results.append(type(exc).__name__)
print(results)
"""
    obs, reward, info = attack(env, task, code + COMPLETE)
    assert "OPEN" not in obs and "PermissionError" in obs, obs
    assert reward <= noop(task)


def test_killing_processes_fails(env, noop):
    task = "notecount_4"
    env.reset(options={"task_id": task})
    apps_pid, grader_pid = env.apps.pid, env.grader.pid
    targets = [1, 2, 3, apps_pid, grader_pid or 1, os.getpid(), -1]
    code = f"""
import os, signal
results = []
for pid in {targets!r}:
    for sig in (signal.SIGKILL, signal.SIGTERM):
        try:
            os.kill(pid, sig)
            results.append((pid, 'SENT'))
        except Exception as exc:
            results.append(type(exc).__name__)
print(results)
"""
    obs, reward, info = attack(env, task, code + COMPLETE)
    assert "SENT" not in obs, obs
    assert env.apps.alive and env.apps.pid == apps_pid and env.sandbox.alive
    assert reward <= noop(task)


# ----------------------------------------------------------------------------- cross-episode
def test_patching_the_process_does_not_reach_later_episodes(env, noop):
    """Episode A patches everything it can in its own process (builtins, the api proxy, a thread
    that keeps calling apis, module table); later no-op episodes on other tasks score as before."""
    victims = ["notecreate_1", "todocomplete_2"]
    baseline = {t: noop(t) for t in victims}
    code = """
import builtins, sys, threading, time, json
sys.modules['__main__'].__dict__['_run'] = lambda *a, **k: ('patched', 1)
apis.__class__.__getattr__ = lambda self, name: None
builtins.print = lambda *a, **k: None
json.dumps = lambda *a, **k: '{"done": {"output": "patched", "chars": 1}}'
def loop():
    while True:
        time.sleep(0.01)
threading.Thread(target=loop, daemon=True).start()
"""
    env.reset(options={"task_id": "notecount_1"})
    first_pid = env.episode.pid
    env.step(fenced(code))
    for task in victims:
        env.reset(options={"task_id": task})
        assert env.episode.pid != first_pid
        assert env.step(fenced("apis.supervisor.complete_task()"))[1] == baseline[task]
    assert_clean_next_episode(env)


def test_indented_first_line_runs_exactly_what_was_screened():
    """Code with an indented first line: the env strips it once, and both the screen and the
    sandbox get the same text (no 'skips the screen, runs after dedent')."""
    from agentgym.envs.appworld.screen import screen_code

    code, _ = parse_action("```python\n    import os\nos.system('id')\n```")
    assert screen_code(code.strip()) is not None and "import of 'os'" in screen_code(code.strip())


# ----------------------------------------------------------------------------- resource bombs
@pytest.mark.parametrize("name, code, cause", [
    ("memory", "x = bytearray(8 * 1024**3)", "MemoryError"),
    ("memory_list", "x = [0] * (2 * 1024**3)", "MemoryError"),
    ("fork_bomb", "import os\nwhile True:\n    os.fork()", "PermissionError"),
    ("thread_pile", "import threading, time\n[threading.Thread(target=time.sleep, args=(60,)).start() for _ in range(10**5)]",
     "Error"),
    ("huge_exception", "raise Exception('x' * 300_000_000)", "Exception"),
])
def test_resource_bombs_fail_inside_the_episode(env, noop, name, code, cause):
    task = "notecreate_2"
    started = time.monotonic()
    obs, reward, info = attack(env, task, code + COMPLETE)
    assert time.monotonic() - started < 30
    assert len(obs) <= 4000 + 200, len(obs)
    assert cause in obs or info.get("truncated_cause", "").startswith("sandbox_"), obs[:300]
    assert reward <= noop(task)
    env.reset(options={"task_id": task})
    assert env.step(fenced("print('alive')"))[0].strip() == "alive"


@pytest.mark.parametrize("name, code", [
    ("loop_ignoring_sigalrm", "import signal\nsignal.signal(signal.SIGALRM, lambda *a: None)\nwhile True:\n    pass"),
    ("loop_swallowing_everything", "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass"),
    ("deep_recursion", "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1)\nf(0)"),
    ("long_c_call", "print(sum(range(10**12)))"),
])
def test_runaway_code_is_killed_from_outside(env, noop, name, code):
    task = "notecount_1"
    env.reset(options={"task_id": task})
    pid = env.episode.pid
    started = time.monotonic()
    obs, reward, terminated, truncated, info = env.step(fenced(code + COMPLETE))
    assert time.monotonic() - started < env.http_timeout + 5
    if truncated:  # killed from outside (or died of a limit): ungraded, reward 0
        assert info["truncated_cause"] in ("sandbox_timeout", "sandbox_crashed") and reward == 0.0
    else:  # the in-process timeout or RecursionError got it first
        assert "timed out" in obs or "RecursionError" in obs, obs
        assert reward <= noop(task)
    env.reset(options={"task_id": task})
    assert env.episode.pid != pid
    assert env.step(fenced("print('alive')"))[0].strip() == "alive"
