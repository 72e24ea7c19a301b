"""The gradient-cosine (CS) baseline of TAG (Fifty et al. 2021): how aligned two tasks' gradients on
the shared trunk are.

    C[i, j] = <g_i, g_j> / (|g_i| |g_j|),   g_i = grad of L_i w.r.t. the shared KERNELS, flattened

The official CelebA notebook (``cosine_sim_train_step``) keeps the shared tensors with ndim > 1
(conv and dense kernels: no biases, no BatchNorm scales and shifts), concatenates them into one
vector per task and takes ONE cosine of the concatenated vectors (not a mean of per-tensor
cosines). "Mean cosine" in the paper is the mean of this value over the probed steps, which
``stg.affinity.probe.GradientCosine`` takes. C is symmetric with a unit diagonal; a task whose
gradient is exactly zero gets cosine 0 (the official code would divide by zero).

The losses and gradients are taken in the probe mode of ``stg.affinity.lookahead`` (dropout off,
BatchNorm with batch statistics and untouched buffers, float32 without autocast or TF32 by
default). The T
gradients come from one forward and a batched vjp (``per_task_gradients``), not T forward and
backward passes; ``naive_gradient_cosine`` is the reference with T ``torch.autograd.grad`` calls.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from stg.affinity.lookahead import ProbeForward, exact_float32, naive_losses, per_task_gradients, probe_copy
from stg.errors import StgError

EPS = 1e-30  # gradient norms below this count as zero


def kernel_names(model: nn.Module, shared_names: Sequence[str]) -> list[str]:
    """The shared parameters CS compares: those with ndim > 1 (conv and linear kernels)."""
    params = dict(model.named_parameters())
    names = [n for n in dict.fromkeys(shared_names) if n in params and params[n].ndim > 1]
    if not names:
        raise StgError("the gradient cosine needs a shared parameter with ndim > 1 (a conv or linear kernel)")
    return names


def cosine_matrix(grads: torch.Tensor) -> torch.Tensor:
    """(T, P) flattened gradients -> (T, T) cosines (0 where a gradient is zero)."""
    norms = grads.norm(dim=1)
    unit = grads / norms.clamp_min(EPS).unsqueeze(1)
    out = unit @ unit.t()
    return out.clamp(-1.0, 1.0)


@torch.no_grad()
def gradient_cosine(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    pos_weight: torch.Tensor,
    *,
    shared_names: Sequence[str],
    chunk: int | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """(T, T) cosine between the per-task gradients of the shared kernels on one batch (see the
    module docstring), in the parameters' dtype and on their device. x: (B, C, H, W); y: (B, T);
    pos_weight: (T,); ``chunk`` as in ``stg.affinity.lookahead.lookahead_affinity``. The model, its
    buffers and its ``.grad`` are left untouched."""
    kernels = kernel_names(model, shared_names)
    probe = ProbeForward(model, x, y, pos_weight, shared_names, precision)
    rows_out: list[torch.Tensor] = []
    with exact_float32(probe.device, precision):
        for _, _, grads in per_task_gradients(probe, kernels, chunk=chunk):
            rows_out.append(torch.cat([grads[n].flatten(1) for n in kernels], dim=1))  # (c, P)
            del grads
        return cosine_matrix(torch.cat(rows_out))


def naive_gradient_cosine(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    pos_weight: torch.Tensor,
    *,
    shared_names: Sequence[str],
    precision: str = "fp32",
) -> torch.Tensor:
    """The reference for ``gradient_cosine``: a deep copy in probe mode, one forward, T
    ``torch.autograd.grad`` calls, the cosine of each pair of concatenated kernel gradients."""
    kernels = kernel_names(model, shared_names)
    clone = probe_copy(model)
    params = dict(clone.named_parameters())
    flat = []
    with exact_float32(next(model.parameters()).device, precision):
        losses = naive_losses(clone, x, y, pos_weight, precision)
        for i in range(losses.shape[0]):
            grads = torch.autograd.grad(losses[i], [params[n] for n in kernels], retain_graph=True,
                                        allow_unused=True)
            flat.append(torch.cat([(g if g is not None else torch.zeros_like(params[n])).flatten()
                                   for g, n in zip(grads, kernels)]))
    g = torch.stack(flat).detach()
    n_tasks = g.shape[0]
    out = g.new_empty(n_tasks, n_tasks)
    for i in range(n_tasks):
        for j in range(n_tasks):
            denom = g[i].norm() * g[j].norm()
            out[i, j] = (g[i] @ g[j]) / denom if denom > 0 else 0.0
    return out
