"""A synthetic image dataset with a planted class hierarchy: the scale test for task grouping.

Generator (all vectorised torch, one ``torch.Generator`` seeded with ``seed``):

1. **Superclass prototype** (n_super of them): a smooth random colour field, a 4x4x3 Gaussian
   grid upsampled bicubically to size x size, plus a random soft-edged ellipse (centre, radii,
   colour) - so siblings share both colour layout and a shape.
2. **Class pattern** = prototype + ``class_scale`` x a class-specific smooth field (8x8 grid
   upsampled, finer than the prototype) + a small class-specific blob. The class part is smaller
   than the prototype, so siblings look alike and are told apart by finer detail only.
3. **Sample** = class pattern under a random affine jitter (shift up to +-12 % of the image,
   rotation up to +-15 deg, scale 0.9-1.1, horizontal flip with p = 0.5, reflection padding), plus a
   per-sample smooth nuisance field, then contrast (x0.7-1.3) and brightness (+-0.3) jitter and
   Gaussian pixel noise; mapped to uint8 by ``128 + 48 * x`` clamped to [0, 255] (truncated).

Superclasses are easy to tell apart; sibling classes are not trivially separable, so a CNN's
one-vs-rest tasks for siblings are uncertain on the same images and their data maps look alike:
the planted reference ``planted`` (super_00: class_000..class_004, ...) is what task grouping
should recover.

Its size is a dataset option, so a run records it in its data spec and resume / grouping rebuild
the same images: ``synthetic-hierarchy:classes=1000,super=100,train=12,test=3`` is 1,000 classes
in 100 planted superclasses with 12 training and 3 test images per class (``parse_name``).
Plain ``synthetic-hierarchy`` is the default: 100 classes in 20 superclasses, 120 / 30 per class.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from stg.errors import StgError
from stg.data.taskset import ClassData


def _smooth_field(n: int, grid: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 3, size, size) float32: a grid x grid Gaussian field upsampled bicubically.

    Upsampling is linear and separable, so it is done as U @ coarse @ U.T with the (size, grid)
    interpolation matrix U (much faster than ``F.interpolate`` on many tiny images).
    """
    coarse = torch.randn(n, 3, grid, grid, generator=gen)
    eye = torch.eye(grid)[:, None, :, None]  # (grid, 1, grid, 1): unit impulses along one axis
    u = F.interpolate(eye, size=(size, 1), mode="bicubic", align_corners=False)[:, 0, :, 0].T  # (size, grid)
    return torch.einsum("ij,ncjk,lk->ncil", u, coarse, u)


