"""The multi-task loss: one vectorised BCE-with-logits over (batch, tasks), with missing labels masked.

Missing labels. A target is NaN where a sample has no label for a task (multi-label data,
``stg.data.multilabel``). Such a (sample, task) pair contributes nothing: the loss of task t is the
mean over the batch's *labelled* samples of t,

    L_t = sum_b m_bt * BCE(z_bt, y_bt; pos_weight_t) / max(1, sum_b m_bt),   m_bt = [y_bt is not NaN]

(0 when no sample of the batch is labelled for t, so it then pulls no gradient). It is computed
without a host sync (the step may be captured in a CUDA graph) as

    L_t = mean_b where(m_bt, BCE_bt, 0) * (B / max(1, sum_b m_bt))

and the NaN targets are replaced by 0 before the BCE (a NaN target would make the BCE's gradient
NaN even where ``where`` drops it). With no missing label every m_bt is 1, ``where`` returns the
BCE unchanged and the factor B / B is exactly 1.0, so loss and gradients are bitwise those of the
plain ``mean_b BCE_bt`` (tested).

The masking costs a few elementwise passes over (B, T) per step (about 1 ms of a ~66 ms CPU step at
B = 256, T = 100), so it runs only where labels can be missing: ``masked=True`` / ``False`` says so
(the training loop decides once per training from its data: one-vs-rest data runs the plain
formula, the very code it ran before), ``masked=None`` (the default) looks at the targets, which
syncs with the device (fine outside the captured step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def labelled_mean(losses: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-task mean over the labelled samples: losses (..., B, T), targets (B, T) with NaN where a
    label is missing -> (..., T). Bitwise ``losses.mean(-2)`` when no target is NaN (module docstring)."""
    labelled = ~torch.isnan(targets)
    scale = labelled.shape[-2] / labelled.sum(-2).clamp_min(1).to(losses.dtype)
    return torch.where(labelled, losses, losses.new_zeros(())).mean(-2) * scale


def _masked(targets: torch.Tensor, masked: bool | None) -> bool:
    return bool(torch.isnan(targets).any()) if masked is None else masked


def per_task_bce(
    logits: torch.Tensor, targets: torch.Tensor, *, pos_weight: torch.Tensor, masked: bool | None = None
) -> torch.Tensor:
    """mean over labelled b of BCEWithLogits(z_bt, y_bt; pos_weight_t) for every task: (T,) from (B, T)
    logits, or (k, T) from an ensemble's (k, B, T) logits (the (B, T) targets, NaN where missing, are
    shared by the k models). Computed in float32 or wider (bf16 autocast logits are promoted).
    ``masked``: whether targets may be NaN (None: look; see the module docstring)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if not _masked(targets, masked):
        return F.binary_cross_entropy_with_logits(
            logits, targets.expand_as(logits), pos_weight=pos_weight, reduction="none"
        ).mean(-2)
    bce = F.binary_cross_entropy_with_logits(
        logits, torch.nan_to_num(targets).expand_as(logits), pos_weight=pos_weight, reduction="none"
    )
    return labelled_mean(bce, targets)


def weighted_bce(
    logits: torch.Tensor, targets: torch.Tensor, *, pos_weight: torch.Tensor, task_weights: torch.Tensor,
    masked: bool | None = None,
) -> torch.Tensor:
    """sum_t w_t * L_t with L_t the labelled-mean BCE of ``per_task_bce``, as a scalar.

    logits, targets: (B, T) float (targets NaN where missing);  pos_weight, task_weights: (T,) float.
    Identical to the official trainer's Python loop of T ``BCEWithLogitsLoss`` calls.
    """
    if not _masked(targets, masked):
        per_task = F.binary_cross_entropy_with_logits(
            logits.float(), targets, pos_weight=pos_weight, reduction="none"
        ).mean(0)
        return per_task @ task_weights
    per_task = F.binary_cross_entropy_with_logits(
        logits.float(), torch.nan_to_num(targets), pos_weight=pos_weight, reduction="none"
    )
    return labelled_mean(per_task, targets) @ task_weights


def per_task_loop_bce(
    logits: torch.Tensor, targets: torch.Tensor, *, pos_weight: torch.Tensor, task_weights: torch.Tensor
) -> torch.Tensor:
    """The official code's structure (reference for tests and the naive benchmark); a task's missing
    labels (NaN) are left out of its ``BCEWithLogitsLoss`` call, a task with none labelled adds 0."""
    total = logits.new_zeros(())
    for t in range(logits.shape[1]):
        keep = ~torch.isnan(targets[:, t])
        if not bool(keep.any()):
            continue
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight[t])
        total = total + task_weights[t] * loss_fn(logits[keep, t].float(), targets[keep, t])
    return total
