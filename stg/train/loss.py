"""The multi-task loss: one vectorised BCE-with-logits over (batch, tasks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_task_bce(logits: torch.Tensor, targets: torch.Tensor, *, pos_weight: torch.Tensor) -> torch.Tensor:
    """mean_b BCEWithLogits(z_bt, y_bt; pos_weight_t) for every task: (T,) from (B, T) logits, or
    (k, T) from an ensemble's (k, B, T) logits (the (B, T) targets are shared by the k models).
    Computed in float32 or wider (bf16 autocast logits are promoted)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.binary_cross_entropy_with_logits(
        logits, targets.expand_as(logits), pos_weight=pos_weight, reduction="none"
    ).mean(-2)


def weighted_bce(
    logits: torch.Tensor, targets: torch.Tensor, *, pos_weight: torch.Tensor, task_weights: torch.Tensor
) -> torch.Tensor:
    """sum_t w_t * mean_b BCEWithLogits(z_bt, y_bt; pos_weight_t), as a scalar.

    logits, targets: (B, T) float;  pos_weight, task_weights: (T,) float.
    Identical to the official trainer's Python loop of T ``BCEWithLogitsLoss`` calls.
    """
    per_task = F.binary_cross_entropy_with_logits(
        logits.float(), targets, pos_weight=pos_weight, reduction="none"
    ).mean(0)
    return per_task @ task_weights


def per_task_loop_bce(
    logits: torch.Tensor, targets: torch.Tensor, *, pos_weight: torch.Tensor, task_weights: torch.Tensor
) -> torch.Tensor:
    """The official code's structure (reference for tests and the naive benchmark)."""
    total = logits.new_zeros(())
    for t in range(logits.shape[1]):
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight[t])
        total = total + task_weights[t] * loss_fn(logits[:, t].float(), targets[:, t])
    return total
