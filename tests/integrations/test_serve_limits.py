"""``agentgym serve`` counts every env it holds and survives hostile clients (issue 24, item 3), on
real servers on 127.0.0.1: a reaped session's socket is closed and its slot freed; stateless HTTP
``/reset`` counts against ``--max-sessions``; a rejected action is stored clipped; every malformed
message is an error reply and the session goes on; a client that hangs up mid-step leaves no
traceback."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("openenv.core", reason="needs openenv-core (setup.sh installs it)")

import httpx  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from tests.integrations.conftest import Served  # noqa: E402

SLOW = "slowtest/SlowEcho-v0"
SLOW_ENV = '''
import time, gymnasium as gym
from agentgym.envs.echo.env import EchoEnv

class SlowEcho(EchoEnv):
    """Echo whose step takes a second when the action says "slow"."""
    def _step(self, action):
        if action == "slow":
            time.sleep(1.0)
        return super()._step(action)

gym.register(id="slowtest/SlowEcho-v0", entry_point=SlowEcho)
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (each start costs seconds): one slot, reaping after 1 s idle, a
    4 MiB cap on messages and bodies. Its stderr must hold no traceback at the end."""
    module = tmp_path_factory.mktemp("slowenv") / "slow_env.py"
    module.write_text(SLOW_ENV)
    served = Served(SLOW, "--import", str(module), "--max-sessions", "1", "--session-timeout", "1",
                    "--ws-max-bytes", str(4 << 20))
    yield served
    rc, out, err = served.stop()
    assert rc == 0 and "0 still open" in out, out
    assert "Traceback" not in err and "Exception in ASGI" not in err, err[-3000:]


def ws_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/ws"


def ask(ws, message) -> dict:
    ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))
    return json.loads(ws.recv(timeout=30))


RESET = {"type": "reset", "data": {"options": {"word": "apple"}}}
STEP = {"type": "step", "data": {"type": "text", "text": "apple"}}


def session(server, timeout: float = 10.0):
    """A WebSocket session with a reset episode, once the server has a free slot (the previous
    test's session is given back asynchronously after its socket closes)."""
    deadline = time.monotonic() + timeout
    while True:
        ws = connect(ws_url(server), max_size=None).__enter__()  # closed by the caller
        try:
            reply = ask(ws, RESET)
        except ConnectionClosed:  # refused: the server sent CAPACITY_REACHED and closed before our reset
            reply = {"type": "error", "data": {"code": "CAPACITY_REACHED"}}
        if reply["type"] == "observation":
            return ws
        ws.close()
        assert reply["data"]["code"] == "CAPACITY_REACHED" and time.monotonic() < deadline, reply
        time.sleep(0.1)


def test_a_reaped_session_loses_its_socket_and_its_slot(server):
    idle = session(server)
    started = time.monotonic()
    with pytest.raises(ConnectionClosed) as closed:  # the server closes it: nothing more to read
        idle.recv(timeout=10)
    assert closed.value.rcvd.code == 4408 and "idle for more than 1 s" in closed.value.rcvd.reason
    assert time.monotonic() - started < 5
    with pytest.raises(ConnectionClosed):  # the reaped client cannot go on stepping
        ask(idle, STEP)
    second = session(server, timeout=2)  # its slot is free: max-sessions 1 admits the next
    assert ask(second, STEP)["data"]["reward"] == 1.0
    second.close()


def test_a_busy_session_is_not_reaped(server):
    with session(server) as ws:
        for _ in range(6):  # 2.4 s of traffic, each gap under the 1 s timeout
            time.sleep(0.4)
            assert ask(ws, {"type": "state"})["type"] == "state"
        assert ask(ws, {"type": "step", "data": {"type": "text", "text": "slow"}})["type"] == "observation"
        assert ask(ws, RESET)["type"] == "observation"


