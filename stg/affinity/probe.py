"""Inter-task affinity probes as training hooks (``stg.train.hooks``): TAG's lookahead affinity
(``TagAffinity``) and the gradient-cosine baseline (``GradientCosine``), measured on the data-map
run's multi-task model every F steps and averaged per epoch.

    RUN/affinity/tag/epoch_NNN.npz   affinity: float32 (T, T), the mean over the epoch's probes of
    RUN/affinity/cs/epoch_NNN.npz        lookahead_affinity / gradient_cosine; probes: int64 count

Orientation: ``affinity[i, j]`` is SOURCE i onto TARGET j (row = the task whose step or gradient,
column = the task whose loss), as ``stg.affinity.lookahead`` computes it. The TAG network selection
(``stg.affinity.selection``) wants recipient-major A[t, u] = affinity of u onto t: pass
``load_affinity(...).T`` (CS is symmetric).

When: ``every`` = F; the training loop runs the hook at global steps 0, F, 2F, ... in
``before_update`` (pre-update parameters, on the step's own augmented batch), eagerly. The probe
uses ``torch.func`` only: the parameters' ``.grad`` (which the optimizer step that follows uses),
the model's buffers and the run's random streams are untouched, so a run trains the same model with
or without a probe. The probe computes in float32 (the parameters' dtype) without autocast whatever
the run's precision (see ``stg.affinity.lookahead`` for why), with dropout off and BatchNorm on
batch statistics. An epoch in which no probe fell (fewer than F steps) writes no file. With F = 1
on CUDA the probe would sit in the step a CUDA graph captures, which it cannot (host syncs): it
refuses the capture, and the loop then runs every step eagerly.

Aggregation: per epoch, the mean over its probes (the official code's per-epoch mean); over the
run, ``stg.affinity.grouping.mean_affinity`` averages the epochs' means (the official "sum over
epochs", divided by their number: the same network selection). ``TagAffinity(normalize_by_lr=True)``
divides each probe by the step's learning rate, as both official codes do; by default it does not
(stg trains with a constant Adam lr, where the division only rescales). File names and the
numpy-only readers live in ``stg.affinity.files``.

State: the running (T, T) sum (float64), the probe count and the seconds spent, saved with the
run's checkpoint. Checkpoints are written at epoch ends, after ``end_epoch`` has reset them, so a
resumed run starts the next epoch from zero exactly as an uninterrupted one does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stg.affinity.cosine import gradient_cosine
from stg.affinity.files import (AFFINITY_METHODS, AffinityConfig, affinity_epochs, affinity_path,
                               load_affinity_epoch)
from stg.affinity.lookahead import lookahead_affinity
from stg.errors import StgError
from stg.runs.rundir import atomic_save
from stg.train.hooks import Hook, StepContext

__all__ = ["AffinityProbe", "GradientCosine", "TagAffinity", "affinity_epochs", "load_affinity", "probes"]


class AffinityProbe(Hook):
    """Base of the two probes: accumulate a (T, T) matrix per probe step, write the epoch's mean.
    Subclasses set ``method`` and implement ``compute(ctx) -> (T, T)``."""

    method = ""

    def __init__(self, run_path: str | Path, every: int = 10):
        if int(every) != every or every < 1:
            raise StgError(f"the affinity probe's every must be a positive whole number of steps, got {every}")
        self.run_path = Path(run_path)
        self.every = int(every)
        self._sum: torch.Tensor | None = None  # (T, T) float64 on the CPU
        self._count = 0
        self._seconds = 0.0

    def compute(self, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def before_update(self, ctx: StepContext) -> None:
        if ctx.images.is_cuda and torch.cuda.is_current_stream_capturing():
            raise StgError(f"the {self.method} affinity probe cannot run inside a CUDA graph: use every >= 2")
        if ctx.logits.dim() != 2:
            raise StgError(f"the {self.method} affinity probe needs one multi-task model with (B, T) logits, "
                           f"got {tuple(ctx.logits.shape)}")
        if ctx.images.is_cuda:
            torch.cuda.synchronize(ctx.images.device)  # time the probe, not the step's queued work
        t0 = time.perf_counter()
        value = self.compute(ctx).detach().to("cpu", torch.float64)
        self._seconds += time.perf_counter() - t0
        if self._sum is None or self._sum.shape != value.shape:
            if self._count:
                raise StgError(f"the {self.method} affinity probe saw {value.shape[0]} tasks after "
                               f"{self._sum.shape[0] if self._sum is not None else 0}")
            self._sum = torch.zeros_like(value)
        self._sum += value
        self._count += 1

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        fields = {f"{self.method}_seconds": round(self._seconds, 3), f"{self.method}_probes": self._count}
        if self._count and self._sum is not None:
            arrays = {"affinity": (self._sum / self._count).numpy().astype(np.float32),
                      "probes": np.int64(self._count), **self.extra_arrays()}
            atomic_save(affinity_path(self.run_path, self.method, epoch), lambda f: np.savez(f, **arrays))
        if self._sum is not None:
            self._sum.zero_()
        self._count, self._seconds = 0, 0.0
        return fields

    def extra_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"sum": self._sum.clone() if self._sum is not None else torch.zeros(0, 0, dtype=torch.float64),
                "count": self._count, "seconds": self._seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        total = torch.as_tensor(state["sum"]).to("cpu", torch.float64)
        self._sum = total.clone() if total.numel() else None
        self._count = int(state["count"])
        self._seconds = float(state["seconds"])


class TagAffinity(AffinityProbe):
    """TAG's lookahead affinity (``stg.affinity.lookahead.lookahead_affinity``) every ``every``
    steps, with the step's learning rate; ``normalize_by_lr`` divides each probe by it (official)."""

    method = "tag"

    def __init__(self, run_path: str | Path, every: int = 10, normalize_by_lr: bool = False,
                 chunk: int | None = None):
        super().__init__(run_path, every)
        self.normalize_by_lr = bool(normalize_by_lr)
        self.chunk = chunk

    def compute(self, ctx: StepContext) -> torch.Tensor:
        return lookahead_affinity(ctx.model, ctx.images, ctx.targets, ctx.pos_weight, lr=ctx.lr,
                                  shared_names=[n for n, _ in ctx.shared], chunk=self.chunk,
                                  normalize_by_lr=self.normalize_by_lr)

    def extra_arrays(self) -> dict[str, np.ndarray]:
        return {"normalized_by_lr": np.bool_(self.normalize_by_lr)}


