"""CIFAR-10 and CIFAR-100 from the official python pickles (Krizhevsky, 2009).

The files are untrusted: they are read with a restricted unpickler that can build only plain
containers and numpy arrays. Loading checks the structure (keys, shapes, dtypes, label ranges,
name counts, fine-to-coarse consistency) but not the MD5, so a subset in the official format loads.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from stg.errors import StgError
from stg.data.taskset import ClassData, Reference

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"

CIFAR10_VEHICLES = ("airplane", "automobile", "ship", "truck")


def _numpy_reconstruct() -> Callable[..., Any]:
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(module)._reconstruct  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    raise ImportError("numpy multiarray._reconstruct not found")


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only dicts, lists, bytes, str, numbers and numpy arrays (the official CIFAR content)."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module == "_codecs" and name == "encode":  # how Python 3 writes bytes at protocol 2
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_pickle(path: Path) -> dict[bytes, Any]:
    """The dict stored in an official CIFAR pickle; StgError naming the file if it is not one."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise StgError(f"cannot read {path}: {_one_line(e.strerror or str(e))}") from None
    except Exception as e:  # any unpickling failure of an untrusted file is a corrupt file
        raise StgError(f"corrupt CIFAR file {path}: {_one_line(f'{type(e).__name__}: {e}')}") from None
    if not isinstance(obj, dict):
        raise StgError(f"corrupt CIFAR file {path}: expected a dict, found {type(obj).__name__}")
    return obj


def _key(d: dict[bytes, Any], key: bytes, path: Path) -> Any:
    if key not in d:
        have = ", ".join(sorted(k.decode("latin1") if isinstance(k, bytes) else str(k) for k in d))
        raise StgError(f"corrupt CIFAR file {path}: missing key {key.decode()!r} (has: {have})")
    return d[key]


