"""Every run draws its randomness from its own generators, never from torch's process-wide RNG.

Two jobs in one process (the dashboard runs them in threads) would otherwise disturb each other's
dropout masks and initialisations through the one global generator. A run owns:

- ``data``: the epoch's shuffle and augmentation (crop/flip), on the training device;
- ``dropout``: every dropout mask of the model(s) (``stg.train.models.Dropout`` takes a generator);

both re-seeded in place at the start of every epoch from (seed, epoch), so a run resumed from its
last finished epoch continues exactly as an uninterrupted run would (a CUDA graph keeps reading the
generators it was captured with, so they are re-seeded, never replaced).

Initialisation draws from torch's global generator inside the module constructors (they take no
generator), so ``seeded`` builds under a process-wide lock inside ``torch.random.fork_rng``: the
global state is set from the seed, used, and restored, with no other init in between. Nothing else
in stg draws from the global generator, so no other thread can observe or disturb it.
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

import torch

M = TypeVar("M")
_INIT_LOCK = threading.Lock()
_DROPOUT_STREAM = 0x5DEECE66D  # keeps the dropout stream apart from the data stream of the same epoch


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (1-based) of a run seeded ``seed``."""
    return seed * 1_000_003 + epoch


class RunGenerators:
    """A run's ``data`` and ``dropout`` generators on ``device`` (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.data = torch.Generator(device=device)
        self.dropout = torch.Generator(device=device)

    def start_epoch(self, seed: int, epoch: int) -> None:
        s = epoch_seed(seed, epoch)
        self.data.manual_seed(s)
        self.dropout.manual_seed(s ^ _DROPOUT_STREAM)

    def all(self) -> tuple[torch.Generator, torch.Generator]:
        return self.data, self.dropout


def seeded(seed: int, build: Callable[[], M]) -> M:
    """``build()`` with torch's global generator seeded by ``seed``, as ``torch.manual_seed(seed);
    build()`` would, but without leaving a trace on the global state (see the module docstring)."""
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))  # the CPU generator: models are built on the CPU
        return build()
