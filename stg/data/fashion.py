"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017; Zalando Research, MIT licence).

Read from the four standard IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``), parsed here with
numpy. Also the embedded 5,000-image sample ``stg/data/assets/fashion_sample.npz`` (see FASHION_SAMPLE.md).

Reference ``garment-type`` groups the 10 classes by what part of the body they dress:

* footwear: sandal, sneaker, ankle_boot
* tops: tshirt_top, pullover, coat, shirt (upper-body garments; the classes people and CNNs
  confuse most with each other)
* bottoms_and_dresses: trouser, dress (long garments covering the legs; both are tall, narrow
  silhouettes, unlike the wide upper-body shapes of tops)
* accessories: bag (neither worn on the body nor footwear, so it stands alone)
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from stg.errors import StgError
from stg.data.taskset import ClassData, Reference

FASHION_CLASSES = (
    "tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
GARMENT_TYPE: Reference = {
    "footwear": ["sandal", "sneaker", "ankle_boot"],
    "tops": ["tshirt_top", "pullover", "coat", "shirt"],
    "bottoms_and_dresses": ["trouser", "dress"],
    "accessories": ["bag"],
}
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
SAMPLE_PATH = Path(__file__).resolve().parent / "assets" / "fashion_sample.npz"  # package data of stg.data
_MAGIC = {1: 0x00000801, 3: 0x00000803}  # IDX magic: unsigned byte data, 1 or 3 dimensions


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array in an IDX file (gzipped or not): (N,) for labels, (N, 28, 28) for images."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise StgError(f"cannot read Fashion-MNIST file {path}: {' '.join(str(e).split())}") from None
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise StgError(f"corrupt IDX file {path}: {len(raw)} bytes, shorter than its header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _MAGIC[ndim]:
        raise StgError(f"corrupt IDX file {path}: magic number {magic:#010x}, expected {_MAGIC[ndim]:#010x}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if ndim == 3 and dims[1:] != [28, 28]:
        raise StgError(f"corrupt IDX file {path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    expected = head + int(np.prod(dims))
    if len(raw) != expected:
        raise StgError(f"corrupt IDX file {path}: {len(raw)} bytes, header says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def find_files(dirs: list[Path]) -> dict[str, Path] | None:
    """The four IDX files from the first folder holding all of them (each ``X`` or ``X.gz``)."""
    for base in dirs:
        for folder in (base / "FashionMNIST" / "raw", base / "raw", base):
            found = {}
            for key, stem in FILES.items():
                for cand in (folder / stem, folder / f"{stem}.gz"):
                    if cand.is_file():
                        found[key] = cand
                        break
            if len(found) == len(FILES):
                return found
    return None


def _classdata(name: str, arrays: dict[str, np.ndarray], source: str) -> ClassData:
    """ClassData from train/test images (N, 28, 28) uint8 and labels (N,) in 0..9."""
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise StgError(f"{name}: {split} has {images.shape[0]} images but {labels.shape[0]} labels")
        if labels.size and int(labels.max()) > 9:
            raise StgError(f"{name}: {split} labels outside 0..9 (max {int(labels.max())})")
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
    return ClassData(
        name=name,
        class_names=FASHION_CLASSES,
        train_images=tensors["train_images"].reshape(-1, 1, 28, 28),
        train_classes=tensors["train_labels"].long(),
        test_images=tensors["test_images"].reshape(-1, 1, 28, 28),
        test_classes=tensors["test_labels"].long(),
        class_references={"garment-type": {g: list(m) for g, m in GARMENT_TYPE.items()}},
        default_tasks="ovr:all",
        source=source,
    )


def load_fashion_mnist(dirs: list[Path], download_root: Path | None = None) -> ClassData:
    """Fashion-MNIST from the first of ``dirs`` holding the IDX files (in DIR, DIR/raw or
    DIR/FashionMNIST/raw); if none does and ``download_root`` is given, download there first
    through torchvision's mirrors (MD5-checked).

    train_images: (60000, 1, 28, 28) uint8; test_images: (10000, 1, 28, 28) uint8.
    """
    files = find_files(dirs)
    if files is None and download_root is not None:
        from torchvision.datasets import FashionMNIST

        try:
            for train in (True, False):
                FashionMNIST(str(download_root), train=train, download=True)
        except Exception as e:
            raise StgError(f"Fashion-MNIST download to {download_root} failed: {' '.join(str(e).split())}") from None
        files = find_files([download_root])
    if files is None:
        where = ", ".join(str(d) for d in dirs)
        raise StgError(
            f"Fashion-MNIST not found in {where}: pass --download or put the four *-ubyte[.gz] files there"
        )
    arrays = {key: read_idx(path, 3 if key.endswith("images") else 1) for key, path in files.items()}
    folder = files["train_images"].parent
    return _classdata("fashion-mnist", arrays, f"Fashion-MNIST (Zalando Research, MIT licence), IDX files in {folder}")


def load_fashion_sample(path: Path = SAMPLE_PATH) -> ClassData:
    """The embedded sample: 4,000 train + 1,000 test real Fashion-MNIST images (400/100 per class).

    train_images: (4000, 1, 28, 28) uint8; test_images: (1000, 1, 28, 28) uint8.
    """
    if not path.is_file():
        raise StgError(f"embedded Fashion-MNIST sample missing at {path}: run scripts/build_fashion_sample.py")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("train_images", "train_labels", "test_images", "test_labels")}
            provenance = str(z["provenance"]) if "provenance" in z else ""
    except (OSError, ValueError, KeyError) as e:
        raise StgError(f"corrupt Fashion-MNIST sample {path}: {' '.join(str(e).split())}") from None
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise StgError(f"corrupt Fashion-MNIST sample {path}: {split}_images must be (N, 28, 28) uint8")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise StgError(f"corrupt Fashion-MNIST sample {path}: {split}_labels must be (N,) integers")
    return _classdata("fashion-sample", arrays, provenance or f"Fashion-MNIST sample {path}")
