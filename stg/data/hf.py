"""Hugging Face datasets: ``hf:NAME`` (the Hub, through ``datasets.load_dataset(NAME, config)``) or a
folder written by ``save_to_disk`` (``hf:PATH``, or the PATH alone).

Needs the optional extra ``pip install 'stg[hf]'`` (the ``datasets`` library), imported only here
and only when such a dataset is loaded.

Columns (``stg.data.spec.HfOptions``; None: guessed):

- ``image_column``: the column of images (an ``Image`` feature, or arrays). Guess: the one
  ``Image`` column, else a column named ``image`` or ``img``.
- ``label_column``: class labels (a ``ClassLabel``, integers or strings) -> ``ClassData``: one
  one-vs-rest task per class, like the other class datasets (default tasks ``ovr:all``).
  Guess: the one ``ClassLabel`` column, else a column named ``label`` or ``labels``.
- ``label_columns``: several binary columns (0/1, -1/1, booleans, or 2-class ``ClassLabel``; a
  missing value, None or a ClassLabel's -1, is a missing label) -> ``MultiLabelData``
  (``stg.data.multilabel``): one task per column.

Splits: ``splits`` maps stg's train / val / test to the dataset's split names; by default train is
``train`` and test the first of ``test``, ``validation``, ``valid``, ``val`` that exists. An
explicit val split is used as the validation split of multi-label data (class-labelled data
carves val out of train with ``--val-fraction``).

Images are decoded by ``stg.data.imagecache`` (from the stored bytes, in threads, into one array,
resized when sizes differ or ``image_size`` is given) and cached under ``PATH/.stg-cache`` (a saved
folder) or ``<data root>/.stg-cache`` (a Hub dataset), keyed by the dataset's Arrow files (names,
sizes, mtimes), the columns and splits read, the size and the resize mode.
"""

from __future__ import annotations

import os
from itertools import chain
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from stg.data.imagecache import CACHE_DIR, DEFAULT_RESIZE, ImageSource, file_stamps, load_images
from stg.data.spec import HfOptions
from stg.errors import StgError

PREFIX = "hf:"
_TEST_NAMES = ("test", "validation", "valid", "val")
_MISSING_EXTRA = ("Hugging Face datasets need the optional extra: pip install 'stg[hf]' "
                  "(or pip install datasets)")


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _datasets():
    """The ``datasets`` module, or a one-line StgError naming the extra to install."""
    try:
        import datasets
    except ImportError:
        raise StgError(_MISSING_EXTRA) from None
    return datasets


def is_saved_dataset(path: Path) -> bool:
    """True for a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.path.exists(os.path.expanduser(name))


def saved_fingerprint(path: Path) -> tuple[int, ...]:
    """mtimes and sizes of a saved dataset's files (not its .stg-cache), so a re-saved one is reloaded."""
    out: list[int] = []
    for p in sorted(path.rglob("*")):
        if CACHE_DIR in p.relative_to(path).parts or not p.is_file():
            continue
        st = p.stat()
        out += [st.st_mtime_ns, st.st_size]
    return tuple(out)


def _open_dataset(name: str, options: HfOptions, data_root: Path | None) -> tuple[Any, Path, str]:
    """(a DatasetDict, the folder for the image cache, a description) for a saved folder or a Hub name."""
    datasets = _datasets()
    if _looks_like_path(name):
        path = Path(name).expanduser().resolve()
        if not is_saved_dataset(path):
            raise StgError(f"{path} is not a dataset saved with save_to_disk (no dataset_dict.json or state.json)")
        if options.config is not None:
            raise StgError(f"--hf-config applies to Hub datasets, not to the saved dataset {path}")
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:
            raise StgError(f"cannot read the saved dataset {path}: {_one_line(e)}") from None
        cache, what = path / CACHE_DIR, f"saved dataset {path}"
    else:
        try:
            ds = datasets.load_dataset(name, options.config,
                                       cache_dir=str(data_root / "huggingface") if data_root is not None else None)
        except Exception as e:
            raise StgError(f"cannot load Hugging Face dataset {name!r}"
                           f"{f' (config {options.config!r})' if options.config else ''}: {_one_line(e)}") from None
        root = data_root if data_root is not None else _default_root()
        cache, what = root / CACHE_DIR, f"hf:{name}" + (f" ({options.config})" if options.config else "")
    if isinstance(ds, datasets.Dataset):
        raise StgError(f"{what} is a single split: stg needs train and test splits (save a DatasetDict "
                       "with train and test)")
    return ds, cache, what


