"""Fidelity to the reference code (issue 17), against hand-computed values on the tiny model:

- verl's token-mean: zero-advantage samples' tokens stay in the denominator (their forward skipped);
- |A| < 1e-6 is exactly 0, and SERL spends no teacher call on such samples;
- distillation at temperature 1 (HINT-SD's reference), PPO ratios at the sampling temperature;
- SERL reweights only the action content (BFCL call list / tool call, ALFWorld <action>, WebShop
  search[...] / click[...]; the env's info["action_span"] first);
- the top-k tail with the top-k log-sum capped at -1e-7;
- a non-finite loss or gradient skips the optimiser step (weights, optimiser state, teacher kept);
- the three loss aggregations, each independent of the micro-batching.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from pydantic import ValidationError

from agentgym.learners import Batch, make_learner
from agentgym.learners.samples import action_log_probs
from agentgym.learners.settings import DistillSettings, LearnerSettings
from agentgym.learners.losses import divergence, group_advantages, topk_tail
from agentgym.types import Message, Step, Target, Trajectory

from tests.learners.conftest import echo_group

EPS = 1e-6


def _fresh(path):
    import peft
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return peft.get_peft_model(m, peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _sgd(model):
    # Plain SGD (lr 1): the weight change IS minus the gradient.
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)


def _delta(before, after):
    return {n: after[n] - before[n] for n in before}


def _grpo_update(path, tokenizer, trajs, **settings):
    model = _fresh(path)
    learner = make_learner("grpo", model, tokenizer, {"old_logprobs": "recompute", "grad_clip": 1e9, **settings},
                           optimizer=_sgd(model))
    before = _trainable(model)
    metrics = learner.update(Batch(trajs))
    return metrics, _delta(before, _trainable(learner.unwrapped))


def _hand_grpo(trajs):
    """Step-samples (A_i, n_i) by hand: A = (R - mean) / (unbiased std + 1e-6) over a group's
    step-samples, 0 for a group without spread; n_i = the step's action tokens."""
    out = []
    groups = {}
    for t in trajs:
        groups.setdefault(t.group_id, []).append(t)
    for members in groups.values():
        rewards = [t.final_reward for t in members for _ in t.steps]
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
        for t in members:
            a = 0.0 if std < 1e-12 else (t.final_reward - mean) / (std + EPS)
            out.extend((a, len(s.action_ids)) for s in t.steps)
    return out


@pytest.fixture(scope="module")
def batches(tiny_tokenizer):
    """g: two one-step successes, two three-step failures; h: two three-step failures (A = 0)."""
    g = echo_group(tiny_tokenizer, [["apple"], ["apple"], ["pear", "plum", "kiwi"], ["plum", "pear", "fig"]])
    h = echo_group(tiny_tokenizer, [["fig", "plum", "pear"], ["kiwi", "fig", "plum"]], group="h")
    return g, h


# ------------------------------------------------------------------------------ denominator
def test_zero_advantage_tokens_count_in_the_token_mean(tiny_model_path, tokenizer, batches):
    g, h = batches
    hand = _hand_grpo(g + h)
    n_g = sum(n for a, n in hand[:8])
    n_all = sum(n for _, n in hand)
    assert all(a == 0.0 for a, _ in hand[8:]) and n_all > n_g
    # ratio 1 (recomputed old log-probs): every token's loss is -A
    expected = -sum(a * n for a, n in hand) / n_all
    m_g, d_g = _grpo_update(tiny_model_path, tokenizer, g)
    m_all, d_all = _grpo_update(tiny_model_path, tokenizer, g + h)
    assert m_all["loss"] == pytest.approx(expected, rel=1e-5)
    assert m_g["loss"] == pytest.approx(expected * n_all / n_g, rel=1e-5)
    assert m_all["loss_tokens"] == n_all and m_all["zero_advantage_samples"] == 6 and m_all["trained_samples"] == 8
    # the step with the all-fail group is smaller by kept / all tokens (verl), not the same size
    for n in d_g:
        assert torch.allclose(d_all[n], d_g[n] * (n_g / n_all), rtol=1e-4, atol=1e-6)
    assert any(float(d.abs().max()) > 0 for d in d_all.values())


