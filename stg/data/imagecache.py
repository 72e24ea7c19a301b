"""Decode a set of image files once into one (N, C, S, S) uint8 array: any size, progress, a disk cache.

**Sizes.** Images of different sizes, or not square, are brought to ``S x S`` at load time, once:

- ``crop`` (the default): scale so the *shorter* side is S, then cut the centre S x S (what
  torchvision's ``Resize(S) + CenterCrop(S)`` does; nothing is distorted, the borders of the longer
  side are lost);
- ``pad``: scale so the *longer* side is S, then centre it on a black S x S canvas (nothing is
  lost, the short side gets black bars).

Both are one PIL resampling (bilinear, antialiased when shrinking) of the original pixels, i.e.
``PIL.ImageOps.fit`` / ``PIL.ImageOps.pad``. ``S`` is ``image_size`` when given; else images that
all share one size (square or not: the models take any H x W) are kept as they are, and images of
several sizes go to S = the smallest side of any image (no image is enlarged in ``crop`` mode).
One line saying what was done is reported (``LoadEvent(kind="note")``) and goes into the task
set's ``source``.

(JPEG's DCT-scaled decoding, ``Image.draft``, was tried and left out: on CelebA-sized images it
saved about 15% of the decode time but moved pixels by 2.4 grey levels on average at 32x32.)

**Memory.** The array is allocated once, (N, C, S, S) uint8, and each image is decoded straight
into its row (no list of per-image arrays and no ``np.stack``, which needs two copies at its
peak). Decoding runs in a few threads: PIL releases the GIL while it decodes and resizes.

**Cache.** With a cache folder (``<data root>/.stg-cache``), the decoded array is written there
once as ``<prefix>-<key>.npy`` (decoded directly into the memory-mapped file) next to a small
``.json`` (shape, the note), and later loads memory-map it copy-on-write (``mmap_mode="c"``):
no decoding, and pages are read from disk as they are used. The file names:

- ``prefix`` = sha256 of (the source's description, ``image_size``, ``resize``) — one entry per
  way of loading a source;
- ``key`` = sha256 of (cache format version, the prefix's inputs, every image's file name, size
  in bytes and mtime in ns, in load order).

So adding, removing, renaming, rewriting or touching any image (or asking for another size or
resize mode) misses the cache and decodes again; the stale entry of the same prefix is then
deleted. A cache folder that cannot be written is skipped (one note), never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from stg.errors import StgError

RESIZE_MODES = ("crop", "pad")
DEFAULT_RESIZE = "crop"
CACHE_DIR = ".stg-cache"
CACHE_VERSION = 1
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F")
_BATCH = 64  # images per decoding task: large enough to amortise the thread hand-off


# ------------------------------------------------------------------------------------ progress


@dataclass(frozen=True)
class LoadEvent:
    """What a loader reports while it decodes.

    kind: "start" (``total`` images to decode), "step" (``done`` of ``total`` decoded),
    "done", or "note" (``message``: one line saying what was done, e.g. the resize)
    """

    kind: str
    done: int = 0
    total: int = 0
    message: str = ""


LoadCallback = Callable[[LoadEvent], None]
_REPORTER: ContextVar[LoadCallback | None] = ContextVar("stg_load_reporter", default=None)


@contextlib.contextmanager
def reporting(callback: LoadCallback | None) -> Iterator[None]:
    """Send the LoadEvents of loads inside this block (this thread/context) to ``callback``
    (None: keep the callback of an enclosing block, if any)."""
    if callback is None:
        yield
        return
    token = _REPORTER.set(callback)
    try:
        yield
    finally:
        _REPORTER.reset(token)


def report(event: LoadEvent) -> None:
    callback = _REPORTER.get()
    if callback is not None:
        callback(event)


# ------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class ImageSource:
    """N encoded images, in row order.

    items: returns a fresh iterator over the N images, each a path, a binary file object or
        ``bytes`` (anything ``PIL.Image.open`` reads, bytes are wrapped) or an already decoded
        ``PIL.Image``/array; called once per pass
    name_of: row -> how to name that image in an error (its file, or "split train row 12")
    describe: what the images are, for the cache prefix and messages (e.g. "image folder /data/x")
    stamps: what identifies the encoded bytes for the cache key (e.g. file names, sizes and mtimes);
        None: do not cache
    """

    n: int
    items: Callable[[], Iterator[Any]]
    name_of: Callable[[int], str]
    describe: str
    stamps: Callable[[], list[Any]] | None = None


def file_stamps(paths: Iterable[Path], root: Path) -> list[tuple[str, int, int]]:
    """(path relative to ``root``, size in bytes, mtime in ns) of each file: the cache key's input."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((os.path.relpath(p, root), int(st.st_size), int(st.st_mtime_ns)))
    return out


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _open(item: Any):
    """A PIL image from a path, file object, bytes or array (not yet decoded for files)."""
    import io

    from PIL import Image

    if isinstance(item, Image.Image):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(item))
    if isinstance(item, np.ndarray):
        return Image.fromarray(item)
    return Image.open(item)


