"""``agentgym serve`` on 127.0.0.1, driven by openenv-core's own clients: full BFCL multi-turn and
WebShop episodes equal the in-process env step for step (reward, text, typed feedback records,
messages), 8 concurrent sessions share no state, malformed requests get error responses while the
server keeps serving, and SIGTERM / SIGINT shut it down cleanly."""

from __future__ import annotations

import json
import signal
import threading

import gymnasium as gym
import pytest

pytest.importorskip("openenv.core", reason="needs openenv-core (setup.sh installs it)")

from openenv.core.generic_client import GenericEnvClient  # noqa: E402
from openenv.core.mcp_client import MCPToolClient  # noqa: E402

import agentgym  # noqa: E402,F401
from agentgym.envs.bfcl.data import get_entry  # noqa: E402
from agentgym.integrations.openenv_server import ToolCallSpec, render_tool_calls  # noqa: E402
from agentgym.parsing import PythonCallParser  # noqa: E402
from agentgym.types import Feedback, FeedbackKind, Message  # noqa: E402

from tests.integrations.conftest import Served  # noqa: E402

BFCL = "agentgym/BFCLMultiTurn-v0"
WEBSHOP = "agentgym/WebShop-v0"
TASK = "multi_turn_base_0"


@pytest.fixture(scope="module")
def bfcl_server():
    server = Served(BFCL, "--env-kwargs", '{"split": "all"}', "--max-sessions", "8")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def webshop_server(shared_data):
    server = Served(WEBSHOP, env={"WEBSHOP_DATA": str(shared_data / "webshop")})
    yield server
    server.stop()


def client(url: str):
    return GenericEnvClient(base_url=url, message_timeout_s=30).sync()


def as_text(action: dict) -> str:
    """The text the server gives the env for a wire action (call_tool -> <tool_call> JSON)."""
    if action["type"] == "text":
        return action["text"]
    calls = action.get("tool_calls") or [{"name": action["tool_name"], "arguments": action.get("arguments", {})}]
    return render_tool_calls([ToolCallSpec(**c) for c in calls])


def play_both(url: str, env_id: str, env_kwargs: dict, reset: dict, actions: list[dict]):
    """The same reset and actions in-process and through the server; both step lists."""
    local = gym.make(env_id, **env_kwargs)
    try:
        obs, info = local.reset(**reset)
        local_steps = [(obs, None, info)]
        for action in actions:
            obs, reward, terminated, truncated, info = local.step(as_text(action))
            local_steps.append((obs, (reward, terminated, truncated), info))
    finally:
        local.close()
    with client(url) as remote:
        first = remote.reset(**reset)
        remote_steps = [first] + [remote.step(a) for a in actions]
    return local_steps, remote_steps


def assert_same_episode(local_steps, remote_steps):
    (obs0, _, info0), first = local_steps[0], remote_steps[0]
    assert first.observation["text"] == obs0 and first.done is False
    assert [Message.model_validate(m) for m in first.observation["messages"]] == info0["messages"]
    assert first.observation["tool_schemas"] == json.loads(json.dumps(info0["tools"]))
    assert first.observation["task"] == info0["task"]
    for (obs, (reward, terminated, truncated), info), result in zip(local_steps[1:], remote_steps[1:], strict=True):
        o = result.observation
        assert (o["text"], result.reward, o["terminated"], o["truncated"]) == (obs, reward, terminated, truncated)
        assert result.done == (terminated or truncated)
        records = [Feedback.model_validate(f) for f in o["feedback"]]  # typed records round-trip
        assert records == info["feedback"] and all(isinstance(f.kind, FeedbackKind) for f in records)
        assert [Message.model_validate(m) for m in o["messages"]] == info["new_messages"]
        assert Message.model_validate(o["assistant"]) == info["messages"][-len(info["new_messages"]) - 1]


def bfcl_actions(turns: list[list[str]], *, tool_style_turns: int = 1) -> list[dict]:
    """Each turn's calls in one step, then a plain reply that ends the turn; the first turns as
    MCP-style call_tool actions, the others as raw text."""
    actions = []
    for index, calls in enumerate(turns):
        if calls and index < tool_style_turns:
            parsed = PythonCallParser()("[" + ", ".join(calls) + "]")
            assert not parsed.errors
            actions.append({"type": "call_tool", "tool_calls": [{"name": c.name, "arguments": c.arguments}
                                                                 for c in parsed.calls]})
        elif calls:
            actions.append({"type": "text", "text": "[" + ", ".join(calls) + "]"})
        actions.append({"type": "text", "text": "Done."})
    return actions


