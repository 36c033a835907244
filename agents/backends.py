"""Rollout backends: who generates the training and evaluation rollouts, and how the weights the
learner just trained reach it. A backend owns its weight sync, so the trainer only calls
``sync(student)`` after each update (and once at the start, so a resumed run serves its checkpoint).

Register your own with ``@ROLLOUT_BACKENDS.register("name")`` (``agentgym.plugins``) or the
``agentgym.rollout_backends`` entry-point group: a class built as
``Backend(student, model_path=..., lora=..., lora_r=..., settings=<its Settings>)`` with a ``policy``
attribute (anything with the ``Policy.generate`` interface) and ``sync`` / ``close`` methods. Its
``Settings`` class (a ``PluginSettings``) is the config section ``[rollout.<name>]``
(``--rollout.<name>.<field>``, listed by ``--help``), validated with the rest of the config.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field, field_validator

from agentgym.agents.vllm_policy import VLLMPolicy, WeightSyncError  # vllm itself loads inside VLLMPolicy
from agentgym.agents.vllm_server import VLLMServerPolicy
from agentgym.plugins import PluginSettings

__all__ = ["RolloutBackend", "TransformersBackend", "VLLMBackend", "VLLMServerBackend", "WeightSyncError"]


class RolloutBackend:
    """Base: generate with the trainer's own policy (the student's live weights); nothing to sync.
    ``settings``: an instance of the class's ``Settings`` (or a dict of its fields)."""

    name = "base"
    Settings: type[PluginSettings] = PluginSettings  # no settings

    def __init__(self, student: Any, *, model_path: str, lora: bool, lora_r: int, settings: Any = None):
        self.student = student
        self.policy = student
        self.settings = settings if isinstance(settings, self.Settings) else self.Settings.model_validate(settings or {})

    def sync(self, student: Any) -> None:
        """Make ``policy`` serve the student's current weights (verified where the backend can)."""

    def close(self) -> None:
        if self.policy is not self.student and hasattr(self.policy, "close"):
            self.policy.close()


class TransformersBackend(RolloutBackend):
    """The transformers policy that wraps the model being trained: always current."""

    name = "transformers"


class VLLMBackend(RolloutBackend):
    """An in-process vLLM engine on the same checkpoint; after each update the full weights are
    reloaded in place or the LoRA adapter pushed as a new versioned request, then verified by probe
    log-probs (``WeightSyncError`` on a mismatch)."""

    name = "vllm"

    class Settings(PluginSettings):
        gpu_memory_utilization: float = Field(0.4, gt=0, le=1, description="vLLM memory share")
        kwargs: dict[str, Any] = Field(default_factory=dict, description=(
            "further vllm.LLM arguments, e.g. {max_model_len: 8192, tensor_parallel_size: 2, "
            "kv_cache_memory_bytes: 2147483648}"))

    def __init__(self, student: Any, *, model_path: str, lora: bool, lora_r: int, settings: Any = None):
        super().__init__(student, model_path=model_path, lora=lora, lora_r=lora_r, settings=settings)
        self.policy = VLLMPolicy(model_path, tokenizer=student.tokenizer, enable_lora=lora,
                                 max_lora_rank=max(64, lora_r),
                                 gpu_memory_utilization=self.settings.gpu_memory_utilization,
                                 **self.settings.kwargs)

    def sync(self, student: Any) -> None:
        self.policy.push_weights(student)


class VLLMServerBackend(RolloutBackend):
    """Rollouts on one or more running vLLM servers (``rollout.vllm_server.servers``), token in / token out
    (``agentgym.agents.vllm_server``). After each update the LoRA adapter is loaded on every server
    as a new versioned adapter (or the full weights reloaded in place from ``rollout.vllm_server.sync_dir``), then
    EVERY server is verified - the new version is listed and a fixed probe's log-probs equal the
    trainer's - else ``WeightSyncError``. ``last_sync`` holds the probe differences per server and
    ``sync_seconds`` the time of each push + verification."""

    name = "vllm_server"

    class Settings(PluginSettings):
        servers: list[str] = Field(default_factory=list, description=(
            "base URLs of the OpenAI-compatible vLLM servers that generate the rollouts (http://host:port/v1), "
            "requests spread over them"))
        sync_dir: str | None = Field(None, description=(
            "a folder every server can read (a shared filesystem for servers on other machines) where each "
            "weight push is written; None: a temporary folder on this machine"))
        timeout_s: float = Field(600.0, gt=0, le=86_400, description="deadline of one server request, seconds")

        @field_validator("servers")
        @classmethod
        def _server_urls(cls, v: list[str]) -> list[str]:
            for url in v:
                if not url.startswith(("http://", "https://")):
                    raise ValueError(f"each server is an http(s) URL such as http://10.0.0.2:8000/v1, got {url!r}")
            return v

    def __init__(self, student: Any, *, model_path: str, lora: bool, lora_r: int, settings: Any = None):
        super().__init__(student, model_path=model_path, lora=lora, lora_r=lora_r, settings=settings)
        if not self.settings.servers:
            raise ValueError("rollout.backend = 'vllm_server' needs rollout.vllm_server.servers: the base URLs of "
                             "running vLLM servers, e.g. --rollout.vllm_server.servers '[\"http://10.0.0.2:8000/v1\"]' "
                             "(see the README's 'Rollouts at scale')")
        self.lora = lora
        self.policy = VLLMServerPolicy(list(self.settings.servers), model=None, tokenizer=student.tokenizer,
                                       timeout=self.settings.timeout_s, sync_dir=self.settings.sync_dir)
        self.last_sync: list[float] = []
        self.sync_seconds: list[float] = []

    def sync(self, student: Any) -> None:
        started = time.perf_counter()
        model = student.model
        if self.lora:
            if not hasattr(model, "peft_config"):
                raise WeightSyncError("the trainer has no LoRA adapter to push (model.lora is on but the model "
                                      "has no peft_config)")
            self.policy.push_lora(model)
        else:
            self.policy.push_full(model)
        self.last_sync = self.policy.verify(student)
        self.sync_seconds.append(time.perf_counter() - started)
