"""A zero-cost policy that answers from a script: for benchmarks of the framework itself, for
replaying known action sequences, and as the "expert" in tests. It is a real policy, not a mock: it
goes through the same rollout path, and with a tokenizer it is token-level (its actions are the
tokenization of the scripted text plus EOS, with log-prob 0, i.e. a deterministic policy).

>>> p = ScriptedPolicy(lambda conv: "ls()")
>>> p.generate([[{"role": "user", "content": "hi"}]])[0].text
'ls()'
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from agentgym.agents.base import Conversation, Generation, Policy, SamplingParams, as_chat
from agentgym.agents.chat import ChatRenderer

__all__ = ["ScriptedPolicy", "by_turn"]


def by_turn(replies: Sequence[str], default: str = "") -> Callable[[list[dict[str, Any]]], str]:
    """A script that answers the k-th assistant turn of any conversation with ``replies[k]``."""
    def script(conv: list[dict[str, Any]]) -> str:
        turn = sum(1 for m in conv if m.get("role") == "assistant")
        return replies[turn] if turn < len(replies) else default
    return script


class ScriptedPolicy(Policy):
    def __init__(self, script: Callable[[list[dict[str, Any]]], str], tokenizer: Any = None,
                 name: str = "scripted"):
        self.script, self.name = script, name
        self.renderer = None
        if tokenizer is not None:
            self.renderer = ChatRenderer(tokenizer)
            self.token_level = True  # instance attribute: token-level only with a tokenizer

    def generate(self, conversations: Sequence[Conversation], tools: Any = None,
                 sampling: SamplingParams | None = None, *,
                 prompt_ids: Sequence[Sequence[int] | None] | None = None,
                 seeds: Sequence[int | None] | None = None) -> list[Generation]:
        del seeds  # a script is deterministic: there is nothing to seed
        outs = []
        for i, conv in enumerate(conversations):
            text = self.script([as_chat(m) for m in conv])
            if not isinstance(text, str):
                raise TypeError(f"script must return str, got {type(text).__name__}: {text!r}")
            if self.renderer is None:
                outs.append(Generation(text=text))
                continue
            ids = self.renderer.encode(text) + [self.renderer.eos_token_id]
            prompt = list(prompt_ids[i]) if prompt_ids is not None and prompt_ids[i] is not None else \
                self.renderer.prompt_ids(conv, tools[i] if isinstance(tools, list) and tools and
                                         not isinstance(tools[0], dict) else tools)
            outs.append(Generation(text=text, token_ids=ids, logprobs=[0.0] * len(ids), prompt_ids=prompt))
        return outs
