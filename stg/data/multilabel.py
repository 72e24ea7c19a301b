"""Multi-label task sets: images that each carry several binary labels (attributes), some possibly
missing. Each attribute is a task; no one-vs-rest is needed.

**The representation** (what a loader returns, e.g. ``stg.data.celeba``, ``stg.data.hf``)::

    MultiLabelData(name, attribute_names, train_images, train_labels, test_images, test_labels,
                   val_images=None, val_labels=None, references={}, default_tasks="attr:all", source="")

    *_images: (N, C, H, W) uint8
    *_labels: (N, A) float32: 1 positive, 0 negative, NaN missing (that image has no label for it)
    val_*:    an official validation split; None = carved out of train by the run's seed and
              --val-fraction, as for class-labelled data (then --val-fraction is used; with an
              official split it is ignored)
    references: {reference name: {group: [attribute names]}} (each attribute in at most one group)

``binary_labels(values, names, what)`` turns raw label columns (0/1 or -1/1 per column, NaN for
missing) into that float32 matrix with one-line errors; ``stg.data.taskspec.build_taskset`` turns a
``MultiLabelData`` into a ``TaskSet`` whose ``Split.labels`` keep the NaN (every consumer masks
them: see ``stg.data.taskset``).

**Formats on disk** (given as a path wherever a dataset name goes):

- a folder holding ``labels.csv``: a ``path`` column (image files relative to the folder), then one
  column per attribute with 0/1 or -1/1 values (decided per column; an empty cell = missing), and
  optionally a ``split`` column with train / val / test (``validation`` is accepted for val).
  Without a ``split`` column a fixed 20% of the rows (a seeded draw that does not depend on
  --seed) is the test split. Without val rows, val is carved out of train. Optional
  ``references.json`` next to it: ``{reference: {group: [attribute names]}}``.
- an ``.npz`` whose ``train_labels`` is 2-D: ``train_images`` (N, H, W), (N, H, W, C) or
  (N, C, H, W) uint8, ``train_labels`` (N, A), ``test_images``, ``test_labels`` (M, A), optional
  ``val_images`` + ``val_labels``, optional ``task_names`` (A,) strings (else attr_0, attr_1, ...).
  Labels: integer or float arrays with 0/1 or -1/1 per column; **NaN = missing** (so a matrix with
  missing labels is float). Optional ``NAME.references.json`` or ``references.json`` next to it.

Images are decoded once by ``stg.data.imagecache.load_image_files`` (any size: ``image_size`` and
``resize`` as there; cached under the folder's ``.stg-cache``).

**The task spec on multi-label data** (terms separated by ``;``)::

    attr:all | attr:A1,A2          one task per listed attribute, named after it
    union:NAME=A1,A2               OR of attributes: 1 if any member is 1, 0 if every member is 0,
                                   missing otherwise (some member missing and none 1)
    not:NAME                       complement of an earlier task (1 - y; missing stays missing)
    random | flipped               as on class-labelled data (never missing)
    PRESET                         e.g. tag9 on celeba
    ovr:...                        an error: there are no classes to take one-vs-rest of
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from stg.data.taskset import Reference
from stg.errors import StgError

LABELS_CSV = "labels.csv"
_SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
_HOLDOUT_SEED, _HOLDOUT_FRACTION = 0, 0.2


@dataclass(frozen=True)
class MultiLabelData:
    """Images with A binary labels each (see the module docstring for shapes and values)."""

    name: str
    attribute_names: tuple[str, ...]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    references: dict[str, Reference] = field(default_factory=dict)
    default_tasks: str = "attr:all"
    source: str = ""

    def __post_init__(self) -> None:
        a = len(self.attribute_names)
        for split in ("train", "val", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if (images is None) != (labels is None):
                raise StgError(f"{self.name}: {split} images and labels must be given together")
            if images is None:
                continue
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise StgError(f"{self.name}: {split} images must be (N, C, H, W) uint8, got {images.dtype} "
                               f"{tuple(images.shape)}")
            if labels.dtype != torch.float32 or labels.shape != (images.shape[0], a):
                raise StgError(f"{self.name}: {split} labels must be float32 ({images.shape[0]}, {a}), got "
                               f"{labels.dtype} {tuple(labels.shape)}")
            if images.shape[1:] != self.train_images.shape[1:]:
                raise StgError(f"{self.name}: {split} images are {tuple(images.shape[1:])}, train images "
                               f"{tuple(self.train_images.shape[1:])}")
            values = labels[~torch.isnan(labels)]
            if bool(((values != 0) & (values != 1)).any()):
                raise StgError(f"{self.name}: {split} labels must be 0, 1 or NaN (missing)")


# ------------------------------------------------------------------------------------ labels


def binary_labels(values: np.ndarray, names: Sequence[str], what: str) -> np.ndarray:
    """Raw label columns -> (N, A) float32 in {0, 1, NaN}.

    values: (N, A) numbers, NaN where missing. Each column is 0/1 or -1/1 (decided per column: a
    column holding -1 maps -1 to 0; one holding both 0 and -1, or anything else, is an error naming
    the column and a bad value). ``what`` names the source in errors (e.g. a file).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != len(names):
        raise StgError(f"{what}: labels must be (N, {len(names)}), got shape {v.shape}")
    out = np.empty(v.shape, dtype=np.float32)
    for j, name in enumerate(names):
        col = v[:, j]
        known = col[~np.isnan(col)]
        bad = known[(known != 0) & (known != 1) & (known != -1)]
        if bad.size:
            raise StgError(f"{what}: column {name!r} is not binary: value {bad[0]:g} (use 0/1 or -1/1, "
                           "empty or NaN for a missing label)")
        if (known == -1).any() and (known == 0).any():
            raise StgError(f"{what}: column {name!r} mixes 0 and -1: use either 0/1 or -1/1 in one column")
        out[:, j] = np.where(col == -1, 0.0, col)
    return out