def test_stateless_http_requests_count_against_max_sessions(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        with session(server) as ws:  # the one slot is taken
            full = http.post("/reset", json={"options": {"word": "river"}})
            assert full.status_code == 503 and full.json()["code"] == "CAPACITY_REACHED"
            assert "1/1" in full.json()["detail"]
            # what builds no env still answers
            assert http.get("/metadata").json()["name"] == SLOW
            assert http.get("/state").json()["env_id"] == SLOW
            assert http.get("/health").status_code == 200
            step = http.post("/step", json={"action": {"type": "text", "text": "river"}})
            assert step.status_code == 409 and "/ws" in step.json()["detail"]
            assert ask(ws, STEP)["data"]["reward"] == 1.0
        deadline = time.monotonic() + 10
        while (reply := http.post("/reset", json={"options": {"word": "river"}})).status_code == 503:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert reply.status_code == 200 and "river" in reply.json()["observation"]["text"]
        with session(server):  # and the stateless request gave its env back
            pass


def test_http_errors_are_one_line_replies(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        cases = {
            "options as a list": (http.post("/reset", json={"options": ["word"]}), 422, "options must be an object"),
            "unknown key": (http.post("/reset", json={"optoins": {}}), 422, "optoins"),
            "deep body": (http.post("/reset", content="[" * 100_000 + "]" * 100_000), 422, "nests too deeply"),
            "huge integer": (http.post("/reset", content='{"seed": ' + "9" * 5000 + "}"), 422, "not JSON"),
            "big integer": (http.post("/reset", json={"seed": 2 ** 300}), 422, "bits"),
            "not an object": (http.post("/reset", content="[1, 2]"), 422, "must be a JSON object"),
            "body over the cap": (http.post("/reset", content=b"{" + b" " * (5 << 20) + b"}"), 413, "limit"),
            "bad action": (http.post("/step", json={"action": {"type": "call_tool"}}), 422, "tool_name"),
        }
        for name, (reply, status, words) in cases.items():
            assert reply.status_code == status and words in reply.json()["detail"], (name, reply.text)


def test_every_malformed_message_is_an_error_reply_and_the_session_goes_on(server):
    hostile = {
        "binary frame": b"\x00\x01 binary",
        "not JSON": "{not json",
        "JSON array": "[1, 2]",
        "JSON string": '"reset"',
        "deep nesting": '{"type": "reset", "data": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "deep but parseable": '{"type": "reset", "data": {"options": ' + '{"a": ' * 200 + "1" + "}" * 200 + "}}",
        "huge integer": '{"type": "reset", "data": {"seed": ' + "9" * 5000 + "}}",
        "big integer": json.dumps({"type": "reset", "data": {"seed": 2 ** 300}}),
        "NaN": '{"type": "reset", "data": {"seed": NaN}}',
        "options as a list": json.dumps({"type": "reset", "data": {"options": ["word"]}}),
        "data not an object": json.dumps({"type": "step", "data": "apple"}),
        "unknown type": json.dumps({"type": 7}),
    }
    with session(server) as ws:
        for name, frame in hostile.items():
            reply = ask(ws, frame)
            assert reply["type"] == "error" and reply["data"]["message"], (name, reply)
        # the same session still holds its episode and steps it
        assert ask(ws, {"type": "state"})["data"]["task"]["word"] == "apple"
        assert ask(ws, STEP)["data"]["reward"] == 1.0


def test_the_mcp_websocket_answers_malformed_frames_too(server):
    deadline = time.monotonic() + 10
    while True:  # the /mcp WebSocket takes the one slot too, once the last test's session gave it back
        with connect(server.url.replace("http://", "ws://") + "/mcp") as ws:
            listed = ask(ws, {"jsonrpc": "2.0", "method": "tools/list", "params": {}, "id": 1})
            if "result" not in listed:
                assert "capacity" in json.dumps(listed).lower() and time.monotonic() < deadline, listed
                time.sleep(0.1)
                continue
            for frame in (b"\x00 binary", "[1, 2]", '{"jsonrpc": "2.0", "id": ' + "9" * 5000 + "}",
                          '{"a": ' * 100 + "1" + "}" * 100):
                reply = ask(ws, frame)
                assert reply["error"]["code"] == -32700 and reply["error"]["message"], (frame[:20], reply)
            assert ask(ws, {"jsonrpc": "2.0", "method": "tools/list", "params": {}, "id": 2})["id"] == 2
            return


def test_a_rejected_action_is_stored_clipped(server):
    with session(server) as ws:
        reply = ask(ws, {"type": "step", "data": {"type": "text", "text": "x" * 3_000_000}})["data"]["observation"]
        assert any("exceed the limit" in f["text"] for f in reply["feedback"])
        stored = reply["assistant"]["content"]  # the history's copy of the action
        assert len(stored) < 100_100 and stored.endswith("2900000 more characters not stored]")


def test_a_client_gone_mid_step_gives_its_slot_back_quietly(server):
    for _ in range(3):  # the fixture's teardown checks stderr for tracebacks
        ws = session(server)
        ws.send(json.dumps({"type": "step", "data": {"type": "text", "text": "slow"}}))
        ws.close()  # gone before the step answers
        with pytest.raises(AssertionError):  # the slot is still held while the step runs
            session(server, timeout=0.3).close()
    session(server, timeout=5).close()  # and given back when it ends