def _ellipses(n: int, size: int, gen: torch.Generator, radius: tuple[float, float]) -> torch.Tensor:
    """(n, 3, size, size) float32: one soft-edged coloured ellipse per row."""
    lin = torch.linspace(-1.0, 1.0, size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    centre = (torch.rand(n, 2, generator=gen) - 0.5) * 1.0
    radii = radius[0] + (radius[1] - radius[0]) * torch.rand(n, 2, generator=gen)
    colour = torch.randn(n, 3, generator=gen) * 1.2
    d = ((xx - centre[:, 0, None, None]) / radii[:, 0, None, None]) ** 2 + (
        (yy - centre[:, 1, None, None]) / radii[:, 1, None, None]
    ) ** 2
    mask = torch.sigmoid((1.0 - d) * 6.0)  # (n, size, size)
    return mask[:, None] * colour[:, :, None, None]


def _jitter(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random affine jitter of (n, 3, S, S): shift, rotation, scale, horizontal flip."""
    n = images.shape[0]
    angle = (torch.rand(n, generator=gen) - 0.5) * 2 * math.radians(15)
    scale = 0.9 + 0.2 * torch.rand(n, generator=gen)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 2 * 0.24  # grid units: 0.24 = 12 % of the image
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


NAME = "synthetic-hierarchy"
# option key -> default (classes = n_super * n_per_super)
_OPTIONS = {"classes": 100, "super": 20, "train": 120, "test": 30, "size": 32, "seed": 0}


def parse_name(name: str) -> dict[str, int] | None:
    """``synthetic-hierarchy[:key=value,...]`` -> make_synthetic_hierarchy's keyword arguments, or
    None for another dataset name. Keys: classes (100), super (20; must divide classes), train
    (120) and test (30) images per class, size (32), seed (0). StgError on an unknown key, a
    non-integer value or classes not a multiple of super."""
    if name != NAME and not name.startswith(NAME + ":"):
        return None
    opts = dict(_OPTIONS)
    text = name[len(NAME) + 1:]
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if key not in opts or not eq:
            raise StgError(f"invalid {NAME} option {part!r}: use key=value with keys {', '.join(_OPTIONS)} "
                           f"(e.g. {NAME}:classes=1000,super=100)")
        try:
            opts[key] = int(value)
        except ValueError:
            raise StgError(f"invalid {NAME} option {part!r}: {key} must be an integer") from None
    if opts["super"] < 1 or opts["classes"] < 1 or opts["classes"] % opts["super"]:
        raise StgError(f"{NAME}: classes ({opts['classes']}) must be a positive multiple of super ({opts['super']})")
    if not 8 <= opts["size"] <= 256 or opts["train"] < 1 or opts["test"] < 0:
        raise StgError(f"{NAME}: size must be 8..256, train >= 1 and test >= 0 images per class")
    # the generator holds float32 images: refuse what cannot fit any machine instead of swapping
    gib = opts["classes"] * (opts["train"] + opts["test"]) * 3 * opts["size"] ** 2 * 4 / 2**30
    if gib > 64:
        raise StgError(f"{NAME}: {opts['classes']} classes x {opts['train'] + opts['test']} images of "
                       f"{opts['size']}x{opts['size']} need {gib:.0f} GiB to generate: use fewer images per class")
    return {"n_super": opts["super"], "n_per_super": opts["classes"] // opts["super"],
            "train_per_class": opts["train"], "test_per_class": opts["test"], "size": opts["size"],
            "seed": opts["seed"]}


def make_synthetic_hierarchy(
    *,
    n_super: int = 20,
    n_per_super: int = 5,
    train_per_class: int = 120,
    test_per_class: int = 30,
    size: int = 32,
    seed: int = 0,
    class_scale: float = 0.45,
    noise: float = 0.35,
) -> ClassData:
    """The planted-hierarchy dataset (see the module docstring); deterministic by ``seed``.

    train_images: (n_super * n_per_super * train_per_class, 3, size, size) uint8, rows grouped by class;
    test_images: (n_super * n_per_super * test_per_class, 3, size, size) uint8.
    Reference ``planted``: super_XX -> [class_XXX, ...].
    """
    if n_super < 1 or n_per_super < 1 or train_per_class < 1 or test_per_class < 0 or size < 8:
        raise StgError(
            "synthetic hierarchy needs n_super, n_per_super, train_per_class >= 1, test_per_class >= 0, size >= 8"
        )
    gen = torch.Generator().manual_seed(seed)
    n_classes = n_super * n_per_super
    proto = _smooth_field(n_super, 4, size, gen) + _ellipses(n_super, size, gen, (0.35, 0.7))
    own = _smooth_field(n_classes, 8, size, gen) + 0.8 * _ellipses(n_classes, size, gen, (0.15, 0.35))
    patterns = proto.repeat_interleave(n_per_super, 0) + class_scale * own  # (K, 3, S, S)

    def sample(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        classes = torch.arange(n_classes).repeat_interleave(per_class)
        n = classes.shape[0]
        if n == 0:  # no test images asked for (affine_grid refuses an empty batch)
            return torch.zeros(0, 3, size, size, dtype=torch.uint8), classes
        x = _jitter(patterns[classes], gen)
        x.add_(_smooth_field(n, 4, size, gen).mul_(0.5))
        contrast = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=gen)
        brightness = (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.6
        x.mul_(contrast).add_(brightness).add_(torch.randn(x.shape, generator=gen).mul_(noise))
        return x.mul_(48).add_(128).clamp_(0, 255).to(torch.uint8), classes

    train_images, train_classes = sample(train_per_class)
    test_images, test_classes = sample(test_per_class)
    class_names = tuple(f"class_{k:0{max(3, len(str(n_classes - 1)))}d}" for k in range(n_classes))
    width = max(2, len(str(n_super - 1)))
    planted = {
        f"super_{s:0{width}d}": list(class_names[s * n_per_super: (s + 1) * n_per_super]) for s in range(n_super)
    }
    return ClassData(
        name="synthetic-hierarchy",
        class_names=class_names,
        train_images=train_images,
        train_classes=train_classes,
        test_images=test_images,
        test_classes=test_classes,
        class_references={"planted": planted},
        default_tasks="ovr:all",
        source=(
            f"synthetic planted hierarchy: {n_super} superclasses x {n_per_super} classes, "
            f"{train_per_class}/{test_per_class} train/test images per class, {size}x{size}, seed {seed}"
        ),
    )
