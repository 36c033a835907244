"""Rollout backends: who generates the training and evaluation rollouts, and how the weights the
learner just trained reach it. A backend owns its weight sync, so the trainer only calls
``sync(student)`` after each update (and once at the start, so a resumed run serves its checkpoint).

Register your own with ``@ROLLOUT_BACKENDS.register("name")`` (``agentgym.plugins``) or the
``agentgym.rollout_backends`` entry-point group: a class built as
``Backend(student, model_path=..., lora=..., lora_r=..., settings=RolloutConfig)`` with a ``policy``
attribute (anything with the ``Policy.generate`` interface) and ``sync`` / ``close`` methods.
"""

from __future__ import annotations

from typing import Any

from agentgym.agents.vllm_policy import WeightSyncError  # noqa: F401  (re-exported: the sync failure)

__all__ = ["RolloutBackend", "TransformersBackend", "VLLMBackend", "VLLMServerBackend", "WeightSyncError"]


class RolloutBackend:
    """Base: generate with the trainer's own policy (the student's live weights); nothing to sync."""

    name = "base"

    def __init__(self, student: Any, *, model_path: str, lora: bool, lora_r: int, settings: Any):
        self.student = student
        self.policy = student

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

    def __init__(self, student: Any, *, model_path: str, lora: bool, lora_r: int, settings: Any):
        from agentgym.agents.vllm_policy import VLLMPolicy
        super().__init__(student, model_path=model_path, lora=lora, lora_r=lora_r, settings=settings)
        self.policy = VLLMPolicy(model_path, tokenizer=student.tokenizer, enable_lora=lora,
                                 max_lora_rank=max(64, lora_r),
                                 gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
                                 **settings.vllm_kwargs)

    def sync(self, student: Any) -> None:
        self.policy.push_weights(student)


class VLLMServerBackend(RolloutBackend):
    """Rollouts on one or more running vLLM servers (``rollout.servers``), token in / token out
    (``agentgym.agents.vllm_server``). After each update the LoRA adapter is loaded on every server
    as a new versioned adapter (or the full weights reloaded in place from ``rollout.sync_dir``), then
    EVERY server is verified - the new version is listed and a fixed probe's log-probs equal the
    trainer's - else ``WeightSyncError``. ``last_sync`` holds the probe differences per server and
    ``sync_seconds`` the time of each push + verification."""

    name = "vllm_server"

    def __init__(self, student: Any, *, model_path: str, lora: bool, lora_r: int, settings: Any):
        from agentgym.agents.vllm_server import VLLMServerPolicy
        super().__init__(student, model_path=model_path, lora=lora, lora_r=lora_r, settings=settings)
        urls = list(getattr(settings, "servers", None) or [])
        if not urls:
            raise ValueError("rollout.backend = 'vllm_server' needs rollout.servers: the base URLs of running "
                             "vLLM servers, e.g. --rollout.servers '[\"http://10.0.0.2:8000/v1\"]' (see the "
                             "README's 'Rollouts at scale')")
        self.lora = lora
        self.policy = VLLMServerPolicy(urls, model=None, tokenizer=student.tokenizer,
                                       timeout=getattr(settings, "server_timeout_s", 600.0),
                                       sync_dir=getattr(settings, "sync_dir", None))
        self.last_sync: list[float] = []
        self.sync_seconds: list[float] = []

    def sync(self, student: Any) -> None:
        import time
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
