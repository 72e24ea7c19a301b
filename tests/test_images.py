"""Images of any size (resize + centre crop or pad, once, at load time) and the decode cache
(stg.data.imagecache): checked against plain PIL per image, and for memory, progress and
invalidation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from stg.data import imagecache
from stg.data.datasets import clear_cache, load_classdata, load_taskset
from stg.data.imagecache import CACHE_DIR, LoadEvent, load_image_files
from stg.errors import StgError

BILINEAR = Image.Resampling.BILINEAR


@pytest.fixture(autouse=True)
def _fresh_loader_cache():
    clear_cache()
    yield
    clear_cache()


def smooth_image(rng: np.random.Generator, h: int, w: int, channels: int) -> np.ndarray:
    """(h, w[, 3]) uint8: random low-frequency content (a 4x5 grid upsampled) plus noise."""
    coarse = rng.integers(0, 256, (4, 5, 3) if channels == 3 else (4, 5), dtype=np.uint8)
    big = np.asarray(Image.fromarray(coarse).resize((w, h), BILINEAR)).astype(np.int16)
    return np.clip(big + rng.integers(-20, 21, big.shape), 0, 255).astype(np.uint8)


def write_mixed_folder(root: Path, rng: np.random.Generator, per_class: int = 4, suffix: str = ".png",
                       grey_only: bool = False, size_range: tuple[int, int] = (9, 41)) -> list[Path]:
    """root/{train,test}/{a,b}/i.png of random sizes (non-square), some grey some colour; the files
    in the loader's order (train a, train b, test a, test b; sorted names)."""
    files = []
    for split, n in (("train", per_class), ("test", max(1, per_class // 2))):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = (int(x) for x in rng.integers(*size_range, 2))
                channels = 1 if grey_only or rng.random() < 0.3 else 3
                f = d / f"{i}{suffix}"
                Image.fromarray(smooth_image(rng, h, w, channels)).save(f)
                files.append(f)
    return files


def pil_reference(files: list[Path], size: int, resize: str, mode: str) -> np.ndarray:
    """(N, C, S, S): each file opened, converted and fitted by plain PIL, one by one."""
    out = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert(mode)
            fitted = (ImageOps.fit(im, (size, size), BILINEAR) if resize == "crop"
                      else ImageOps.pad(im, (size, size), BILINEAR, color=0))
            a = np.asarray(fitted)
        out.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(out)


@pytest.mark.parametrize("resize", ["crop", "pad"])
def test_mixed_sizes_match_plain_pil(tmp_path: Path, resize: str) -> None:
    rng = np.random.default_rng(1)
    files = write_mixed_folder(tmp_path / "imgs", rng)
    data = load_classdata(str(tmp_path / "imgs"), image_size=16, resize=resize)
    ref = pil_reference(files, 16, resize, "RGB")  # some images are colour, so all are RGB
    n_train = data.train_images.shape[0]
    got = np.concatenate([data.train_images.numpy(), data.test_images.numpy()])
    assert got.shape == ref.shape == (len(files), 3, 16, 16)
    np.testing.assert_array_equal(got, ref)
    assert data.train_classes.tolist() == [0] * (n_train // 2) + [1] * (n_train // 2)
    how = "centre crop" if resize == "crop" else "padding"
    assert f"to 16x16 by {how}" in data.source


def test_grey_folder_stays_one_channel(tmp_path: Path) -> None:
    files = write_mixed_folder(tmp_path / "g", np.random.default_rng(2), grey_only=True)
    data = load_classdata(str(tmp_path / "g"), image_size=12)
    np.testing.assert_array_equal(np.concatenate([data.train_images.numpy(), data.test_images.numpy()]),
                                  pil_reference(files, 12, "crop", "L"))


def test_without_image_size_mixed_sizes_go_to_the_smallest_side(tmp_path: Path) -> None:
    files = write_mixed_folder(tmp_path / "imgs", np.random.default_rng(3), size_range=(14, 30))
    smallest = min(min(Image.open(f).size) for f in files)
    ts = load_taskset(str(tmp_path / "imgs"), val_fraction=0)
    assert ts.image_shape == (3, smallest, smallest)
    assert f"to {smallest}x{smallest} (the smallest side" in ts.source


def test_crop_and_pad_geometry() -> None:
    """Independent of PIL's helpers: a 40x20 image, red on the left (columns 0-7), green in the
    middle (8-31: the centre 20 columns and 2 more each side, for the filter's reach) and blue on the
    right. crop 10 keeps only the middle (green); pad 10 puts the whole image in rows 2..6 (5 rows
    of content, black above and below) with every colour."""
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :8, 0] = 255
    a[:, 8:32, 1] = 255
    a[:, 32:, 2] = 255
    im = Image.fromarray(a)
    crop = np.asarray(imagecache.fit_image(im, 10, "crop")).astype(int)
    assert (crop[..., 1] == 255).all() and (crop[..., 0] == 0).all() and (crop[..., 2] == 0).all()
    pad = np.asarray(imagecache.fit_image(im, 10, "pad")).astype(int)
    content = pad.sum(-1).sum(-1) > 0
    assert content.tolist() == [False] * 2 + [True] * 5 + [False] * 3
    row = pad[4]
    assert row[0, 0] == 255 and row[5, 1] == 255 and row[9, 2] == 255


def test_celeba_sized_jpegs_match_plain_pil(tmp_path: Path) -> None:
    """CelebA-sized JPEGs (178x218, portrait) at 32x32, decoded in threads, equal plain PIL's."""
    rng = np.random.default_rng(4)
    files = []
    for i in range(6):
        f = tmp_path / "j" / f"{i}.jpg"
        f.parent.mkdir(exist_ok=True)
        Image.fromarray(smooth_image(rng, 218, 178, 3)).save(f, quality=90)
        files.append(f)
    images, note = load_image_files(files, tmp_path / "j", image_size=32, cache=False)
    np.testing.assert_array_equal(images, pil_reference(files, 32, "crop", "RGB"))
    assert "to 32x32" in note


def test_one_size_is_kept_and_image_size_forces(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for split in ("train", "test"):
        for cls in ("x", "y"):
            d = tmp_path / "s" / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(smooth_image(rng, 12, 10, 1)).save(d / f"{i}.png")
    assert load_classdata(str(tmp_path / "s")).train_images.shape[1:] == (1, 12, 10)
    assert load_classdata(str(tmp_path / "s"), image_size=8).train_images.shape[1:] == (1, 8, 8)


def test_in_memory_datasets_resize_too(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    imgs = rng.integers(0, 255, (8, 3, 12, 20), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", train_images=imgs[:6], train_labels=np.array([0, 1] * 3),
             test_images=imgs[6:], test_labels=np.array([0, 1]), class_names=np.array(["p", "q"]))
    notes: list[str] = []
    data = load_classdata(str(tmp_path / "d.npz"), image_size=8, resize="pad",
                          progress=lambda e: e.kind == "note" and notes.append(e.message))
    ref = np.stack([np.asarray(ImageOps.pad(Image.fromarray(a.transpose(1, 2, 0)), (8, 8), BILINEAR, color=0))
                    for a in imgs]).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(np.concatenate([data.train_images.numpy(), data.test_images.numpy()]), ref)
    assert notes == ["resized 8 images (20x12) to 8x8 by padding (black bars)"] and notes[0] in data.source


def test_cache_is_reused_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "imgs"
    files = write_mixed_folder(root, np.random.default_rng(7))
    first = load_classdata(str(root), image_size=16)
    cached = sorted(p.name for p in (root / CACHE_DIR).iterdir())
    assert len(cached) == 2 and cached[0].endswith(".json") and cached[1].endswith(".npy")
    meta = json.loads((root / CACHE_DIR / cached[0]).read_text())
    assert meta["shape"] == [len(files), 3, 16, 16] and "to 16x16" in meta["note"]

    # a second load decodes nothing: it memory-maps the cached array
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    clear_cache()
    monkeypatch.setattr(imagecache, "decode_into", no_decoding)
    notes: list[str] = []
    again = load_classdata(str(root), image_size=16, progress=lambda e: notes.append(e.message))
    assert np.array_equal(again.train_images.numpy(), first.train_images.numpy())
    assert again.source == first.source and notes == [meta["note"]]
    monkeypatch.undo()

    # rewriting one image (new content, new mtime) misses the cache; the stale entry is removed
    clear_cache()
    victim = files[0]
    Image.fromarray(np.full((30, 20, 3), 200, np.uint8)).save(victim)
    os.utime(victim, ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = load_classdata(str(root), image_size=16)
    assert (changed.train_images[0] == 200).all()
    assert np.array_equal(changed.train_images[1:].numpy(), first.train_images[1:].numpy())
    after = sorted(p.name for p in (root / CACHE_DIR).iterdir())
    assert len(after) == 2 and after != cached

    # another size is another entry; the first one stays
    clear_cache()
    load_classdata(str(root), image_size=8)
    assert len(list((root / CACHE_DIR).glob("*.npy"))) == 2


def test_unwritable_cache_is_a_note_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "imgs"
    files = write_mixed_folder(root, np.random.default_rng(8))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(root / CACHE_DIR))

    monkeypatch.setattr(np.lib.format, "open_memmap", refuse)
    notes: list[str] = []
    data = load_classdata(str(root), image_size=16, progress=lambda e: e.kind == "note" and notes.append(e.message))
    assert data.train_images.shape[1:] == (3, 16, 16)
    assert any(n.startswith(f"not caching decoded images in {root / CACHE_DIR}") for n in notes), notes
    np.testing.assert_array_equal(np.concatenate([data.train_images.numpy(), data.test_images.numpy()]),
                                  pil_reference(files, 16, "crop", "RGB"))


def test_progress_events(tmp_path: Path) -> None:
    files = write_mixed_folder(tmp_path / "imgs", np.random.default_rng(9), per_class=80)
    events: list[LoadEvent] = []
    load_image_files(files, tmp_path / "imgs", image_size=8, cache=False)  # no callback: nothing breaks
    with imagecache.reporting(events.append):
        load_image_files(files, tmp_path / "imgs", image_size=8, cache=False)
    kinds = [e.kind for e in events]
    assert kinds[0] == "note" and kinds[1] == "start" and kinds[-1] == "done" and kinds.count("step") >= 2
    done = [e.done for e in events if e.kind == "step"]
    assert done == sorted(done) and done[-1] == len(files) and all(e.total == len(files) for e in events[1:])


def test_undecodable_image_is_named(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    write_mixed_folder(root, np.random.default_rng(10))
    bad = root / "train" / "b" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(StgError) as err:
        load_classdata(str(root), image_size=16)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"cannot read image {bad}")
    # truncated data that only fails while decoding (the header is fine) is named too
    good = root / "train" / "a" / "0.png"
    bad.write_bytes(good.read_bytes()[:200])
    bad.rename(bad.with_suffix(".png"))
    clear_cache()
    with pytest.raises(StgError, match="cannot read image .*broken.png"):
        load_classdata(str(root), image_size=16)


def test_bad_options(tmp_path: Path) -> None:
    write_mixed_folder(tmp_path / "imgs", np.random.default_rng(11))
    with pytest.raises(StgError, match="--resize must be one of crop, pad"):
        load_classdata(str(tmp_path / "imgs"), resize="stretch")
    with pytest.raises(StgError, match="--image-size must be between 1 and 4096"):
        load_classdata(str(tmp_path / "imgs"), image_size=0)


def test_decodes_into_one_array_not_a_list_and_a_stack(tmp_path: Path) -> None:
    """Peak traced memory of a load stays near one copy of the decoded set; the naive reference
    (a list of per-image arrays, then np.stack) needs two, so this check can fail."""
    files = write_mixed_folder(tmp_path / "imgs", np.random.default_rng(12), per_class=100, size_range=(40, 60))
    decoded = len(files) * 3 * 32 * 32

    def peak(fn) -> int:
        tracemalloc.start()
        try:
            fn()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def naive() -> np.ndarray:
        arrays = [pil_reference([f], 32, "crop", "RGB")[0] for f in files]
        return np.stack(arrays)

    ours = peak(lambda: load_image_files(files, tmp_path / "imgs", image_size=32, cache=False))
    theirs = peak(naive)
    assert ours < 1.5 * decoded, (ours, decoded)
    assert theirs > 1.9 * decoded, (theirs, decoded)


@pytest.mark.slow
def test_cli_datamap_on_a_folder_of_mixed_non_square_images(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    write_mixed_folder(root, np.random.default_rng(13), per_class=24, size_range=(20, 70))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "stg.cli", "datamap", "--dataset", str(root), "--image-size", "32",
                           "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "to 32x32 by centre crop" in proc.stderr  # the one line saying what was done
    meta = json.loads((out / "run.json").read_text())
    assert meta["image_shape"] == [3, 32, 32]
    assert meta["data"]["image_size"] == 32 and "resize" not in meta["data"]  # crop is the default


def test_a_killed_writers_temporary_file_is_removed(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    write_mixed_folder(root, np.random.default_rng(14))
    load_classdata(str(root), image_size=8)
    (npy,) = (root / CACHE_DIR).glob("*.npy")
    prefix = npy.name.split("-")[0]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = root / CACHE_DIR / f".{prefix}-0123.{int(dead.stdout)}.1.tmp.npy"
    alive = root / CACHE_DIR / f".{prefix}-0123.{os.getpid()}.1.tmp.npy"
    orphan.write_bytes(b"half")
    alive.write_bytes(b"half")
    clear_cache()
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(root / "train" / "a" / "new.png")  # a miss: decodes again
    load_classdata(str(root), image_size=8)
    assert not orphan.exists() and alive.exists()
