"""Hand-computed values on small vocabularies: KL directions with top-k + tail, GRPO advantages,
the PPO clipped loss, SERL weights and schedule, the EMA / refresh teacher updates."""

import math

import pytest
import torch

from agentgym.agents.teachers import TeacherWeights
from agentgym.learners.samples import Sample, plan_micro_batches
from agentgym.learners.grpo import assign_group_advantages
from agentgym.learners.losses import divergence, group_advantages, ppo_token_loss, topk_tail
from agentgym.learners.serl import serl_lambda, serl_weights

P = [0.5, 0.3, 0.15, 0.05]  # student
Q = [0.4, 0.2, 0.3, 0.1]  # teacher


def _lp(p):
    return torch.log(torch.tensor([p], dtype=torch.float64))


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b))


def test_topk_tail_keeps_the_students_top_k_and_the_remaining_mass():
    s, t = topk_tail(_lp(P), _lp(Q), k=2)
    # student's top-2 ids are 0 and 1; the tails hold 1 - 0.8 and 1 - 0.6
    assert torch.allclose(s.exp(), torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64))
    assert torch.allclose(t.exp(), torch.tensor([[0.4, 0.2, 0.4]], dtype=torch.float64))


@pytest.mark.parametrize("alpha, expected", [
    (1.0, kl([0.5, 0.3, 0.2], [0.4, 0.2, 0.4])),  # reverse KL(student || teacher) = 0.094582...
    (0.0, kl([0.4, 0.2, 0.4], [0.5, 0.3, 0.2])),  # forward KL(teacher || student) = 0.106909...
    (0.5, 0.5 * kl([0.5, 0.3, 0.2], [0.45, 0.25, 0.3]) + 0.5 * kl([0.4, 0.2, 0.4], [0.45, 0.25, 0.3])),
    (0.25, 0.25 * kl([0.4, 0.2, 0.4], [0.475, 0.275, 0.25]) + 0.75 * kl([0.5, 0.3, 0.2], [0.475, 0.275, 0.25])),
])
def test_each_kl_direction_on_top_k_plus_tail(alpha, expected):
    s, t = topk_tail(_lp(P), _lp(Q), k=2)
    assert float(divergence(s, t, alpha)[0]) == pytest.approx(expected, abs=1e-9)


def test_reverse_and_forward_differ_and_the_hand_values_are_right():
    s, t = topk_tail(_lp(P), _lp(Q), k=2)
    assert float(divergence(s, t, 1.0)[0]) == pytest.approx(0.094582, abs=1e-6)
    assert float(divergence(s, t, 0.0)[0]) == pytest.approx(0.106909, abs=1e-6)
    assert float(divergence(s, t, 0.5)[0]) == pytest.approx(0.0248075, abs=1e-6)


def test_full_vocabulary_distillation():
    s, t = topk_tail(_lp(P), _lp(Q), k=0)
    assert s.shape[-1] == 4
    assert float(divergence(s, t, 1.0)[0]) == pytest.approx(kl(P, Q), abs=1e-9)
    assert float(divergence(s, t, 0.0)[0]) == pytest.approx(kl(Q, P), abs=1e-9)


def test_divergence_rejects_alpha_out_of_range():
    with pytest.raises(ValueError, match="alpha must be in"):
        divergence(_lp(P), _lp(Q), 1.5)


def test_reverse_kl_gradient_flows_to_the_student_only():
    s_logits = torch.tensor([[1.0, 0.5, -0.2, 0.1]], requires_grad=True)
    t_logits = torch.tensor([[0.2, 0.4, 0.9, -1.0]], requires_grad=True)
    s, t = topk_tail(s_logits.log_softmax(-1), t_logits.log_softmax(-1).detach(), k=2)
    divergence(s, t, 1.0).sum().backward()
    assert s_logits.grad.abs().sum() > 0 and t_logits.grad is None


# ------------------------------------------------------------------------------ GRPO
def test_group_advantages_by_hand():
    # Episode A (R=1) has 2 steps, episode B (R=0) has 1 step: step-samples [1, 1, 0] in one group.
    # mean 2/3, unbiased std sqrt(1/3) -> A = (1/3)/sqrt(1/3) = 0.57735, (-2/3)/sqrt(1/3) = -1.1547
    adv = group_advantages([1.0, 1.0, 0.0, 5.0], ["g", "g", "g", "h"])
    assert adv[0] == pytest.approx(math.sqrt(1 / 3), rel=1e-5)
    assert adv[2] == pytest.approx(-2 / 3 / math.sqrt(1 / 3), rel=1e-5)
    assert adv[3] == 0.0  # a group of one has no baseline
    assert group_advantages([1.0, 1.0], ["g", "g"]) == [0.0, 0.0]  # no spread: (R - mean) = 0


def test_step_samples_carry_their_episodes_advantage():
    samples = [Sample(traj=0, step=0, context=[1], action=[2], reward=1.0, group="g"),
               Sample(traj=0, step=1, context=[1], action=[2], reward=1.0, group="g"),
               Sample(traj=1, step=0, context=[1], action=[2], reward=0.0, group="g")]
    a = [s.advantage for s in assign_group_advantages(samples)]
    assert a[0] == a[1] == pytest.approx(0.57735, abs=1e-5) and a[2] == pytest.approx(-1.1547, abs=1e-4)