def _default_root() -> Path:
    from stg.data.datasets import default_data_root

    return default_data_root()


def _choose_splits(ds: Any, options: HfOptions, what: str) -> dict[str, str]:
    """{stg split: dataset split} for train, test and (if mapped) val."""
    have = list(ds.keys())
    mapping = dict(options.splits)
    if "train" not in mapping:
        mapping["train"] = "train"
    if "test" not in mapping:
        found = next((s for s in _TEST_NAMES if s in have and s != mapping.get("val")), None)
        if found is None:
            raise StgError(f"{what} has no test split (splits: {', '.join(have)}): pass --split test=NAME")
        mapping["test"] = found
    for ours, theirs in mapping.items():
        if theirs not in have:
            raise StgError(f"{what} has no split {theirs!r} for {ours} (splits: {', '.join(have)}): "
                           "pass --split train=NAME,test=NAME")
    return {s: mapping[s] for s in ("train", "val", "test") if s in mapping}


def _pick(columns: dict[str, Any], given: str | None, kind: type, names: tuple[str, ...], what: str, flag: str) -> str:
    """The column ``given`` (checked), else the one column of feature type ``kind``, else one named in ``names``."""
    if given is not None:
        if given not in columns:
            raise StgError(f"{what} has no column {given!r} (columns: {', '.join(columns)})")
        return given
    typed = [c for c, f in columns.items() if isinstance(f, kind)]
    if len(typed) == 1:
        return typed[0]
    named = [c for c in names if c in columns]
    if named:
        return named[0]
    raise StgError(f"{what}: cannot tell which column to use, pass {flag} (columns: {', '.join(columns)})")


def _image_source(parts: dict[str, Any], column: str, what: str, stamps: list[Any] | None) -> ImageSource:
    """One ImageSource over the image column of every split in ``parts`` (in that order): the
    stored encoded bytes (``Image(decode=False)``), or arrays for a column that is not an Image."""
    datasets = _datasets()
    order = list(parts)
    sizes = [len(parts[s]) for s in order]
    starts = np.cumsum([0] + sizes)

    def split_items(ds: Any) -> Iterator[Any]:
        one = ds.select_columns([column])
        if isinstance(one.features[column], datasets.Image):
            for batch in one.cast_column(column, datasets.Image(decode=False)).iter(batch_size=256):
                for cell in batch[column]:
                    yield _encoded(cell)
        else:
            for batch in one.with_format("numpy").iter(batch_size=256):
                yield from batch[column]

    def name_of(i: int) -> str:
        k = int(np.searchsorted(starts, i, side="right")) - 1
        return f"{what} split {parts[order[k]].split or order[k]} row {i - starts[k]} (column {column!r})"

    return ImageSource(
        n=int(starts[-1]),
        items=lambda: chain.from_iterable(split_items(parts[s]) for s in order),
        name_of=name_of,
        describe=f"{what} column {column!r} splits {','.join(f'{s}={parts[s].split}' for s in order)}",
        stamps=None if stamps is None else (lambda: stamps),
    )


def _encoded(cell: Any) -> Any:
    """An Image(decode=False) cell -> its bytes, else its file path; None stays None (an error later)."""
    if isinstance(cell, dict):
        return cell.get("bytes") or cell.get("path")
    return cell


