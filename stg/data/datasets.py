"""The dataset registry: a name (or a path to the user's own data) -> ClassData -> TaskSet.

Names: fashion-sample (embedded, offline), fashion-mnist, cifar10, cifar100, synthetic-hierarchy,
and ``folder:PATH`` / any existing folder or ``.npz`` path (see ``stg.data.folder``).
Data root: ``--data-root`` if given, else ``$STG_DATA_ROOT``, else ``~/.cache/stg/data``;
fashion-mnist without a data root also looks in /usr/share/datasets/fashion-mnist (Debian).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from stg.data.catalog import DATASET_NAMES
from stg.data.spec import DataSpec
from stg.errors import StgError
from stg.data.taskset import ClassData, TaskSet


def default_data_root() -> Path:
    """``$STG_DATA_ROOT`` or ``~/.cache/stg/data``."""
    env = os.environ.get("STG_DATA_ROOT")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "stg" / "data"


def _user_path(name: str) -> Path | None:
    """The path of user data named ``folder:PATH`` or given as an existing path, else None."""
    if name.startswith("folder:"):
        return Path(name[len("folder:"):]).expanduser()
    if name not in DATASET_NAMES and (name.endswith(".npz") or os.sep in name or name.startswith(".")):
        p = Path(name).expanduser()
        if not p.exists():
            raise StgError(f"dataset path {p} does not exist: give an image folder (train/<class>/...) or an .npz file")
        return p
    return None


def _fingerprint(path: Path) -> tuple[int, ...]:
    """mtimes of a user .npz, or of an image folder and its split/class folders (adding, removing
    or renaming an image changes its class folder's mtime), so edited user data is reloaded."""
    paths = [path]
    if path.is_dir():
        for split in ("train", "test"):
            d = path / split
            if d.is_dir():
                paths += [d, *sorted(p for p in d.iterdir() if p.is_dir())]
    return tuple(p.stat().st_mtime_ns for p in paths if p.exists())


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, root: str, root_given: bool, download: bool, stamp: tuple[int, ...] = ()) -> ClassData:
    from stg.data import cifar, fashion, folder, synthetic

    user = _user_path(name)
    if user is not None:
        return folder.load_user_data(user)
    data_root = Path(root)
    if name == "fashion-sample":
        return fashion.load_fashion_sample()
    if name == "fashion-mnist":
        dirs = [data_root] if root_given else [data_root, fashion.SYSTEM_DIR]
        return fashion.load_fashion_mnist(dirs, download_root=data_root if download else None)
    if name == "cifar10":
        return cifar.load_cifar10(data_root, download)
    if name == "cifar100":
        return cifar.load_cifar100(data_root, download)
    if name == "synthetic-hierarchy":
        return synthetic.make_synthetic_hierarchy()
    raise StgError(
        f"unknown dataset {name!r}: choose one of {', '.join(DATASET_NAMES)}, "
        "or give folder:PATH (an image folder or .npz file)"
    )


def load_classdata(name: str, *, data_root: str | Path | None = None, download: bool = False) -> ClassData:
    """The labelled images of dataset ``name`` (cached in-process per name and data root).

    Raises StgError for an unknown name, missing files (the message says to pass --download),
    or a corrupt file.
    """
    name = name.strip()
    user = _user_path(name)
    stamp: tuple[int, ...] = ()
    if user is not None:
        user = user.resolve()
        name, stamp = f"folder:{user}", _fingerprint(user)
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    return _load_cached(name, str(root.resolve()), data_root is not None, download, stamp)


def load_taskset(
    name: str,
    *,
    data_root: str | Path | None = None,
    download: bool = False,
    tasks: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    limit: int | None = None,
) -> TaskSet:
    """The task set ``tasks`` (default: the dataset's default spec) on dataset ``name``; see
    ``stg.data.taskspec.build_taskset`` for the spec language, split and ``limit``."""
    from stg.data.taskspec import build_taskset

    data = load_classdata(name, data_root=data_root, download=download)
    return build_taskset(data, tasks, seed=seed, val_fraction=val_fraction, limit=limit)


def load_taskset_from_spec(
    spec: DataSpec | Mapping[str, Any], *, download: bool = False, loader: Callable[..., TaskSet] = load_taskset
) -> TaskSet:
    """The task set a ``DataSpec`` (or run.json's "data" object) describes. ``loader`` is for tests."""
    if not isinstance(spec, DataSpec):
        spec = DataSpec.from_meta(spec)
    return loader(spec.dataset, data_root=spec.data_root, download=download, tasks=spec.tasks,
                  seed=spec.split_seed, val_fraction=spec.val_fraction, limit=spec.limit)


def clear_cache() -> None:
    """Forget cached datasets (e.g. after files under a data root changed)."""
    _load_cached.cache_clear()
