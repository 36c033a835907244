"""Hostile model text: every env step is bounded (parsers, backends, snapshots) and has a deadline.

Each case here once stalled a step for seconds to minutes or raised out of ``env.step`` (issue 14):
letters without spaces (quadratic call-shape regex), deep JSON in tool-call arguments
(RecursionError), unclosed tags (quadratic tag regexes), and mkdir/cd/cp replies that make BFCL
directories share contents (an exponential state snapshot). The time bounds are loose (2 s, where
the fixed code takes milliseconds) so that they never flake on a busy machine.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import gymnasium as gym
import pytest
from hypothesis import HealthCheck, given, settings

import agentgym  # noqa: F401  (registers the envs)
from agentgym import AgentEnv, EnvReply, EnvReset, FeedbackKind, Message
from agentgym.deadline import DEFAULT_STEP_TIMEOUT_S, StepTimeout, StepWatchdog
from agentgym.envs.alfworld.games import rebuild_trial
from agentgym.envs.bfcl.backends import MAX_FS_ENTRIES, BackendSet, _plain
from agentgym.envs.bfcl.data import get_entry
from agentgym.envs.webshop.env import WebShopEnv
from agentgym.envspec import EnvDefaults
from agentgym.parsing import MAX_ARGUMENT_DEPTH, MAX_CALLS, AutoToolCallParser
from agentgym.testing.strategies import hostile_texts
from agentgym.types import ToolCall

FAST = 2.0  # seconds: loose bound for a hostile step (measured: milliseconds)
BFCL_TASK = "multi_turn_base_2"  # a GorillaFileSystem entry where cp is allowed

LETTERS = "a" * 60_000  # before: ~25 s per BFCL parse
LETTERS_CALL = "a" * 60_000 + "("  # attempted call: must be a parse error
DEEP_ARGS_STRING = json.dumps({"name": "ls", "arguments": "[" * 1000 + "]" * 1000})  # before: RecursionError
DEEP_ARGS_OBJECT = '{"name": "act", "arguments": {"command": "look", "x": ' + "[" * 1000 + "]" * 1000 + "}}"
DEEP_ARGS_900 = '{"name": "ls", "arguments": {"a": ' + "[" * 900 + "]" * 900 + "}}"  # decodes; too deep
UNCLOSED_ACTION = "<action>" * 12_500  # before: ~5 s in ALFWorld and WebShop
UNCLOSED_TOOL_CALL = "<tool_call>" * 9_000  # before: ~4 s in WebShop
UNCLOSED_FENCE = "```" + "a" * 90_000
BINOP_CHAIN = "ls(a=" + "1+" * 900 + "1)"  # ast.unparse of it in an error message recursed too deep
NO_CALL = {"letters", "unclosed_action", "unclosed_fence"}  # prose to a parser: no call attempted


def sharing_reply(levels: int, copies: int = 3) -> str:
    """mkdir/cd down ``levels`` directories, then cd back up copying each level ``copies`` times:
    cp copies a directory's contents shallowly, so the paths multiply by (copies + 1) per level."""
    calls = []
    for i in range(levels):
        calls += [f"mkdir(dir_name='d{i}')", f"cd(folder='d{i}')"]
    calls.append("touch(file_name='f')")
    for i in reversed(range(levels)):
        calls += ["cd(folder='..')"] + [f"cp(source='d{i}', destination='e{i}{c}')" for c in range(copies)]
    return "[" + ", ".join(calls) + "]"


def timed_step(env, text):
    started = time.perf_counter()
    result = env.step(text)
    return (time.perf_counter() - started, *result)


def errors(info):
    return [f for f in info["feedback"] if f.kind is FeedbackKind.ERROR]


