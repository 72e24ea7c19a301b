"""Every step of a short training on the tiny task set, as one process or as one rank of several
(``torchrun --nproc-per-node 2 ddp_steps.py OUT``): the gradients after the all-reduce, the global
batch's rows, images, logits and per-task losses the hooks see, and the epoch losses, saved to OUT
by rank 0. tests/test_distributed.py compares them.

The paper CNN (batch norm and dropout) with crop/flip on: every random draw must match one
process's. The learning rate is tiny so that Adam's first steps (which move every weight by about
lr, whatever the size of its gradient) do not amplify rounding: later steps still compare.
21 images in batches of 8: the last batch (5) splits 3 / 2 across two ranks. A quarter of the
labels are missing (NaN): each task's loss is a mean over a different number of rows per rank.

usage: python ddp_steps.py OUT
"""

import sys

import torch

from stg.train.config import TrainConfig
from stg.train.device import DeviceData, channel_stats, prepare_model
from stg.train.distributed import ShardedData, session
from stg.train.hooks import Hook
from stg.train.loop import train_loop
from stg.train.models import build_model
from stg.train.rng import seeded
from stg.train.schedules import Constant
from tiny import tiny_taskset

torch.set_num_threads(1)


class Capture(Hook):
    def __init__(self, model: torch.nn.Module):
        self.model, self.steps = model, []

    def before_update(self, ctx) -> None:
        self.steps.append({
            "grads": {n: p.grad.detach().clone() for n, p in self.model.named_parameters()},
            "index": ctx.index.clone(), "images": ctx.images.detach().clone(), "targets": ctx.targets.clone(),
            "logits": ctx.logits.clone(), "losses": ctx.task_losses.clone(),
        })


if __name__ == "__main__":
    out = sys.argv[1]
    ts = tiny_taskset(n_train=21, n_tasks=3, size=12)
    missing = torch.rand(ts.train.labels.shape, generator=torch.Generator().manual_seed(1)) < 0.25
    ts.train.labels[missing] = float("nan")  # multi-label data: a task's loss is a mean over its labelled rows
    config = TrainConfig(model="cnn", epochs=2, batch_size=8, lr=1e-9, precision="fp32", augment=True, device="cpu")
    cpu = torch.device("cpu")
    with session("cpu") as dist:
        mean, std = channel_stats(ts.train.images)
        data = DeviceData(ts.train, cpu, mean, std) if dist is None else ShardedData(ts.train, dist, mean, std)
        model = prepare_model(seeded(0, lambda: build_model("cnn", in_channels=1, size=12, n_tasks=3)), cpu)
        capture = Capture(model)
        result = train_loop(model, data, ts.pos_weight, config, schedule=Constant(torch.ones(3)), hooks=[capture],
                            dist=dist)
        if dist is None or dist.is_writer:
            torch.save({"steps": capture.steps, "loss": [r["loss"] for r in result.history]}, out)
