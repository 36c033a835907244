"""Run under torchrun (2 processes, gloo): the Trainer end to end with accelerate's FSDP2 path.

    trainer_worker.py RUN_DIR CONFIG_JSON    trains (resuming RUN_DIR's checkpoint, if any); every
                                             rank writes RUN_DIR/rank{r}.json: its world, whether
                                             the weights were sharded, and the sha256 of its mirror's
                                             trainable weights (the rollouts' copy)
"""

import hashlib
import json
import sys

import accelerate

from tests.distributed import cases


class FSDP2OnCPU(accelerate.Accelerator):
    """The Trainer's ``Accelerator(cpu=True)``, switched to accelerate's FSDP2 path as on a GPU node
    (``cases.fsdp2_accelerator``: accelerate only selects FSDP on accelerator devices)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cases.fsdp2_accelerator(self)


def main():
    run_dir, base = sys.argv[1], json.loads(sys.argv[2])
    accelerate.Accelerator = FSDP2OnCPU  # Trainer._build imports it at call time
    from agentgym.config import load_config
    from agentgym.train import Trainer
    trainer = Trainer(load_config(["--train.run_dir", run_dir], base=base))
    acc = trainer.accelerator
    assert acc.is_fsdp2, (type(acc), acc.distributed_type, acc.state.fsdp_plugin)
    summary = trainer.run()
    learner = trainer.learner
    gathered = cases.trainable(learner.unwrapped)
    mirror = {n: p.detach().cpu() for n, p in learner.served.named_parameters() if n in gathered}
    same = all(bool((gathered[n] == mirror[n]).all()) for n in gathered)
    digest = hashlib.sha256(b"".join(mirror[n].numpy().tobytes() for n in sorted(mirror))).hexdigest()
    with open(f"{run_dir}/rank{acc.process_index}.json", "w") as f:
        json.dump({"world": acc.num_processes, "sharded": learner.sharded, "mirror_is_gathered": same,
                   "digest": digest, "updates": learner.updates, "notes": summary["notes"]}, f)


if __name__ == "__main__":
    main()