def kleene_or(columns: torch.Tensor) -> torch.Tensor:
    """(N, K) labels in {0, 1, NaN} -> (N,): 1 if any is 1, else 0 if all are 0, else NaN."""
    any_pos = (columns == 1).any(1)
    all_neg = (columns == 0).all(1)
    out = torch.full(columns.shape[:1], float("nan"), dtype=torch.float32)
    out[all_neg] = 0.0
    out[any_pos] = 1.0
    return out


# ------------------------------------------------------------------------------- CSV folders


def _split_of(text: str, row: int, path: Path) -> str:
    key = text.strip().lower()
    if key not in _SPLIT_NAMES:
        raise StgError(f"{path} row {row}: split {text!r} is not train, val or test")
    return _SPLIT_NAMES[key]


def _cell(text: str, row: int, column: str, path: Path) -> float:
    t = text.strip()
    if not t:
        return float("nan")
    try:
        v = float(t)
    except ValueError:
        raise StgError(f"{path} row {row}: column {column!r} holds {t!r}, not a label (use 0/1 or -1/1, "
                       "an empty cell for a missing label; remove columns that are not labels)") from None
    if v not in (0.0, 1.0, -1.0):
        raise StgError(f"{path} row {row}: column {column!r} is not binary: value {t!r} (use 0/1 or -1/1, "
                       "an empty cell for a missing label)")
    return v