def test_gigpo_keeps_zero_advantage_tokens_too(tiny_model_path, tokenizer, batches):
    g, h = batches
    learner = make_learner("gigpo", _fresh(tiny_model_path), tokenizer, dict(lr=1e-3))
    metrics = learner.update(Batch(g + h))
    n_all = sum(len(s.action_ids) for t in g + h for s in t.steps)
    assert metrics["loss_tokens"] == n_all and metrics["zero_advantage_samples"] == 6


# ------------------------------------------------------------------------------ zero tolerance
def test_equal_fractional_rewards_give_exactly_zero():
    r = torch.tensor([0.1, 0.1, 0.1], dtype=torch.float64)
    raw = float((r[0] - r.mean()) / (r.std() + EPS))
    assert raw != 0.0 and abs(raw) < 1e-10  # the residue the exact test used to keep (-1.4e-11)
    assert group_advantages([0.1, 0.1, 0.1], ["g"] * 3) == [0.0, 0.0, 0.0]
    assert group_advantages([0.1 + 0.2, 0.3, 0.3], ["g"] * 3) == [0.0, 0.0, 0.0]
    a = group_advantages([0.3, 0.1, 0.1], ["g"] * 3)  # a real spread survives: (0.2/3)/std
    assert a[0] == pytest.approx((0.4 / 3) / (math.sqrt(0.04 / 3) + EPS))


def test_serl_spends_no_teacher_call_on_zero_advantage_samples(tiny_model_path, tokenizer, batches):
    g, h = batches
    flat = [t.model_copy(update={"final_reward": 0.1}) for t in h] + \
        [h[0].model_copy(update={"final_reward": 0.1, "task_id": "x"})]  # three equal fractional rewards
    trajs = g + flat
    targets = [[Target(step=s.index, span=(0, len(s.action_ids)), hint="The word is apple.") for s in t.steps]
               for t in trajs]
    learner = make_learner("serl", _fresh(tiny_model_path), tokenizer, dict(lr=1e-3))
    metrics = learner.update(Batch(trajs, targets))
    assert metrics["teacher_calls"] == 8  # g's 8 step-samples; none of the 9 with A = 0
    assert metrics["zero_advantage_samples"] == 9 and metrics["trained_samples"] == 8
    only_flat = make_learner("serl", _fresh(tiny_model_path), tokenizer, dict(lr=1e-3))
    m = only_flat.update(Batch(flat, targets[4:]))
    assert m["teacher_calls"] == 0 and m["empty_batches"] == 1.0 and m["loss"] == 0.0


# ------------------------------------------------------------------------------ temperature
def test_distillation_runs_at_temperature_one_and_ppo_at_the_sampling_temperature(tiny_model_path, tokenizer,
                                                                                   batches):
    g, _ = batches
    failed = g[2]
    step = failed.steps[1]
    hint = "The word is apple."
    model = _fresh(tiny_model_path)
    # LoRA B = 0 at the start: the fixed teacher has the student's weights; only the hint differs.
    learner = make_learner("hint_sd", model, tokenizer, dict(lr=1e-3, teacher="fixed", topk=20), temperature=0.5)
    assert learner.student_temperature == 1.0 and learner.temperature == 0.5
    teacher_ctx = learner.teacher_context(step.prompt_ids, hint)

    def kl_at(temp):
        with torch.no_grad():
            [s] = action_log_probs(model, [step.prompt_ids], [step.action_ids], pad_id=tokenizer.pad_token_id,
                                   temperature=temp)
            [t] = action_log_probs(model, [teacher_ctx], [step.action_ids], pad_id=tokenizer.pad_token_id,
                                   temperature=temp)
        st, tt = topk_tail(s, t, 20)
        return float(divergence(st, tt, 1.0).mean())

    at_one, at_half = kl_at(1.0), kl_at(0.5)
    metrics = learner.update(Batch([failed], [[Target(step=1, span=(0, len(step.action_ids)), hint=hint)]]))
    assert metrics["loss"] == pytest.approx(at_one, rel=1e-4)
    assert abs(at_half - at_one) > 0.05 * at_one  # the old behaviour would be measurably different
    with pytest.raises(ValidationError):
        DistillSettings(distill_temperature=0.0)

    # PPO: the recorded sampling log-probs are at T = 0.5, and so is the ratio's numerator: ratio 1.
    grpo_model = _fresh(tiny_model_path)
    scored = []
    for t in g:
        steps = []
        for s in t.steps:
            with torch.no_grad():
                [lp] = action_log_probs(grpo_model, [s.prompt_ids], [s.action_ids], pad_id=tokenizer.pad_token_id,
                                        temperature=0.5)
            steps.append(s.model_copy(update={"action_logprobs": lp.gather(
                -1, torch.tensor(s.action_ids).unsqueeze(-1)).squeeze(-1).tolist()}))
        scored.append(t.model_copy(update={"steps": steps}))
    grpo = make_learner("grpo", grpo_model, tokenizer, dict(lr=1e-3), temperature=0.5)
    m = grpo.update(Batch(scored))
    assert m["ratio_sum"] == pytest.approx(m["loss_tokens"], rel=1e-4) and m["clipped_tokens"] == 0


