"""Small images of training samples for the explorer: thumbnails as PNG / base64, and sprites.

A data map has one point per training sample; the explorer shows the image behind a point. Only
the images a user looks at are encoded (a clicked point, a selection, a gallery), each as a small
PNG (48 x 48 by default: a 28 x 28 Fashion-MNIST image is ~0.3-1 KB), so a page with thousands of
points never ships thousands of images.

Resizing is nearest-neighbour on integer pixel indices (exact pixels, no smoothing, so a
thumbnail shows what the model saw at its resolution):

    out[i, j] = image[floor(i * H / size), floor(j * W / size)]      i, j in 0 .. size-1

A sprite packs K thumbnails row-major into one (rows * size, cols * size, C) image: thumbnail k
sits at x = (k % cols) * size, y = (k // cols) * size.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stg.errors import StgError

THUMB_SIZE = 48


def to_hwc(image: np.ndarray) -> np.ndarray:
    """(C, H, W) uint8 with C in {1, 3} -> (H, W) for grey or (H, W, 3) for colour; (H, W) passes."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise StgError(f"images must be uint8, got {a.dtype}")
    if a.ndim == 2:
        return a
    if a.ndim == 3 and a.shape[0] in (1, 3):
        return a[0] if a.shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0))
    raise StgError(f"an image must be (C, H, W) with C 1 or 3, got shape {a.shape}")


def resize_nearest(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W[, C]) -> (size, size[, C]) by the nearest-neighbour rule in the module docstring."""
    if size < 1:
        raise StgError(f"thumbnail size must be at least 1, got {size}")
    h, w = image.shape[:2]
    rows = (np.arange(size) * h) // size
    cols = (np.arange(size) * w) // size
    return image[rows[:, None], cols[None, :]]


def thumbnail(image: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    """One (C, H, W) uint8 training image -> (size, size) or (size, size, 3) uint8."""
    return resize_nearest(to_hwc(image), size)


def png_bytes(pixels: np.ndarray) -> bytes:
    """(H, W) or (H, W, 3) uint8 -> PNG file bytes (lossless)."""
    from PIL import Image  # lazy: only the explorer needs it

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def thumbnail_png(image: np.ndarray, size: int = THUMB_SIZE) -> bytes:
    """One (C, H, W) uint8 image as a size x size PNG."""
    return png_bytes(thumbnail(image, size))


def data_uri(png: bytes) -> str:
    """PNG bytes as a ``data:image/png;base64,...`` URI (embeddable in HTML or a Plotly image)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnails(images: np.ndarray, rows: np.ndarray, size: int = THUMB_SIZE) -> list[np.ndarray]:
    """Thumbnails of ``rows`` of an (N, C, H, W) uint8 array (or tensor), in ``rows`` order."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= len(images)):
        raise StgError(f"sample rows must lie in [0, {len(images)})")
    return [thumbnail(_numpy(images[int(r)]), size) for r in rows]


def sprite(images: np.ndarray, rows: np.ndarray, *, size: int = THUMB_SIZE, cols: int = 10) -> np.ndarray:
    """Thumbnails of ``rows`` packed row-major into one image: (ceil(K / cols) * size, cols * size[, 3])
    uint8, unused cells black (see the module docstring for the positions)."""
    thumbs = thumbnails(images, rows, size)
    if cols < 1:
        raise StgError(f"a sprite needs at least one column, got {cols}")
    n_rows = max(1, -(-len(thumbs) // cols))
    shape = (n_rows * size, cols * size) + (thumbs[0].shape[2:] if thumbs else ())
    out = np.zeros(shape, dtype=np.uint8)
    for k, t in enumerate(thumbs):
        y, x = (k // cols) * size, (k % cols) * size
        out[y:y + size, x:x + size] = t
    return out


def sprite_position(k: int, *, size: int = THUMB_SIZE, cols: int = 10) -> tuple[int, int]:
    """(x, y) pixel offset of thumbnail k in a sprite."""
    return (k % cols) * size, (k // cols) * size


def _numpy(image) -> np.ndarray:
    """A numpy view of one image (a torch tensor row or a numpy row)."""
    return image.numpy() if hasattr(image, "numpy") else np.asarray(image)


@dataclass(frozen=True)
class RunSamples:
    """What the explorer shows next to a point of a data-map run: per training sample (the data
    maps' column order) its image, dataset row, class and labels.

    images: (N, C, H, W) uint8, or None when the dataset cannot be loaded here (``why`` says why);
    dataset_index: (N,) int64 row in the dataset's training arrays; classes: (N,) int64;
    class_names: names of the class ids; labels: (N, T) float32, 0/1, NaN where missing.
    """

    images: Any
    dataset_index: np.ndarray
    classes: np.ndarray
    class_names: tuple[str, ...]
    labels: np.ndarray
    why: str | None = None


def load_run_samples(run_path: str | Path, *, load_images: bool = True) -> RunSamples:
    """The samples of a data-map run: RUN/samples.npz, plus the training images rebuilt from
    run.json's data spec (the same task set, so the same rows and the same flips the model saw).

    StgError when samples.npz is missing or corrupt; a dataset that cannot be loaded here (moved,
    not downloaded) gives ``images=None`` and the reason in ``why``, not an error.
    """
    from stg.runs.rundir import RunDir

    run = RunDir(run_path)
    meta = run.read()
    path = run.path / "samples.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            index = np.asarray(z["index"], dtype=np.int64)
            classes = np.asarray(z["classes"], dtype=np.int64)
            labels = np.asarray(z["labels"], dtype=np.float32)
    except FileNotFoundError:
        raise StgError(f"{path} is missing: the run's samples are unknown") from None
    except Exception as e:  # a truncated or foreign file: BadZipFile, KeyError, ValueError, OSError
        raise StgError(f"{path} is corrupt: {type(e).__name__}: {e}") from None
    n_tasks = len(meta["task_names"])
    if labels.ndim != 2 or labels.shape != (len(index), n_tasks) or classes.shape != index.shape:
        raise StgError(f"{path} is corrupt: expected index, classes (N,) and labels (N, {n_tasks})")
    if labels.dtype != np.float32 or not np.isnan(labels).any():
        labels = np.where(labels > 1, np.nan, labels).astype(np.float32)  # uint8 files mark missing as 255
    n_classes = int(classes.max()) + 1 if classes.size else 0
    names = tuple(f"class {i}" for i in range(n_classes))
    if not load_images:
        return RunSamples(None, index, classes, names, labels, "images not requested")
    try:
        from stg.data.datasets import load_taskset_from_spec

        taskset = load_taskset_from_spec(meta.get("data"))
    except Exception as e:  # noqa: BLE001: without images the explorer still shows every number
        reason = str(e) if isinstance(e, StgError) else f"{type(e).__name__}: {e}"
        return RunSamples(None, index, classes, names, labels, f"the run's dataset cannot be loaded here: {reason}")
    train = taskset.train
    if len(train) != len(index) or not np.array_equal(train.index.numpy(), index):
        return RunSamples(None, index, classes, tuple(taskset.class_names), labels,
                          "the dataset no longer gives this run's training samples (it changed since the run)")
    return RunSamples(train.images, index, classes, tuple(taskset.class_names), labels)
