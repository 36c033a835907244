"""``agentgym/Echo-v0``: the smallest real ``AgentEnv``, repeat a word; a template for a user's env.

>>> import gymnasium as gym
>>> import agentgym
>>> env = gym.make("agentgym/Echo-v0", reference=True)
>>> len(env.unwrapped.tasks())
8
>>> obs, info = env.reset(seed=0, options={"word": "river"})
>>> obs, reward, terminated, truncated, info = env.step("ocean")
>>> obs, reward, terminated, [f.kind.value for f in info["feedback"]]
("Wrong: you said 'ocean'.", 0.0, False, ['error', 'reference'])
"""

from __future__ import annotations

from typing import Any

from agentgym.env import AgentEnv, EnvReply, EnvReset
from agentgym.envspec import EnvDefaults
from agentgym.types import Feedback, FeedbackKind, Message

__all__ = ["EchoEnv"]


class EchoEnv(AgentEnv):
    """The smallest real AgentEnv: repeat a word. Used in docs and as a user-env template.

    ``reference=True`` adds a ``reference`` feedback record to every step (the expected word, in the
    ``next_command`` / ``plan`` shape ALFWorld's expert uses), so reference-based hindsight and the
    held-out reference log-prob work on it: ``benchmarks/learning.py`` uses it as its learnable task.
    """

    WORDS = ("apple", "river", "stone", "cloud", "ember", "field", "glass", "honey")
    defaults = EnvDefaults(max_steps=3, max_new_tokens=8, reference_action=lambda payload: (
        payload["plan"][0] if payload.get("plan_scope") == "episode_start" and payload.get("plan") else None))

    def __init__(self, *, reference: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.reference = bool(reference)

    def tasks(self) -> list[dict[str, Any]]:
        return [{"word": w} for w in self.WORDS]

    def _reset(self, options: dict[str, Any]) -> EnvReset:
        word = options.get("word") or self.WORDS[int(self.np_random.integers(len(self.WORDS)))]
        if not isinstance(word, str) or not word:
            raise ValueError(f"options['word'] must be a non-empty string, got {word!r}")
        self._word = word
        return EnvReset(messages=[Message(role="user", content=f"Say the word: {word}")],
                        task={"id": f"echo-{word}", "word": word})

    def _step(self, action: str) -> EnvReply:
        said = action.strip().lower()
        reference = [Feedback(kind=FeedbackKind.REFERENCE, step=0, text=self._word,
                              payload={"next_command": self._word, "plan": [self._word],
                                       "plan_scope": "episode_start"})] if self.reference else []
        if said == self._word:
            return EnvReply(messages=[Message(role="user", content="Correct.")], reward=1.0, terminated=True,
                            feedback=[Feedback(kind=FeedbackKind.OUTCOME, step=0, text="correct",
                                               payload={"success": True}), *reference])
        text = f"Wrong: you said {said[:80]!r}."
        return EnvReply(messages=[Message(role="user", content=text)],
                        feedback=[Feedback(kind=FeedbackKind.ERROR, step=0, text=text,
                                           payload={"expected": self._word}), *reference])

