"""agentgym.sharding on one process: the swap restores the weights (also when the block raises),
leaves no copy behind, and the teacher scoring of a learner goes through it (not functional_call)."""

from __future__ import annotations

import doctest

import pytest
import torch

import agentgym.sharding as sharding


def test_docstring_examples():
    result = doctest.testmod(sharding)
    assert result.attempted > 0 and result.failed == 0, result


def test_swap_restores_the_weights_even_when_the_block_raises():
    lin = torch.nn.Linear(3, 2)
    before = {n: p.detach().clone() for n, p in lin.named_parameters()}
    other = {n: torch.full_like(p, 7.0) for n, p in lin.named_parameters()}
    with pytest.raises(RuntimeError, match="inside"):
        with sharding.swapped(lin, other):
            assert torch.equal(lin.weight, torch.full_like(lin.weight, 7.0))
            raise RuntimeError("inside")
    assert all(torch.equal(p, before[n]) for n, p in lin.named_parameters())
    assert all(torch.equal(t, torch.full_like(t, 7.0)) for t in other.values())  # the other set is intact


def test_plain_tensors_pass_through_gather_and_scatter():
    t = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(sharding.full(t), t) and torch.equal(sharding.shard_as(t * 2, t), t * 2)
    dest = torch.zeros(2, 3)
    sharding.load_full(dest, t)
    assert torch.equal(dest, t)
    assert sharding.full_state({"a": [t, 3], "b": (t,)})["a"][1] == 3
    assert not sharding.is_sharded(torch.nn.Linear(2, 2))


def test_teacher_scoring_uses_the_teacher_weights(tiny_model_path, tiny_tokenizer):
    """An EMA teacher that moved away from the student scores with its own weights: the same as
    the student's log-probs once its weights are copied into a second model."""
    import copy

    from agentgym.learners import action_log_probs, make_learner
    from tests.distributed import cases
    learner = cases.make("hint_sd-lora", tiny_tokenizer)
    with torch.no_grad():
        for t in learner.teacher_weights.params.values():
            t.add_(0.05)
    ctx, act = [1, 2, 3, 4], [5, 6]
    learner.model.eval()
    [got] = learner.log_probs([ctx], [act], params=learner.teacher_weights.overrides())
    twin = copy.deepcopy(learner.unwrapped)
    named = dict(twin.named_parameters())
    with torch.no_grad():
        for n, t in learner.teacher_weights.params.items():
            named[n].copy_(t)
    [want] = action_log_probs(twin, [ctx], [act], pad_id=learner.pad_id)
    [student] = learner.log_probs([ctx], [act])
    assert torch.allclose(got, want, atol=1e-6) and not torch.allclose(got, student, atol=1e-4)
