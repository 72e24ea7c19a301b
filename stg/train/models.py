"""Models with T logits: the paper's small CNN and ResNet-18 (torchvision stem, or a CIFAR stem)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18

from stg.errors import StgError
from stg.train.config import MODEL_NAMES



class Dropout(nn.Dropout):
    """Inverted dropout with a uniform-threshold mask: the same distribution as ``nn.Dropout``,
    about twice as fast on CPU (``bernoulli_`` dominates small-CNN steps there). Masks are drawn
    from ``generator`` when set (the training loop sets the run's own, ``stg.train.rng``), else
    from torch's global generator."""

    generator: torch.Generator | None = None
    # (lo, hi, B): x holds rows [lo, hi) of a B-row global batch (one rank of several,
    # stg.train.distributed): the B rows' masks are drawn, as one process would, and [lo, hi) used
    rows: tuple[int, int, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.rows is not None:
            lo, hi, b = self.rows
            draw = torch.rand((b, *x.shape[1:]), device=x.device, generator=self.generator)[lo:hi]
        else:
            draw = torch.rand(x.shape, device=x.device, generator=self.generator)
        keep = draw >= self.p
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))  # one multiply forward and backward


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that, on CPU, normalises a channels_last batch (B, C, H, W) as the
    (B*H*W, C) matrix it already is in memory: the same statistics and running averages, and ATen's
    2-D kernels are 1.3-1.7x faster than its 4-D channels_last ones for bf16 activations with
    fp32 parameters. Other inputs (CUDA, NCHW) take the usual path."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 4):
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.device.type != "cpu" or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        b, c, h, w = x.shape
        y = super().forward(x.permute(0, 2, 3, 1).reshape(b * h * w, c))  # a view: no copy
        return y.view(b, h, w, c).permute(0, 3, 1, 2)


class PaperCNN(nn.Module):
    """STG-MTL's ``CUSTOM_1`` network, sized from the input.

    conv5x5(C->32, no pad)-BN-ReLU-maxpool2 -> conv3x3(32->64)-BN-ReLU -> conv3x3(64->64)-BN-ReLU
    -> maxpool2 -> flatten -> dropout 0.2 -> linear(->128)-ReLU -> dropout 0.2 -> linear(128->T).
    Input (B, C, H, W) float; output (B, T) logits.

    Each ReLU-then-max-pool runs as max-pool-then-ReLU: ReLU is monotone, so
    max(relu(a), relu(b)) = relu(max(a, b)) exactly, and both orders route the gradient to the same
    element (tested). The ReLU then touches a quarter of the values. ReLUs are out of place: ATen's
    in-place ReLU on bf16 channels_last tensors is several times slower on CPU.
    """

    def __init__(self, in_channels: int, size: int, n_tasks: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5), BatchNorm2d(32), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), BatchNorm2d(64), nn.MaxPool2d(2), nn.ReLU(),
        )
        side = ((size - 4) // 2) // 2
        self.head = nn.Sequential(
            nn.Flatten(), Dropout(0.2), nn.Linear(64 * side * side, 128), nn.ReLU(),
            Dropout(0.2), nn.Linear(128, n_tasks),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(name: str, *, in_channels: int, size: int, n_tasks: int) -> nn.Module:
    """A fresh model with ``n_tasks`` outputs for (C, size, size) inputs.

    ``resnet18`` is torchvision's network as the paper uses it (7x7 stride-2 stem and max-pool; the
    head has no bias); ``resnet18-cifar`` swaps the stem for a 3x3 stride-1 conv and no max-pool,
    the usual choice for 32x32 images.
    """
    if name == "cnn":
        if size < 8:
            raise StgError(f"model 'cnn' needs images of at least 8x8 pixels, got {size}x{size}")
        return PaperCNN(in_channels, size, n_tasks)
    if name in ("resnet18", "resnet18-cifar"):
        net = resnet18(weights=None, num_classes=n_tasks)
        net.fc = nn.Linear(net.fc.in_features, n_tasks, bias=False)
        if name == "resnet18-cifar":
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        return net
    raise StgError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}")


def set_dropout_generator(module: nn.Module, generator: torch.Generator | None) -> None:
    """Draw every ``Dropout`` mask of ``module`` (and of any skeleton it exposes through
    ``skeleton_modules()``, as ``VmapEnsemble`` does) from ``generator``."""
    modules = list(module.modules())
    skeleton = getattr(module, "skeleton_modules", None)
    if skeleton is not None:
        modules += list(skeleton())
    for m in modules:
        if isinstance(m, Dropout):
            m.generator = generator


def set_dropout_rows(module: nn.Module, rows: tuple[int, int, int] | None) -> None:
    """Tell every ``Dropout`` of ``module`` which rows [lo, hi) of a B-row global batch it sees
    (``rows`` = (lo, hi, B)), or None for a whole batch (see ``Dropout.rows``)."""
    for m in module.modules():
        if isinstance(m, Dropout):
            m.rows = rows


def head_names(model: nn.Module) -> tuple[str, ...]:
    """Name prefixes of the task heads (the layer that maps the shared features to the T logits)."""
    own = getattr(model, "head_names", None)
    if callable(own):
        return tuple(own())
    if isinstance(model, PaperCNN):
        return ("head.5.",)
    if hasattr(model, "fc") and isinstance(model.fc, nn.Linear):  # torchvision ResNet
        return ("fc.",)
    raise TypeError(f"no known task heads for {type(model).__name__}: give it a head_names() method")


def shared_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the shared trunk: every trainable parameter that is not a task head."""
    heads = head_names(model)
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and not n.startswith(heads)]