def _images(d: dict[bytes, Any], path: Path) -> np.ndarray:
    """(N, 3, 32, 32) uint8 from the (N, 3072) row-major CHW ``data`` array."""
    data = _key(d, b"data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise StgError(f"corrupt CIFAR file {path}: 'data' must be a uint8 array of shape (N, 3072), found {dtype} {shape}")
    return data.reshape(-1, 3, 32, 32)


def _labels(d: dict[bytes, Any], key: bytes, n: int, n_classes: int, path: Path) -> np.ndarray:
    """(n,) int64 labels in [0, n_classes)."""
    raw = _key(d, key, path)
    try:
        labels = np.asarray(raw)
    except Exception:
        labels = np.zeros(0)
    if labels.ndim != 1 or labels.shape[0] != n or not np.issubdtype(labels.dtype, np.integer):
        raise StgError(f"corrupt CIFAR file {path}: {key.decode()!r} must be {n} integer labels, found shape {labels.shape}")
    labels = labels.astype(np.int64)
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise StgError(f"corrupt CIFAR file {path}: {key.decode()!r} has labels outside 0..{n_classes - 1}")
    return labels


def _names(d: dict[bytes, Any], key: bytes, count: int, path: Path) -> tuple[str, ...]:
    raw = _key(d, key, path)
    if not isinstance(raw, list) or len(raw) != count or not all(isinstance(x, (bytes, str)) for x in raw):
        raise StgError(f"corrupt CIFAR file {path}: {key.decode()!r} must list {count} names")
    names = tuple(x.decode("utf-8") if isinstance(x, bytes) else x for x in raw)
    if len(set(names)) != count:
        raise StgError(f"corrupt CIFAR file {path}: {key.decode()!r} has duplicate names")
    return names


def _download(url: str, root: Path, md5: str, what: str) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(url, download_root=str(root), filename=url.rsplit("/", 1)[1], md5=md5)
    except Exception as e:
        raise StgError(f"{what} download from {url} failed: {_one_line(f'{type(e).__name__}: {e}')}") from None


def _require(folder: Path, files: tuple[str, ...], root: Path, what: str, download: bool, url: str, md5: str) -> None:
    if all((folder / f).is_file() for f in files):
        return
    if download:
        _download(url, root, md5, what)
        missing = [f for f in files if not (folder / f).is_file()]
        if not missing:
            return
        raise StgError(f"{what} download finished but {folder} lacks {', '.join(missing)}")
    missing = [f for f in files if not (folder / f).is_file()]
    detail = f" ({folder.name}/ lacks {', '.join(missing)})" if folder.is_dir() else ""
    raise StgError(f"{what} not found in {root}: pass --download or put {folder.name}/ there{detail}")


def load_cifar100(root: Path, download: bool = False) -> ClassData:
    """CIFAR-100 from ``root/cifar-100-python/{train,test,meta}``: 100 fine classes, reference
    ``superclass`` (coarse label -> fine classes, read from the pickles' ``coarse_labels``).

    train_images: (N, 3, 32, 32) uint8 (50,000 for the full set); test: (M, 3, 32, 32) (10,000).
    """
    root = Path(root).expanduser()
    folder = root / "cifar-100-python"
    _require(folder, ("train", "test", "meta"), root, "CIFAR-100", download, CIFAR100_URL, CIFAR100_MD5)
    meta_path = folder / "meta"
    meta = load_pickle(meta_path)
    fine_names = _names(meta, b"fine_label_names", 100, meta_path)
    coarse_names = _names(meta, b"coarse_label_names", 20, meta_path)

    parts = {}
    coarse_of: dict[int, int] = {}
    for split in ("train", "test"):
        path = folder / split
        d = load_pickle(path)
        images = _images(d, path)
        fine = _labels(d, b"fine_labels", len(images), 100, path)
        coarse = _labels(d, b"coarse_labels", len(images), 20, path)
        pairs = np.unique(np.stack([fine, coarse], 1), axis=0)
        for f, c in pairs.tolist():
            if coarse_of.setdefault(f, c) != c:
                raise StgError(
                    f"corrupt CIFAR file {path}: fine class {fine_names[f]!r} appears under two superclasses "
                    f"({coarse_names[coarse_of[f]]!r} and {coarse_names[c]!r})"
                )
        parts[split] = (torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(fine))

    superclass: Reference = {}
    for c, cname in enumerate(coarse_names):
        members = [fine_names[f] for f in sorted(coarse_of) if coarse_of[f] == c]
        if members:
            superclass[cname] = members
    return ClassData(
        name="cifar100",
        class_names=fine_names,
        train_images=parts["train"][0],
        train_classes=parts["train"][1],
        test_images=parts["test"][0],
        test_classes=parts["test"][1],
        class_references={"superclass": superclass},
        default_tasks="ovr:all",
        source=f"CIFAR-100 (Krizhevsky 2009), official python pickles in {folder}",
    )


def load_cifar10(root: Path, download: bool = False) -> ClassData:
    """CIFAR-10 from ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``:
    10 classes, reference ``vehicles-animals``, default tasks ``paper10``.

    train_images: (N, 3, 32, 32) uint8 (50,000 for the full set); test: (M, 3, 32, 32) (10,000).
    """
    root = Path(root).expanduser()
    folder = root / "cifar-10-batches-py"
    batches = tuple(f"data_batch_{i}" for i in range(1, 6))
    _require(folder, (*batches, "test_batch", "batches.meta"), root, "CIFAR-10", download, CIFAR10_URL, CIFAR10_MD5)
    meta_path = folder / "batches.meta"
    names = _names(load_pickle(meta_path), b"label_names", 10, meta_path)

    def read(files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for name in files:
            path = folder / name
            d = load_pickle(path)
            imgs = _images(d, path)
            images.append(imgs)
            labels.append(_labels(d, b"labels", len(imgs), 10, path))
        return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))

    train_images, train_classes = read(batches)
    test_images, test_classes = read(("test_batch",))
    vehicles = [n for n in names if n in CIFAR10_VEHICLES]
    animals = [n for n in names if n not in CIFAR10_VEHICLES]
    return ClassData(
        name="cifar10",
        class_names=names,
        train_images=train_images,
        train_classes=train_classes,
        test_images=test_images,
        test_classes=test_classes,
        class_references={"vehicles-animals": {"vehicles": vehicles, "animals": animals}},
        default_tasks="paper10",
        source=f"CIFAR-10 (Krizhevsky 2009), official python pickles in {folder}",
    )