# ------------------------------------------------------------------------------ top-k tail
def test_the_tail_caps_the_top_k_log_sum_at_minus_1e_7():
    near_certain = torch.log(torch.tensor([[0.6, 0.4 - 1e-13, 1e-13]], dtype=torch.float64))
    teacher = torch.log(torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64))
    s, t = topk_tail(near_certain, teacher, k=2)
    cap_tail = math.log(-math.expm1(-1e-7))  # = -16.1181, the reference's floor; not log(1e-10) = -23.03
    assert float(s[0, 2]) == pytest.approx(cap_tail, abs=1e-9) and cap_tail == pytest.approx(-16.118096, abs=1e-6)
    assert float(t[0, 2]) == pytest.approx(math.log(0.2), abs=1e-12)  # uncapped below the cap
    p = [0.6, 0.4 - 1e-13, math.exp(cap_tail)]
    q = [0.5, 0.3, 0.2]
    expected = sum(x * (math.log(x) - math.log(y)) for x, y in zip(p, q))
    assert float(divergence(s, t, 1.0)[0]) == pytest.approx(expected, abs=1e-12)
    # a top-k holding all the mass (both sides): finite, equal tails, zero divergence
    s2, t2 = topk_tail(torch.log(torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)),
                       torch.log(torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)), k=2)
    assert torch.isfinite(s2).all() and float(s2[0, 2]) == pytest.approx(cap_tail)
    assert float(divergence(s2, t2, 1.0)[0]) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------ action-content spans
def _ids(tokenizer, text):
    return tokenizer.encode(text)


ACTIONS = {  # env -> (raw model text, the action content, its token span by hand on the tiny tokenizer)
    "alfworld": ("<think>I should look.</think><action>go to fridge 1</action>", "go to fridge 1", (25, 34)),
    "webshop_react": ("Thought: buy it.\nAction: click[Buy Now]", "click[Buy Now]", (16, 24)),
    "webshop_tag": ("<action>search[red shoes]</action>", "search[red shoes]", (5, 14)),
    "bfcl_tool_call": ('<tool_call>\n{"name": "ls", "arguments": {}}\n</tool_call>',
                       '{"name": "ls", "arguments": {}}', (6, 18)),
    "bfcl_call_list": ("<think>cd first</think>[cd(folder='docs'), ls(a=True)]",
                       "[cd(folder='docs'), ls(a=True)]", (15, 32)),
}


@pytest.mark.parametrize("env", sorted(ACTIONS))
def test_action_content_spans_per_env(env, tokenizer):
    from agentgym.feedback.spans import action_token_span
    text, content, span = ACTIONS[env]
    ids = _ids(tokenizer, text) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]  # as sampled: + end of turn

    def decode(x):
        return tokenizer.decode(x, skip_special_tokens=False)

    assert action_token_span(text, ids, decode) == span
    assert decode(ids[span[0]:span[1]]).strip() == content
    # an env-reported span wins over the patterns; an invalid one is ignored
    start = text.index(content)
    assert action_token_span(text, ids, decode, reported=[start, start + len(content)]) == span
    first = action_token_span(text, ids, decode, reported=[start, start + 1])  # its first character only
    assert first[0] == span[0] and first[1] < span[1] and content[0] in decode(ids[first[0]:first[1]])
    for bad in ([5, 2], [0, 10 ** 6], "0:3", [0.0, 3.0], None):
        assert action_token_span(text, ids, decode, reported=bad) == span


