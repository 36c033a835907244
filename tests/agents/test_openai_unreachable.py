"""An OpenAI-compatible server that is not there: ``agentgym eval --model openai:NAME`` and training with
``--feedback.teacher openai`` stop at once with one line and exit 1 (it was a 137-line traceback after
every retry), and write nothing. The port is a real closed one on 127.0.0.1."""

from __future__ import annotations

import socket
import time

import pytest

import agentgym  # noqa: F401  (registers the envs)
from agentgym.agents.openai_policy import openai_policy_from_spec
from agentgym.agents.transport import ServerError
from agentgym.testing.openai_server import Reply, ScriptedOpenAIServer


@pytest.fixture
def closed_url() -> str:
    with socket.socket() as s:  # a port the OS just handed out and nothing listens on any more
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_check_server_refuses_a_closed_port_in_one_line(closed_url):
    policy = openai_policy_from_spec("openai:m", base_url=closed_url)
    started = time.perf_counter()
    with pytest.raises(ServerError, match=r"cannot reach the OpenAI-compatible server at http://127\.0\.0\.1:\d+/v1/ "
                                          r"\(ConnectError: .*refused.*\); is it running") as info:
        policy.check_server()
    assert time.perf_counter() - started < 5 and "\n" not in str(info.value)
    policy.close()


def test_check_server_passes_any_http_answer():
    # The scripted server wants another key (401) and serves no model list: it is there all the same.
    with ScriptedOpenAIServer(responder=lambda b: Reply(content="ok"), api_key="other") as server:
        policy = openai_policy_from_spec("openai:m", base_url=server.base_url, api_key="wrong")
        policy.check_server()
        policy.close()


def test_eval_of_an_unreachable_model_is_one_line_and_exit_1(closed_url, tmp_path, capsys):
    from agentgym.evaluation import eval_main
    started = time.perf_counter()
    rc = eval_main(["--model", "openai:NAME", "--base-url", closed_url, "--env.id", "agentgym/Echo-v0",
                    "--out", str(tmp_path / "evals"), "--train.progress", "false"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"agentgym eval: cannot reach the OpenAI-compatible server at {closed_url}/"), err
    assert time.perf_counter() - started < 10 and not (tmp_path / "evals").exists()


def test_training_with_an_unreachable_openai_teacher_stops_at_the_start(closed_url, tmp_path, capsys):
    from agentgym.train import main
    rc = main(["--env.id", "agentgym/Echo-v0", "--model.name", "tiny", "--train.updates", "1",
               "--feedback.source", "llm_hindsight", "--feedback.teacher", "openai",
               "--feedback.teacher.openai.model", "judge", "--feedback.teacher.openai.base_url", closed_url,
               "--train.run_dir", str(tmp_path / "run"), "--train.progress", "false"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("agentgym train")]
    assert rc == 1 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(
        f"agentgym train: cannot reach the OpenAI-compatible server at {closed_url}/ (ConnectError: "), err
    assert "refused" in lines[0] and lines[0].endswith("is it running, and is the base URL right?"), err
    assert not (tmp_path / "run").exists()  # nothing rolled out, no run folder