def _arrow_stamps(parts: dict[str, Any]) -> list[Any] | None:
    """(split, Arrow file, size, mtime) of every split's files; None for in-memory data (no cache)."""
    out: list[Any] = []
    for s, ds in parts.items():
        files = [Path(f["filename"]) for f in ds.cache_files]
        if not files:
            return None
        out.append([s, ds.split and str(ds.split), len(ds), file_stamps(files, Path("/"))])
    return out


def _class_labels(ds_parts: dict[str, Any], column: str, what: str) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """(class names, {split: (N,) int64 class indices}) from a ClassLabel, integer or string column."""
    datasets = _datasets()
    feature = ds_parts["train"].features[column]
    values = {s: ds.select_columns([column])[column] for s, ds in ds_parts.items()}
    if isinstance(feature, datasets.ClassLabel):
        names = tuple(str(n) for n in feature.names)
        out = {}
        for s, v in values.items():
            arr = np.asarray([-1 if x is None else x for x in v], dtype=np.int64)
            bad = np.flatnonzero((arr < 0) | (arr >= len(names)))
            if bad.size:
                raise StgError(f"{what} split {s} row {bad[0]} has no class label in column {column!r} "
                               f"(value {arr[bad[0]]}): every image needs one (use --label-columns for "
                               "labels that may be missing)")
            out[s] = arr
        return names, out
    flat = [x for v in values.values() for x in v]
    if any(x is None for x in flat):
        s, row = next((s, i) for s, v in values.items() for i, x in enumerate(v) if x is None)
        raise StgError(f"{what} split {s} row {row} has no label in column {column!r}")
    if not all(isinstance(x, (int, np.integer, str)) and not isinstance(x, bool) for x in flat):
        example = next(x for x in flat if not isinstance(x, (int, np.integer, str)) or isinstance(x, bool))
        raise StgError(f"{what}: column {column!r} holds {type(example).__name__} values, not class labels "
                       "(integers or strings); for several binary columns use --label-columns")
    classes = sorted(set(flat), key=lambda x: (isinstance(x, str), x))
    index = {c: i for i, c in enumerate(classes)}
    return tuple(str(c) for c in classes), {s: np.asarray([index[x] for x in v], dtype=np.int64)
                                             for s, v in values.items()}


def _binary_columns(ds_parts: dict[str, Any], columns: tuple[str, ...], what: str) -> dict[str, np.ndarray]:
    """{split: (N, A) float32 in {0, 1, NaN}} from binary columns (``stg.data.multilabel.binary_labels``)."""
    from stg.data.multilabel import binary_labels

    datasets = _datasets()
    out = {}
    for s, ds in ds_parts.items():
        cols = []
        for c in columns:
            feature = ds.features[c]
            raw = ds.select_columns([c])[c]
            is_class = isinstance(feature, datasets.ClassLabel)
            if is_class and feature.num_classes != 2:
                raise StgError(f"{what}: column {c!r} is a ClassLabel with {feature.num_classes} classes, not a "
                               "binary label (use --label-column for class labels)")
            vals = []
            for i, x in enumerate(raw):
                if x is None or (is_class and x == -1):
                    vals.append(np.nan)
                elif isinstance(x, (bool, int, float, np.integer, np.floating, np.bool_)):
                    vals.append(float(x))
                else:
                    raise StgError(f"{what} split {s} row {i}: column {c!r} holds {x!r}, not a binary label "
                                   "(use 0/1, -1/1 or booleans; None for a missing label)")
            cols.append(vals)
        values = np.asarray(cols, dtype=np.float64).T.reshape(len(ds), len(columns))
        out[s] = binary_labels(values, list(columns), f"{what} split {s}")
    return out


