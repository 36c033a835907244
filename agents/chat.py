"""Token bookkeeping for multi-turn rollouts: render a conversation to ids ONCE, then only append.

A rollout step t conditions the model on ``prompt_ids[t]`` and samples ``action_ids[t]``. The
next context is built as::

    prompt_ids[t + 1] = prompt_ids[t] + action_ids[t] + tokens(closer + new environment turns)

so a past action is never decoded and re-tokenized (which silently shifts loss masks when a BPE
merges differently, when a template strips whitespace, or when a parser rewrites a tool call).
The environment part is rendered by the model's own chat template through a *delta probe*: the
template renders a fixed probe conversation ``P`` ending with an assistant turn and then ``P + new
messages + generation prompt``; the text that the second rendering adds after the first is what
the template puts between the end of an assistant turn and the next generation, and exactly that
text is tokenized and appended. ``closer`` is what the template writes after an assistant message's
content (``<|im_end|>\\n`` for ChatML); when the sampled action already ends with the EOS token that
opens the closer, only the rest is appended.

Templates that are not append-only across turns (Qwen3 drops ``<think>`` blocks of earlier turns,
some Llama templates re-date the system prompt, others render the system turn only once the
conversation has a certain length): the recorded context is still what the model was conditioned
on, because earlier turns are never re-rendered; it may differ from
``apply_chat_template(full history)``, and that is deliberate (training sees exactly what sampling
saw). If a template rewrites the *probe prefix* when messages are appended, no delta exists and
``ChatRenderer`` raises ``TemplateError`` naming the template at construction, instead of guessing.

Templates that ignore ``tools`` (SmolLM2's) get the tool schemas as a system message that
``ChatRenderer`` adds in front (documented format, see ``tools_system_text``).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from agentgym.agents.base import as_chat
from agentgym.types import Message

__all__ = ["ChatRenderer", "TemplateError", "tools_system_text"]

_PROBE_USER = "agentgym-probe-user-7f3a"
_PROBE_ASSISTANT = "agentgym-probe-assistant-7f3a"


class TemplateError(ValueError):
    """The tokenizer's chat template cannot be used for append-only rendering."""


def tools_system_text(tools: Sequence[dict[str, Any]]) -> str:
    """How tools are shown to a model whose chat template does not render them."""
    lines = "\n".join(json.dumps(t, sort_keys=True) for t in tools)
    return ("You can call these functions (JSON schemas):\n" + lines + "\n"
            'Call one as <tool_call>{"name": <name>, "arguments": <args-json>}</tool_call>.')


class ChatRenderer:
    """Chat-template rendering that supports exact, append-only continuation.

    >>> from transformers import AutoTokenizer
    >>> from agentgym.agents.models import build_tiny_model
    >>> r = ChatRenderer(AutoTokenizer.from_pretrained(build_tiny_model()))
    >>> ids = r.prompt_ids([{"role": "user", "content": "hi"}])
    >>> action = r.encode("hello") + [r.eos_token_id]
    >>> nxt = r.continue_ids(ids + action, action, [{"role": "user", "content": "more"}])
    >>> nxt[:len(ids) + len(action)] == ids + action
    True
    """

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no "
                                "chat template; set tokenizer.chat_template first")
        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_id
        template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else str(
            tokenizer.chat_template)
        self.renders_tools = "tools" in template
        probe = [{"role": "user", "content": _PROBE_USER},
                 {"role": "assistant", "content": _PROBE_ASSISTANT}]
        self._probe_text_cache: dict[str, str] = {}
        text = self._render(probe, None, add_generation_prompt=False)
        at = text.find(_PROBE_ASSISTANT)
        if at < 0:
            raise TemplateError("the chat template does not render assistant content verbatim")
        self.closer = text[at + len(_PROBE_ASSISTANT):]
        eos = tokenizer.eos_token or ""
        self._closer_after_eos = self.closer[len(eos):] if eos and self.closer.startswith(eos) else None

    # ------------------------------------------------------------------ rendering
    def _messages(self, messages: Sequence[Message | dict[str, Any]],
                  tools: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
        chat = [as_chat(m) for m in messages]
        if tools and not self.renders_tools:
            chat.insert(0, {"role": "system", "content": tools_system_text(tools)})
        return chat

    def _render(self, chat: list[dict[str, Any]], tools: Any, *, add_generation_prompt: bool) -> str:
        kwargs = {"tools": list(tools)} if tools and self.renders_tools else {}
        return self.tokenizer.apply_chat_template(chat, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt, **kwargs)

    def encode(self, text: str) -> list[int]:
        """Ids of template text (special tokens in the text are parsed, none are added)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def prompt_text(self, messages: Sequence[Message | dict[str, Any]],
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
        return self._render(self._messages(messages, tools), tools, add_generation_prompt=True)

    def prompt_ids(self, messages: Sequence[Message | dict[str, Any]],
                   tools: Sequence[dict[str, Any]] | None = None) -> list[int]:
        """The first context of an episode: the whole conversation plus the generation prompt."""
        return self.encode(self.prompt_text(messages, tools))

    def delta_text(self, new_messages: Sequence[Message | dict[str, Any]],
                   tools: Sequence[dict[str, Any]] | None = None) -> str:
        """What the template writes after a closed assistant turn for ``new_messages``, up to and
        including the next generation prompt."""
        probe = [{"role": "user", "content": _PROBE_USER},
                 {"role": "assistant", "content": _PROBE_ASSISTANT}]
        key = json.dumps(tools, sort_keys=True, default=str) if tools else ""
        base = self._probe_text_cache.get(key)
        if base is None:
            base = self._render(self._messages(probe, tools), tools, add_generation_prompt=False)
            self._probe_text_cache[key] = base
        full = self._render(self._messages(probe + [as_chat(m) for m in new_messages], tools), tools,
                            add_generation_prompt=True)
        if not full.startswith(base):
            raise TemplateError(
                "the chat template rewrites earlier turns when messages are appended, so no append-only "
                f"delta exists for {[as_chat(m).get('role') for m in new_messages]}: rendered prefix "
                f"{base[-80:]!r} is not a prefix of {full[:len(base) + 80][-160:]!r}")
        return full[len(base):]

    def continue_ids(self, context_ids: Sequence[int], action_ids: Sequence[int],
                     new_messages: Sequence[Message | dict[str, Any]],
                     tools: Sequence[dict[str, Any]] | None = None) -> list[int]:
        """``context_ids`` (= previous prompt + the sampled action) followed by the closer of the
        assistant turn and the rendered ``new_messages`` with the next generation prompt."""
        ended_with_eos = bool(action_ids) and action_ids[-1] == self.eos_token_id
        closer = self._closer_after_eos if ended_with_eos and self._closer_after_eos is not None else self.closer
        return list(context_ids) + self.encode(closer + self.delta_text(new_messages, tools))
