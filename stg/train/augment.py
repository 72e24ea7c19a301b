"""Augmentation on the device, per batch, with no per-sample Python: random crop and flip.

Images are handled channels-last, (B, H, W, C), the layout the engine stores them in, so a batch
becomes an NCHW channels_last tensor with a free ``permute`` and no copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip(images: torch.Tensor, *, pad: int, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random ``pad``-pixel translated crop (zero padding) and horizontal flip of each image.

    images: (B, H, W, C) any dtype, on the generator's device; returns the same shape and dtype.
    One gather over the flattened padded pixels: out[b, y, x] = padded[b, y + dy_b, x' + dx_b]
    with x' = W - 1 - x for mirrored images.
    """
    b, h, w, c = images.shape
    dev = images.device
    padded = F.pad(images, (0, 0, pad, pad, pad, pad))  # (B, H + 2p, W + 2p, C)
    wp = w + 2 * pad
    dy = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=dev, generator=generator)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    if flip:
        mirror = torch.rand((b, 1, 1), device=dev, generator=generator) < 0.5
        cols = torch.where(mirror, cols.flip(-1), cols)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    flat = ((rows + dy) * wp + cols + dx).view(b, h * w, 1).expand(b, h * w, c)
    return padded.reshape(b, -1, c).gather(1, flat).view(b, h, w, c)
