"""The ``vllm_server`` rollout backend against two real vLLM servers on 127.0.0.1 (started here with
the tiny model; the optional ``.ci/vllm`` job): a 3-update LoRA training run over both servers,
verified after every push, token-exact trajectories, a stale server detected, and a full-weights run
with one server. Without vLLM only the configuration errors are checked."""

from __future__ import annotations

import importlib.util
import json
import re
import threading

import pytest

from agentgym.config import ConfigError, load_config

HAS_VLLM = importlib.util.find_spec("vllm") is not None
TOL = 0.05

ECHO = {
    "model": {"name": "tiny", "lora_r": 4, "lora_alpha": 8},
    "env": {"id": "agentgym/Echo-v0", "kwargs": {}, "tasks_per_update": 2, "group_size": 2, "max_steps": 3,
            "eval_task_ids": ["a"]},
    "rollout": {"temperature": 1.0, "max_new_tokens": 6, "backend": "vllm_server"},
    "feedback": {"source": "immediate", "selector": "first_error"},  # targets at every update: weights move
    "learner": {"name": "hint_sd", "lr": 1e-2, "topk": 20},
    "train": {"updates": 3, "checkpoint_every": 1, "progress": False, "deterministic": True},
}


def test_server_settings_are_checked_before_anything_starts():
    with pytest.raises(ConfigError, match="rollout.vllm_server.servers.*http"):
        load_config(["--rollout.vllm_server.servers", '["localhost:8000"]'])
    cfg = load_config(["--rollout.backend", "vllm_server", "--rollout.vllm_server.servers", '["http://10.0.0.2:8000/v1"]'])
    assert cfg.rollout.settings.servers == ["http://10.0.0.2:8000/v1"] and cfg.rollout.settings.sync_dir is None
    from agentgym.agents.backends import VLLMServerBackend
    with pytest.raises(ValueError, match="needs rollout.vllm_server.servers"):
        VLLMServerBackend(object(), model_path="x", lora=True, lora_r=8,
                          settings=load_config(["--rollout.backend", "vllm_server"]).rollout.settings)


# ---------------------------------------------------------------------------- two real servers
@pytest.fixture(scope="module")
def servers(tiny_model_path, tmp_path_factory):
    from agentgym.agents.vllm_launch import launch_vllm_server
    logs = tmp_path_factory.mktemp("vllm-logs")
    started, errors = [None, None], []

    def start(i):
        try:
            started[i] = launch_vllm_server(tiny_model_path, log_dir=logs, max_lora_rank=8)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    try:
        if errors:
            raise errors[0]
        yield started
    finally:
        for s in started:
            if s is not None:
                s.stop()


