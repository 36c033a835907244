"""AppWorld episodes start from nothing, and the worker processes answer only their env.

Real bubblewrap sandbox, real AppWorld workers, the static screen switched off (``screen=False``):

- an episode that tries to write everywhere in its sandbox (files, folders, 2,000-byte symlinks,
  FIFOs in /dev, /dev/shm, /, ...; System V shared memory; a pty held open) leaves the next episode
  a filesystem identical to a fresh one's, and host shared memory where it was (50,000 symlinks
  once took /dev/shm from 10 to 205 MB until ``env.close()``);
- the apps worker and the grader run as an unprivileged user under a seccomp filter, on a unix
  socket in a private folder, with no network port; a request without the env's token is refused
  and gets no passwords, no save and no solution; names with path components are refused.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from agentgym.envs.appworld.env import AppWorldEnv
from agentgym.envs.appworld.sandbox import sandbox_problem
from agentgym.envs.appworld.workers import WORKER_USER, AppWorldPaths, unix_request

PATHS = AppWorldPaths.default()
PROBLEM = PATHS.missing() or sandbox_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM))
TASK = "notecreate_1"

# A listing of the sandbox's filesystem as agent code sees it: every path with its type, size and
# link target (/usr below depth 2 is the host's read-only /usr, pruned to keep it quick).
SNAPSHOT = r"""
import os, stat
seen = []
for top, dirs, files in os.walk('/'):
    if top.startswith('/usr/') and top.count('/') >= 2:
        dirs[:] = []
    for name in sorted(dirs + files):
        path = os.path.join(top, name)
        st = os.lstat(path)
        target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ''
        seen.append((path, stat.S_IFMT(st.st_mode), st.st_size if stat.S_ISREG(st.st_mode) else 0, target))
print(len(seen), hash(tuple(sorted(seen))))
print(sorted(p for p, *_ in seen if p.startswith(('/dev', '/tmp', '/jail', '/x'))))
"""

# Write everything, everywhere: count what sticks. The pty and the shm segment are held open when
# the episode ends.
FILL = r"""
import ctypes, os
made = []
targets = ['/', '/dev', '/dev/shm', '/dev/pts', '/jail', '/usr/bin', '/usr/local', '/usr', '/usr/lib']
for d in targets:
    for kind, make in [('file', lambda p: open(p, 'w').close()), ('dir', os.mkdir),
                       ('link', lambda p: os.symlink('x' * 2000, p)), ('fifo', os.mkfifo)]:
        try:
            make(os.path.join(d, 'episode-a-' + kind))
            made.append((d, kind))
        except OSError:
            pass
links = 0
for i in range(50_000):
    try:
        os.symlink('y' * 2000, f'/dev/shm/l{i}')
        links += 1
    except OSError:
        pass
libc = ctypes.CDLL(None, use_errno=True)
shm = libc.shmget(0, 64 << 20, 0o1600)
held = []
try:
    held.append(os.open('/dev/ptmx', os.O_RDWR | os.O_NOCTTY))
except OSError:
    pass
print('MADE', made, 'LINKS', links, 'SHM', shm)
"""


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def shmem_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Shmem:"):
            return int(line.split()[1])
    raise AssertionError("no Shmem line in /proc/meminfo")


@pytest.fixture(scope="module")
def env():
    environment = AppWorldEnv(split="train", screen=False, execution_timeout=20, http_margin=10)
    yield environment
    environment.close()


def run(env: AppWorldEnv, code: str) -> str:
    env.reset(options={"task_id": TASK})
    obs, *_ = env.step(fenced(code))
    return obs


# ----------------------------------------------------------------------------- episodes
def test_consecutive_episodes_share_no_file_and_host_shared_memory_returns(env):
    fresh = run(env, SNAPSHOT)
    shm_before = shmem_kib()
    filled = run(env, FILL)
    assert "MADE [] LINKS 0 SHM -1" in filled, filled  # nothing writable, no System V segment
    after = run(env, SNAPSHOT)  # the next episode on the same env
    assert after == fresh, (fresh, after)
    assert "episode-a" not in after and "/dev/pts/0" not in after
    # host shared memory where it was (the old /dev tmpfs grew ~195 MB here); other jobs on the
    # machine may move it a little
    assert shmem_kib() - shm_before < 50 * 1024, (shm_before, shmem_kib())


def test_two_episodes_cannot_pass_a_value_through_the_sandbox(env):
    """Every way to leave a note for the next episode fails (files, env vars, the template)."""
    note = """
import os, sys
done = []
for path in ['/dev/shm/note', '/dev/note', '/note', '/jail/note']:
    try:
        with open(path, 'w') as f:
            f.write('secret')
        done.append(path)
    except OSError:
        pass
os.environ['NOTE'] = 'secret'
sys.modules['__main__'].NOTE = 'secret'
print('LEFT', done)
"""
    assert "LEFT []" in run(env, note)
    read = """
