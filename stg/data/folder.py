"""The user's own labelled images: an image folder or an ``.npz`` file.

Folder layout: ``DIR/train/<class>/*.png|jpg|jpeg`` and ``DIR/test/<class>/...`` (test classes
must be train classes). Images of any sizes: several sizes (or ``image_size``) are resized by centre
crop or padding (``stg.data.imagecache``, which also caches the decoded array in
``DIR/.stg-cache``); grayscale images give 1 channel, colour ones 3 (if any image is colour, all
are read as RGB).

``.npz`` layout (loaded with ``allow_pickle=False``): ``train_images`` (N, H, W), (N, H, W, C) or
(N, C, H, W) uint8 with C in {1, 3}; ``train_labels`` (N,) ints; ``test_images``,
``test_labels`` likewise; optional ``class_names`` (K,) str array.

Optional reference groupings: ``references.json`` in DIR (or next to the .npz, or
``NAME.references.json`` for ``NAME.npz``): ``{reference_name: {group: [class names]}}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from stg.errors import StgError
from stg.data.imagecache import DEFAULT_RESIZE, load_image_files
from stg.data.taskset import ClassData, Reference

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _list_classes(split_dir: Path) -> dict[str, list[Path]]:
    """Class name -> sorted image files, for every sub-folder of ``split_dir``."""
    out = {}
    for d in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        out[d.name] = files
    return out


def load_image_folder(root: Path, *, image_size: int | None = None, resize: str = DEFAULT_RESIZE) -> ClassData:
    """ClassData from ``root/train/<class>/*`` and ``root/test/<class>/*`` image files, decoded once
    into one (N, C, H, W) uint8 array and cached in ``root/.stg-cache`` (``stg.data.imagecache``)."""
    train_dir, test_dir = root / "train", root / "test"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise StgError(f"{root} is not an image folder: expected {root}/train/<class>/*.png and {root}/test/<class>/*.png")
    train, test = _list_classes(train_dir), _list_classes(test_dir)
    class_names = tuple(c for c, files in train.items() if files)
    if len(class_names) < 2:
        raise StgError(f"{train_dir} needs at least 2 class folders with images, found {len(class_names)}")
    extra = [c for c, files in test.items() if files and c not in class_names]
    if extra:
        raise StgError(f"{test_dir} has class folders not in train/: {', '.join(extra)}")
    index = {c: i for i, c in enumerate(class_names)}
    train_files = [(f, index[c]) for c in class_names for f in train[c]]
    test_files = [(f, index[c]) for c, files in test.items() if c in index for f in files]
    all_files = [f for f, _ in train_files + test_files]
    images, note = load_image_files(all_files, root, image_size=image_size, resize=resize)
    labels = torch.tensor([c for _, c in train_files + test_files], dtype=torch.int64)
    n = len(train_files)
    return ClassData(
        name=f"folder:{root}",
        class_names=class_names,
        train_images=torch.from_numpy(images[:n]),
        train_classes=labels[:n],
        test_images=torch.from_numpy(images[n:]),
        test_classes=labels[n:],
        class_references=load_references(root / "references.json", class_names),
        default_tasks="ovr:all",
        source=f"image folder {root}" + (f"; {note}" if note else ""),
    )


def _nchw(images: np.ndarray, key: str, path: Path) -> np.ndarray:
    """(N, C, H, W) from (N, H, W), (N, H, W, C) or (N, C, H, W) uint8."""
    if images.dtype != np.uint8:
        raise StgError(f"{path}: {key} must be uint8, found {images.dtype}")
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[1] in (1, 3):
        return images
    if images.ndim == 4 and images.shape[3] in (1, 3):
        return images.transpose(0, 3, 1, 2)
    raise StgError(f"{path}: {key} must be (N,H,W), (N,H,W,C) or (N,C,H,W) with C 1 or 3, found shape {images.shape}")


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{array name: (shape, dtype)} of an .npz, read from each member's .npy header only (nothing
    sized by the file is allocated). StgError for a file that is not an .npz of .npy arrays."""
    import zipfile

    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                out[info.filename[: -len(".npy")]] = (tuple(int(d) for d in shape), np.dtype(dtype))
    except zipfile.BadZipFile:
        raise StgError(f"{path} is not an npz file (an .npz is a zip archive of .npy arrays)") from None
    except Exception as e:
        raise StgError(f"cannot read {path} as .npz: {_one_line(e)}") from None
    return out


def _memory_bytes() -> int:
    """This machine's physical memory in bytes (a large number where it cannot be told)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 50


def load_npz(path: Path) -> ClassData:
    """ClassData from an ``.npz`` with train_images, train_labels, test_images, test_labels[, class_names].

    Every size the file declares is checked before anything sized by it is allocated: the arrays'
    headers (shapes, dtypes, total bytes against this machine's memory: a compressed member can
    declare far more than the file holds), and the labels against the number of images and class
    names (one label of 10**9 must not make a billion class names)."""
    headers = _npz_headers(path)
    missing = [k for k in ("train_images", "train_labels", "test_images", "test_labels") if k not in headers]
    if missing:
        raise StgError(f"{path} lacks {', '.join(missing)} (has: {', '.join(sorted(headers)) or 'no arrays'})")
    for key, (shape, dtype) in headers.items():
        if dtype.hasobject:
            raise StgError(f"{path}: {key} holds Python objects (pickled arrays are not accepted)")
    declared = sum(int(np.prod(shape, dtype=np.float64)) * dtype.itemsize for shape, dtype in headers.values())
    if declared > _memory_bytes():
        raise StgError(f"{path} declares {declared / 2**30:.1f} GiB of arrays, more than this machine's "
                       f"{_memory_bytes() / 2**30:.1f} GiB of memory")
    for s in ("train", "test"):
        image_shape, lab = headers[f"{s}_images"][0], headers[f"{s}_labels"][0]
        n_img = image_shape[0] if image_shape else 0
        if len(lab) != 1 or lab[0] != n_img:
            raise StgError(f"{path}: {s}_labels must be ({n_img},) integers, found shape {lab}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise StgError(f"cannot read {path} as .npz (pickled arrays are not accepted): {_one_line(e)}") from None
    images = {s: _nchw(arrays[f"{s}_images"], f"{s}_images", path) for s in ("train", "test")}
    if images["train"].shape[1:] != images["test"].shape[1:]:
        raise StgError(f"{path}: train images {images['train'].shape[1:]} and test images {images['test'].shape[1:]} differ in shape")
    labels = {}
    for s in ("train", "test"):
        lab = arrays[f"{s}_labels"]
        if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer) or lab.shape[0] != images[s].shape[0]:
            raise StgError(f"{path}: {s}_labels must be ({images[s].shape[0]},) integers, found {lab.dtype} {lab.shape}")
        if lab.size and lab.min() < 0:
            raise StgError(f"{path}: {s}_labels has negative labels")
        labels[s] = lab.astype(np.int64)
    n_classes = int(max((int(l.max()) + 1 for l in labels.values() if l.size), default=0))
    n_names = len(arrays["class_names"]) if "class_names" in arrays and arrays["class_names"].ndim == 1 else 0
    n_images = sum(len(l) for l in labels.values())
    if n_classes > max(n_names, n_images):
        raise StgError(f"{path}: a label is {n_classes - 1} but there are only {n_images} images"
                       + (f" and {n_names} class names" if n_names else "")
                       + ": labels must be class numbers 0..K-1")
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise StgError(f"{path}: class_names must be a 1-D string array")
        class_names = tuple(str(x.decode() if isinstance(x, bytes) else x) for x in names.tolist())
        if len(class_names) < n_classes:
            raise StgError(f"{path}: labels go up to {n_classes - 1} but class_names lists {len(class_names)}")
        if len(set(class_names)) != len(class_names):
            raise StgError(f"{path}: class_names has duplicates")
    else:
        class_names = tuple(f"class_{i}" for i in range(n_classes))
    refs = path.with_name(path.stem + ".references.json")
    return ClassData(
        name=f"folder:{path}",
        class_names=class_names,
        train_images=torch.from_numpy(np.ascontiguousarray(images["train"])),
        train_classes=torch.from_numpy(labels["train"]),
        test_images=torch.from_numpy(np.ascontiguousarray(images["test"])),
        test_classes=torch.from_numpy(labels["test"]),
        class_references=load_references(refs if refs.is_file() else path.parent / "references.json", class_names),
        default_tasks="ovr:all",
        source=f"npz file {path}",
    )


def load_references(path: Path, class_names: tuple[str, ...]) -> dict[str, Reference]:
    """``{reference: {group: [class names]}}`` from JSON (empty if ``path`` is absent); each class at most once per reference."""
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StgError(f"cannot read reference groupings {path}: {_one_line(e)}") from None
    if not isinstance(raw, dict):
        raise StgError(f"{path} must hold {{reference_name: {{group: [class names]}}}}")
    known = set(class_names)
    out: dict[str, Reference] = {}
    for ref, groups in raw.items():
        if not isinstance(groups, dict) or not all(
            isinstance(m, list) and all(isinstance(c, str) for c in m) for m in groups.values()
        ):
            raise StgError(f"{path}: reference {ref!r} must map group names to lists of class names")
        seen: set[str] = set()
        for group, members in groups.items():
            for c in members:
                if c not in known:
                    raise StgError(
                        f"{path}: reference {ref!r} group {group!r} names unknown class {c!r} "
                        f"(classes: {', '.join(class_names[:8])}{', ...' if len(class_names) > 8 else ''})"
                    )
                if c in seen:
                    raise StgError(f"{path}: reference {ref!r} puts class {c!r} in two groups")
                seen.add(c)
        out[str(ref)] = {str(g): list(m) for g, m in groups.items() if m}
    return out


def load_user_data(path: Path, *, image_size: int | None = None, resize: str = DEFAULT_RESIZE) -> ClassData:
    """An ``.npz`` file or an image folder (see the module docstring); ``image_size`` / ``resize``
    apply to image folders here (an .npz's arrays are resized by the caller, ``stg.data.datasets``)."""
    path = Path(path).expanduser().resolve()
    if path.is_file() and path.suffix == ".npz":
        return load_npz(path)
    if path.is_dir():
        return load_image_folder(path, image_size=image_size, resize=resize)
    raise StgError(f"{path} is neither an .npz file nor a folder with train/ and test/ class folders")