def _traj(tokenizer, text, reward, group="g", info=None):
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Do the task."}], add_generation_prompt=True,
                                           tokenize=True)
    if isinstance(prompt, dict) or hasattr(prompt, "input_ids"):
        prompt = prompt["input_ids"]
    ids = _ids(tokenizer, text) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    step = Step(index=0, prompt_ids=list(prompt), action_ids=ids, action_text=text, info=info or {})
    return Trajectory(task_id="t", group_id=group, messages=[Message(role="user", content="Do the task.")],
                      steps=[step], final_reward=reward, success=reward >= 1.0)


def test_serl_reweights_only_the_action_content(tiny_model_path, tokenizer):
    alf, web, bfcl = ACTIONS["alfworld"], ACTIONS["webshop_react"], ACTIONS["bfcl_call_list"]
    reported = [alf[0].index("fridge"), alf[0].index("</action>")]  # the env says: "fridge 1"
    trajs = [_traj(tokenizer, alf[0], 1.0), _traj(tokenizer, web[0], 0.0), _traj(tokenizer, bfcl[0], 0.0),
             _traj(tokenizer, alf[0], 0.0, info={"action_span": reported})]
    hint = "Look before you act."
    targets = [[Target(step=0, span=(0, len(t.steps[0].action_ids)), hint=hint)] for t in trajs]
    model = _fresh(tiny_model_path)
    learner = make_learner("serl", model, tokenizer, dict(lr=1e-3, teacher="refresh"))
    seen = {}
    policy_loss = learner.policy_loss

    def spy(fwd, advantages):
        for s, a in zip(fwd.samples, advantages):
            seen[s.traj] = a.detach().clone()
        return policy_loss(fwd, advantages)

    learner.policy_loss = spy
    # by hand: teacher = the student's weights at update 0 (refresh); lambda 0.5; GRPO advantages of 1, 0, 0, 0
    hand = {}
    adv = [(r - 0.25) / (0.5 + EPS) for r in (1.0, 0.0, 0.0, 0.0)]  # mean 0.25, unbiased std 0.5
    with torch.no_grad():
        for i, t in enumerate(trajs):
            s = t.steps[0]
            tid = torch.tensor(s.action_ids).unsqueeze(-1)
            [c] = action_log_probs(model, [s.prompt_ids], [s.action_ids], pad_id=tokenizer.pad_token_id)
            # SERL's reference: the last user message rewritten with the privileged context
            reprompt = f"Do the task.\n\n{hint}\n\nCorrectly solve the current task.\n"
            te_ctx = tokenizer.apply_chat_template([{"role": "user", "content": reprompt}], add_generation_prompt=True,
                                                   tokenize=False)
            [te] = action_log_probs(model, [tokenizer.encode(te_ctx, add_special_tokens=False)], [s.action_ids],
                                    pad_id=tokenizer.pad_token_id)
            delta = (te.gather(-1, tid) - c.gather(-1, tid)).squeeze(-1)
            w = torch.exp(math.copysign(1.0, adv[i]) * delta).clamp(0.8, 1.2)
            hand[i] = adv[i] * (0.5 + 0.5 * w)
    metrics = learner.update(Batch(trajs, targets))
    spans = {0: alf[2], 1: web[2], 2: bfcl[2], 3: (27, 34)}  # 3: 'go' ' to' | ' f' 'ri' 'd' 'g' 'e' ' ' '1'
    assert tokenizer.decode(trajs[3].steps[0].action_ids[27:34]) == " fridge 1"
    for i, (start, end) in spans.items():
        got = seen[i]
        inside = torch.zeros_like(got, dtype=torch.bool)
        inside[start:end] = True
        assert torch.equal(got[~inside], torch.full_like(got[~inside], adv[i]))  # reasoning: plain GRPO
        assert torch.allclose(got[inside], hand[i][inside], rtol=1e-4, atol=1e-6)
    assert metrics["serl_weighted_tokens"] == sum(e - s for s, e in spans.values())
    # serl_span = "target": the selector's span as it is (the whole action here)
    whole = make_learner("serl", _fresh(tiny_model_path), tokenizer, dict(lr=1e-3, serl_span="target"))
    m = whole.update(Batch(trajs, targets))
    assert m["serl_weighted_tokens"] == sum(len(t.steps[0].action_ids) for t in trajs)


