"""The data model every part of agentgym speaks: messages, tool calls, feedback, steps, trajectories
and distillation targets.

All records are pydantic 2 models with validation at construction, and every one of them survives a
JSON round trip unchanged (tuples come back as tuples, non-finite floats as floats), so a
trajectory written to a JSON Lines store reads back equal to the one that was written:

>>> step = Step(index=0, action_text="ls()", observation="Documents", reward=0.0)
>>> traj = Trajectory(task_id="multi_turn_base_0", steps=[step], final_reward=1.0, success=True)
>>> Trajectory.from_json(traj.to_json()) == traj
True
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

import pydantic
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator, model_validator
from pydantic_core import PydanticSerializationError

__all__ = [
    "EpisodeTokens",
    "episode_tokens",
    "FeedbackKind",
    "Feedback",
    "ToolCall",
    "Message",
    "Step",
    "Trajectory",
    "Target",
    "Role",
]

Role = Literal["system", "user", "assistant", "tool"]
# Trajectory fields that older files kept in ``metadata``.
_TYPED_METADATA = ("run_id", "episode", "task_index", "member", "seed", "update", "phase", "learner", "targets",
                   "feedback")
_LINE_BREAK_ESCAPES = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


class _Record(BaseModel):
    # Strict about unknown fields (a typo must not vanish silently) and JSON-faithful for floats.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants", validate_assignment=False)

    def to_json(self) -> str:
        """One line of JSON, lossless for every field, safe to split on any line boundary.

        Characters that ``str.splitlines`` treats as line breaks but JSON leaves unescaped (U+0085,
        U+2028, U+2029) are escaped; text holding lone surrogates (undecodable bytes kept with
        ``surrogateescape``) is written with ASCII escapes instead of failing.
        """
        try:
            text = self.model_dump_json()
        except PydanticSerializationError:
            return json.dumps(self.model_dump(mode="json"), ensure_ascii=True, separators=(",", ":"))
        return text.translate(_LINE_BREAK_ESCAPES)

    @classmethod
    def from_json(cls, text: str | bytes):
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            if not any(e["type"] == "json_invalid" for e in exc.errors()):
                raise
            return cls.model_validate(json.loads(text))  # lone-surrogate escapes jiter refuses


class FeedbackKind(str, enum.Enum):
    """What a feedback record tells: see ``Feedback``."""

    ERROR = "error"  # the action failed: a parse error, an unknown function, an execution error
    OBSERVATION = "observation"  # what the environment answered
    PAGE_DIFF = "page_diff"  # how the visible page changed (web environments)
    STATE_DIFF = "state_diff"  # how the hidden environment state changed
    REFERENCE = "reference"  # ground truth or an expert's answer: for feedback sources, never the policy
    OUTCOME = "outcome"  # the grader's verdict at the end of the episode
    HINT = "hint"  # a correction written by a teacher, judge or hindsight model


class Feedback(_Record):
    """One piece of structured feedback about one step.

    ``text`` is what a teacher prompt would show; ``payload`` is the same information for code
    (JSON-compatible values only, so it survives the JSON Lines store).
    """

    kind: FeedbackKind = Field(description="What this record tells (error, observation, ...).")
    step: int = Field(ge=0, description="0-based index of the step this feedback is about.")
    text: str = Field(default="", description="Human/teacher-readable rendering.")
    payload: dict[str, JsonValue] = Field(default_factory=dict, description="Structured content.")
    source: str = Field(default="env", description="Who produced it: 'env' or a feedback source's name.")


class ToolCall(_Record):
    """A function call decoded from model text (or returned natively by an API)."""

    name: str = Field(min_length=1, description="Function name as the tool schema spells it.")
    arguments: dict[str, JsonValue] = Field(default_factory=dict, description="Keyword arguments.")
    id: str | None = Field(default=None, description="Call id for chat templates that pair results.")


class Message(_Record):
    """One chat message, in the shape chat templates and OpenAI-compatible APIs expect."""

    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None

    def to_chat(self) -> dict[str, Any]:
        """The plain dict a tokenizer chat template or the OpenAI client takes."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


class Step(_Record):
    """One action of the agent and what the environment did with it.

    Token fields hold the EXACT ids of the rollout: ``prompt_ids`` is what the policy was
    conditioned on, ``action_ids`` what it sampled (``action_logprobs`` their log-probs). Learners
    use these, never a re-tokenized rendering.
    """

    index: int = Field(ge=0, description="0-based position of the step in its episode.")
    prompt_ids: list[int] = Field(default_factory=list, description="Exact context token ids.")
    action_ids: list[int] = Field(default_factory=list, description="Exact sampled token ids.")
    action_logprobs: list[float] = Field(default_factory=list, description="Sampling log-probs.")
    action_text: str = Field(default="", description="The raw model text sent to env.step.")
    observation: str = Field(default="", description="The environment's reply to the action.")
    reply: list[Message] = Field(default_factory=list, description="The reply as chat messages.")
    feedback: list[Feedback] = Field(default_factory=list)
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, JsonValue] = Field(default_factory=dict, description="JSON-safe extras.")

    @model_validator(mode="after")
    def _logprobs_match_ids(self) -> Step:
        if self.action_logprobs and len(self.action_logprobs) != len(self.action_ids):
            raise ValueError(
                f"action_logprobs has {len(self.action_logprobs)} entries but action_ids has "
                f"{len(self.action_ids)}; they must align token for token"
            )
        return self

    @property
    def errors(self) -> list[Feedback]:
        return [f for f in self.feedback if f.kind is FeedbackKind.ERROR]