# ------------------------------------------------------------------------------------ geometry


def fit_image(im, size: int, resize: str):
    """``im`` (a PIL image) as ``size x size``: centre crop (``crop``) or centre pad (``pad``)."""
    from PIL import Image, ImageOps

    if im.size == (size, size):
        return im
    if resize == "crop":
        return ImageOps.fit(im, (size, size), Image.Resampling.BILINEAR)
    return ImageOps.pad(im, (size, size), Image.Resampling.BILINEAR, color=0)


def check_resize(resize: str) -> str:
    if resize not in RESIZE_MODES:
        raise StgError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    return resize


def check_image_size(image_size: int | None) -> int | None:
    if image_size is not None and not 1 <= int(image_size) <= 4096:
        raise StgError(f"--image-size must be between 1 and 4096 pixels, got {image_size}")
    return None if image_size is None else int(image_size)


@dataclass(frozen=True)
class Plan:
    """How a set of images will be decoded: RGB or grey, the output size (None: as they are)."""

    rgb: bool
    height: int
    width: int
    size: int | None
    note: str


def _fmt_size(wh: tuple[int, int]) -> str:
    return f"{wh[0]}x{wh[1]}"


def plan(modes_sizes: list[tuple[str, tuple[int, int]]], image_size: int | None, resize: str) -> Plan:
    """Decide RGB (any colour image -> all RGB), and the output size, from each image's (mode, (w, h))."""
    rgb = any(m not in _GREY_MODES for m, _ in modes_sizes)
    sizes = Counter(s for _, s in modes_sizes)
    if not sizes:
        s = image_size or 1
        return Plan(rgb, s, s, image_size, "")
    if image_size is None and len(sizes) == 1:  # one size, square or not: kept as it is
        (w, h), = sizes
        return Plan(rgb, h, w, None, "")
    size = image_size if image_size is not None else min(min(s) for s in sizes)
    changed = sum(c for s, c in sizes.items() if s != (size, size))
    if changed == 0:
        return Plan(rgb, size, size, size, "")
    ordered = sorted(sizes, key=lambda s: (s[0] * s[1], s))
    span = _fmt_size(ordered[0]) if len(ordered) == 1 else f"{_fmt_size(ordered[0])} to {_fmt_size(ordered[-1])}"
    how = "centre crop" if resize == "crop" else "padding (black bars)"
    other = "pad" if resize == "crop" else "crop"
    chosen = "" if image_size is not None else " (the smallest side; --image-size S to choose)"
    note = (f"resized {changed:,} of {len(modes_sizes):,} images ({len(sizes)} size{'s' if len(sizes) > 1 else ''}, "
            f"{span}) to {size}x{size}{chosen} by {how} (--resize {other} to {other} instead)")
    return Plan(rgb, size, size, size, note)


def scan(source: ImageSource) -> list[tuple[str, tuple[int, int]]]:
    """(mode, (width, height)) of every image, reading headers only; StgError naming an unreadable one."""
    out = []
    for i, item in enumerate(source.items()):
        try:
            im = _open(item)
            out.append((im.mode, im.size))
            if im is not item:
                im.close()
        except Exception as e:
            raise StgError(f"cannot read image {source.name_of(i)}: {_one_line(e)}") from None
    if len(out) != source.n:
        raise StgError(f"{source.describe}: expected {source.n} images, found {len(out)}")
    return out


# ------------------------------------------------------------------------------------- decoding


