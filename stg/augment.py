"""Augmentation on the device, per batch, with no per-sample Python: random crop and flip."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip(images: torch.Tensor, *, pad: int, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random ``pad``-pixel translated crop (zero padding) and horizontal flip of each image.

    images: (B, C, H, W) any dtype, on the generator's device; returns the same shape and dtype.
    """
    b, _, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=generator)
    rows = oy + torch.arange(h, device=dev)  # (B, H)
    cols = ox + torch.arange(w, device=dev)  # (B, W)
    if flip:
        mirror = torch.rand((b, 1), device=dev, generator=generator) < 0.5
        cols = torch.where(mirror, cols.flip(1), cols)
    batch = torch.arange(b, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)
