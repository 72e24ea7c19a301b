"""The dataset registry: a name (or a path to the user's own data) -> ClassData -> TaskSet.

Names: fashion-sample (embedded, offline), fashion-mnist, cifar10, cifar100, synthetic-hierarchy,
and ``folder:PATH`` / any existing folder or ``.npz`` path (see ``stg.data.folder``), and
``hf:NAME`` (a Hugging Face dataset: a Hub name, or a folder written by ``save_to_disk``, which may
also be given as a plain path; see ``stg.data.hf``). ``image_size`` / ``resize`` bring any dataset's
images to one square size (``stg.data.imagecache``). Multi-label sources give a ``MultiLabelData``
(``stg.data.multilabel``): ``celeba`` (``stg.data.celeba``), a folder holding ``labels.csv``, an
``.npz`` whose ``train_labels`` is (N, T).
Data root: ``--data-root`` if given, else ``$STG_DATA_ROOT``, else ``~/.cache/stg/data``;
fashion-mnist without a data root also looks in /usr/share/datasets/fashion-mnist (Debian).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from stg.data.catalog import DATASET_NAMES
from stg.data.spec import DataSpec, HfOptions
from stg.errors import StgError
from stg.data.taskset import ClassData, TaskSet

if TYPE_CHECKING:
    from stg.data.imagecache import LoadCallback


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
    paths = [path, path / "labels.csv"]
    if path.is_dir():
        for split in ("train", "test"):
            d = path / split
            if d.is_dir():
                paths += [d, *sorted(p for p in d.iterdir() if p.is_dir())]
    return tuple(p.stat().st_mtime_ns for p in paths if p.exists())


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, root: str, root_given: bool, download: bool, stamp: tuple[int, ...] = (),
                 image_size: int | None = None, resize: str = "crop", hf: HfOptions | None = None) -> ClassData:
    """The dataset at ``image_size`` (None: as loaded; ``stg.data.imagecache``), cached in-process."""
    from stg.data.imagecache import fit_data

    if name.startswith("hf:"):
        from stg.data.hf import load_hf

        return load_hf(name[len("hf:"):], hf, data_root=Path(root) if root_given else None,
                       image_size=image_size, resize=resize)
    if hf is not None:
        raise StgError(f"--hf-config, --image-column, --label-column(s) and --split apply to hf: datasets, not {name!r}")
    return fit_data(_load_named(name, root, root_given, download, image_size, resize), image_size, resize)


def _load_named(name: str, root: str, root_given: bool, download: bool, image_size: int | None, resize: str) -> ClassData:
    from stg.data import cifar, fashion, folder, synthetic

    user = _user_path(name)
    if user is not None:
        from stg.data import multilabel  # labels.csv folders and (N, T)-label .npz files

        if user.is_dir() and (user / multilabel.LABELS_CSV).is_file():
            return multilabel.load_csv_folder(user, image_size=image_size, resize=resize)
        if user.suffix == ".npz" and multilabel.is_multilabel_npz(user):
            return multilabel.load_multilabel_npz(user)
        return folder.load_user_data(user, image_size=image_size, resize=resize)
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
    if name == "celeba":
        from stg.data import celeba

        return celeba.load_celeba(data_root, download, image_size=image_size, resize=resize)
    options = synthetic.parse_name(name)  # synthetic-hierarchy[:classes=1000,super=100,...]
    if options is not None:
        return synthetic.make_synthetic_hierarchy(**options)
    raise StgError(
        f"unknown dataset {name!r}: choose one of {', '.join(DATASET_NAMES)}, "
        "or give folder:PATH (an image folder or .npz file) or hf:NAME (a Hugging Face dataset)"
    )


def load_classdata(name: str, *, data_root: str | Path | None = None, download: bool = False,
                   image_size: int | None = None, resize: str = "crop", hf: HfOptions | None = None,
                   progress: LoadCallback | None = None) -> ClassData:
    """The labelled images of dataset ``name`` (cached in-process per name, data root and options).

    image_size / resize: bring every image to image_size x image_size (``stg.data.imagecache``);
    hf: how to read an ``hf:NAME`` dataset (or a folder saved with ``save_to_disk``);
    progress: receives ``LoadEvent``s while images are decoded (a progress bar, the resize note).
    Raises StgError for an unknown name, missing files (the message says to pass --download),
    or a corrupt file.
    """
    from stg.data.hf import is_saved_dataset, saved_fingerprint
    from stg.data.imagecache import check_image_size, check_resize, reporting

    name = name.strip()
    image_size, resize = check_image_size(image_size), check_resize(resize)
    stamp: tuple[int, ...] = ()
    if name.startswith("hf:"):
        target = Path(name[3:]).expanduser()
        if name[3:].startswith(("/", "./", "../", "~")) or target.exists():
            if not target.exists():
                raise StgError(f"dataset path {target} does not exist: give a folder written by save_to_disk")
            name, stamp = f"hf:{target.resolve()}", saved_fingerprint(target.resolve())
        user = None
    else:
        user = _user_path(name)
    if user is not None:
        user = user.resolve()
        if is_saved_dataset(user):
            name, stamp = f"hf:{user}", saved_fingerprint(user)
        else:
            name, stamp = f"folder:{user}", _fingerprint(user)
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    with reporting(progress):
        return _load_cached(name, str(root.resolve()), data_root is not None, download, stamp, image_size, resize, hf)


def load_taskset(
    name: str,
    *,
    data_root: str | Path | None = None,
    download: bool = False,
    tasks: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    limit: int | None = None,
    image_size: int | None = None,
    resize: str = "crop",
    hf: HfOptions | None = None,
    progress: LoadCallback | None = None,
) -> TaskSet:
    """The task set ``tasks`` (default: the dataset's default spec) on dataset ``name``; see
    ``stg.data.taskspec.build_taskset`` for the spec language, split and ``limit``, and
    ``load_classdata`` for the other options."""
    from stg.data.taskspec import build_taskset

    data = load_classdata(name, data_root=data_root, download=download, image_size=image_size, resize=resize,
                          hf=hf, progress=progress)
    return build_taskset(data, tasks, seed=seed, val_fraction=val_fraction, limit=limit)


def load_taskset_from_spec(
    spec: DataSpec | Mapping[str, Any], *, download: bool = False, loader: Callable[..., TaskSet] = load_taskset,
    progress: LoadCallback | None = None,
) -> TaskSet:
    """The task set a ``DataSpec`` (or run.json's "data" object) describes. ``loader`` is for tests;
    ``progress`` receives the ``LoadEvent``s of image decoding (``stg.data.imagecache``)."""
    from stg.data.imagecache import reporting

    if not isinstance(spec, DataSpec):
        spec = DataSpec.from_meta(spec)
    with reporting(progress):
        return loader(spec.dataset, data_root=spec.data_root, download=download, tasks=spec.tasks,
                      seed=spec.split_seed, val_fraction=spec.val_fraction, limit=spec.limit, **spec.load_options())


def clear_cache() -> None:
    """Forget cached datasets (e.g. after files under a data root changed)."""
    _load_cached.cache_clear()