# ------------------------------------------------------------------------------ non-finite steps
def _opt_state(opt):
    return copy.deepcopy(opt.state_dict())


def _same_state(a, b):
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for name, v in a["state"][k].items():
            w = b["state"][k][name]
            assert torch.equal(v, w) if torch.is_tensor(v) else v == w


def test_a_non_finite_loss_skips_the_step(tiny_model_path, tokenizer, batches):
    g, _ = batches
    failed = g[2]
    targets = [[Target(step=1, span=(0, len(failed.steps[1].action_ids)), hint="The word is apple.")]]
    learner = make_learner("hint_sd", _fresh(tiny_model_path), tokenizer, dict(lr=1e-2, teacher="ema", topk=20))
    first = learner.update(Batch([failed], targets))  # a normal step: Adam moments exist, the EMA moved
    assert first["skipped_nonfinite"] == 0.0 and learner.updates == 1
    weights, opt, teacher = _trainable(learner.unwrapped), _opt_state(learner.optimizer), \
        {n: p.clone() for n, p in learner.teacher_weights.params.items()}
    real = learner.teacher_log_probs

    def poisoned(samples):  # the teacher gives -inf to all but one id: fewer than k finite ids
        out = real(samples)
        for lp in out:
            if lp is not None:
                lp[:, 1:] = float("-inf")
        return out

    learner.teacher_log_probs = poisoned
    with pytest.warns(RuntimeWarning, match="non-finite"):
        bad = learner.update(Batch([failed], targets))
    assert bad["skipped_nonfinite"] == 1.0 and not math.isfinite(bad["loss"]) and learner.updates == 1
    after = _trainable(learner.unwrapped)
    assert all(torch.equal(weights[n], after[n]) for n in weights)
    assert all(torch.isfinite(p).all() for p in after.values())
    _same_state(opt, learner.optimizer.state_dict())
    assert all(torch.equal(teacher[n], p) for n, p in learner.teacher_weights.params.items())
    assert all(p.grad is None for p in learner.unwrapped.parameters())
    learner.teacher_log_probs = real
    good = learner.update(Batch([failed], targets))  # training goes on from the kept weights
    assert good["skipped_nonfinite"] == 0.0 and learner.updates == 2
    assert any(not torch.equal(weights[n], p) for n, p in _trainable(learner.unwrapped).items())


def test_a_non_finite_gradient_skips_the_step_and_all_processes_agree(tiny_model_path, tokenizer, batches):
    g, _ = batches
    model = _fresh(tiny_model_path)
    learner = make_learner("grpo", model, tokenizer, dict(lr=1e-2))
    before, opt = _trainable(model), _opt_state(learner.optimizer)
    p = next(p for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n)
    handle = p.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    with pytest.warns(RuntimeWarning):
        m = learner.update(Batch(g))
    handle.remove()
    assert math.isfinite(m["loss"]) and m["loss"] != 0 and math.isnan(m["grad_norm"])
    assert m["skipped_nonfinite"] == 1.0 and learner.updates == 0
    assert all(torch.equal(before[n], v) for n, v in _trainable(model).items())
    _same_state(opt, learner.optimizer.state_dict())
    # another process saw a non-finite value (all-reduced flag): this one skips as well
    learner.engine.any_process = lambda flag: True
    with pytest.warns(RuntimeWarning):
        m2 = learner.update(Batch(g))
    assert m2["skipped_nonfinite"] == 1.0 and math.isfinite(m2["grad_norm"])
    assert all(torch.equal(before[n], v) for n, v in _trainable(model).items())