def load_hf(
    name: str,
    options: HfOptions | None = None,
    *,
    data_root: Path | None = None,
    image_size: int | None = None,
    resize: str = DEFAULT_RESIZE,
):
    """ClassData (``label_column``) or MultiLabelData (``label_columns``) of a Hugging Face dataset.

    name: a Hub dataset name or a saved folder's path (without the ``hf:`` prefix).
    StgError (one line) when ``datasets`` is missing, the dataset cannot be read, a column or split
    does not exist, labels are not what the option says, or an image cannot be decoded (named).
    """
    from stg.data.taskset import ClassData

    options = options or HfOptions()
    if options.label_column is not None and options.label_columns is not None:
        raise StgError("give --label-column (class labels) or --label-columns (binary columns), not both")
    ds, cache_dir, what = _open_dataset(name, options, data_root)
    split_names = _choose_splits(ds, options, what)
    parts = {s: ds[theirs] for s, theirs in split_names.items()}
    columns = dict(parts["train"].features)
    for s, part in parts.items():
        if set(part.features) != set(columns):
            raise StgError(f"{what}: split {split_names[s]!r} has other columns than {split_names['train']!r}")
    datasets = _datasets()
    image_col = _pick(columns, options.image_column, datasets.Image, ("image", "img"), what, "--image-column")
    multi = options.label_columns is not None
    if multi:
        label_cols = tuple(options.label_columns or ())
        if not label_cols:
            raise StgError("--label-columns needs at least one column")
        for c in label_cols:
            _pick(columns, c, datasets.ClassLabel, (), what, "--label-columns")
        if image_col in label_cols:
            raise StgError(f"column {image_col!r} cannot be both the images and a label")
    else:
        label_col = _pick(columns, options.label_column, datasets.ClassLabel, ("label", "labels"), what,
                          "--label-column (class labels) or --label-columns (binary columns)")
        if label_col == image_col:
            raise StgError(f"column {image_col!r} cannot be both the images and the labels")
        if "val" in parts:
            raise StgError("--split val=... needs --label-columns (multi-label data); with class labels the "
                           "validation split is carved out of train (--val-fraction)")

    # labels first: cheap, and a bad label column fails before minutes of decoding
    if multi:
        labels = _binary_columns(parts, label_cols, what)
    else:
        class_names, classes = _class_labels(parts, label_col, what)
    order = [s for s in ("train", "val", "test") if s in parts]
    source = _image_source({s: parts[s] for s in order}, image_col, what, _arrow_stamps(parts))
    images, note = load_images(source, image_size=image_size, resize=resize, cache_dir=cache_dir)
    cut = np.cumsum([0] + [len(parts[s]) for s in order])
    split_images = {s: torch.from_numpy(images[cut[k]:cut[k + 1]]) for k, s in enumerate(order)}
    src = f"{what} (images {image_col!r}, " + (
        f"labels {', '.join(label_cols)}" if multi else f"classes {label_col!r}") + ", splits " + ", ".join(
        f"{s}={split_names[s]}" for s in order) + ")" + (f"; {note}" if note else "")
    dataset_name = f"hf:{name}"
    if multi:
        from stg.data.multilabel import MultiLabelData
        from stg.data.taskspec import safe_name

        names = tuple(safe_name(c) for c in label_cols)
        if len(set(names)) != len(names):
            raise StgError(f"--label-columns: two columns become the same task name: {', '.join(names)}")
        return MultiLabelData(
            name=dataset_name,
            attribute_names=names,
            train_images=split_images["train"], train_labels=torch.from_numpy(labels["train"]),
            test_images=split_images["test"], test_labels=torch.from_numpy(labels["test"]),
            val_images=split_images.get("val"),
            val_labels=torch.from_numpy(labels["val"]) if "val" in labels else None,
            source=src,
        )
    return ClassData(
        name=dataset_name,
        class_names=class_names,
        train_images=split_images["train"],
        train_classes=torch.from_numpy(classes["train"]),
        test_images=split_images["test"],
        test_classes=torch.from_numpy(classes["test"]),
        default_tasks="ovr:all",
        source=src,
    )