def decode_into(out: np.ndarray, source: ImageSource, p: Plan, resize: str, *, workers: int | None = None) -> None:
    """Decode every image of ``source`` into its row of ``out`` (N, C, H, W) uint8, in threads.

    Reports "start", "step" and "done" LoadEvents; StgError naming the first image that cannot be
    decoded (the remaining work is cancelled).
    """
    n = int(out.shape[0])
    mode = "RGB" if p.rgb else "L"
    callback = _REPORTER.get()
    workers = workers or max(1, min(4, os.cpu_count() or 1))

    def decode_batch(start: int, batch: list[Any]) -> int:
        for j, item in enumerate(batch):
            i = start + j
            try:
                im = _open(item).convert(mode)
                if p.size is not None:
                    im = fit_image(im, p.size, resize)
                elif im.size != (p.width, p.height):
                    raise ValueError(f"is {_fmt_size(im.size)}, expected {p.width}x{p.height}")
                a = np.asarray(im)
            except Exception as e:
                raise StgError(f"cannot read image {source.name_of(i)}: {_one_line(e)}") from None
            if p.rgb:
                out[i] = a.transpose(2, 0, 1)
            else:
                out[i, 0] = a
        return len(batch)

    if callback:
        callback(LoadEvent("start", 0, n, f"decoding {n:,} images ({source.describe})"))
    done = 0
    pending: deque[Future[int]] = deque()
    items = source.items()
    with ThreadPoolExecutor(workers, thread_name_prefix="stg-decode") as pool:
        try:
            start = 0
            while True:
                batch = list(islice(items, _BATCH))
                if not batch:
                    break
                if start + len(batch) > n:
                    raise StgError(f"{source.describe}: more images than the {n} expected")
                pending.append(pool.submit(decode_batch, start, batch))
                start += len(batch)
                while len(pending) > 2 * workers or (pending and pending[0].done()):
                    done += pending.popleft().result()
                    if callback:
                        callback(LoadEvent("step", done, n))
            while pending:
                done += pending.popleft().result()
                if callback:
                    callback(LoadEvent("step", done, n))
        except BaseException:
            for f in pending:
                f.cancel()
            raise
    if done != n:
        raise StgError(f"{source.describe}: expected {n} images, found {done}")
    if callback:
        callback(LoadEvent("done", n, n))


# ---------------------------------------------------------------------------------------- cache


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, separators=(",", ":")).encode()).hexdigest()


def cache_names(source: ImageSource, image_size: int | None, resize: str) -> tuple[str, str] | None:
    """(prefix, key) of ``source`` loaded at ``image_size`` / ``resize`` (see the module docstring)."""
    if source.stamps is None:
        return None
    ident = [source.describe, image_size, resize]
    return _sha(ident)[:16], _sha([CACHE_VERSION, ident, source.stamps()])[:24]


_WRITE_LOCK = threading.Lock()


def load_images(
    source: ImageSource,
    *,
    image_size: int | None = None,
    resize: str = DEFAULT_RESIZE,
    cache_dir: Path | None = None,
) -> tuple[np.ndarray, str]:
    """(images (N, C, H, W) uint8, note) for ``source``; cached under ``cache_dir`` when given.

    On a cache hit the array is a copy-on-write memory map of the cached file. ``note`` is the one
    line saying how images were resized ("" when nothing was done); it is also reported as a
    LoadEvent "note" (on a cache hit too).
    """
    resize = check_resize(resize)
    image_size = check_image_size(image_size)
    names = cache_names(source, image_size, resize) if cache_dir is not None else None
    if names is not None:
        hit = _read_cache(Path(cache_dir), *names, source.n)  # type: ignore[arg-type]
        if hit is not None:
            images, note = hit
            if note:
                report(LoadEvent("note", message=note))
            return images, note
    p = plan(scan(source), image_size, resize)
    if p.note:
        report(LoadEvent("note", message=p.note))
    shape = (source.n, 3 if p.rgb else 1, p.height, p.width)
    if names is not None and source.n > 0:
        written = _decode_to_cache(Path(cache_dir), *names, source, p, resize, shape)  # type: ignore[arg-type]
        if written is not None:
            return written, p.note
    images = np.empty(shape, np.uint8)
    decode_into(images, source, p, resize)
    return images, p.note


def _read_cache(folder: Path, prefix: str, key: str, n: int) -> tuple[np.ndarray, str] | None:
    npy, meta = folder / f"{prefix}-{key}.npy", folder / f"{prefix}-{key}.json"
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        images = np.load(npy, mmap_mode="c")
    except (OSError, ValueError):
        return None  # unreadable or half-written: decode again (and overwrite)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != n or list(images.shape) != info.get("shape"):
        return None
    return images, str(info.get("note", ""))


