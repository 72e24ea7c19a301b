"""Devices and the data that lives on them: device names, precision (bf16 autocast), the
optimizer, model placement, the device-resident training split, and eval-mode prediction."""

from __future__ import annotations

import functools
from typing import Iterable

import torch
from torch import nn

from stg.data.taskset import Split
from stg.errors import StgError
from stg.train.augment import crop_flip
from stg.train.hostmem import retain_freed_memory


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N`` (the N-th visible GPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    index = name[len("cuda:"):] if name.startswith("cuda:") else None
    if name != "cuda" and not (index is not None and index.isdigit()):
        raise StgError(f"unknown device {name!r}: choose auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise StgError(f"--device {name} was asked for but no CUDA GPU is available: use --device cpu or auto")
    if index is not None and int(index) >= torch.cuda.device_count():
        raise StgError(f"--device {name}: there is no such GPU ({torch.cuda.device_count()} visible, "
                       "numbered from 0)")
    return torch.device(name)


def device_choices() -> list[str]:
    """What a user can pick: auto, cpu, and cuda (plus cuda:0, cuda:1, ... with several GPUs)."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["auto", "cpu", "cuda"] + ([f"cuda:{i}" for i in range(n)] if n > 1 else [])


class DeviceData:
    """A split resident on the device: uint8 images stored (N, H, W, C), float labels (N, T)."""

    def __init__(self, split: Split, device: torch.device, mean: torch.Tensor, std: torch.Tensor):
        self.images = split.images.permute(0, 2, 3, 1).contiguous().to(device)  # channels-last storage
        self.labels = split.labels.to(device=device, dtype=torch.float32)
        self.shift = (-mean / std).to(device)  # (C,): x_norm = x * scale + shift
        self.scale = (1.0 / std).to(device)
        self.device = device

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(
        self, index: torch.Tensor, *, augment: bool, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) rows -> normalised float images (B, C, H, W) in channels_last memory, labels (B, T)."""
        return self.prepare(self.images[index], augment=augment, generator=generator), self.labels[index]

    def prepare(self, x: torch.Tensor, *, augment: bool, generator: torch.Generator | None) -> torch.Tensor:
        """uint8 rows (B, H, W, C) -> normalised float images (B, C, H, W), cropped/flipped with ``augment``."""
        if augment:
            assert generator is not None
            x = crop_flip(x, pad=max(1, x.shape[2] // 8), generator=generator)
        x = torch.addcmul(self.shift, x.float(), self.scale)  # (B, H, W, C) float32
        return x.permute(0, 3, 1, 2)


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in pixel units: two (C,) tensors."""
    sample = images[: min(len(images), 10_000)].double()
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1.0)
    return mean.float(), std.float()


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    """bf16 autocast: on GPUs with native bf16 (NVIDIA compute capability 8.0 and up, ROCm), and on
    CPUs with native bf16 units (AMX or AVX512-BF16), where it doubles the paper CNN's training rate;
    plain fp32 elsewhere (emulated bf16 would be slower)."""
    if precision != "auto":
        return precision == "bf16"
    return _native_bf16(device)


@functools.lru_cache(maxsize=None)
def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.version.hip) or torch.cuda.get_device_properties(device).major >= 8
    cpu = getattr(torch, "cpu", None)
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return device.type == "cpu" and any(bool(getattr(cpu, name, lambda: False)()) for name in probes)


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast where ``use_bf16``; no cast cache (each weight is cast once per forward anyway,
    and cached casts must not outlive a CUDA graph capture)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(device, precision),
                          cache_enabled=False)


def adam(params: Iterable[nn.Parameter], lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam with the official trainer's settings (betas 0.9/0.999, eps 1e-8, no weight decay), as one
    fused kernel per step (CPU and CUDA) instead of a loop over parameter tensors; on CUDA with its
    step count on the device, so a CUDA graph can capture it (``stg.train.stepgraph``)."""
    return torch.optim.Adam(params, lr=lr, fused=True, capturable=device.type == "cuda")


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to ``device`` in channels_last layout (faster convolutions on CUDA and oneDNN CPUs).
    On CPU, also keep freed activation memory in the process (``stg.train.hostmem``)."""
    if device.type == "cpu":
        retain_freed_memory()
    return model.to(device).to(memory_format=torch.channels_last)


@torch.no_grad()
def predict_logits(model: nn.Module, data: DeviceData, *, batch_size: int = 1024, batch_dim: int = 0,
                   precision: str = "auto") -> torch.Tensor:
    """Eval-mode logits for a whole split, float32 on the device: (N, T) for a model; for an
    ensemble whose output is (k, B, T) pass ``batch_dim=1`` to get (k, N, T)."""
    was_training = model.training
    model.eval()
    rows = torch.arange(len(data), device=data.device)
    out = []
    for index in rows.split(batch_size) if len(data) else [rows]:  # an empty split still gives its shape
        x, _ = data.batch(index, augment=False, generator=None)
        with autocast(data.device, precision):
            out.append(model(x).float())
    model.train(was_training)
    return torch.cat(out, dim=batch_dim)