class Target(_Record):
    """Where a learner supervises: a step, a token span of that step's action, and an optional hint."""

    step: int = Field(ge=0, description="0-based step index.")
    span: tuple[int, int] = Field(description="[start, end) offsets into that step's action_ids.")
    hint: str | None = Field(default=None, description="Feedback text for the teacher context.")
    source: str = Field(default="", description="The selector that chose it.")

    @field_validator("span")
    @classmethod
    def _span_is_ordered(cls, span: tuple[int, int]) -> tuple[int, int]:
        start, end = span
        if start < 0 or end < start:
            raise ValueError(f"span must satisfy 0 <= start <= end, got {span}")
        return span


class Trajectory(_Record):
    """A finished (or cut-off) episode: its steps and its outcome."""

    task_id: str
    group_id: str = Field(default="", description="Episodes rolled out together on the same task.")
    env_id: str = Field(default="", description="The gymnasium id the episode ran in.")
    messages: list[Message] = Field(default_factory=list, description="The initial conversation.")
    steps: list[Step] = Field(default_factory=list)
    final_reward: float = 0.0
    success: bool = False
    terminated: bool = False
    truncated: bool = False
    error: str | None = Field(default=None, description="Why the episode stopped abnormally, if it did.")
    # Bookkeeping of the rollout and the training run (typed: the store, the report and resume read them).
    run_id: str = Field(default="", description="The rollout run (e.g. 'train-3-r0') that produced it.")
    episode: str = Field(default="", description="'<task index>:<member>' within its run.")
    task_index: int | None = Field(default=None, ge=0, description="Index of its task in the run's task list.")
    member: int | None = Field(default=None, ge=0, description="Its index within the task's group.")
    seed: int | None = Field(default=None, description="The env reset seed.")
    update: int | None = Field(default=None, ge=0, description="The training update it was collected for.")
    phase: Literal["train", "eval"] | None = Field(default=None, description="Training rollout or evaluation.")
    learner: str | None = Field(default=None, description="The learner of the run.")
    targets: list[Target] = Field(default_factory=list, description="What the selector chose to supervise.")
    feedback: list[Feedback] = Field(default_factory=list,
                                     description="What the feedback source wrote about it (the env's own feedback "
                                                 "is on each step).")
    metadata: dict[str, JsonValue] = Field(default_factory=dict, description="Env- and user-specific extras.")

    @model_validator(mode="before")
    @classmethod
    def _typed_from_metadata(cls, data: Any) -> Any:
        # Files written before these fields were typed kept them in ``metadata``: lift them out.
        if isinstance(data, dict) and isinstance(data.get("metadata"), dict):
            meta = data["metadata"]
            lifted = {k: meta[k] for k in _TYPED_METADATA if k in meta and k not in data and _liftable(k, meta[k])}
            if lifted:
                data = {**data, **lifted, "metadata": {k: v for k, v in meta.items() if k not in lifted}}
        return data

    @field_validator("steps")
    @classmethod
    def _indices_are_positions(cls, steps: list[Step]) -> list[Step]:
        for pos, step in enumerate(steps):
            if step.index != pos:
                raise ValueError(f"step at position {pos} has index {step.index}; indices must be 0..T-1")
        return steps

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    def feedback_of(self, kind: FeedbackKind | str) -> list[Feedback]:
        kind = FeedbackKind(kind)
        return [f for s in self.steps for f in s.feedback if f.kind is kind]


def _liftable(key: str, value: Any) -> bool:
    """Whether a legacy metadata value is valid for its typed field (damaged ones stay in metadata,
    where the report names the problem, instead of making the whole record unreadable)."""
    field = Trajectory.model_fields[key]
    try:
        pydantic.TypeAdapter(field.annotation).validate_python(value)
    except (ValidationError, TypeError, ValueError):
        return False
    return True


def dumps_jsonl(records: list[_Record]) -> str:
    """Records as JSON Lines text (one record per line, trailing newline)."""
    return "".join(r.to_json() + "\n" for r in records)


def json_safe(value: Any, *, max_depth: int = 20) -> JsonValue:
    """Best-effort conversion of arbitrary Python values into JSON-compatible ones (for info dicts).

    Tuples and sets become lists, unknown objects their ``repr``; the result always passes
    ``json.dumps``.
    """
    if max_depth <= 0:
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v, max_depth=max_depth - 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [json_safe(v, max_depth=max_depth - 1) for v in items]
    if isinstance(value, BaseModel):
        return json.loads(value.model_dump_json())
    return repr(value)


@dataclass
class EpisodeTokens:
    """A token-level episode laid out as one sequence: ``ids`` and a mask that is 1 exactly on the
    tokens the policy sampled (``action_spans`` gives each step's [start, end))."""

    ids: list[int]
    policy_mask: list[int]
    action_spans: list[tuple[int, int]]


def episode_tokens(trajectory: Trajectory) -> EpisodeTokens:
    """The episode as one sequence plus the loss mask; checks the append-only invariant."""
    ids: list[int] = []
    mask: list[int] = []
    spans = []
    for step in trajectory.steps:
        if step.prompt_ids[:len(ids)] != ids:
            raise ValueError(f"step {step.index}: prompt_ids do not extend the previous context + action "
                             f"(first difference at token {next(i for i, (a, b) in enumerate(zip(step.prompt_ids, ids)) if a != b) if len(step.prompt_ids) >= len(ids) else len(step.prompt_ids)})")
        mask.extend([0] * (len(step.prompt_ids) - len(ids)))
        ids = list(step.prompt_ids)
        spans.append((len(ids), len(ids) + len(step.action_ids)))
        ids.extend(step.action_ids)
        mask.extend([1] * len(step.action_ids))
    return EpisodeTokens(ids=ids, policy_mask=mask, action_spans=spans)