def read_labels_csv(path: Path) -> tuple[list[str], list[str], np.ndarray, list[str] | None]:
    """(attribute names, image paths as written, (N, A) float32 labels in {0, 1, NaN}, splits or None).

    The attribute names are the header's columns other than ``path`` and ``split``, made
    task-name-safe (``stg.data.taskspec.safe_name``)."""
    from stg.data.taskspec import safe_name

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise StgError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise StgError(f"{path} is empty: expected a header 'path,<attribute>,...[,split]' and one row per image")
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    if "path" not in lower:
        raise StgError(f"{path} has no 'path' column (columns: {', '.join(header[:8])}): the first column must "
                       "name each image file, relative to the folder")
    if any(not h for h in header):
        raise StgError(f"{path}: column {lower.index('') + 1} of the header has no name")
    if len(set(lower)) != len(lower):
        dup = next(h for h in header if lower.count(h.lower()) > 1)
        raise StgError(f"{path}: column {dup!r} appears twice")
    path_col = lower.index("path")
    split_col = lower.index("split") if "split" in lower else None
    label_cols = [j for j in range(len(header)) if j not in (path_col, split_col)]
    if not label_cols:
        raise StgError(f"{path} has no label columns: add one 0/1 column per attribute after 'path'")
    names = [safe_name(header[j]) for j in label_cols]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise StgError(f"{path}: two columns become the same task name {dup!r}: rename one")
    files: list[str] = []
    splits: list[str] = []
    values = np.empty((len(rows) - 1, len(label_cols)), dtype=np.float64)
    for i, r in enumerate(rows[1:]):
        line = i + 2
        if len(r) != len(header):
            raise StgError(f"{path} row {line} has {len(r)} cells, the header {len(header)}")
        if not r[path_col].strip():
            raise StgError(f"{path} row {line} has an empty path")
        files.append(r[path_col].strip())
        if split_col is not None:
            splits.append(_split_of(r[split_col], line, path))
        for k, j in enumerate(label_cols):
            values[i, k] = _cell(r[j], line, header[j], path)
    if not files:
        raise StgError(f"{path} has a header but no rows")
    return names, files, binary_labels(values, [header[j] for j in label_cols], str(path)), (
        splits if split_col is not None else None)


def load_csv_folder(root: Path, *, image_size: int | None = None, resize: str = "crop") -> MultiLabelData:
    """MultiLabelData from ``root/labels.csv`` and the images it names (module docstring)."""
    from stg.data.folder import load_references
    from stg.data.imagecache import load_image_files
    from stg.data.taskspec import split_rows

    root = Path(root)
    csv_path = root / LABELS_CSV
    names, rel, labels, splits = read_labels_csv(csv_path)
    base = root.resolve()
    paths = []
    for r in rel:
        p = (root / r).resolve()
        if not p.is_relative_to(base):
            raise StgError(f"{csv_path}: path {r!r} points outside {root}")
        if not p.is_file():
            raise StgError(f"{csv_path}: image {r!r} not found in {root}")
        paths.append(p)
    images, note = load_image_files(paths, root, image_size=image_size, resize=resize)
    n = len(paths)
    if splits is None:
        train_rows, test_rows = split_rows(n, _HOLDOUT_SEED, _HOLDOUT_FRACTION)
        parts = {"train": train_rows.numpy(), "val": np.zeros(0, dtype=np.int64), "test": test_rows.numpy()}
    else:
        arr = np.asarray(splits)
        parts = {s: np.flatnonzero(arr == s) for s in ("train", "val", "test")}
    for s in ("train", "test"):
        if not len(parts[s]):
            raise StgError(f"{csv_path} has no {s} rows: mark some rows split={s}")
    has_val = len(parts["val"]) > 0

    def take(s: str) -> tuple[torch.Tensor, torch.Tensor]:
        rows = parts[s]
        return torch.from_numpy(np.ascontiguousarray(images[rows])), torch.from_numpy(labels[rows])

    train_x, train_y = take("train")
    test_x, test_y = take("test")
    val_x, val_y = take("val") if has_val else (None, None)
    return MultiLabelData(
        name=f"folder:{root}",
        attribute_names=tuple(names),
        train_images=train_x, train_labels=train_y,
        test_images=test_x, test_labels=test_y,
        val_images=val_x, val_labels=val_y,
        references=load_references(root / "references.json", tuple(names)),
        source=f"multi-label folder {root} ({LABELS_CSV}, {len(names)} attributes)" + (f"; {note}" if note else ""),
    )