import os, sys
found = [p for p in ['/dev/shm/note', '/dev/note', '/note', '/jail/note'] if os.path.exists(p)]
print('FOUND', found, os.environ.get('NOTE'), getattr(sys.modules['__main__'], 'NOTE', None))
"""
    assert "FOUND [] None None" in run(env, read)


# ----------------------------------------------------------------------------- workers
def test_workers_run_unprivileged_under_seccomp_with_no_network_port(env):
    env.reset(options={"task_id": TASK})
    env.grader.ensure()
    want_uid = pwd.getpwnam(WORKER_USER).pw_uid if os.geteuid() == 0 else os.geteuid()
    for worker in (env.apps, env.grader):
        proc = psutil.Process(worker.pid)
        assert set(proc.uids()) == {want_uid} and want_uid != 0
        assert proc.net_connections(kind="inet") == []  # no TCP/UDP socket, listening or not
        status = Path(f"/proc/{worker.pid}/status").read_text()
        assert "\nSeccomp:\t2" in status and "\nNoNewPrivs:\t1" in status, status
        assert stat.S_IMODE(worker.folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(worker.socket_path.stat().st_mode) == 0o600
        assert worker.folder.stat().st_uid == os.geteuid()  # the env's folder, not the worker's


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another local user")
def test_another_local_user_cannot_reach_the_workers(env):
    env.reset(options={"task_id": TASK})
    env.grader.ensure()
    probe = ("import socket, sys\nfor path in sys.argv[1:]:\n    s = socket.socket(socket.AF_UNIX)\n"
             "    try:\n        s.connect(path); print('CONNECTED')\n"
             "    except OSError as exc:\n        print(type(exc).__name__)\n")
    for uid in (65534, pwd.getpwnam(WORKER_USER).pw_uid):  # nobody, and the workers' own user
        result = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                                 sys.executable, "-c", probe, str(env.apps.socket_path),
                                 str(env.grader.socket_path)], capture_output=True, text=True, timeout=30)
        assert result.stdout.split() == ["PermissionError", "PermissionError"], result


def test_requests_without_the_token_are_refused(env):
    env.reset(options={"task_id": TASK})
    env.grader.ensure()
    api = {"app": "supervisor", "api": "show_account_passwords", "args": {}}
    passwords = env.apps.call("/api", api, timeout=30)["ok"]  # the env itself, with its token
    assert passwords and all(p["password"] for p in passwords)
    outputs = env.root / "experiments" / "outputs" / env.experiment_name
    before = sorted(str(p) for p in outputs.rglob("*"))
    attempts = [(env.apps, "POST", "/api", api), (env.apps, "POST", "/save", {}),
                (env.apps, "POST", "/open", {"task_id": TASK, "experiment_name": "stolen"}),
                (env.apps, "GET", "/health", None),
                (env.grader, "POST", "/solution", {"task_id": TASK}),
                (env.grader, "POST", "/evaluate", {"task_id": TASK, "experiment_name": env.experiment_name})]
    for token in (None, "0" * 64, env.apps.token[:-1]):
        for worker, method, path, payload in attempts:
            status, body = unix_request(worker.socket_path, method, path, payload, token=token, timeout=30)
            assert status == 401 and set(body) == {"error"}, (path, status, body)
            assert not any(p["password"] in str(body) for p in passwords)
    assert sorted(str(p) for p in outputs.rglob("*")) == before  # no /save, no /open happened
    assert not (env.root / "experiments" / "outputs" / "stolen").exists()
    # with the token the grader has no /solution route at all; the workers still serve the env
    assert unix_request(env.grader.socket_path, "POST", "/solution", {"task_id": TASK},
                        token=env.grader.token, timeout=30)[0] == 404
    assert env.step(fenced("apis.supervisor.complete_task()"))[2]


def test_names_with_path_components_are_refused(env, tmp_path):
    env.reset(options={"task_id": TASK})
    env.grader.ensure()
    outside = PATHS.base / "tasks"  # where experiment_name="../../.." would have put AppWorld's output
    assert not outside.exists()
    for field, value in [("experiment_name", "../../.."), ("experiment_name", "a/b"), ("experiment_name", ".."),
                         ("task_id", f"../tasks/{TASK}"), ("task_id", "/etc")]:
        request = {"task_id": TASK, "experiment_name": env.experiment_name, field: value}
        for worker, path in ((env.apps, "/open"), (env.grader, "/evaluate")):
            status, body = unix_request(worker.socket_path, "POST", path, request, token=worker.token, timeout=60)
            assert status == 500 and f"{field} must be letters, digits" in body["error"], (path, body)
            assert repr(value) in body["error"]
    assert not outside.exists() and not (PATHS.base / "etc").exists()
    with pytest.raises(ValueError, match="unknown AppWorld task_id"):
        env.reset(options={"task_id": f"../tasks/{TASK}"})
    env.reset(options={"task_id": TASK})  # the workers are still up and serve the env
    assert env.step(fenced("apis.supervisor.complete_task()"))[2]


@pytest.mark.skipif(os.geteuid() != 0, reason="the workers run as another user only when agentgym runs as root")
def test_a_root_the_workers_cannot_read_is_refused_with_the_cause(tmp_path):
    """pytest's tmp_path is private to root: the env says which path the workers' user cannot read
    before starting anything (not AppWorld's 'specs file doesn't exist' from inside the worker)."""
    official = tmp_path / "appworld_root"
    (official / "data" / "tasks").mkdir(parents=True)
    (official / "data" / "tasks" / TASK).symlink_to(PATHS.root / "data" / "tasks" / TASK)
    (official / "data" / "datasets").mkdir()
    (official / "data" / "datasets" / "dev.txt").write_text(TASK + "\n")
    with pytest.raises(PermissionError, match=f"user {WORKER_USER}, which cannot read .*{TASK}"):
        AppWorldEnv(root=official, split="dev")