# ============================================================== the deadline (watchdog)
class SlowEnv(AgentEnv):
    """A user env whose step overruns on request: sleeps, spins, swallows the timeout, or raises."""

    defaults = EnvDefaults(max_steps=5)

    def _reset(self, options):
        return EnvReset(messages=[Message(role="user", content="Say something.")], task={"id": "slow"})

    def _step(self, action):
        if action == "sleep":
            time.sleep(30)
        elif action == "spin":
            while True:
                pass
        elif action == "swallow":  # catches the first StepTimeout, then keeps spinning
            try:
                while True:
                    pass
            except StepTimeout:
                pass
            while True:
                pass
        elif action == "catch-and-return":
            try:
                while True:
                    pass
            except StepTimeout:
                return EnvReply(messages=[Message(role="user", content="I ignored the deadline.")])
        elif action == "raise":
            raise KeyError("backend bug")
        elif action == "short-sleep":
            time.sleep(0.3)
        return EnvReply(messages=[Message(role="user", content=f"ok: {action}")])


def _assert_timed_out(env, action, limit=0.3, bound=FAST):
    env.reset()
    elapsed, obs, reward, terminated, truncated, info = timed_step(env, action)
    assert elapsed < bound
    assert truncated and not terminated and reward == 0.0
    assert info["truncated_by"] == "step_timeout"
    (error,) = errors(info)
    assert error.payload["type"] == "step_timeout" and error.payload["limit_s"] == limit
    assert f"step_timeout_s={limit:g} s" in obs and "truncated" in obs
    with pytest.raises(RuntimeError, match="call reset"):
        env.step("again")
    # the env is usable for the next episode
    env.reset()
    assert env.step("fine")[0] == "ok: fine"
    return error