# ------------------------------------------------------------------ full episodes
def test_bfcl_episode_through_the_server_equals_the_in_process_env(bfcl_server):
    turns = get_entry(TASK).ground_truth
    actions = bfcl_actions(turns)
    local, remote = play_both(bfcl_server.url, BFCL, {"split": "all"}, {"seed": 0, "options": {"task_id": TASK}},
                              actions)
    assert_same_episode(local, remote)
    last = remote[-1]
    assert last.reward == 1.0 and last.done and last.observation["terminated"]
    assert last.observation["info"]["verdict"]["valid"] is True
    kinds = {f["kind"] for r in remote[1:] for f in r.observation["feedback"]}
    assert {"observation", "state_diff", "reference", "outcome"} <= kinds

    # a wrong episode on the same task: the same 0.0 from both
    wrong = [{"type": "call_tool", "tool_name": "ls", "arguments": {}}] + [{"type": "text", "text": "Done."}] * len(turns)
    local, remote = play_both(bfcl_server.url, BFCL, {"split": "all"}, {"seed": 0, "options": {"task_id": TASK}}, wrong)
    assert_same_episode(local, remote)
    assert remote[-1].reward == 0.0 and remote[-1].done and remote[1].observation["tool_name"] == "ls"


def test_bfcl_tools_through_openenv_mcp_tool_client(bfcl_server):
    with MCPToolClient(base_url=bfcl_server.url).sync() as env:
        env.reset(seed=0, options={"task_id": TASK})
        tools = env.list_tools()
        local = gym.make(BFCL, split="all")
        _, info = local.reset(seed=0, options={"task_id": TASK})
        assert [(t.name, t.input_schema) for t in tools] == [
            (s["function"]["name"], s["function"]["parameters"]) for s in info["tools"]]
        assert env.call_tool("cd", folder="document") == local.step(as_text(
            {"type": "call_tool", "tool_name": "cd", "arguments": {"folder": "document"}}))[0]
        local.close()


def test_bfcl_tools_through_mcp_json_rpc_on_the_session_websocket(bfcl_server):
    from websockets.sync.client import connect

    local = gym.make(BFCL, split="all")
    _, info = local.reset(seed=0, options={"task_id": TASK})
    with connect(bfcl_server.url.replace("http://", "ws://") + "/ws") as ws:
        def ask(message: dict) -> dict:
            ws.send(json.dumps(message))
            return json.loads(ws.recv(timeout=30))

        assert ask({"type": "reset", "data": {"seed": 0, "options": {"task_id": TASK}}})["type"] == "observation"
        listed = ask({"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/list", "params": {}, "id": 1}})
        assert [t["name"] for t in listed["data"]["result"]["tools"]] == [s["function"]["name"] for s in info["tools"]]
        called = ask({"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/call", "id": 2,
                                              "params": {"name": "cd", "arguments": {"folder": "document"}}}})
        result = called["data"]["result"]
        obs, reward, terminated, truncated, step_info = local.step(as_text(
            {"type": "call_tool", "tool_name": "cd", "arguments": {"folder": "document"}}))
        assert (result["text"], result["reward"], result["done"]) == (obs, reward, False)
        assert [Feedback.model_validate(f) for f in result["feedback"]] == step_info["feedback"]
        bad = ask({"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/call", "id": 3,
                                           "params": {"name": "no_such_tool", "arguments": {}}}})
        assert "error" in bad["data"] and "no_such_tool" in bad["data"]["error"]["message"]
        assert ask({"type": "state"})["data"]["step_count"] == 1  # the session goes on
    local.close()


def test_webshop_episode_through_the_server_equals_the_in_process_env(webshop_server, shared_data, monkeypatch):
    monkeypatch.setenv("WEBSHOP_DATA", str(shared_data / "webshop"))
    reset = {"seed": 0, "options": {"goal_index": 7}}
    probe = gym.make(WEBSHOP)
    path = probe.reset(**reset)[1]["reference"]["path"]
    probe.close()
    expert = [{"type": "text", "text": a} for a in path]
    local, remote = play_both(webshop_server.url, WEBSHOP, {}, reset, expert)
    assert_same_episode(local, remote)
    assert remote[-1].done and remote[-1].reward == local[-1][1][0] == 1.0
    # skipping the option clicks: a partial reward, the same from both
    hasty = [a for a in expert if not a["text"].startswith("click[") or a is expert[1] or a is expert[-1]]
    local, remote = play_both(webshop_server.url, WEBSHOP, {}, reset, hasty)
    assert_same_episode(local, remote)
    assert remote[-1].done and 0.0 < remote[-1].reward == local[-1][1][0] < 1.0
    assert any(f["kind"] == "page_diff" for r in remote[1:] for f in r.observation["feedback"])


