"""CelebA (Liu et al. 2015), parsed from its official files: aligned face images with 40 binary
attributes each, in the official train / val / test partition (162,770 / 19,867 / 19,962 images).

Files, under ``ROOT/celeba/`` (torchvision's layout; ``ROOT`` itself is accepted too)::

    img_align_celeba/000001.jpg ...   the aligned 178x218 JPEGs
    list_attr_celeba.txt              line 1: the image count; line 2: the 40 attribute names;
                                      then one line per image: ``000001.jpg -1  1 ...`` (-1/1)
    list_eval_partition.txt           ``000001.jpg 0`` per image: 0 train, 1 val, 2 test
    references.json                   optional, yours: {reference: {group: [attribute names]}},
                                      added to (or replacing, by name) the built-in references

``--download`` fetches them through ``torchvision.datasets.CelebA(ROOT, download=True)`` (Google
Drive, needs the ``gdown`` package and internet).

Tasks: every attribute is a task (``attr:all``, the default); the preset ``tag9`` is the 9
attributes of TAG's CelebA experiments (``stg.data.taskspec.CELEBA_TAG9``). Unions, complements and
``random`` work on attributes (``stg.data.multilabel``). CelebA has no missing labels.

References: ``face-region``, a hand-made grouping of the 40 attributes by the part of the face or
picture they describe, shipped in ``stg/data/assets/celeba_references.json``; edit a copy in
``ROOT/celeba/references.json`` (same format) to add your own.

Images: 178x218 is not square, so by default every image is centre-cropped to 178x178 and resized
to 64x64 (``DEFAULT_IMAGE_SIZE``; ``image_size`` / ``--image-size`` and ``resize`` / ``--resize``
choose otherwise), decoded once and cached under ``ROOT/celeba/.stg-cache``
(``stg.data.imagecache``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from stg.data.multilabel import MultiLabelData
from stg.data.taskset import Reference
from stg.errors import StgError

FOLDER = "celeba"
IMAGES = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
N_ATTRIBUTES = 40
DEFAULT_IMAGE_SIZE = 64
REFERENCES_ASSET = Path(__file__).resolve().parent / "assets" / "celeba_references.json"
_PARTS = ("train", "val", "test")  # partition codes 0, 1, 2


def find_celeba(root: Path) -> Path | None:
    """The folder holding CelebA's files: ``root/celeba`` or ``root``; None when neither does."""
    for d in (root / FOLDER, root):
        if (d / ATTR_FILE).is_file() and (d / PARTITION_FILE).is_file() and (d / IMAGES).is_dir():
            return d
    return None


