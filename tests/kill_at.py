"""A data-map run on the tiny task set that dies (``os._exit``, as SIGKILL: no cleanup, no
``finally``) at a named point of its writes, so tests/test_reliability.py can check the kill windows
without sleeps.

usage: python kill_at.py OUT POINT [EPOCHS]
  none               run to the end (the resume)
  samples-tmp        while samples.npz's temporary file exists (just before its rename)
  after-checkpoint:E right after epoch E's checkpoint is renamed into place, before run.json is
  after-snapshot:E   right after epoch E's data map is renamed into place, before the checkpoint is
"""

import os
import sys

import torch

from stg.datamap.run import train_datamap
from stg.train.config import TrainConfig
from tiny import tiny_taskset

torch.set_num_threads(1)


def install(point: str) -> None:
    real = os.replace
    what, _, n = point.partition(":")
    seen = {"count": 0}

    def replace(src, dst, *args, **kwargs):
        name = os.path.basename(os.fspath(dst))
        if what == "samples-tmp" and name == "samples.npz":
            os._exit(9)
        real(src, dst, *args, **kwargs)
        target = {"after-checkpoint": "checkpoint.pt", "after-snapshot": f"epoch_{int(n or 0):03d}.npz"}.get(what)
        if name == target:
            seen["count"] += 1
            if what == "after-snapshot" or seen["count"] == int(n):
                os._exit(9)

    os.replace = replace  # the run directory's atomic writes rename through os.replace


if __name__ == "__main__":
    out, point = sys.argv[1], sys.argv[2]
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    if point != "none":
        install(point)
    train_datamap(tiny_taskset(n_train=160), TrainConfig(epochs=epochs, batch_size=16), out)
