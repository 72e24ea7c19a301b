"""A data-map run on the tiny task set with two stateful hooks, slowed by a per-step sleep so a test
(tests/test_loop.py) can kill it mid-run and compare the resumed run with an uninterrupted one.

- ``RunningSum`` (every step, tensor state updated in place): the running sum of the step's logits
  and the number of steps; written to OUT/hooks/running_sum_NNN.pt at the end of every epoch.
- ``GradNorm`` (every 3rd step, runs eagerly: a host sync is allowed): the sum of the squared
  gradient norms of the shared parameters, and how often it ran; OUT/hooks/grad_norm_NNN.pt.

usage: python slow_loop_run.py OUT SLEEP_SECONDS
"""

import sys
from pathlib import Path

import torch

from stg.datamap.run import train_datamap
from stg.runs.rundir import atomic_save
from stg.train.config import TrainConfig
from slow_run import Sleep
from stg.train.hooks import Hook
from tiny import tiny_taskset

torch.set_num_threads(1)


def _write(path: Path, state: dict) -> None:
    atomic_save(path, lambda f: torch.save(state, f))


class RunningSum(Hook):
    def __init__(self, out: Path, n_tasks: int):
        self.out = out
        self.total = torch.zeros(n_tasks, dtype=torch.float64)
        self.steps = torch.zeros((), dtype=torch.int64)

    def after_update(self, ctx) -> None:
        self.total.add_(ctx.logits.double().sum(0))
        self.steps.add_(1)

    def end_epoch(self, epoch: int) -> dict:
        _write(self.out / "hooks" / f"running_sum_{epoch:03d}.pt", self.state_dict())
        return {}

    def state_dict(self) -> dict:
        return {"total": self.total.clone(), "steps": self.steps.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.total.copy_(state["total"])
        self.steps.copy_(state["steps"])


class GradNorm(Hook):
    every = 3

    def __init__(self, out: Path):
        self.out = out
        self.total = torch.zeros((), dtype=torch.float64)
        self.calls = 0

    def before_update(self, ctx) -> None:
        self.total += sum(p.grad.double().square().sum() for _, p in ctx.shared)
        self.calls += 1

    def end_epoch(self, epoch: int) -> dict:
        _write(self.out / "hooks" / f"grad_norm_{epoch:03d}.pt", self.state_dict())
        return {"grad_norm_calls": self.calls}

    def state_dict(self) -> dict:
        return {"total": self.total.clone(), "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.total = state["total"].clone()
        self.calls = int(state["calls"])


if __name__ == "__main__":
    out, pause = Path(sys.argv[1]), float(sys.argv[2])
    ts = tiny_taskset(n_train=160)
    hooks = [RunningSum(out, ts.n_tasks), GradNorm(out), Sleep(pause)]
    train_datamap(ts, TrainConfig(epochs=5, batch_size=16), out, hooks=hooks)
