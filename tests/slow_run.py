"""A data-map run on the tiny task set, slowed by a per-step sleep so a test can kill it mid-run.

usage: python slow_run.py OUT SLEEP_SECONDS
"""

import sys
import time

import torch

from stg.datamap.run import train_datamap
from stg.train.config import TrainConfig
from stg.train.hooks import Hook
from tiny import tiny_taskset

torch.set_num_threads(1)


class Sleep(Hook):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def after_update(self, ctx) -> None:
        time.sleep(self.seconds)


if __name__ == "__main__":
    out, pause = sys.argv[1], float(sys.argv[2])
    train_datamap(tiny_taskset(n_train=160), TrainConfig(epochs=5, batch_size=16), out, hooks=[Sleep(pause)])