# ------------------------------------------------------------------------------ aggregation
@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "constant"])
def test_loss_aggregation_by_hand_and_independent_of_micro_batching(mode, tiny_model_path, tokenizer, batches):
    g, h = batches
    # Recorded log-probs = the initial policy's minus log r_i: sample i's ratio is r_i (inside the clip
    # range), so each of its tokens has the loss -A_i r_i and its token mean is -A_i r_i.
    model = _fresh(tiny_model_path)
    ratios, trajs = [], []
    for t in g + h:
        steps = []
        for s in t.steps:
            r = 1.0 + 0.15 * math.sin(1 + len(ratios))
            ratios.append(r)
            with torch.no_grad():
                [lp] = action_log_probs(model, [s.prompt_ids], [s.action_ids], pad_id=tokenizer.pad_token_id)
            lp = lp.gather(-1, torch.tensor(s.action_ids).unsqueeze(-1)).squeeze(-1) - math.log(r)
            steps.append(s.model_copy(update={"action_logprobs": lp.tolist()}))
        trajs.append(t.model_copy(update={"steps": steps}))
    hand = _hand_grpo(trajs)
    n_tokens, n_samples = sum(n for _, n in hand), len(hand)
    expected = {"token_mean": -sum(a * r * n for (a, n), r in zip(hand, ratios)) / n_tokens,
                "seq_mean_token_mean": -sum(a * r for (a, _), r in zip(hand, ratios)) / n_samples,
                "constant": -sum(a * r * n for (a, n), r in zip(hand, ratios)) / (64 * n_samples)}[mode]
    assert abs(expected) > 1e-3
    results = [_grpo_update(tiny_model_path, tokenizer, trajs, loss_aggregation=mode, loss_constant=64,
                            token_budget=budget, old_logprobs="rollout") for budget in (10_000, 1)]
    (m1, d1), (m2, d2) = results
    assert m1["loss"] == pytest.approx(expected, rel=1e-4) and m2["loss"] == pytest.approx(expected, rel=1e-4)
    assert m1["clipped_tokens"] == 0
    for n in d1:
        assert torch.allclose(d1[n], d2[n], rtol=1e-4, atol=1e-6)
    if mode == "constant":  # the same numerator over a different constant: the step scales exactly
        _, d_tok = _grpo_update(tiny_model_path, tokenizer, trajs, old_logprobs="rollout")
        for n in d1:
            assert torch.allclose(d1[n], d_tok[n] * (n_tokens / (64 * n_samples)), rtol=1e-4, atol=1e-6)


def test_aggregation_settings_are_validated_and_documented():
    s = LearnerSettings()
    assert (s.loss_aggregation, s.loss_constant) == ("token_mean", 512.0)
    for bad in ({"loss_aggregation": "seq_mean_token_sum"}, {"loss_constant": 0.0},
                {"loss_constant": float("inf")}):
        with pytest.raises(ValidationError):
            LearnerSettings(**bad)
    for cls in (LearnerSettings, DistillSettings):
        assert all(f.description for f in cls.model_fields.values())
    from agentgym.config import load_config
    cfg = load_config(["--learner.name", "serl", "--learner.loss_aggregation", "seq_mean_token_mean",
                       "--learner.serl_span", "target"])
    assert cfg.learner.settings.loss_aggregation == "seq_mean_token_mean" and cfg.learner.settings.serl_span == "target"


@pytest.mark.parametrize("name", ["agentgym.learners.losses", "agentgym.learners.samples", "agentgym.learners.signal",
                                  "agentgym.feedback.spans", "agentgym.checkpoint_files"])
def test_docstring_examples(name):
    import doctest
    import importlib
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0, result


