"""``agentgym diagnose``: does the teacher prefer the right action? Measured before any training.

Self-distillation teaches only where the teacher's context (the student's context plus feedback)
makes the right action more likely than the student's own context does. This command rolls out one
batch with the untrained model, runs each feedback source and its selector on it, builds each
learner's teacher context on the targeted steps, and prints, per source x learner, the
teacher-signal diagnostic (``agentgym.learners.signal``) on the steps where the env has a reference
action: ``teacher_gain`` (mean per-token log-prob of the reference action under the teacher context
minus under the student context), the fraction of steps where it is positive, and both log-probs.
A source whose gain is <= 0 would teach the model to move away from the reference.

    agentgym diagnose --env.id agentgym/Echo-v0 --env.kwargs '{"reference": true}' \\
        --sources reference_hindsight,reference,immediate --learners hint_sd,serl \\
        --wordings '{"paper": {}, "bare": {"teacher_hint": "{hint}"}}'

``--wordings`` compares prompt sets (name -> ``[feedback.prompts]`` overrides, on top of the run's) on
the same rollouts.

Every run setting (``--section.key VALUE``, ``--config FILE``, ``--preset``) is read as
``agentgym train`` reads it; ``--feedback.prompts.<name> TEXT`` tries other wording.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Sequence

from agentgym.config import ConfigError
from agentgym.failures import run_command
from agentgym.feedback.base import make_source
from agentgym.feedback.prompts import Prompts
from agentgym.plugins import LEARNERS, SELECTORS, SOURCES, TEACHERS
from agentgym.presets import cli_config
from agentgym.tasks import step_references

__all__ = ["main", "diagnose", "SignalRow", "format_table"]


@dataclass
class SignalRow:
    env: str
    model: str
    source: str
    selector: str
    wording: str
    learner: str
    context: str  # the learner's teacher-context kind
    targets: int  # targeted steps that got a teacher context
    scored: int  # of those, steps with a reference action (what the gain averages over)
    gains: list[float]
    teacher: list[float]
    student: list[float]

    @property
    def gain(self) -> float | None:
        return statistics.fmean(self.gains) if self.gains else None

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "model": self.model, "source": self.source, "selector": self.selector,
                "wording": self.wording,
                "learner": self.learner, "context": self.context, "targets": self.targets, "scored": self.scored,
                "teacher_gain": self.gain,
                "teacher_gain_std": statistics.stdev(self.gains) if len(self.gains) > 1 else None,
                "teacher_prefers_reference": sum(g > 0 for g in self.gains) / len(self.gains) if self.gains else None,
                "teacher_reference_logprob": statistics.fmean(self.teacher) if self.teacher else None,
                "student_reference_logprob": statistics.fmean(self.student) if self.student else None}


def _selector_for(source: Any, name: str, learner_cls: Any, configured: str | None) -> tuple[Any, str]:
    """The configured selector, else the learner's, else ``dense``; a hindsight selector only for
    sources that write hindsight records."""
    chosen = configured or learner_cls.default_selector or "dense"
    if chosen.startswith("hindsight") and "hindsight" not in name:
        chosen = "dense"
    return SELECTORS.get(chosen).from_config(None, include_successful=learner_cls.feeds_successful), chosen


def diagnose(trainer: Any, sources: Sequence[str], learners: Sequence[str],
             wordings: dict[str, dict[str, str]] | None = None) -> list[SignalRow]:
    """Roll out one training batch with ``trainer``'s (untrained) policy and measure the teacher
    signal of every wording x learner x source on it (``wordings``: name -> prompt overrides on
    top of the run's; default: the run's own)."""
    cfg = trainer.config
    trajs = trainer.rollout(trainer.tasks_for(0), 0, "train", cfg.env.group_size)
    references = step_references(trajs, trainer._reference_reader, trainer.tokenizer)
    rows = []
    for wording, overrides in (wordings or {"run": {}}).items():
        prompts = Prompts.from_overrides(overrides, base=trainer.prompts)
        for lname in learners:
            cls = LEARNERS.get(lname)
            if cls.uses_teacher:
                # The trainer's own model: the teacher weights start as a copy of the student's.
                learner = cls(settings={}).bind(trainer.learner.unwrapped, trainer.tokenizer, prompts=prompts)
                rows += [_measure(trainer, learner, trajs, references, name, wording, prompts) for name in sources]
    return rows


def _measure(trainer: Any, learner: Any, trajs: Sequence[Any], references: dict, source_name: str, wording: str,
             prompts: Any) -> SignalRow:
    """The teacher signal of one source (and its selector) under one learner's teacher context."""
    # torch: loaded by the Trainer that measures; `agentgym diagnose --help` stays without it
    from agentgym.learners.base import Batch
    from agentgym.learners.signal import teacher_signal
    cfg, cls = trainer.config, type(learner)
    teacher = TEACHERS.get(cfg.feedback.teacher.name)(cfg.feedback.teacher.settings, trainer.policy, learner) \
        if any(SOURCES.get(n).needs_policy for n in source_name.split("+")) else None
    source = make_source(source_name, policy=teacher, options=cfg.feedback.options(), prompts=prompts)
    selector, selector_name = _selector_for(source, source_name, cls,
                                            cfg.feedback.selector if cfg.feedback.source == source_name else None)
    targets = [selector(t, f) for t, f in zip(trajs, source.annotate(trajs))]
    samples, _ = Batch(list(trajs), targets, references=references).samples()
    hinted = [learner.with_teacher_context(s, s.target.hint) for s in samples
              if s.target is not None and s.target.hint and (cls.feeds_successful or not trajs[s.traj].success)]
    hinted = [s for s in hinted if s.teacher_context is not None]
    signal = teacher_signal(learner, hinted)
    return SignalRow(cfg.env.id, trainer.model_name, source_name, selector_name, wording, learner.name,
                     cls.teacher_context_kind.__name__, len(hinted), len(signal.teacher),
                     [t - s for t, s in zip(signal.teacher, signal.student)], signal.teacher, signal.student)


