"""The built-in teachers (the ``TEACHERS`` registry, ``agentgym.plugins``): who writes model-based
feedback (hints, judge summaries) for the sources that need a policy.

A teacher is a factory ``teacher(settings, student, learner) -> Policy``: ``settings`` is an instance
of the factory's ``Settings`` attribute (a ``PluginSettings``), which is the config section
``[feedback.teacher.<name>]`` (``--feedback.teacher.<name>.<field>``, listed by ``--help``);
``student`` is the trainer's policy and ``learner`` whoever holds the teacher weights. Choose one with
``[feedback.teacher] name = "<name>"`` (or ``--feedback.teacher <name>``); register your own with
``@TEACHERS.register("name")`` or the ``agentgym.teachers`` entry-point group.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from agentgym.agents.openai_policy import OPENAI_PREFIX, OpenAIPolicy, is_openai_spec, openai_policy_from_spec
from agentgym.agents.teachers import TeacherPolicy
from agentgym.plugins import PluginSettings

__all__ = ["policy_teacher", "openai_teacher", "OpenAITeacherSettings"]


def policy_teacher(settings: Any, student: Any, learner: Any) -> TeacherPolicy:
    """``feedback.teacher = "policy"``: the student with the teacher weights writes the feedback."""
    return TeacherPolicy(student, learner)


policy_teacher.Settings = PluginSettings  # type: ignore[attr-defined]  (no settings)


class OpenAITeacherSettings(PluginSettings):
    """``[feedback.teacher.openai]``: the OpenAI-compatible endpoint that writes the feedback."""

    model: str | None = Field(None, description="model name at the endpoint (required by this teacher)")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint (None: $OPENAI_BASE_URL or "
                                                   "api.openai.com)")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the endpoint's API key "
                                                          "(the key itself never goes into a config file)")
    timeout_s: float = Field(60.0, gt=0, le=86_400, description="deadline of one API request (connect, send "
                                                                "and the whole body), seconds")
    max_concurrency: int = Field(8, ge=1, le=1024, description="API requests in flight at once")
    max_attempts: int = Field(6, ge=1, le=100, description="tries of a request that fails transiently "
                                                           "(429, 5xx, timeouts, malformed replies)")


def openai_teacher(settings: OpenAITeacherSettings, student: Any, learner: Any) -> OpenAIPolicy:
    """``feedback.teacher = "openai"``: a model behind an OpenAI-compatible API writes the feedback."""
    if not settings.model:
        raise ValueError("feedback.teacher.openai.model: required when feedback.teacher = 'openai'")
    spec = settings.model if is_openai_spec(settings.model) else OPENAI_PREFIX + settings.model
    return openai_policy_from_spec(spec, base_url=settings.base_url, api_key_env=settings.api_key_env,
                                   timeout=settings.timeout_s, max_concurrency=settings.max_concurrency,
                                   max_attempts=settings.max_attempts)


openai_teacher.Settings = OpenAITeacherSettings  # type: ignore[attr-defined]