# -------------------------------------------------------------------------------------- npz


def is_multilabel_npz(path: Path) -> bool:
    """True when ``path``'s ``train_labels`` is 2-D (one column per attribute); read from the
    array headers only."""
    from stg.data.folder import _npz_headers

    try:
        headers = _npz_headers(path)
    except StgError:
        return False  # the class-label loader reports an unreadable file
    return "train_labels" in headers and len(headers["train_labels"][0]) == 2


def load_multilabel_npz(path: Path) -> MultiLabelData:
    """MultiLabelData from an ``.npz`` with a 2-D ``train_labels`` (module docstring). Its images
    are brought to ``--image-size`` afterwards, as any loader's (``stg.data.imagecache.fit_data``)."""
    from stg.data.folder import _memory_bytes, _nchw, _npz_headers, load_references

    path = Path(path)
    headers = _npz_headers(path)  # sizes the file declares, checked before anything is allocated
    if any(dtype.hasobject for _, dtype in headers.values()):
        raise StgError(f"{path} holds Python objects (pickled arrays are not accepted)")
    declared = sum(int(np.prod(shape, dtype=np.float64)) * dtype.itemsize for shape, dtype in headers.values())
    if declared > _memory_bytes():
        raise StgError(f"{path} declares {declared / 2**30:.1f} GiB of arrays, more than this machine's "
                       f"{_memory_bytes() / 2**30:.1f} GiB of memory")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise StgError(f"cannot read {path} as .npz (pickled arrays are not accepted): {' '.join(str(e).split())}") from None
    missing = [k for k in ("train_images", "train_labels", "test_images", "test_labels") if k not in arrays]
    if missing:
        raise StgError(f"{path} lacks {', '.join(missing)} (has: {', '.join(sorted(arrays))})")
    splits = ["train", "test"] + (["val"] if "val_images" in arrays or "val_labels" in arrays else [])
    n_attr = arrays["train_labels"].shape[1]
    if "task_names" in arrays:
        raw = arrays["task_names"]
        if raw.ndim != 1 or raw.dtype.kind not in "US" or raw.shape[0] != n_attr:
            raise StgError(f"{path}: task_names must be a 1-D string array of {n_attr} names")
        from stg.data.taskspec import safe_name

        names = tuple(safe_name(str(x.decode() if isinstance(x, bytes) else x)) for x in raw.tolist())
        if len(set(names)) != len(names):
            raise StgError(f"{path}: task_names has duplicates")
    else:
        names = tuple(f"attr_{i}" for i in range(n_attr))
    out: dict[str, torch.Tensor] = {}
    for s in splits:
        if f"{s}_images" not in arrays or f"{s}_labels" not in arrays:
            raise StgError(f"{path}: give both {s}_images and {s}_labels")
        images = _nchw(arrays[f"{s}_images"], f"{s}_images", path)
        lab = arrays[f"{s}_labels"]
        if lab.ndim != 2 or lab.shape != (images.shape[0], n_attr) or lab.dtype.kind not in "biuf":
            raise StgError(f"{path}: {s}_labels must be ({images.shape[0]}, {n_attr}) numbers, found "
                           f"{lab.dtype} {lab.shape}")
        out[f"{s}_images"] = torch.from_numpy(np.ascontiguousarray(images))
        out[f"{s}_labels"] = torch.from_numpy(binary_labels(lab.astype(np.float64), names, f"{path} {s}_labels"))
    refs = path.with_name(path.stem + ".references.json")
    return MultiLabelData(
        name=f"folder:{path}",
        attribute_names=names,
        references=load_references(refs if refs.is_file() else path.parent / "references.json", names),
        source=f"multi-label npz file {path} ({n_attr} attributes)",
        **out,
    )
