"""Run under torchrun (2 processes, gloo): each case trains sharded by accelerate's FSDP2 path.

    fsdp_worker.py OUT train CASE[,CASE...]   UPDATES updates per case; rank 0 writes
                                               OUT/CASE.pt (losses, gathered weights and teacher);
                                               the resume cases also write a checkpoint after update 1
    fsdp_worker.py OUT resume CASE[,CASE...]  fresh processes: load that checkpoint, run update 2
"""

import sys

import torch
from transformers import AutoTokenizer

from agentgym.agents.models import build_tiny_model
from agentgym.checkpoint import gather_for_save, resume_checkpoint, save_checkpoint
from agentgym.sharding import full, is_dtensor
from tests.distributed import cases


def learner_for(case, acc, tok):
    learner = cases.make(case, tok, acc)
    plain = [n for n, p in learner.unwrapped.named_parameters() if not is_dtensor(p)]
    assert learner.sharded and not plain, (case, plain)
    return learner


def main():
    out, mode, names = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    acc = cases.fsdp2_accelerator()
    tok = AutoTokenizer.from_pretrained(build_tiny_model())
    data = cases.batch(cases.rank_trajectories(tok, acc.process_index))
    for case in names:
        cases.fsdp2_accelerator(acc)  # a fresh plugin per model
        learner = learner_for(case, acc, tok)
        run_dir = f"{out}/{case}-run"
        losses, start = [], 1
        if mode == "resume":
            found = resume_checkpoint(run_dir, learner.engine, config_hash="test")
            assert found is not None and learner.updates == 1, found
            start = 2
        for k in range(start, cases.UPDATES + 1):
            metrics = learner.update(data)
            losses.append(metrics["loss"])
            if mode == "train" and k == 1 and case in cases.RESUME_CASES:
                weights, state = gather_for_save(learner.engine, keep=acc.is_main_process)
                if not acc.is_main_process:  # took part in every gather, kept nothing
                    assert all(t.numel() == 0 for t in weights.values())
                if acc.is_main_process:
                    save_checkpoint(run_dir, 1, learner.engine, config_hash="test", weights=weights,
                                    state=state)
                acc.wait_for_everyone()
        weights = cases.trainable(learner.unwrapped)
        teacher = {n: full(t) for n, t in learner.teacher_weights.params.items()} \
            if learner.teacher_weights is not None else {}
        if acc.is_main_process:
            torch.save({"losses": losses, "weights": weights, "teacher": teacher,
                        "world": acc.num_processes}, f"{out}/{case}.{mode}.pt")
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
