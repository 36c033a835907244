"""Text renderings of trajectories for teacher, judge and hindsight prompts, within character budgets.

>>> from agentgym.types import Step, Trajectory, Message
>>> t = Trajectory(task_id="x", messages=[Message(role="user", content="Say apple")],
...                steps=[Step(index=0, action_text="pear", observation="wrong")], final_reward=0.0)
>>> print(render_trajectory(t))  # doctest: +NORMALIZE_WHITESPACE
TASK
Say apple
--- Step 1 ---
Agent action:
pear
Environment output:
wrong
Step reward: 0 | episode ended: False
=== OUTCOME ===
Final reward: 0 | task solved: False
"""

from __future__ import annotations

from agentgym.types import FeedbackKind, Step, Trajectory

from agentgym.feedback.prompts import PROMPTS, Prompts

__all__ = ["task_text", "step_output", "render_trajectory", "clip", "clip_tail", "is_action_step"]


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying how much was cut."""
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return text
    marker = f" [... {len(text) - limit} more characters]"
    if len(marker) >= limit:
        return text[:limit]
    return text[: limit - len(marker)] + marker


def clip_tail(text: str, limit: int) -> str:
    """The last ``limit`` characters of ``text`` (for transcripts, whose end matters most)."""
    if limit <= 0:
        return ""
    return text if len(text) <= limit else text[len(text) - limit:]


def task_text(trajectory: Trajectory, limit: int = 4000) -> str:
    """The task as the agent first saw it: the non-system messages of the initial conversation."""
    parts = [m.content for m in trajectory.messages if m.role != "system" and m.content]
    if not parts:
        parts = [str(trajectory.metadata.get("task", trajectory.task_id))]
    return clip("\n".join(parts), limit)


def step_output(step: Step, limit: int = 2000) -> str:
    """What the environment answered to ``step``: the observation, plus any error text not in it."""
    text = step.observation
    extra = [f.text for f in step.feedback if f.kind is FeedbackKind.ERROR and f.text and f.text not in text]
    if extra:
        text = (text + "\n" if text else "") + "\n".join(extra)
    return clip(text, limit) if text else "(no output)"


def is_action_step(step: Step) -> bool:
    """A step the policy acted in (every recorded step is one; kept as a hook for richer records)."""
    return True


def render_trajectory(trajectory: Trajectory, *, budget: int = 12_000, prompts: Prompts = PROMPTS,
                      step_limit: int = 2000, task_limit: int = 4000) -> str:
    """Task, each step (action, output, reward, termination) and the outcome, in at most ``budget``
    characters: the task header is kept, and the EARLIEST steps are dropped first (the end of a
    failed attempt is where the evidence is)."""
    header = prompts.trajectory_task.format(task=task_text(trajectory, task_limit))
    blocks = [prompts.trajectory_step.format(
        number=s.index + 1, action=clip(s.action_text, step_limit) or "(empty)", output=step_output(s, step_limit),
        reward=s.reward, terminated=s.terminated or s.truncated) for s in trajectory.steps]
    blocks.append(prompts.trajectory_outcome.format(reward=trajectory.final_reward, success=trajectory.success))
    body = "".join(blocks)
    room = budget - len(header)
    if room <= 0:
        return clip_tail(header + body, budget)
    if len(body) <= room:
        return header + body
    dropped = 0
    while len(blocks) > 1:
        marker = prompts.trajectory_elided.format(dropped=dropped + len(blocks[0]))
        if len("".join(blocks[1:])) + len(marker) <= room:
            dropped += len(blocks[0])
            blocks = blocks[1:]
            return header + marker + "".join(blocks)
        dropped += len(blocks[0])
        blocks = blocks[1:]
    marker = prompts.trajectory_elided.format(dropped=dropped)
    out = header + marker + clip_tail("".join(blocks), max(0, room - len(marker)))
    return out if len(out) <= budget else clip_tail(out, budget)