# ------------------------------------------------------------------------------ two processes
DDP_WORKER = r'''
import json, sys
import torch
from accelerate import Accelerator
from transformers import AutoTokenizer
from agentgym.agents.models import build_tiny_model
from agentgym.learners import Batch, make_learner
from tests.learners.test_fidelity import _fresh, _sgd, _trainable
from tests.learners.conftest import echo_group

out, mode = sys.argv[1], sys.argv[2]
acc = Accelerator(cpu=True)
path = build_tiny_model()
tok = AutoTokenizer.from_pretrained(path)
if acc.process_index == 0:  # a mixed group
    trajs = echo_group(tok, [["apple"], ["pear", "plum", "kiwi"], ["plum", "pear", "fig"]])
else:  # an all-fail group (A = 0 everywhere: nothing to run, its tokens still count) and a mixed one
    trajs = echo_group(tok, [["fig", "plum", "pear"], ["kiwi", "fig", "plum"]], group="h") + \
        echo_group(tok, [["apple"], ["fig"]], group="k")
for mode in mode.split(","):
    model = _fresh(path)
    learner = make_learner("grpo", model, tok, dict(old_logprobs="recompute", grad_clip=1e9, loss_aggregation=mode,
                                                    loss_constant=64, token_budget=64),
                           accelerator=acc, optimizer=_sgd(model))
    before = _trainable(learner.unwrapped)
    metrics = learner.update(Batch(trajs))
    after = _trainable(learner.unwrapped)
    if acc.process_index == 0:
        torch.save({n: after[n] - before[n] for n in before}, f"{out}.{mode}.pt")
        json.dump(metrics, open(f"{out}.{mode}.json", "w"))
'''


def test_two_processes_step_as_one_process_on_the_union(tmp_path, tiny_model_path, tokenizer):
    """gloo DDP, rank 0 and rank 1 on different groups (rank 1's first group all zero-advantage, so
    it runs fewer micro-batches): the step equals one process's step on the union, in each
    aggregation - the normalisers are global."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    modes = ["token_mean", "seq_mean_token_mean", "constant"]
    repo = Path(__file__).resolve().parents[2]
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(script), str(tmp_path / "delta"), ",".join(modes)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=repo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    union = echo_group(tokenizer, [["apple"], ["pear", "plum", "kiwi"], ["plum", "pear", "fig"]]) + \
        echo_group(tokenizer, [["fig", "plum", "pear"], ["kiwi", "fig", "plum"]], group="h") + \
        echo_group(tokenizer, [["apple"], ["fig"]], group="k")
    for mode in modes:
        ddp = torch.load(tmp_path / f"delta.{mode}.pt")
        ddp_metrics = json.loads((tmp_path / f"delta.{mode}.json").read_text())
        metrics, single = _grpo_update(tiny_model_path, tokenizer, union, loss_aggregation=mode, loss_constant=64)
        assert ddp_metrics["loss"] == pytest.approx(metrics["loss"], rel=1e-4, abs=1e-7)
        assert any(float(d.abs().max()) > 0 for d in single.values())
        for n in single:
            assert torch.allclose(ddp[n], single[n], rtol=1e-4, atol=1e-6), (mode, n)


def test_seq_mean_distillation_by_hand_with_one_teacher_pass(tiny_model_path, tokenizer, batches):
    """HINT-SD under seq_mean_token_mean: the mean over selected steps of each step's mean KL on its
    span, the teacher scored once per selected step (the one-sample subsets share the batch's)."""
    g, _ = batches
    failed = g[2]
    hint = "The word is apple."
    spans = {0: (0, len(failed.steps[0].action_ids)), 2: (1, len(failed.steps[2].action_ids))}
    targets = [[Target(step=k, span=v, hint=hint) for k, v in spans.items()]]
    model = _fresh(tiny_model_path)
    learner = make_learner("hint_sd", model, tokenizer, dict(lr=1e-3, teacher="fixed", topk=20,
                                                            loss_aggregation="seq_mean_token_mean"))
    per_step = []
    with torch.no_grad():
        for k, (start, end) in spans.items():
            st = failed.steps[k]
            [s] = action_log_probs(model, [st.prompt_ids], [st.action_ids], pad_id=tokenizer.pad_token_id)
            [t] = action_log_probs(model, [learner.teacher_context(st.prompt_ids, hint)], [st.action_ids],
                                   pad_id=tokenizer.pad_token_id)
            a, b = topk_tail(s, t, 20)
            per_step.append(float(divergence(a, b, 1.0)[start:end].mean()))
    metrics = learner.update(Batch([failed], targets))
    # float32 batching noise: the KL here is ~2e-4, so compare at 1e-3 relative
    assert metrics["loss"] == pytest.approx(sum(per_step) / 2, rel=1e-3)
    assert metrics["teacher_calls"] == 2 and metrics["distill_tokens"] == sum(e - s for s, e in spans.values())