def _lines(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StgError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    return [line.split() for line in text.splitlines() if line.strip()]


def parse_attributes(path: Path) -> tuple[tuple[str, ...], list[str], np.ndarray]:
    """(attribute names, file names, (N, 40) int8 values in {-1, 1}) from ``list_attr_celeba.txt``."""
    lines = _lines(path)
    if len(lines) < 2 or len(lines[0]) != 1 or not lines[0][0].isdigit():
        raise StgError(f"corrupt CelebA file {path}: line 1 must be the image count, line 2 the attribute names")
    count, names = int(lines[0][0]), tuple(lines[1])
    if len(names) != N_ATTRIBUTES or len(set(names)) != len(names):
        raise StgError(f"corrupt CelebA file {path}: line 2 must name {N_ATTRIBUTES} distinct attributes, "
                       f"found {len(names)}")
    rows = lines[2:]
    if len(rows) != count:
        raise StgError(f"corrupt CelebA file {path}: line 1 says {count} images, the file lists {len(rows)}")
    values = np.empty((len(rows), N_ATTRIBUTES), dtype=np.int8)
    files = []
    for i, r in enumerate(rows):
        if len(r) != N_ATTRIBUTES + 1:
            raise StgError(f"corrupt CelebA file {path}: line {i + 3} has {len(r) - 1} values, expected {N_ATTRIBUTES}")
        if any(v not in ("1", "-1") for v in r[1:]):
            bad = next(v for v in r[1:] if v not in ("1", "-1"))
            raise StgError(f"corrupt CelebA file {path}: line {i + 3} has the value {bad!r}, expected -1 or 1")
        files.append(r[0])
        values[i] = [int(v) for v in r[1:]]
    if len(set(files)) != len(files):
        raise StgError(f"corrupt CelebA file {path}: an image is listed twice")
    return names, files, values


def parse_partition(path: Path) -> dict[str, int]:
    """{file name: 0 (train) | 1 (val) | 2 (test)} from ``list_eval_partition.txt``."""
    out: dict[str, int] = {}
    for i, r in enumerate(_lines(path)):
        if len(r) != 2 or r[1] not in ("0", "1", "2"):
            raise StgError(f"corrupt CelebA file {path}: line {i + 1} must be 'FILE 0|1|2', found {' '.join(r)!r}")
        out[r[0]] = int(r[1])
    return out


def celeba_references(folder: Path, names: tuple[str, ...]) -> dict[str, Reference]:
    """The built-in references, then ``folder/references.json`` (a user's, adding or replacing by name)."""
    from stg.data.folder import load_references

    refs = load_references(REFERENCES_ASSET, names)
    refs.update(load_references(folder / "references.json", names))
    return refs


def download_celeba(root: Path) -> None:
    """Fetch CelebA into ``root/celeba`` with torchvision's downloader (MD5-checked); StgError on failure."""
    try:
        from torchvision.datasets import CelebA

        CelebA(str(root), split="all", target_type="attr", download=True)
    except Exception as e:  # no gdown, no network, Google Drive quota: one line, nothing else touched
        raise StgError(f"downloading CelebA into {root / FOLDER} failed ({type(e).__name__}: "
                       f"{' '.join(str(e).split())[:300]}); download the official files by hand into {root / FOLDER}") from None


def load_celeba(root: Path, download: bool = False, *, image_size: int | None = None,
                resize: str = "crop") -> MultiLabelData:
    """MultiLabelData of CelebA under ``root`` (module docstring): 40 attributes as float32 {0, 1}
    labels, the official partition as train / val / test, images at ``image_size`` (default 64)."""
    from stg.data.imagecache import load_image_files

    root = Path(root)
    folder = find_celeba(root)
    if folder is None and download:
        download_celeba(root)
        folder = find_celeba(root)
    if folder is None:
        raise StgError(f"CelebA not found in {root}: pass --download or put {FOLDER}/{IMAGES}/, "
                       f"{FOLDER}/{ATTR_FILE} and {FOLDER}/{PARTITION_FILE} there")
    names, files, values = parse_attributes(folder / ATTR_FILE)
    partition = parse_partition(folder / PARTITION_FILE)
    unlisted = [f for f in files if f not in partition]
    if unlisted:
        raise StgError(f"corrupt CelebA files in {folder}: {unlisted[0]} has attributes but no partition "
                       f"({len(unlisted)} such images)")
    code = np.array([partition[f] for f in files])
    order = np.argsort(code, kind="stable")  # train, val, test blocks: each split is a view, not a copy
    paths = [folder / IMAGES / files[i] for i in order]
    images, note = load_image_files(paths, folder, image_size=image_size or DEFAULT_IMAGE_SIZE, resize=resize)
    labels = (values[order] > 0).astype(np.float32)
    bounds = np.searchsorted(code[order], [0, 1, 2, 3])
    split = {s: slice(int(bounds[i]), int(bounds[i + 1])) for i, s in enumerate(_PARTS)}
    for s in ("train", "test"):
        if split[s].stop == split[s].start:
            raise StgError(f"corrupt CelebA files in {folder}: the partition has no {s} images")
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    has_val = split["val"].stop > split["val"].start
    sizes = "/".join(f"{split[s].stop - split[s].start:,}" for s in _PARTS)
    return MultiLabelData(
        name="celeba",
        attribute_names=names,
        train_images=images_t[split["train"]], train_labels=labels_t[split["train"]],
        test_images=images_t[split["test"]], test_labels=labels_t[split["test"]],
        val_images=images_t[split["val"]] if has_val else None,
        val_labels=labels_t[split["val"]] if has_val else None,
        references=celeba_references(folder, names),
        source=f"CelebA official files in {folder} (train/val/test {sizes})" + (f"; {note}" if note else ""),
    )
