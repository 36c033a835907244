"""Learners on the tiny model: token-exact log-probs, gradients only through policy tokens, HINT-SD's
exact zeros, teacher contexts, micro-batch invariance, and a real learning signal per learner."""

import pytest
import torch

from agentgym.feedback import make_selector, make_source
from agentgym.learners import Batch, make_learner
from agentgym.learners.samples import action_log_probs
from agentgym.agents.teachers import AppendedTurn
from agentgym.types import Target

from tests.learners.conftest import echo_group


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _score(model, tokenizer, trajs):
    """Scored log-probs of the recorded actions (what a policy with these weights would have logged)."""
    out = []
    with torch.no_grad():
        for t in trajs:
            steps = []
            for s in t.steps:
                [lp] = action_log_probs(model, [s.prompt_ids], [s.action_ids], pad_id=tokenizer.pad_token_id)
                steps.append(s.model_copy(update={"action_logprobs": lp.gather(-1, torch.tensor(s.action_ids).unsqueeze(-1)).squeeze(-1).tolist()}))
            out.append(t.model_copy(update={"steps": steps}))
    return out


def test_log_probs_are_exact_on_the_recorded_ids_whatever_the_padding(lora_model, tokenizer, echo_batch):
    s_long, s_short = echo_batch[2].steps[2], echo_batch[0].steps[0]
    together = action_log_probs(lora_model, [s_long.prompt_ids, s_short.prompt_ids],
                                [s_long.action_ids, s_short.action_ids], pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        ids = torch.tensor([s_short.prompt_ids + s_short.action_ids])
        ref = lora_model(input_ids=ids).logits[0, len(s_short.prompt_ids) - 1:-1].log_softmax(-1)
    assert together[1].shape == ref.shape
    assert torch.allclose(together[1], ref, atol=1e-4)


def test_gradients_flow_only_through_policy_tokens(lora_model, tokenizer, echo_batch):
    step = echo_batch[2].steps[1]
    captured = {}
    norm = lora_model.base_model.model.model.norm

    def hook(module, inputs, output):
        output.retain_grad()
        captured["h"] = output

    handle = norm.register_forward_hook(hook)
    try:
        [lp] = action_log_probs(lora_model, [step.prompt_ids], [step.action_ids], pad_id=tokenizer.pad_token_id)
        lp.gather(-1, torch.tensor(step.action_ids).unsqueeze(-1)).sum().backward()
    finally:
        handle.remove()
    grad = captured["h"].grad[0].abs().sum(-1)
    n, m = len(step.prompt_ids), len(step.action_ids)
    nonzero = torch.nonzero(grad).flatten().tolist()
    # Only the m positions that predict action tokens (n-1 .. n+m-2) receive gradient.
    assert nonzero == list(range(n - 1, n + m - 1))
    frozen = [p for name, p in lora_model.named_parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)  # base weights stay frozen under LoRA


def test_teacher_context_appends_one_feedback_message(tokenizer, echo_batch):
    step = echo_batch[2].steps[0]
    builder = AppendedTurn(tokenizer)
    ctx = builder(step.prompt_ids, "Say apple instead.")
    gen = builder.gen_prompt_ids
    assert ctx[:len(step.prompt_ids) - len(gen)] == step.prompt_ids[:-len(gen)] and ctx[-len(gen):] == gen
    added = tokenizer.decode(ctx[len(step.prompt_ids) - len(gen):-len(gen)])
    assert added.count("<|im_start|>user") == 1 and "Say apple instead." in added
    with pytest.raises(ValueError, match="generation prompt"):
        builder(step.prompt_ids + step.action_ids, "x")


def test_teacher_gets_no_gradient_and_scores_the_students_own_actions(lora_model, tokenizer, echo_batch):
    learner = make_learner("hint_sd", lora_model, tokenizer, dict(lr=1e-3, teacher="ema"))
    targets = make_selector("first_error")
    fb = make_source("immediate").annotate(echo_batch)
    metrics = learner.update(Batch(echo_batch, [targets(t, f) for t, f in zip(echo_batch, fb)]))
    assert metrics["teacher_calls"] == 2 and metrics["loss"] > 0
    assert all(not t.requires_grad and t.grad is None for t in learner.teacher_weights.params.values())


def test_hint_sd_is_exactly_zero_on_unselected_steps_and_successful_trajectories(tiny_model_path, tokenizer, echo_batch):
    import peft
    from transformers import AutoModelForCausalLM

    def fresh():
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
        return peft.get_peft_model(m, peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))

    failed, success = echo_batch[2], echo_batch[0]
    hint = "The word is apple."
    span = (0, len(failed.steps[1].action_ids))
    settings = dict(lr=1e-2, teacher="fixed")

    # A: failed trajectory with a target on step 1 + a successful one WITH a target (must be ignored).
    a = make_learner("hint_sd", fresh(), tokenizer, settings)
    ma = a.update(Batch([failed, success], [[Target(step=1, span=span, hint=hint)],
                                            [Target(step=0, span=(0, 2), hint=hint)]]))
    # B: only the failed trajectory with the same target.
    b = make_learner("hint_sd", fresh(), tokenizer, settings)
    mb = b.update(Batch([failed], [[Target(step=1, span=span, hint=hint)]]))
    assert ma["selected_steps"] == mb["selected_steps"] == 1
    assert ma["loss"] == mb["loss"] > 0
    wa, wb = _trainable(a.unwrapped), _trainable(b.unwrapped)
    assert all(torch.equal(wa[n], wb[n]) for n in wa)

    # C: nothing selected (successful trajectory only): no gradient at all, weights untouched.
    model = fresh()
    before = _trainable(model)
    c = make_learner("hint_sd", model, tokenizer, settings)
    mc = c.update(Batch([success], [[Target(step=0, span=(0, 2), hint=hint)]]))
    assert mc["loss"] == 0.0 and mc["empty_batches"] == 1.0 and mc["distilled_token_fraction"] == 0.0
    after = _trainable(c.unwrapped)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_the_update_does_not_depend_on_the_micro_batching(tiny_model_path, tokenizer, echo_batch):
    import peft
    from transformers import AutoModelForCausalLM
    weights = []
    for budget in (10_000, 1):  # everything in one micro-batch vs one sample per micro-batch
        torch.manual_seed(0)
        m = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32),
                                peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
        # Plain SGD (lr 1): the weight change IS the gradient (Adam's first step would hide it).
        sgd = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1.0)
        learner = make_learner("grpo", m, tokenizer, dict(token_budget=budget, old_logprobs="recompute",
                                                                     grad_clip=1e9), optimizer=sgd)
        metrics = learner.update(Batch(echo_batch))
        weights.append((_trainable(learner.unwrapped), metrics["loss"]))
    (w1, l1), (w2, l2) = weights
    assert l1 == pytest.approx(l2, rel=1e-5)
    assert all(torch.allclose(w1[n], w2[n], atol=1e-6, rtol=1e-4) for n in w1)


