"""GiGPO: advantages against hand-computed values on grouped toy batches (anchor groups across
trajectories and only within a task group, the step discount, the combination with the episode
advantage, both normalisations), and one real update on the tiny model."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from pydantic import ValidationError

from agentgym.learners import Batch, LearnerSettings, make_learner
from agentgym.learners.gigpo import GiGPO, GiGPOSettings, discounted_returns, gigpo_advantages
from agentgym.learners.grpo import assign_group_advantages
from agentgym.types import Message, Step, Trajectory

EPS = 1e-6


def episode(observations, rewards, group="g", task="Open the box"):
    """A trajectory whose step t acts from observation t-1 (the task text for t = 0)."""
    steps = [Step(index=i, observation=o, reward=r) for i, (o, r) in enumerate(zip(observations, rewards))]
    return Trajectory(task_id=task, group_id=group, messages=[Message(role="user", content=task)], steps=steps,
                      final_reward=sum(rewards), success=sum(rewards) >= 1.0)


def toy_batch():
    """Task group g (three episodes) and task group h (two), all on the same task text.

    g's anchor states: the task (A0, B0, C0), "X" (A1, B1), "Y" (A2 alone), "W" (C1 alone).
    h's: the task (D0, E0) - the same text as g's first state, but another task group.
    """
    return [episode(["X", "Y", "done"], [0.0, 0.0, 1.0]),  # A
            episode(["X", "Z"], [0.0, 0.0]),  # B
            episode(["W", "done"], [0.0, 1.0]),  # C
            episode(["X"], [1.0], group="h"),  # D
            episode(["X"], [0.0], group="h")]  # E


def approx(rows):
    return [pytest.approx(r, abs=1e-9) for r in rows]


def test_discounted_returns():
    assert discounted_returns([0.0, 0.0, 1.0], 0.5) == [0.25, 0.5, 1.0]
    assert discounted_returns([0.0, 0.0, 1.0], 0.95) == pytest.approx([0.9025, 0.95, 1.0])
    assert discounted_returns([-0.1, 0.0, 1.0], 1.0) == pytest.approx([0.9, 1.0, 1.0])  # a penalty step
    assert discounted_returns([], 0.95) == []


def test_anchor_groups_span_trajectories_but_not_task_groups():
    adv = gigpo_advantages(toy_batch(), gamma=0.5)
    a = adv.anchor
    assert a[0][0] == a[1][0] == a[2][0]  # the task text, across g's three episodes
    assert a[0][1] == a[1][1]  # "X" in A and B
    assert len({a[0][0], a[0][1], a[0][2], a[2][1]}) == 4  # task, X, Y, W
    assert a[3][0] == a[4][0] != a[0][0]  # h's task state is h's own anchor group
    assert a[1][1] != a[3][0]


def test_mean_norm_by_hand():
    adv = gigpo_advantages(toy_batch(), gamma=0.5)  # verl-agent's default mode, omega 1
    assert adv.returns == [[0.25, 0.5, 1.0], [0.0, 0.0], [0.5, 1.0], [1.0], [0.0]]
    # g's step-samples carry R = 1,1,1 | 0,0 | 1,1: mean 5/7.  h: 1 | 0, mean 1/2.
    assert adv.episode == approx([[2 / 7] * 3, [-5 / 7] * 2, [2 / 7] * 2, [0.5], [-0.5]])
    # task state: G = 0.25, 0, 0.5 (mean 0.25); "X": 0.5, 0 (mean 0.25); Y, W singletons -> 0.
    assert adv.step == approx([[0.0, 0.25, 0.0], [-0.25, -0.25], [0.25, 0.0], [0.5], [-0.5]])
    assert adv.total == approx([[2 / 7, 2 / 7 + 0.25, 2 / 7], [-5 / 7 - 0.25] * 2, [2 / 7 + 0.25, 2 / 7],
                                [1.0], [-1.0]])


def test_mean_std_norm_by_hand():
    adv = gigpo_advantages(toy_batch(), gamma=0.5, mode="mean_std_norm")
    std_g = math.sqrt((5 * (2 / 7) ** 2 + 2 * (5 / 7) ** 2) / 6)  # unbiased, over g's 7 step-samples
    std_h = math.sqrt(0.5)
    assert adv.episode == approx([[(2 / 7) / (std_g + EPS)] * 3, [(-5 / 7) / (std_g + EPS)] * 2,
                                  [(2 / 7) / (std_g + EPS)] * 2, [0.5 / (std_h + EPS)], [-0.5 / (std_h + EPS)]])
    std_task, std_x = 0.25, math.sqrt(0.125)  # std of {0.25, 0, 0.5} and of {0.5, 0}
    assert adv.step == approx([[0.0, 0.25 / (std_x + EPS), 0.0], [-0.25 / (std_task + EPS), -0.25 / (std_x + EPS)],
                               [0.25 / (std_task + EPS), 0.0], [0.5 / (std_h + EPS)], [-0.5 / (std_h + EPS)]])
    assert adv.total == approx([[e + s for e, s in zip(er, sr)] for er, sr in zip(adv.episode, adv.step)])


def test_omega_gamma_and_episode_statistics():
    half = gigpo_advantages(toy_batch(), gamma=0.5, omega=0.5)
    assert half.total[1] == approx([-5 / 7 - 0.125, -5 / 7 - 0.125]) and half.total[3] == approx([0.75])
    zero = gigpo_advantages(toy_batch(), gamma=0.5, omega=0.0)
    assert zero.total == zero.episode  # omega 0: plain episode advantage
    # gamma 0.95 (the default): task state G = 0.9025, 0, 0.95; "X": 0.95, 0.
    d = gigpo_advantages(toy_batch())
    assert d.returns[0] == approx([0.9025, 0.95, 1.0]) and d.returns[2] == approx([0.95, 1.0])
    m = (0.9025 + 0.95) / 3
    assert d.step[0] == approx([0.9025 - m, 0.95 / 2, 0.0]) and d.step[1] == approx([-m, -0.95 / 2])
    # One entry per episode instead of per step-sample: g's R = 1, 0, 1 (mean 2/3).
    ep = gigpo_advantages(toy_batch(), gamma=0.5, episode_stats="episodes")
    assert ep.episode[:3] == approx([[1 / 3] * 3, [-2 / 3] * 2, [1 / 3] * 2])


def test_a_group_whose_states_are_all_identical():
    same = "You are in a room."
    group = [episode([same, same], [0.0, 1.0], task=same), episode([same, same], [0.0, 0.0], task=same)]
    adv = gigpo_advantages(group, gamma=0.5)
    assert len({a for row in adv.anchor for a in row}) == 1  # every step is in one anchor group
    # G = 0.5, 1 | 0, 0 (mean 0.375); R = 1, 1 | 0, 0 (mean 0.5)
    assert adv.step == approx([[0.125, 0.625], [-0.375, -0.375]])
    assert adv.total == approx([[0.625, 1.125], [-0.875, -0.875]])
    std = math.sqrt((0.125 ** 2 + 0.625 ** 2 + 2 * 0.375 ** 2) / 3)
    s = gigpo_advantages(group, gamma=0.5, mode="mean_std_norm")
    assert s.step == approx([[0.125 / (std + EPS), 0.625 / (std + EPS)], [-0.375 / (std + EPS)] * 2])
    # Equal returns everywhere: no step signal, no episode signal, every advantage exactly 0.
    flat = [episode([same], [0.3], task=same), episode([same], [0.3], task=same)]
    for mode in ("mean_norm", "mean_std_norm"):
        out = gigpo_advantages(flat, mode=mode)
        assert out.step == out.episode == out.total == [[0.0], [0.0]]


def test_singleton_anchor_groups_get_step_advantage_zero_and_leave_grpo():
    # Every state distinct: each step is its own anchor group, A_S = 0 and A = A_E, which in
    # mean_std_norm is exactly GRPO's advantage (statistics over the group's step-samples).
    group = [episode(["a1", "a2"], [0.0, 1.0]), episode(["b1"], [0.0]), episode(["c1", "c2", "c3"], [0.0, 0.0, 1.0])]
    group = [t.model_copy(update={"messages": [Message(role="user", content=f"task {i}")]}) for i, t in enumerate(group)]
    adv = gigpo_advantages(group, mode="mean_std_norm")
    assert adv.step == [[0.0, 0.0], [0.0], [0.0, 0.0, 0.0]]
    from agentgym.learners.samples import Sample
    samples = [Sample(traj=i, step=k, context=[], action=[], reward=t.final_reward, group=t.group_id)
               for i, t in enumerate(group) for k in range(len(t.steps))]
    grpo = [s.advantage for s in assign_group_advantages(samples)]
    assert [a for row in adv.total for a in row] == pytest.approx(grpo, abs=1e-12)
    # A trajectory without a task group has no baseline at either level.
    alone = gigpo_advantages([episode(["x", "y"], [0.0, 1.0], group="")])
    assert alone.total == [[0.0, 0.0]]


def test_similarity_threshold_groups_near_identical_states():
    group = [episode(["Wrong: you said 'pear'.", "x"], [0.0, 1.0]),
             episode(["Wrong: you said 'bear'.", "y"], [0.0, 0.0])]
    exact = gigpo_advantages(group, gamma=0.5)
    assert exact.anchor[0][1] != exact.anchor[1][1] and exact.step[0][1] == exact.step[1][1] == 0.0
    near = gigpo_advantages(group, gamma=0.5, similarity_threshold=0.9)
    assert near.anchor[0][1] == near.anchor[1][1] and near.step[0][1] == pytest.approx(0.5)


def test_settings_are_validated():
    s = GiGPOSettings()
    assert (s.gamma, s.omega, s.mode, s.similarity_threshold, s.eps, s.episode_stats) == \
        (0.95, 1.0, "mean_norm", None, 1e-6, "steps")
    for bad in ({"gamma": 1.5}, {"gamma": float("nan")}, {"omega": -1.0}, {"mode": "leave_one_out"},
                {"similarity_threshold": 0.0}, {"similarity_threshold": 1.2}, {"eps": 0.0}, {"gama": 0.9}):
        with pytest.raises(ValidationError):
            GiGPOSettings(**bad)
    assert all(f.description for f in GiGPOSettings.model_fields.values())
    with pytest.raises(TypeError):
        gigpo_advantages(toy_batch(), GiGPOSettings(), gamma=0.5)


def test_docstring_examples():
    import agentgym.learners.gigpo as module
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0, result


# ------------------------------------------------------------------------------ the tiny real model
def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_update_on_the_tiny_model(lora_model, tokenizer, echo_batch):
    learner = make_learner("gigpo", lora_model, tokenizer, LearnerSettings(lr=1e-3), gamma=0.95)
    assert isinstance(learner, GiGPO) and learner.gigpo == GiGPOSettings()
    # Echo rollouts: two one-step successes, two three-step failures. All first steps act from the
    # task (G = 1, 1, 0, 0); the failures' later steps share the states "you said pear/plum" (G = 0).
    adv = gigpo_advantages(echo_batch)
    assert adv.anchor[2][1] == adv.anchor[3][2] and adv.anchor[2][2] == adv.anchor[3][1]
    assert adv.total == approx([[1.25], [1.25], [-0.75, -0.25, -0.25], [-0.75, -0.25, -0.25]])
    samples = learner.prepare(Batch(echo_batch), Batch(echo_batch).samples()[0])
    assert [(s.traj, s.step, s.advantage) for s in samples] == \
        [(i, k, pytest.approx(a)) for i, row in enumerate(adv.total) for k, a in enumerate(row)]
    before = _trainable(learner.unwrapped)
    metrics = learner.update(Batch(echo_batch))
    after = _trainable(learner.unwrapped)
    assert math.isfinite(metrics["loss"]) and metrics["loss"] != 0.0 and math.isfinite(metrics["grad_norm"])
    assert metrics["num_samples"] == 8 and metrics["empty_batches"] == 0.0
    assert metrics["gigpo_anchor_groups"] == 3 and metrics["gigpo_anchored_step_fraction"] == 1.0
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_no_signal_means_no_update(lora_model, tokenizer, echo_batch):
    failures = echo_batch[2:]  # equal rewards and equal returns: every advantage is 0
    learner = GiGPO(lora_model, tokenizer, lr=1e-2, mode="mean_std_norm")
    before = _trainable(learner.unwrapped)
    metrics = learner.update(Batch(failures))
    assert metrics["empty_batches"] == 1.0 and metrics["loss"] == 0.0
    after = _trainable(learner.unwrapped)
    assert all(torch.equal(before[n], after[n]) for n in before)
    with pytest.raises(ValidationError):
        GiGPO(lora_model, tokenizer, gama=0.5)


def test_gigpo_settings_are_the_learners_own_and_reach_the_config():
    """One Settings class holds GRPO's and GiGPO's fields; the run config's [learner] section is it."""
    from agentgym.config import load_config
    learner = GiGPO(gamma=0.5, mode="mean_std_norm", lr=1e-3)  # settings alone, bound to a model later
    assert (learner.gigpo.gamma, learner.gigpo.mode, learner.settings.lr) == (0.5, "mean_std_norm", 1e-3)
    assert learner.gigpo == GiGPOSettings(gamma=0.5, mode="mean_std_norm")
    with pytest.raises(ValidationError):
        GiGPO(gama=0.5)
    cfg = load_config(["--learner.name", "gigpo", "--learner.omega", "0.5"])
    assert cfg.learner.settings.omega == 0.5 and cfg.learner.settings.gamma == 0.95