class GradientCosine(AffinityProbe):
    """The gradient-cosine baseline (``stg.affinity.cosine.gradient_cosine``) every ``every`` steps."""

    method = "cs"

    def __init__(self, run_path: str | Path, every: int = 10, chunk: int | None = None):
        super().__init__(run_path, every)
        self.chunk = chunk

    def compute(self, ctx: StepContext) -> torch.Tensor:
        return gradient_cosine(ctx.model, ctx.images, ctx.targets, ctx.pos_weight,
                               shared_names=[n for n, _ in ctx.shared], chunk=self.chunk)


def probes(run_path: str | Path, config: AffinityConfig) -> list[AffinityProbe]:
    """The hooks a data-map run with ``--affinity`` adds: TagAffinity and/or GradientCosine every
    ``config.every`` steps, writing into ``run_path``."""
    made = {"tag": lambda: TagAffinity(run_path, every=config.every),
            "cs": lambda: GradientCosine(run_path, every=config.every)}
    return [made[m]() for m in config.methods]


# ------------------------------------------------------------------------------------------------
# Reader
# ------------------------------------------------------------------------------------------------
def load_affinity(run_path: str | Path, method: str, epoch: int | None = None) -> np.ndarray:
    """One epoch's mean affinity (the last epoch by default): float32 (T, T), source x target.
    StgError (one line) when the run has none, or not for that epoch, or the file is corrupt."""
    if method not in AFFINITY_METHODS:
        raise StgError(f"unknown affinity {method!r}: use one of {', '.join(AFFINITY_METHODS)}")
    epochs = affinity_epochs(run_path, method)
    name = {"tag": "TAG lookahead", "cs": "gradient-cosine"}[method]
    if not epochs:
        raise StgError(f"run {run_path} has no {name} affinity: record it with `stg datamap ... --affinity {method}`")
    epoch = epochs[-1] if epoch is None else int(epoch)
    if epoch not in epochs:
        raise StgError(f"run {run_path} has no {name} affinity for epoch {epoch} (has epochs "
                       f"{', '.join(map(str, epochs))})")
    return load_affinity_epoch(run_path, method, epoch).astype(np.float32)