# ------------------------------------------------------------------------------ learning signal
def _mean_action_logp(model, tokenizer, trajs):
    vals = []
    with torch.no_grad():
        for t in trajs:
            for s in t.steps:
                [lp] = action_log_probs(model, [s.prompt_ids], [s.action_ids], pad_id=tokenizer.pad_token_id)
                vals.append(float(lp.gather(-1, torch.tensor(s.action_ids).unsqueeze(-1)).mean()))
    return sum(vals) / len(vals)


@pytest.mark.parametrize("name", ["grpo", "serl"])
def test_reward_learners_raise_the_successful_action_and_lower_the_failed_ones(name, lora_model, tokenizer, echo_batch):
    good, bad = echo_batch[:2], echo_batch[2:]
    extra = dict(teacher="refresh", teacher_every=2) if name == "serl" else {}
    learner = make_learner(name, lora_model, tokenizer, dict(lr=5e-3, **extra))
    g0, b0 = _mean_action_logp(learner.unwrapped, tokenizer, good), _mean_action_logp(learner.unwrapped, tokenizer, bad)
    targets = [make_selector("dense", include_successful=True)(t, f)
               for t, f in zip(echo_batch, make_source("immediate").annotate(echo_batch))]
    for _ in range(4):
        batch = _score(learner.unwrapped, tokenizer, echo_batch)  # on-policy log-probs, as a rollout logs them
        metrics = learner.update(Batch(batch, targets))
    g1, b1 = _mean_action_logp(learner.unwrapped, tokenizer, good), _mean_action_logp(learner.unwrapped, tokenizer, bad)
    assert g1 > g0 + 0.5 and b1 < b0 - 0.5, (g0, g1, b0, b1)
    if name == "serl":
        assert metrics["teacher_calls"] > 0 and 0 < metrics["serl_lambda"] < 0.5


@pytest.mark.parametrize("name", ["dense_sd", "hint_sd"])
def test_distillation_learners_move_the_student_to_the_hinted_teacher(name, lora_model, tokenizer, echo_batch):
    fb = make_source("immediate").annotate(echo_batch)
    selector = make_selector("dense" if name == "dense_sd" else "first_error")
    targets = [selector(t, f) for t, f in zip(echo_batch, fb)]
    # A fixed teacher: the divergence to it on the selected tokens is the objective being minimised.
    learner = make_learner(name, lora_model, tokenizer, dict(lr=3e-3, teacher="fixed", topk=20))
    # Make the teacher differ from the student first (the random tiny model barely reads the hint).
    with torch.no_grad():
        for n, p in learner.teacher_weights.params.items():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    losses = [learner.update(Batch(echo_batch, targets))["loss"] for _ in range(6)]
    assert losses[0] > 0 and losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("source", ["immediate", "anchor"])  # step-level and anchor-level feedback