# ------------------------------------------------------------------ isolation and bounds
def test_eight_concurrent_sessions_share_no_state_and_a_ninth_is_refused(bfcl_server):
    barrier = threading.Barrier(8, timeout=60)
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def session(i: int) -> None:
        try:
            with client(bfcl_server.url) as env:
                env.reset(seed=0, options={"task_id": TASK})
                barrier.wait()  # every session is open and on the same task
                env.step({"type": "call_tool", "tool_name": "mkdir", "arguments": {"dir_name": f"only_{i}"}})
                barrier.wait()  # every session made its own directory
                if i == 0:  # the server is full: one more session is refused, the others go on
                    from websockets.sync.client import connect
                    with connect(bfcl_server.url.replace("http://", "ws://") + "/ws") as extra:
                        refusal = json.loads(extra.recv(timeout=30))
                    assert refusal["type"] == "error" and refusal["data"]["code"] == "CAPACITY_REACHED"
                    assert refusal["data"]["max_sessions"] == 8
                barrier.wait()
                listing = env.step({"type": "call_tool", "tool_name": "ls", "arguments": {}})
                results[i] = json.loads(listing.observation["text"])["current_directory_content"]
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=session, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    fresh = gym.make(BFCL, split="all")
    fresh.reset(seed=0, options={"task_id": TASK})
    before = json.loads(fresh.step("[ls()]")[0])["current_directory_content"]
    fresh.close()
    assert sorted(results) == list(range(8))
    for i, listing in results.items():  # each sees its own directory and no other session's
        assert sorted(listing) == sorted(before + [f"only_{i}"])


def test_malformed_requests_get_error_responses_and_the_server_keeps_serving(bfcl_server):
    import httpx
    from websockets.sync.client import connect

    ws_url = bfcl_server.url.replace("http://", "ws://") + "/ws"
    with connect(ws_url) as ws:
        def ask(raw: str) -> dict:
            ws.send(raw)
            return json.loads(ws.recv(timeout=30))

        assert ask("{not json")["data"]["code"] == "INVALID_JSON"
        reply = ask(json.dumps({"type": "step", "data": {"type": "text", "text": "[ls()]"}}))
        assert reply["type"] == "error" and "send reset first" in reply["data"]["message"]
        reply = ask(json.dumps({"type": "reset", "data": {"seed": 0, "optoins": {"task_id": TASK}}}))
        assert reply["type"] == "error" and "optoins" in reply["data"]["message"]
        reply = ask(json.dumps({"type": "reset", "data": {"options": {"task_id": "no_such_task"}}}))
        assert reply["type"] == "error" and "no_such_task" in reply["data"]["message"]
        assert ask(json.dumps({"type": "reset", "data": {"options": {"task_id": TASK}}}))["type"] == "observation"
        for bad in ({"type": "call_tool"}, {"type": "text"}, {"type": "fly", "text": "x"},
                    {"type": "call_tool", "tool_name": "ls", "text": "also text"}):
            reply = ask(json.dumps({"type": "step", "data": bad}))
            assert reply["type"] == "error" and reply["data"]["code"] == "VALIDATION_ERROR", (bad, reply)
        assert ask(json.dumps({"type": "teleport"}))["data"]["code"] == "UNKNOWN_TYPE"
        # hostile text is the env's to judge: an observation with error feedback, not a failure
        reply = ask(json.dumps({"type": "step", "data": {"type": "text", "text": "[__import__('os').system('x')]"}}))
        assert reply["type"] == "observation"
        assert any(f["kind"] == "error" for f in reply["data"]["observation"]["feedback"])
        # the same session still works
        reply = ask(json.dumps({"type": "reset", "data": {"options": {"task_id": TASK}}}))
        assert reply["type"] == "observation" and reply["data"]["observation"]["task"]["id"] == TASK
    with connect(ws_url) as ws:  # a message that is JSON but not an object: an error, and the session goes on
        ws.send("[1, 2]")
        assert json.loads(ws.recv(timeout=30))["type"] == "error"
        ws.send(json.dumps({"type": "reset", "data": {"options": {"task_id": TASK}}}))
        assert json.loads(ws.recv(timeout=30))["type"] == "observation"
    with httpx.Client(base_url=bfcl_server.url, timeout=30) as http:
        assert http.post("/step", content=b"\xff garbage").status_code == 422
        assert http.post("/step", json={"action": {"type": "call_tool"}}).status_code == 422
        assert http.post("/reset", json={"options": {"task_id": TASK}}).json()["observation"]["task"]["id"] == TASK
        assert http.get("/health").json()["status"] == "healthy"
    with client(bfcl_server.url) as env:  # and the server serves new sessions
        assert env.reset(options={"task_id": TASK}).observation["task"]["id"] == TASK


