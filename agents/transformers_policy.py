"""A policy backed by any transformers causal LM with a chat template (CPU or CUDA, optional LoRA).

>>> from agentgym.agents import TransformersPolicy, SamplingParams
>>> from agentgym.agents.models import build_tiny_model
>>> policy = TransformersPolicy(build_tiny_model())
>>> [out] = policy.generate([[{"role": "user", "content": "hi"}]], sampling=SamplingParams(max_new_tokens=4, seed=0))
>>> len(out.token_ids) == len(out.logprobs) <= 4
True
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

from agentgym.agents.base import Generation, PolicyError, SamplingParams, ScoreResult, TokenPolicy
from agentgym.agents.chat import ChatRenderer

# torch / transformers / peft are imported in the methods that use them: heavy, and this module is in the
# trainer's and the eval CLI's import graph even for runs whose policy is an API.

__all__ = ["TransformersPolicy"]


class TransformersPolicy(TokenPolicy):
    """Batched, left-padded generation with exact ids and log-probs; scoring with top-k + tail.

    ``model``: a folder / hub id (loaded offline) or a loaded ``PreTrainedModel``.
    ``adapter``: a folder with a saved peft adapter, or a ``peft.LoraConfig`` to attach a new one.
    ``dtype``: default float32 on CPU and bfloat16 on CUDA.

    Sampling draws each row from its own ``torch.Generator`` seeded with that request's seed
    (``generate(..., seeds=)``, else derived from ``sampling.seed`` and the row, see
    ``request_seeds``): a row's sample depends only on its seed and its logits, not on the other
    rows of the batch nor on earlier calls, and torch's global RNG is never read or reset. Only a
    request with no seed at all draws from torch's global generator (as ``torch.multinomial`` does).
    The distribution is transformers' own: the model's default logits processors, then temperature,
    top-k and top-p (transformers' warpers, in that order), then one draw per row.
    """

    token_level = True

    def __init__(self, model: str | Path | Any, tokenizer: Any = None, *, device: str | None = None,
                 dtype: Any = None, adapter: str | Path | Any = None, batch_size: int = 8,
                 trainable: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        if isinstance(model, (str, Path)):
            self.name = str(model)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
        else:
            self.name = getattr(model, "name_or_path", type(model).__name__)
            if tokenizer is None:
                raise ValueError("a loaded model needs its tokenizer: TransformersPolicy(model, tokenizer)")
            model = model.to(dtype)
        if adapter is not None:
            import peft
            if isinstance(adapter, (str, Path)):
                model = peft.PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
            else:
                model = peft.get_peft_model(model, adapter)
        self.model = model.to(self.device)
        if not trainable:
            self.model.eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.renderer = ChatRenderer(tokenizer)
        self.batch_size = batch_size
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos = set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        eos.add(tokenizer.eos_token_id)
        self.eos_token_ids = sorted(e for e in eos if e is not None)

    # ------------------------------------------------------------------ generation
    def generate_ids(self, prompts: list[list[int]], sampling: SamplingParams,
                     row_seeds: list[int | None]) -> list[Generation]:
        out: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            end = start + self.batch_size
            out.extend(self._generate_batch(prompts[start:end], sampling, row_seeds[start:end]))
        return out

    def _generate_batch(self, prompts: list[list[int]], sampling: SamplingParams,
                        seeds: Sequence[int | None]) -> list[Generation]:
        import torch
        from transformers import LogitsProcessorList

        if any(not p for p in prompts):
            raise PolicyError("cannot generate from an empty prompt")
        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):  # left padding: every prompt ends at the same column
            input_ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p):] = 1
        greedy = sampling.temperature == 0
        # transformers' own sampling draws from the global RNG, so generation runs in greedy mode
        # and the last logits processor samples each row with its own generator, returning a
        # distribution with all its mass on the drawn token (which argmax then picks).
        kwargs = dict(do_sample=False, max_new_tokens=sampling.max_new_tokens,
                      return_dict_in_generate=True, output_logits=True, pad_token_id=pad,
                      eos_token_id=self.eos_token_ids, temperature=None, top_p=None, top_k=None)
        if not greedy:
            kwargs["logits_processor"] = LogitsProcessorList([_RowSampler(sampling, seeds)])
        with torch.inference_mode():
            result = self.model.generate(input_ids=input_ids.to(self.device),
                                         attention_mask=mask.to(self.device), **kwargs)
        new = result.sequences[:, width:].cpu()
        # Raw logits of each generated position (before any processor, the sampler included) ->
        # log-probs of the temperature-scaled distribution.
        logits = torch.stack(result.logits, dim=1).float().cpu() / sampling.logprob_temperature
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        eos = set(self.eos_token_ids)
        outs = []
        for row, prompt in enumerate(prompts):
            ids = new[row].tolist()
            end = next((i + 1 for i, t in enumerate(ids) if t in eos), None)
            finish = "stop" if end is not None else "length"
            ids = ids[:end] if end is not None else ids
            text = self.tokenizer.decode([t for t in ids if t not in eos], skip_special_tokens=False)
            outs.append(Generation(text=text, token_ids=ids, logprobs=logprobs[row, :len(ids)].tolist(),
                                   prompt_ids=list(prompt), finish_reason=finish))
        return outs

    # ------------------------------------------------------------------ scoring
    def score(self, context_ids: Sequence[int], action_ids: Sequence[int], top_k: int = 0, *,
              temperature: float = 1.0) -> ScoreResult:
        return self.score_batch([(context_ids, action_ids)], top_k, temperature=temperature)[0]

    def score_batch(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], top_k: int = 0, *,
                    temperature: float = 1.0, grad: bool = False) -> list[ScoreResult]:
        """Log-probs of each pair's action ids under its context (left-padded batch)."""
        import torch

        results = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start:start + self.batch_size]
            for ctx, act in chunk:
                if not ctx:
                    raise ValueError("score() needs a non-empty context (at least the prompt's first token)")
            seqs = [list(c) + list(a) for c, a in chunk]
            width = max(len(s) for s in seqs)
            # Left-padded with explicit positions, so every row's action ends at the same column and
            # only the last max(len(action)) + 1 positions are projected to the vocabulary (a long
            # context never materialises [context, vocab] logits).
            ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, s in enumerate(seqs):
                ids[row, width - len(s):] = torch.tensor(s)
                mask[row, width - len(s):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            keep = max(len(a) for _, a in chunk) + 1
            ctxm = torch.inference_mode() if not grad else contextlib.nullcontext()
            with ctxm:
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                    position_ids=positions.to(self.device), logits_to_keep=keep).logits[:, -keep:]
            logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
            for row, (ctx, act) in enumerate(chunk):
                m = len(act)
                pos = logp_all[row, keep - 1 - m:keep - 1]  # position j predicts token j + 1
                tgt = torch.tensor(list(act), dtype=torch.long, device=pos.device)
                lp = pos.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
                res = ScoreResult(logprobs=lp.tolist() if not grad else lp)
                if top_k:
                    top_lp, top_ids = pos.topk(top_k, dim=-1)
                    mass = top_lp.exp().sum(-1).clamp(max=1.0)
                    tail = torch.log1p(-mass.clamp(max=1.0 - 1e-7))
                    res.topk_ids, res.topk_logprobs = top_ids.tolist(), top_lp.tolist()
                    res.tail_logprobs = tail.tolist()
                results.append(res)
        return results

    # ------------------------------------------------------------------ adapters
    @contextlib.contextmanager
    def adapter(self, name: str | None) -> Iterator[None]:
        """Run with peft adapter ``name`` active (``None``: the base model without adapters)."""
        if not hasattr(self.model, "peft_config"):
            raise PolicyError("this policy has no peft adapters")
        if name is None:
            with self.model.disable_adapter():
                yield
            return
        previous = self.model.active_adapter
        self.model.set_adapter(name)
        try:
            yield
        finally:
            self.model.set_adapter(previous)