def _remove_orphans(folder: Path, prefix: str) -> None:
    """Delete the temporary files of writers that died mid-decode (killed: no ``finally`` ran),
    which could be as large as the decoded set; a file whose writer still runs is kept."""
    for tmp in folder.glob(f".{prefix}-*.tmp.npy"):
        try:
            os.kill(int(tmp.name.split(".")[2]), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, IndexError, PermissionError, OSError):
            pass  # not ours to judge: keep it


def _decode_to_cache(
    folder: Path, prefix: str, key: str, source: ImageSource, p: Plan, resize: str, shape: tuple[int, ...]
) -> np.ndarray | None:
    """Decode straight into ``folder/prefix-key.npy`` (via a temporary file renamed when complete),
    then memory-map it; None when the folder cannot be written (a note says so)."""
    tmp = folder / f".{prefix}-{key}.{os.getpid()}.{threading.get_ident()}.tmp.npy"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_orphans(folder, prefix)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    except OSError as e:
        report(LoadEvent("note", message=f"not caching decoded images in {folder}: {_one_line(e)}"))
        return None
    try:
        decode_into(out, source, p, resize)
        out.flush()
        del out
        with _WRITE_LOCK:
            os.replace(tmp, folder / f"{prefix}-{key}.npy")
            meta_tmp = folder / f".{prefix}-{key}.{os.getpid()}.json.tmp"
            meta_tmp.write_text(json.dumps({"shape": list(shape), "note": p.note, "source": source.describe,
                                            "version": CACHE_VERSION}))
            os.replace(meta_tmp, folder / f"{prefix}-{key}.json")
            for old in folder.glob(f"{prefix}-*"):  # stale entries of the same source and size
                if old.stem != f"{prefix}-{key}":
                    old.unlink(missing_ok=True)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return np.load(folder / f"{prefix}-{key}.npy", mmap_mode="c")


def fit_arrays(images: np.ndarray, image_size: int, resize: str, describe: str) -> np.ndarray:
    """In-memory (N, C, H, W) uint8 images (C 1 or 3) as (N, C, S, S) at S = ``image_size``."""
    channels = int(images.shape[1])

    def items() -> Iterator[np.ndarray]:
        for a in images:
            yield a[0] if channels == 1 else a.transpose(1, 2, 0)

    source = ImageSource(int(images.shape[0]), items, lambda i: f"{describe} row {i}", describe)
    out = np.empty((images.shape[0], channels, image_size, image_size), np.uint8)
    decode_into(out, source, Plan(channels == 3, image_size, image_size, image_size, ""), resize)
    return out


def fit_data(data: Any, image_size: int | None, resize: str) -> Any:
    """A loader's ``ClassData`` / ``MultiLabelData`` with every split's images at ``image_size`` x
    ``image_size`` (``resize`` as above) and the note appended to its ``source``; unchanged when
    ``image_size`` is None or the images already have that size (e.g. a folder resized while decoded)."""
    import dataclasses

    import torch

    if image_size is None:
        return data
    changes: dict[str, Any] = {}
    sizes: set[str] = set()
    n = 0
    for split in ("train", "val", "test"):
        images = getattr(data, f"{split}_images", None)
        if images is None or tuple(images.shape[-2:]) == (image_size, image_size):
            continue
        sizes.add(f"{images.shape[-1]}x{images.shape[-2]}")
        n += int(images.shape[0])
        changes[f"{split}_images"] = torch.from_numpy(
            fit_arrays(images.numpy(), image_size, resize, f"{data.name} {split}"))
    if not changes:
        return data
    how = "centre crop" if resize == "crop" else "padding (black bars)"
    note = f"resized {n:,} images ({', '.join(sorted(sizes))}) to {image_size}x{image_size} by {how}"
    report(LoadEvent("note", message=note))
    return dataclasses.replace(data, **changes, source=f"{data.source}; {note}" if data.source else note)


def load_image_files(
    files: list[Path], root: Path, *, image_size: int | None = None, resize: str = DEFAULT_RESIZE, cache: bool = True
) -> tuple[np.ndarray, str]:
    """(images (N, C, H, W) uint8, note) of image ``files`` under the data folder ``root``, in order,
    cached in ``root/.stg-cache`` (keyed by the files' names relative to root, sizes and mtimes)."""
    root = Path(root)
    source = ImageSource(
        n=len(files),
        items=lambda: iter(files),
        name_of=lambda i: str(files[i]),
        describe=f"images in {root}",
        stamps=lambda: file_stamps(files, root),
    )
    return load_images(source, image_size=image_size, resize=resize, cache_dir=root / CACHE_DIR if cache else None)
