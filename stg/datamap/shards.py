"""The data-map recorder of one rank among several (``stg.train.distributed``): it keeps the Welford
statistics of its own rows only, and gathers them on rank 0 for the epoch's snapshot and the
checkpoint. Memory per rank: 3 (N / W) T float32 plus N / W counts (one process: 3 N T + N).

Rank r holds rows [start, stop) = ``Distributed.shard(N)``. Every rank sees the global step's (B,)
rows and gathered (B, T) logits; ``update`` sends the rows another rank holds to one extra scratch
row (index stop - start) instead of selecting its own (a selection has a data-dependent size, a
host sync on the GPU). The Welford update is per (row, task), so a row's statistics are the same
numbers as in one process fed the same logits.

The checkpoint holds the whole (N, T) state, as a 1-process run's does: a run can be resumed on
any number of processes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from stg.datamap.recorder import DataMapRecorder
from stg.train.distributed import Distributed

STATE_KEYS = ("count", "mean", "m2", "correct")


class ShardedRecorder:
    """Duck-types ``DataMapRecorder`` for one rank: ``update`` with global rows; ``snapshot`` and
    ``state_dict`` are collective (every rank calls them) and give the whole N rows on rank 0
    (``snapshot`` gives None on the other ranks, ``state_dict`` an empty dict)."""

    def __init__(self, n_samples: int, n_tasks: int, dist: Distributed, *, device: torch.device, ddof: int = 0):
        self.n, self.dist = n_samples, dist
        self.start, self.stop = dist.shard(n_samples)
        self.local = DataMapRecorder(self.stop - self.start + 1, n_tasks, device=device, ddof=ddof)  # + scratch row

    def update(self, index: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """index: (B,) distinct global rows; logits, targets: (B, T)."""
        held = self.stop - self.start
        local = index - self.start
        local = torch.where((local >= 0) & (local < held), local, held)
        self.local.update(local, logits, targets)

    def snapshot(self) -> dict[str, np.ndarray] | None:
        """{confidence, variability, correctness}: float32 (T, N) on rank 0; None on the others."""
        held = self.stop - self.start
        mine = self.local.snapshot()
        out: dict[str, np.ndarray] = {}
        for key, value in mine.items():
            rows = self.dist.gather_rows(torch.from_numpy(value[:, :held].T.copy()), self.n)  # (N, T) on rank 0
            if rows is not None:
                out[key] = rows.t().contiguous().numpy()
        return out if self.dist.is_writer else None

    def state_dict(self) -> dict[str, Any]:
        """The whole (N, T) state on rank 0 (the same tensors a 1-process recorder saves); {} elsewhere."""
        held = self.stop - self.start
        out: dict[str, Any] = {}
        for key in STATE_KEYS:
            rows = self.dist.gather_rows(getattr(self.local, key)[:held], self.n)
            if rows is not None:
                out[key] = rows
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Take this rank's rows of a whole (N, T) state (a checkpoint of any number of processes)."""
        for key in STATE_KEYS:
            src = state[key]
            if src.shape[0] != self.n:
                raise ValueError(f"recorder state {key} has shape {tuple(src.shape)}")
            dst = getattr(self.local, key)
            dst.zero_()
            dst[: self.stop - self.start].copy_(src[self.start:self.stop])