class _RowSampler:
    """A logits processor that samples the next token of each row from its own generator: the
    scores are warped as transformers' sampling does (temperature, top-k, top-p), then row ``r``
    draws one uniform from generator ``r`` and takes the token at that point of its cumulative
    distribution (inverse-CDF sampling: exact, one draw per row and step). The generators live on
    the CPU, so a seed gives the same uniforms on every device. Returns scores that are 0 at the
    drawn token and -inf elsewhere."""

    def __init__(self, sampling: SamplingParams, seeds: Sequence[int | None]):
        import torch
        from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                            TopPLogitsWarper)
        self.warpers = []
        if sampling.temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_k:
            self.warpers.append(TopKLogitsWarper(top_k=sampling.top_k))
        if sampling.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p=sampling.top_p))
        self.generators = [None if s is None else torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch
        if scores.shape[0] != len(self.generators):
            raise PolicyError(f"sampler built for {len(self.generators)} rows got {scores.shape[0]}")
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probs = torch.softmax(scores.double(), dim=-1)
        cdf = probs.cumsum(dim=-1)
        u = torch.cat([torch.rand(1, dtype=torch.float64, generator=g) for g in self.generators])
        points = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
        chosen = torch.searchsorted(cdf, points, right=True).clamp(max=scores.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, chosen, 0.0)
