"""Run under ``accelerate launch --config_file configs/accelerate/deepspeed_zero{2,3}.yaml`` on GPUs:
each case trains UPDATES updates through accelerate's DeepSpeed engine; rank 0 writes OUT/CASE.pt
(losses, gathered weights). With one process it trains on the union batch, with two on the ranks'
shares (as fsdp_worker.py).

    ds_worker.py OUT CASE[,CASE...]
"""

import sys

import torch
from accelerate import Accelerator
from transformers import AutoTokenizer

from agentgym.agents.models import build_tiny_model
from tests.distributed import cases


def main():
    out, names = sys.argv[1], sys.argv[2].split(",")
    acc = Accelerator()
    assert str(acc.distributed_type).endswith("DEEPSPEED"), acc.distributed_type
    tok = AutoTokenizer.from_pretrained(build_tiny_model())
    trajs = cases.union(tok) if acc.num_processes == 1 else cases.rank_trajectories(tok, acc.process_index)
    data = cases.batch(trajs)
    for case in names:
        try:
            learner = cases.make(case, tok, acc)
        except NotImplementedError as exc:  # a teacher learner under ZeRO-3: refused, with the reason
            if acc.is_main_process:
                torch.save({"refused": str(exc)}, f"{out}/{case}.pt")
            continue
        losses = [learner.update(data)["loss"] for _ in range(cases.UPDATES)]
        from agentgym.sharding import full
        weights = {n: full(p, p) for n, p in learner.unwrapped.named_parameters() if p.requires_grad}
        if acc.is_main_process:
            torch.save({"losses": losses, "weights": weights, "world": acc.num_processes}, f"{out}/{case}.pt")
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