# ------------------------------------------------------------------ shutdown and start-up errors
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_shut_the_server_down_cleanly_with_sessions_open(sig, serve):
    server = serve("agentgym/Echo-v0")
    a, b = client(server.url), client(server.url)
    a.connect(), b.connect()
    a.reset(options={"word": "apple"})
    b.reset(options={"word": "river"})
    assert a.step({"type": "text", "text": "apple"}).reward == 1.0
    rc, out, err = server.stop(sig)
    assert rc == 0, err[-2000:]
    assert f"stopped by {signal.Signals(sig).name}; 2 session(s), 2 env(s) built, 0 still open" in out
    assert "Traceback" not in err, err[-2000:]
    with pytest.raises(Exception):
        b.step({"type": "text", "text": "river"})
    for c in (a, b):
        c.close()


def test_start_up_errors_exit_2_before_listening(tmp_path, capsys, monkeypatch):
    from agentgym.serve import main
    assert main(["agentgym/Ech-v0"]) == 2
    assert "did you mean 'agentgym/Echo-v0'" in capsys.readouterr().err
    monkeypatch.setenv("WEBSHOP_DATA", str(tmp_path / "nowhere"))
    assert main([WEBSHOP]) == 2
    assert "cannot build agentgym/WebShop-v0" in capsys.readouterr().err
    assert main(["agentgym/Echo-v0", "--env-kwargs", "[1]"]) == 2
    assert "must be a JSON object" in capsys.readouterr().err
    assert main(["agentgym/Echo-v0", "--max-sessions", "0"]) == 2


# ------------------------------------------------------------------ agentgym's rollout on a remote env
def test_agentgym_rollout_on_remote_v0_equals_the_in_process_rollout(bfcl_server):
    from agentgym.agents.scripted import ScriptedPolicy, by_turn
    from agentgym.rollout import RolloutRunner

    turns = get_entry(TASK).ground_truth
    replies = [a["text"] if a["type"] == "text" else as_text(a) for a in bfcl_actions(turns, tool_style_turns=0)]
    tasks = [{"task_id": TASK}]
    runs = {}
    for name, env_id, kwargs in (("local", BFCL, {"split": "all"}), ("remote", "agentgym/Remote-v0", {"url": bfcl_server.url})):
        runs[name] = RolloutRunner(ScriptedPolicy(by_turn(replies, default="Done.")), env_id, tasks, group_size=2,
                                   env_kwargs=kwargs, progress=False, run_id="r").run()
    for local, remote in zip(runs["local"], runs["remote"], strict=True):
        assert remote.error is None and remote.success and remote.final_reward == local.final_reward == 1.0
        assert remote.task_id == local.task_id == TASK and remote.messages == local.messages
        assert [(s.action_text, s.observation, s.reward, s.feedback, s.reply, s.terminated) for s in remote.steps] == \
               [(s.action_text, s.observation, s.reward, s.feedback, s.reply, s.terminated) for s in local.steps]
        assert remote.metadata["tools"] == local.metadata["tools"]


def test_remote_v0_without_a_server_is_a_failed_episode_not_a_crash():
    from agentgym.agents.scripted import ScriptedPolicy
    from agentgym.rollout import RolloutRunner, failed_at_reset

    with pytest.raises(ValueError, match="url must be"):
        gym.make("agentgym/Remote-v0", url="localhost:1")
    [traj] = RolloutRunner(ScriptedPolicy(lambda conv: "x"), "agentgym/Remote-v0", [{"task_id": TASK}],
                           env_kwargs={"url": "http://127.0.0.1:9", "connect_timeout_s": 2}, progress=False).run()
    assert failed_at_reset(traj) and "Failed to connect" in traj.error