@pytest.mark.parametrize("action", ["sleep", "spin", "swallow", "catch-and-return"])
def test_overrunning_step_is_truncated_on_the_main_thread(action):
    env = SlowEnv(step_timeout_s=0.3)
    error = _assert_timed_out(env, action, bound=FAST + 1.0)
    if action in ("sleep", "spin"):
        assert "in _step" in error.payload["where"]  # names where it was interrupted
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL  # handler restored
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.parametrize("action", ["spin", "swallow"])
def test_overrunning_step_is_truncated_on_a_worker_thread(action):
    env = SlowEnv(step_timeout_s=0.3)
    outcome = {}

    def run():
        try:
            outcome["error"] = _assert_timed_out(env, action, bound=FAST + 1.0)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["failure"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert "failure" not in outcome, outcome.get("failure")
    assert outcome["error"].payload["type"] == "step_timeout"


def test_watchdog_thread_is_used_when_sigalrm_is_taken():
    seen = []
    previous = signal.signal(signal.SIGALRM, lambda *a: seen.append("theirs"))
    try:
        env = SlowEnv(step_timeout_s=0.3)
        _assert_timed_out(env, "spin")
        with StepWatchdog(1.0) as dog:
            assert dog.mode == "thread"
        assert not dog.fired and seen == []
        assert signal.getsignal(signal.SIGALRM) is not signal.SIG_DFL  # theirs stays installed
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_exception_in_step_is_a_truncated_episode_with_its_cause():
    env = SlowEnv()
    env.reset()
    obs, reward, terminated, truncated, info = env.step("raise")
    assert truncated and not terminated and info["truncated_by"] == "step_error"
    (error,) = errors(info)
    assert error.payload["type"] == "step_error" and error.payload["exception"] == "KeyError"
    assert "KeyError: 'backend bug'" in obs and "_step" in error.payload["where"]
    env.reset()
    assert env.step("fine")[0] == "ok: fine"


def test_step_timeout_default_none_and_validation():
    assert SlowEnv().step_timeout_s == DEFAULT_STEP_TIMEOUT_S == 60.0
    env = SlowEnv(step_timeout_s=None)
    env.reset()
    assert env.step("short-sleep")[0] == "ok: short-sleep"  # no deadline at all
    env.step_timeout_s = 0.1  # may be changed on a live env
    assert env.step("short-sleep")[4]["truncated_by"] == "step_timeout"
    for bad in (0, -1, float("inf"), True, "5"):
        with pytest.raises(ValueError, match="step_timeout_s must be a positive number of seconds or None"):
            SlowEnv(step_timeout_s=bad)
    assert gym.make("agentgym/Echo-v0", step_timeout_s=5).unwrapped.step_timeout_s == 5.0


def test_builtin_envs_take_step_timeout_s(shared_data):
    assert gym.make("agentgym/BFCLMultiTurn-v0", split="all", step_timeout_s=7).unwrapped.step_timeout_s == 7.0
    assert gym.make("agentgym/BFCLSingleTurn-v0", step_timeout_s=None).unwrapped.step_timeout_s is None
    assert WebShopEnv(shared_data / "webshop", step_timeout_s=3).step_timeout_s == 3.0
    assert gym.make("agentgym/ALFWorld-v0", games="x", step_timeout_s=4).unwrapped.step_timeout_s == 4.0


def test_step_timeout_interrupts_a_real_bfcl_step():
    """A real env with a tight deadline: a slow step becomes a truncated episode, the next works."""
    env = gym.make("agentgym/BFCLMultiTurn-v0", split="all", step_timeout_s=0.05).unwrapped
    env.reset(options={"task_id": BFCL_TASK})
    original = env.backends.call

    def slow_call(call):  # the real backend, slowed down
        deadline = time.perf_counter() + 5
        while time.perf_counter() < deadline:
            pass
        return original(call)

    env.backends.call = slow_call
    elapsed, obs, reward, terminated, truncated, info = timed_step(env, "[ls()]")
    assert elapsed < FAST and truncated and info["truncated_by"] == "step_timeout"
    env.step_timeout_s = 10
    env.reset(options={"task_id": BFCL_TASK})
    obs, *_ = env.step("[pwd()]")
    assert "current_working_directory" in obs


# ============================================================== hostile inputs per env
@pytest.fixture(scope="module")
def alfworld_env(shared_data, tmp_path_factory):
    game = rebuild_trial(shared_data / "alfworld" / "debug-trial", tmp_path_factory.mktemp("alfworld-hostile"))
    env = gym.make("agentgym/ALFWorld-v0", games=str(game.parent.parent)).unwrapped
    yield env
    env.close()


@pytest.fixture(scope="module")
def webshop_env(shared_data):
    return WebShopEnv(shared_data / "webshop")


@pytest.fixture(scope="module")
def bfcl_env():
    env = gym.make("agentgym/BFCLMultiTurn-v0", split="all").unwrapped
    yield env
    env.close()


@pytest.fixture(scope="module")
def bfcl_single_env():
    return gym.make("agentgym/BFCLSingleTurn-v0", category="simple_python").unwrapped


HOSTILE = {"letters": LETTERS, "letters_call": LETTERS_CALL, "deep_args_string": DEEP_ARGS_STRING,
           "deep_args_object": DEEP_ARGS_OBJECT, "deep_args_900": DEEP_ARGS_900,
           "unclosed_action": UNCLOSED_ACTION, "unclosed_tool_call": UNCLOSED_TOOL_CALL,
           "unclosed_fence": UNCLOSED_FENCE, "binop_chain": BINOP_CHAIN}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_bfcl_multi_turn_hostile_text_is_fast_and_never_raises(bfcl_env, name):
    bfcl_env.reset(options={"task_id": BFCL_TASK})
    elapsed, obs, reward, terminated, truncated, info = timed_step(bfcl_env, HOSTILE[name])
    assert elapsed < FAST and "truncated_by" not in info
    if name in NO_CALL:  # no call attempted: the official rule ends the turn
        assert info["turn_end_reason"] == "no_call"
    else:  # an attempted call that does not decode: a parse error naming the problem
        assert info["turn_end_reason"] == "parse_error"
        assert [e.payload["type"] for e in errors(info)][:1] == ["parse_error"]


def test_bfcl_parse_errors_say_what_was_received_and_the_limit():
    parse = AutoToolCallParser()
    (problem,) = parse(DEEP_ARGS_900).errors
    assert f"more than {MAX_ARGUMENT_DEPTH + 3} levels deep" in problem
    (problem,) = parse(DEEP_ARGS_STRING).errors
    assert "ls: arguments" in problem and "nesting too deep" in problem
    problem = parse("f(a=" + "[" * 40 + "]" * 40 + ")").errors[0]
    assert f"more than {MAX_ARGUMENT_DEPTH} levels deep" in problem
    assert "bits" in parse("f(a=0x" + "f" * 5000 + ")").errors[0]
    assert "<BinOp of" in parse(BINOP_CHAIN).errors[0]
    many = parse("[" + ", ".join(["ls()"] * (MAX_CALLS + 5)) + "]")
    assert len(many.calls) == MAX_CALLS and f"limit is {MAX_CALLS} per reply" in many.errors[0]
    noisy = parse("[" + ", ".join(["x"] * 500) + "]")
    assert len(noisy.errors) <= 22 and noisy.errors[-1].startswith("... and ")


@pytest.mark.parametrize("name", list(HOSTILE))
def test_bfcl_single_turn_hostile_text_is_fast_and_never_raises(bfcl_single_env, name):
    bfcl_single_env.reset(options={"task_id": "simple_python_0"})
    elapsed, obs, reward, terminated, truncated, info = timed_step(bfcl_single_env, HOSTILE[name])
    assert elapsed < FAST and terminated and reward == 0.0 and "truncated_by" not in info
    if name not in NO_CALL:
        assert errors(info) and errors(info)[0].payload["type"] == "parse_error"


@pytest.mark.parametrize("name", list(HOSTILE))
def test_alfworld_hostile_text_is_fast_and_never_raises(alfworld_env, name):
    alfworld_env.reset(seed=0)
    elapsed, obs, reward, terminated, truncated, info = timed_step(alfworld_env, HOSTILE[name])
    assert elapsed < FAST and not terminated and "truncated_by" not in info
    assert obs == "Nothing happens." and errors(info)[0].payload["type"] == "inadmissible_command"
    assert alfworld_env.step("look")[0] != "Nothing happens."  # the episode goes on


@pytest.mark.parametrize("name", list(HOSTILE) + ["unclosed_search"])
def test_webshop_hostile_text_is_fast_and_never_raises(webshop_env, name):
    text = HOSTILE.get(name, "<action>" * 12_500 + "search[x")
    webshop_env.reset(seed=0)
    elapsed, obs, reward, terminated, truncated, info = timed_step(webshop_env, text)
    assert elapsed < FAST and not terminated and "truncated_by" not in info
    assert obs.startswith("Invalid action: ") and errors(info)[0].payload["type"] == "malformed_action"
    assert webshop_env.step("search[red shoes]")[0].count("[") > 1  # the episode goes on


@pytest.mark.parametrize("name", list(HOSTILE))
def test_echo_hostile_text_is_fast_and_never_raises(name):
    env = gym.make("agentgym/Echo-v0").unwrapped
    env.reset(options={"word": "apple"})
    elapsed, obs, reward, terminated, truncated, info = timed_step(env, HOSTILE[name])
    assert elapsed < FAST and obs.startswith("Wrong: you said") and errors(info)


# ============================================================== BFCL's file system: shared directories
def test_bfcl_shared_directories_snapshot_and_walks_are_bounded(bfcl_env):
    """11 levels x 3 copies: 4**11 = 4 M paths. Before: the step's state snapshot took > 60 s."""
    bfcl_env.reset(options={"task_id": BFCL_TASK})
    elapsed, obs, reward, terminated, truncated, info = timed_step(bfcl_env, sharing_reply(11))
    assert elapsed < FAST and not (terminated or truncated)
    assert "copied to 'e00'" in obs and not errors(info)
    diff = [f for f in info["feedback"] if f.kind is FeedbackKind.STATE_DIFF]
    assert diff and "$shared" in json.dumps(bfcl_env._state)  # shared directories written once
    # the recursive walks are refused before they run, with the reason and the limit
    for call in ("find()", "find(path='d0')", "du(human_readable=True)"):
        elapsed, obs, *_ , info = timed_step(bfcl_env, f"[{call}]")
        assert elapsed < FAST and f"more than {MAX_FS_ENTRIES} entries" in obs
        assert errors(info)[0].payload["type"] == "execution_error"
    # plain calls still work, and the episode ends with the official verdict, quickly
    assert "current_working_directory" in bfcl_env.step("[pwd()]")[0]
    started = time.perf_counter()
    terminated = False
    while not terminated:
        _, reward, terminated, truncated, info = bfcl_env.step("Done.")
        assert not truncated
    assert time.perf_counter() - started < FAST * 3 and reward == 0.0


def test_bfcl_deep_directories_do_not_recurse_out_of_step(bfcl_env):
    bfcl_env.reset(options={"task_id": BFCL_TASK})
    level = "[" + ", ".join(["mkdir(dir_name='a')", "cd(folder='a')"] * (MAX_CALLS // 2)) + "]"
    started = time.perf_counter()
    for _ in range(9):  # 1152 directories deep: past the interpreter's recursion limit
        obs, reward, terminated, truncated, info = bfcl_env.step(level)
        assert not (terminated or truncated) and "truncated_by" not in info
    assert "snapshot limit: deeper than" in json.dumps(bfcl_env._state)  # cut, not a RecursionError
    bfcl_env.step("[" + ", ".join(["cd(folder='..')"] * (MAX_CALLS - 1)) + "]")
    obs, *_, info = bfcl_env.step("[find(), du()]")  # walks 896 levels deep: the backend's own recursion
    assert time.perf_counter() - started < FAST * 5 and "truncated_by" not in info
    assert "matches" in obs or "Error during execution" in obs


def test_snapshot_is_exact_without_sharing_and_bounded_with_it():
    backends = BackendSet(get_entry(BFCL_TASK))
    fs = backends.instances["GorillaFileSystem"]
    before = _plain(fs)
    assert "$shared" not in json.dumps(before) and before["root"]["contents"]
    parse = AutoToolCallParser()
    for call in parse(sharing_reply(14)).calls:  # 4**14 = 268 M paths
        backends.call(call)
    started = time.perf_counter()
    after = backends.snapshot(["GorillaFileSystem"])
    assert time.perf_counter() - started < FAST
    assert len(json.dumps(after)) < 200_000
    loop = {"a": [1]}
    loop["a"].append(loop)
    assert _plain(loop) == {"a": [1, "<cycle>"]}
    assert backends.call(ToolCall(name="find", arguments={})).error


# ============================================================== property: every env, random and adversarial text
@pytest.fixture(scope="module")
def all_envs(bfcl_env, bfcl_single_env, alfworld_env, webshop_env):
    envs = {"echo": (gym.make("agentgym/Echo-v0").unwrapped, {"word": "apple"}),
            "bfcl_multi_turn": (bfcl_env, {"task_id": BFCL_TASK}),
            "bfcl_single_turn": (bfcl_single_env, {"task_id": "simple_python_0"}),
            "alfworld": (alfworld_env, {}),
            "webshop": (webshop_env, {"goal_index": 0})}
    for env, options in envs.values():
        env.step_timeout_s = 10.0
        env.reset(seed=0, options=options)
    return envs


@pytest.mark.parametrize("name", ["echo", "bfcl_multi_turn", "bfcl_single_turn", "alfworld", "webshop"])
def test_every_env_step_is_bounded_on_hostile_text(all_envs, name):
    env, options = all_envs[name]

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(hostile_texts())
    def check(text):
        if env._done:
            env.reset(seed=0, options=options)
        elapsed, obs, reward, terminated, truncated, info = timed_step(env, text)
        assert elapsed < FAST, f"{elapsed:.2f}s on {text[:60]!r}... ({len(text)} chars)"
        assert info.get("truncated_by") not in ("step_timeout", "step_error"), info.get("step_error")
        assert isinstance(obs, str) and isinstance(reward, float)

    check()