def _f(v: float | None, fmt: str = "{:+.3f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def format_table(rows: Sequence[SignalRow]) -> str:
    lines = ["| env | model | wording | source -> selector | learner (teacher context) | targets (with reference) | "
             "teacher_gain ± std | teacher prefers reference | ref log-prob student -> teacher |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r.as_dict()
        gain = _f(d["teacher_gain"]) + (f" ± {d['teacher_gain_std']:.3f}" if d["teacher_gain_std"] is not None else "")
        lines.append(f"| {r.env} | {r.model} | {r.wording} | {r.source} -> {r.selector} | {r.learner} ({r.context}) | {r.targets} "
                     f"({r.scored}) | {gain} | {_f(d['teacher_prefers_reference'], '{:.0%}')} | "
                     f"{_f(d['student_reference_logprob'], '{:.3f}')} -> {_f(d['teacher_reference_logprob'], '{:.3f}')} |")
    return "\n".join(lines)


def _split(argv: list[str], flag: str) -> tuple[str | None, list[str]]:
    rest, value, i = [], None, 0
    while i < len(argv):
        if argv[i] == flag and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
            continue
        if argv[i].startswith(flag + "="):
            value, i = argv[i].split("=", 1)[1], i + 1
            continue
        rest.append(argv[i])
        i += 1
    return value, rest


def _wordings(text: str | None) -> dict[str, dict[str, str]] | None:
    """``--wordings`` JSON: name -> prompt overrides, each checked."""
    if text is None:
        return None
    try:
        wordings = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--wordings: not JSON ({exc}); give {{name: {{prompt: template}}}}") from None
    if not isinstance(wordings, dict) or not all(isinstance(v, dict) for v in wordings.values()):
        raise ConfigError(f"--wordings: give {{name: {{prompt: template}}}}, got {text!r}")
    for name, overrides in wordings.items():
        try:
            Prompts.from_overrides(overrides)
        except ValueError as exc:
            raise ConfigError(f"--wordings {name}: {exc}") from None
    return wordings


def _print(rows: Sequence[SignalRow], as_json: bool) -> None:
    if as_json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    print(format_table(rows))
    bad = [r for r in rows if r.gain is not None and r.gain <= 0]
    if bad:
        print(f"\n{len(bad)} of {len(rows)} source x learner pairs have teacher_gain <= 0: distilling from them "
              "moves the model away from the reference (see README, 'Does the teacher know better?').")
    if not any(r.scored for r in rows):
        print("\nno targeted step had a reference action (the env declares none, or nothing was targeted): "
              "teacher_gain is not measurable here")


def _run(argv: list[str]) -> int:
    as_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    sources, argv = _split(argv, "--sources")
    learners, argv = _split(argv, "--learners")
    wordings_text, argv = _split(argv, "--wordings")
    cfg, _, _ = cli_config(argv + ["--train.updates", "0", "--train.progress", "false"])
    cfg = cfg.resolved()
    names = [s.strip() for s in (sources or cfg.feedback.source).split(",") if s.strip()]
    for name in names:
        for part in name.split("+"):
            SOURCES.get(part)  # did-you-mean before a model loads
    lnames = [n.strip() for n in (learners or cfg.learner.name).split(",") if n.strip()]
    for n in lnames:
        if not LEARNERS.get(n).uses_teacher:
            raise ConfigError(f"--learners: {n!r} has no teacher; choose from "
                              f"{[x for x in LEARNERS.names() if LEARNERS.get(x).uses_teacher]}")
    wordings = _wordings(wordings_text)
    from agentgym.trainer import Trainer  # torch and transformers: only once the settings are checked
    with tempfile.TemporaryDirectory() as tmp:
        cfg.train.run_dir = tmp
        trainer = Trainer(cfg, notes=["diagnose"])
        print(f"agentgym diagnose: {cfg.env.id}, {trainer.model_name}: rolling out "
              f"{cfg.env.tasks_per_update} task(s) x {cfg.env.group_size}", file=sys.stderr, flush=True)
        rows = diagnose(trainer, names, lnames, wordings)
    _print(rows, as_json)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``agentgym diagnose [--sources a,b] [--learners x,y] [--json] [agentgym train settings ...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(main.__doc__ + "\n\n" + __doc__)
        return 0
    return run_command("diagnose", lambda: _run(argv))
