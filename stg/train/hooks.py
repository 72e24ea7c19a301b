"""What method code plugs into the training loop: hooks that see each step (``Hook``).

A hook is called inside the step (``stg.train.loop``):

    forward -> per-task losses -> backward -> hook.before_update(ctx) -> optimizer.step()
            -> hook.after_update(ctx)

``before_update`` sees the pre-update parameters with their gradients for this batch: TAG's
lookahead affinity and the gradient-cosine probe run there. ``after_update`` sees the step's own
forward pass after the update: the data-map recorder runs there. ``end_epoch`` runs once per
epoch after the last step, before the checkpoint: a hook writes its per-epoch files there and may
return numbers for the epoch's history record (e.g. the seconds it cost).

When hooks run. A hook whose ``every`` is 1 runs at every step and is part of the step a CUDA
graph captures, so it must not synchronise the host (no ``.item()``, ``.tolist()``, data-dependent
shapes) and must keep its state in tensors it updates in place. A hook with ``every`` = F > 1 runs
at global steps 0, F, 2F, ...; those steps run eagerly (not replayed), so such a hook may do
anything, including host syncs and its own autograd calls (it must not touch ``.grad``: the
optimizer update that follows uses them).

Hooks save and load their state with the run's checkpoint (``state_dict`` / ``load_state_dict``,
tensors and plain values only: it is loaded with ``weights_only=True``), so resume stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class StepContext:
    """What a hook sees at one step. Tensors are valid during the call only (on CUDA they are a
    graph's static tensors, rewritten by the next replay). Shapes: a model gives (B, T) logits and
    (T,) losses; an ensemble of k models gives (k, B, T) logits and (k, T) losses."""

    model: nn.Module
    index: torch.Tensor  # (B,) int64 rows of the training split
    images: torch.Tensor  # (B, C, H, W) float, the augmented, normalised batch
    targets: torch.Tensor  # (B, T) float {0, 1}
    logits: torch.Tensor  # (B, T) or (k, B, T) float32, detached
    task_losses: torch.Tensor  # (T,) or (k, T): mean over the batch of each task's BCE, detached
    weights: torch.Tensor  # (T,) or (k, T): the task weights the loss used
    pos_weight: torch.Tensor  # (T,)
    shared: list[tuple[str, nn.Parameter]]  # the trunk's (name, parameter), not the heads
    lr: float  # the optimizer's learning rate at this step
    precision: str  # the run's precision setting ("auto", "bf16", "fp32")
    epoch: int  # 1-based
    step: int  # global step, 0-based


class Hook:
    """Base class: every method is a no-op. See the module docstring for when each runs."""

    every: int = 1

    def before_update(self, ctx: StepContext) -> None:
        """After backward, before the optimizer step: parameters are still the pre-update ones."""

    def after_update(self, ctx: StepContext) -> None:
        """After the optimizer step."""

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        """After the epoch's last step, before the checkpoint; returns history fields (or {})."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