def test_ppo_clipped_loss_by_hand():
    ratio = torch.tensor([1.5, 0.5, 1.5, 5.0, 0.5, 1.0])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0, 2.0])
    old = torch.zeros(6)
    loss, clipped = ppo_token_loss(torch.log(ratio), old, adv, clip=0.2, dual_clip=3.0)
    # A>0, r=1.5: max(-1.5, -1.2) = -1.2 (clipped); A>0, r=0.5: max(-0.5, -0.8) = -0.5;
    # A<0, r=1.5: max(1.5, 1.2) = 1.5; A<0, r=5: max(5, 1.2) = 5 -> dual clip min(5, 3) = 3;
    # A<0, r=0.5: max(0.5, 0.8) = 0.8 (clipped); r = 1: -A = -2.
    assert loss.tolist() == pytest.approx([-1.2, -0.5, 1.5, 3.0, 0.8, -2.0], abs=1e-6)
    assert clipped.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    no_dual, _ = ppo_token_loss(torch.log(ratio), old, adv, clip=0.2, dual_clip=None)
    assert float(no_dual[3]) == pytest.approx(5.0)


# ------------------------------------------------------------------------------ SERL
def test_serl_weights_by_hand():
    delta = torch.log(torch.tensor([1.1, 2.0, 0.5, 0.9]))  # log pi_teacher - log pi_current
    teacher, current = delta, torch.zeros(4)
    span = torch.tensor([1.0, 1.0, 1.0, 1.0])
    b_pos = serl_weights(1.0, teacher, current, span, lam=0.5)
    # w = clip(exp(delta), 0.8, 1.2) = [1.1, 1.2, 0.8, 0.9]; b = 0.5 + 0.5 w
    assert b_pos.tolist() == pytest.approx([1.05, 1.1, 0.9, 0.95], abs=1e-6)
    b_neg = serl_weights(-1.0, teacher, current, span, lam=0.5)
    # w = clip(exp(-delta)) = [1/1.1, 0.5 -> 0.8, 2 -> 1.2, 1/0.9]
    assert b_neg.tolist() == pytest.approx([0.5 + 0.5 / 1.1, 0.9, 1.1, 0.5 + 0.5 / 0.9], abs=1e-6)
    outside = serl_weights(1.0, teacher, current, torch.tensor([1.0, 0.0, 0.0, 1.0]), lam=0.5)
    assert outside.tolist()[1:3] == [1.0, 1.0]  # reasoning tokens keep plain GRPO
    assert serl_weights(1.0, teacher, current, span, lam=0.0).tolist() == [1.0] * 4


def test_serl_weights_never_flip_the_sign_and_carry_no_gradient():
    g = torch.Generator().manual_seed(0)
    teacher = (torch.randn(1000, generator=g) * 20).requires_grad_()
    current = (torch.randn(1000, generator=g) * 20).requires_grad_()
    for adv in (3.0, -0.7):
        b = serl_weights(adv, teacher, current, torch.ones(1000), lam=0.5)
        assert bool((b > 0).all()) and float(b.min()) >= 0.9 - 1e-6 and float(b.max()) <= 1.1 + 1e-6
        assert bool(((adv * b) * adv > 0).all())
        assert not b.requires_grad


def test_serl_lambda_schedule():
    assert [serl_lambda(k) for k in (0, 10, 25, 50, 80)] == pytest.approx([0.5, 0.4, 0.25, 0.0, 0.0])


# ------------------------------------------------------------------------------ teacher weights
def _linear(value):
    lin = torch.nn.Linear(2, 1, bias=False)
    lin.weight.data.fill_(value)
    return lin


def test_ema_teacher_update_by_hand():
    lin = _linear(1.0)
    tw = TeacherWeights(lin, mode="ema", rate=0.001)
    lin.weight.data.fill_(2.0)
    tw.after_update(lin, 1)
    assert torch.allclose(tw.params["weight"], torch.full((1, 2), 0.999 * 1.0 + 0.001 * 2.0))
    tw.after_update(lin, 2)
    assert torch.allclose(tw.params["weight"], torch.full((1, 2), 0.999 * 1.001 + 0.001 * 2.0))


def test_refresh_teacher_copies_every_n_updates_and_fixed_never():
    lin = _linear(1.0)
    refresh, fixed = TeacherWeights(lin, mode="refresh", every=10), TeacherWeights(lin, mode="fixed")
    lin.weight.data.fill_(5.0)
    for k in range(1, 10):
        refresh.after_update(lin, k)
        fixed.after_update(lin, k)
    assert float(refresh.params["weight"][0, 0]) == 1.0
    refresh.after_update(lin, 10)
    fixed.after_update(lin, 10)
    assert float(refresh.params["weight"][0, 0]) == 5.0 and float(fixed.params["weight"][0, 0]) == 1.0


def test_swapped_in_teacher_weights_are_restored():
    lin = _linear(1.0)
    tw = TeacherWeights(lin, mode="fixed")
    lin.weight.data.fill_(3.0)
    with tw.swapped_in(lin):
        assert float(lin.weight.detach()[0, 0]) == 1.0
    assert float(lin.weight.detach()[0, 0]) == 3.0 and float(tw.params["weight"][0, 0]) == 1.0


def test_teacher_settings_are_validated():
    with pytest.raises(ValueError, match="teacher mode"):
        TeacherWeights(_linear(1.0), mode="sometimes")
    with pytest.raises(ValueError, match="EMA rate"):
        TeacherWeights(_linear(1.0), mode="ema", rate=0.0)


def test_micro_batches_respect_the_token_budget():
    plans = plan_micro_batches([100, 40, 40, 30, 200], token_budget=120)
    assert sorted(i for p in plans for i in p) == [0, 1, 2, 3, 4]
    lengths = [100, 40, 40, 30, 200]
    for p in plans:
        assert len(p) == 1 or max(lengths[i] for i in p) * len(p) <= 120