def _moved(trainer, model_path) -> float:
    """How far training moved the probe's log-probs from the base model's (a verification that
    compares equal weights would prove nothing)."""
    from agentgym.agents import TransformersPolicy
    probe = trainer.backend.policy.probe_ids
    split = max(1, len(probe) // 2)
    base = TransformersPolicy(model_path).score(probe[:split], probe[split:]).logprobs
    now = trainer.policy.score(probe[:split], probe[split:]).logprobs
    return max(abs(a - b) for a, b in zip(base, now))


def _trainer(run_dir, *overrides):
    from agentgym.train import Trainer
    return Trainer(load_config(["--train.run_dir", str(run_dir), *overrides], base=ECHO))


@pytest.mark.vllm
def test_lora_training_over_two_servers_is_verified_and_token_exact(servers, tmp_path, tiny_model_path):
    from agentgym.rollout import episode_tokens
    from agentgym.store import read_trajectories
    urls = [s.url for s in servers]
    trainer = _trainer(tmp_path, "--rollout.vllm_server.servers", json.dumps(urls))
    backend = trainer.backend
    backend.policy.exchanges = []
    trainer.run()
    policy = backend.policy
    # One push at the start + one per update, each verified on both servers (a failed check raises).
    assert policy.version == 4 and len(backend.sync_seconds) == 4
    assert len(backend.last_sync) == 2 and all(d <= TOL for d in backend.last_sync)
    for srv in policy.servers:  # both serve the newest adapter, and only it
        names = {m["id"] for m in srv.request("GET", "/v1/models")["data"]}
        assert policy.served == f"{policy.adapter_prefix}-v4" and policy.served in names
        assert f"{policy.adapter_prefix}-v3" not in names
    assert policy.verify(trainer.policy) == pytest.approx([0, 0], abs=TOL)
    assert _moved(trainer, tiny_model_path) > 2 * TOL  # the servers follow weights that really changed
    print(f"\nLoRA push + verify on 2 servers: {[round(x, 2) for x in backend.sync_seconds]} s")

    trajs = [t for t in read_trajectories(tmp_path / "trajectories.jsonl") if t.phase == "train"]
    assert len(trajs) == 3 * 2 * 2
    seen = {(tuple(x["seen"]), tuple(x["sampled"])) for x in policy.exchanges}
    servers_used = set()
    for t in trajs:
        episode_tokens(t)  # the append-only token invariant holds
        for step in t.steps:
            # What was recorded is exactly what a server saw and sampled...
            assert (tuple(step.prompt_ids), tuple(step.action_ids)) in seen
            # ... under the adapter pushed before this update's rollout.
            assert step.info["policy_version"] == t.update + 1
            servers_used.add(step.info["server"])
    assert servers_used == set(urls)  # requests were spread over both
    assert all(n > 0 for n in policy.requests_per_server)


@pytest.mark.vllm
def test_a_server_left_stale_is_a_weight_sync_error(servers, tiny_model_path):
    import torch

    from peft import LoraConfig

    from agentgym.agents import TransformersPolicy, WeightSyncError
    from agentgym.agents.backends import VLLMServerBackend
    student = TransformersPolicy(tiny_model_path, adapter=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
                                 trainable=True)
    settings = load_config(["--rollout.backend", "vllm_server",
                            "--rollout.vllm_server.servers", json.dumps([s.url for s in servers])]).rollout.settings
    backend = VLLMServerBackend(student, model_path=str(tiny_model_path), lora=True, lora_r=4, settings=settings)

    def perturb():
        with torch.no_grad():
            for name, p in student.model.named_parameters():
                if "lora_B" in name:
                    p.add_(torch.randn_like(p) * 0.5)

    try:
        perturb()
        backend.sync(student)  # both servers: verified
        perturb()
        policy = backend.policy
        # The push skips server 1: it does not even have the new version.
        policy.push_lora(student.model, servers=[0])
        with pytest.raises(WeightSyncError, match=re.escape(f"{servers[1].url} does not serve '{policy.adapter_prefix}-v2'")):
            policy.verify(student)
        # Server 1 gets the new NAME but the previous weights (a botched copy): the probe sees it.
        previous = str(policy.sync_dir / "lora-v1")
        policy.servers[1].request("POST", "/v1/load_lora_adapter",
                                  {"lora_name": policy.served, "lora_path": previous})
        with pytest.raises(WeightSyncError, match=re.escape(f"{servers[1].url} serves stale or wrong weights")):
            policy.verify(student)
        backend.sync(student)  # a full push repairs it
        assert all(d <= TOL for d in backend.last_sync)
    finally:
        backend.close()


@pytest.mark.vllm
def test_a_server_that_is_down_hands_its_requests_to_the_others(servers, tiny_tokenizer):
    from agentgym.agents import SamplingParams
    from agentgym.agents.vllm_launch import free_port
    from agentgym.agents.vllm_server import VLLMServerPolicy
    base = VLLMServerPolicy([servers[0].url], model=None, tokenizer=tiny_tokenizer).model  # asked from the server
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    policy = VLLMServerPolicy([dead, servers[0].url], model=base, tokenizer=tiny_tokenizer, timeout=5)
    outs = policy.generate([[{"role": "user", "content": f"hi {i}"}] for i in range(4)],
                           sampling=SamplingParams(max_new_tokens=3, seed=0))
    assert all(o.token_ids and o.info["server"] == servers[0].url for o in outs)
    assert policy.requests_per_server == [0, 4]
    policy.close()


@pytest.mark.vllm
def test_full_weights_run_with_one_server(servers, tmp_path, tiny_model_path):
    trainer = _trainer(tmp_path, "--rollout.vllm_server.servers", json.dumps([servers[0].url]), "--model.lora", "false",
                       "--train.updates", "2", "--learner.lr", "1e-3")
    trainer.run()
    backend = trainer.backend
    assert backend.policy.version == 3 and all(d <= TOL for d in backend.last_sync)
    assert backend.policy.served == backend.policy.model  # the base model name, reloaded in place
    assert _moved(trainer, tiny_model_path) > 2 * TOL
    print(f"\nfull-weight push + verify on 1 server: {[round(x, 2) for x in backend.sync_seconds]} s")