def test_serl_queries_its_teacher_until_lambda_reaches_zero(source, lora_model, tokenizer, echo_batch):
    fb = make_source(source).annotate(echo_batch)
    targets = [make_selector("dense", include_successful=True)(t, f) for t, f in zip(echo_batch, fb)]
    assert any(x.hint for tg in targets for x in tg)
    learner = make_learner("serl", lora_model, tokenizer, dict(lr=1e-3, teacher="refresh", teacher_every=10))
    early = learner.update(Batch(echo_batch, targets))
    assert early["serl_lambda"] == 0.5 and early["teacher_calls"] > 0 and early["serl_weighted_tokens"] > 0
    learner.updates = 50  # lambda_50 = 0: plain GRPO, the teacher is not queried any more
    late = learner.update(Batch(echo_batch, targets))
    assert late["serl_lambda"] == 0.0 and late["teacher_calls"] == 0 and late["loss"] != 0


def test_gradient_checkpointing_gives_the_same_update(tokenizer, echo_batch):
    """model.gradient_checkpointing trades compute for memory only: same loss, same new weights."""
    from agentgym.config import load_config
    from agentgym.train import load_model

    results = []
    for checkpointing in (False, True):
        cfg = load_config(["--model.name", "tiny", "--model.gradient_checkpointing", str(checkpointing).lower()])
        model, tok, _ = load_model(cfg, torch.device("cpu"))
        base = model.base_model.model
        assert getattr(base, "is_activation_checkpointing", None) is checkpointing or \
            getattr(base, "is_gradient_checkpointing", None) is checkpointing
        learner = make_learner("hint_sd", model, tok, dict(lr=1e-2, teacher="ema", topk=20))
        fb = make_source("immediate").annotate(echo_batch)
        select = make_selector("first_error")
        metrics = learner.update(Batch(echo_batch, [select(t, f) for t, f in zip(echo_batch, fb)]))
        results.append((metrics["loss"], {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss_a, w_a), (loss_b, w_b) = results
    assert loss_a > 0 and loss_b == pytest.approx(loss_a, rel=1e-5)
    assert all(torch.allclose(w_a[n], w_b[n], atol=1e-6) for n in w_a)
    assert any(not torch.equal(w_a[n], torch.zeros_like(w_a[n])) for n in w_a if "lora_B" in n)  # it trained


def test_the_engine_owns_the_learning_rate_and_the_teacher_weights_a_teacher_policy_generates_with(
        lora_model, tokenizer, echo_batch):
    """The trainer sets the schedule's lr through ``Engine.set_lr``; ``TeacherPolicy`` generates through the
    declared ``TeacherWeightsHost`` interface with the teacher's weights swapped in, and the student's back after."""
    from agentgym.agents.teachers import TeacherPolicy
    fb = make_source("immediate").annotate(echo_batch)
    targets = [make_selector("first_error")(t, f) for t, f in zip(echo_batch, fb)]
    learner = make_learner("hint_sd", lora_model, tokenizer, dict(lr=1e-2, teacher="fixed", topk=20))
    with torch.no_grad():
        for n, p in learner.teacher_weights.params.items():
            p.add_(0.5)  # a teacher that differs from the student
    before = _trainable(lora_model)
    learner.engine.set_lr(0.0)
    m = learner.update(Batch(echo_batch, targets))
    assert m["loss"] > 0 and m["grad_norm"] > 0 and learner.updates == 1
    assert all(torch.equal(before[n], p) for n, p in _trainable(lora_model).items())  # lr 0: a step that moves nothing
    learner.engine.set_lr(1e-2)
    learner.update(Batch(echo_batch, targets))
    student = _trainable(lora_model)
    assert any(not torch.equal(before[n], student[n]) for n in student)
    teacher = {n: t.clone() for n, t in learner.teacher_weights.params.items()}

    class WeightsSeen:  # a policy reporting the weights that the served model generates with
        renderer, name = None, "seen"

        def generate(self, conversations, tools=None, sampling=None, *, prompt_ids=None):
            return [_trainable(learner.engine.served)]

    [seen] = TeacherPolicy(WeightsSeen(), learner.engine).generate([[]])
    assert teacher and all(torch.equal(seen[n], teacher[n]) for n in teacher)
    assert all(torch.equal(student[n], p) for n, p in _trainable(lora_model).items())  # the student's are back
