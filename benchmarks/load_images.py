"""Loading a large image folder: stg's decode (one preallocated array, threads, disk cache) against
the naive reference (a list of per-image arrays, then np.stack), in the same run.

Generates a folder of CelebA-sized JPEGs (178 x 218, portrait, about 10 KB each; ``--n`` images,
default 200,000, in DIR/train/{a,b} and DIR/test/{a,b}), then measures, each in a fresh Python
process so that its peak RSS is its own:

  naive   list of arrays + np.stack (PIL open, convert, centre crop + resize per image, one thread)
  first   ``stg.data.datasets.load_classdata(DIR, image_size=S)`` with an empty cache: decodes
          straight into the memory-mapped cache file DIR/.stg-cache/<prefix>-<key>.npy
  cached  the same call again: the cached array is memory-mapped (then every page is read once,
          timed separately, so the cost of actually using the data is shown too)

and prints wall seconds, images/s, peak RSS (ru_maxrss) above the process's RSS before loading, and
the ratios. All three arrays are hashed (outside the timings) and must be equal. Timings are noisy
on a shared machine; the page cache is warm for every step (the files were just written/read).

    python benchmarks/load_images.py                 # 200,000 images at 64 x 64
    python benchmarks/load_images.py --n 20000 --size 64 --dir /tmp/stg-load-bench
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 178, 218  # CelebA's aligned images


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def generate(root: Path, n: int, seed: int = 0) -> None:
    """n JPEGs of 178 x 218: 512 distinct smooth random pictures (encoding each of 200,000 would
    take longer than loading them), written round-robin under new names."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(512):
        coarse = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
        big = np.asarray(Image.fromarray(coarse).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)).astype(np.int16)
        pixels = np.clip(big + rng.integers(-6, 7, big.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())
    n_test = n // 10
    t = time.perf_counter()
    for i in range(n):
        split = "test" if i < n_test else "train"
        cls = "a" if i % 2 == 0 else "b"
        d = root / split / cls
        if i < 2 or i == n_test or i == n_test + 1:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:06d}.jpg").write_bytes(blobs[i % len(blobs)])
    size = sum(len(blobs[i % len(blobs)]) for i in range(n))
    print(f"generated {n:,} JPEGs {WIDTH}x{HEIGHT} ({size / n / 1024:.1f} KiB each, {size / 2**30:.2f} GiB) "
          f"in {time.perf_counter() - t:.0f} s", flush=True)


def _files(root: Path) -> list[Path]:
    """The folder loader's order: train a, train b, test a, test b; sorted names."""
    out = []
    for split in ("train", "test"):
        for cls in ("a", "b"):
            out += sorted((root / split / cls).iterdir())
    return out


def _digest(parts: tuple[np.ndarray, ...]) -> str:
    import hashlib

    h = hashlib.sha256()
    for part in parts:
        for i in range(0, part.shape[0], 4096):
            h.update(np.ascontiguousarray(part[i:i + 4096]).tobytes())
    return h.hexdigest()[:16]


def child(mode: str, root: Path, size: int) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import torch  # noqa: F401  (imported before the baseline: stg's loader imports it anyway)
    from PIL import Image, ImageOps

    from stg.data.datasets import load_classdata

    base = _rss_bytes()
    t = time.perf_counter()
    touch = 0.0
    if mode == "naive":
        arrays = []
        for f in _files(root):
            with Image.open(f) as im:
                a = np.asarray(ImageOps.fit(im.convert("RGB"), (size, size), Image.Resampling.BILINEAR))
            arrays.append(a.transpose(2, 0, 1))
        images = np.stack(arrays)
        del arrays
        seconds = time.perf_counter() - t
        parts: tuple[np.ndarray, ...] = (images,)
    else:
        data = load_classdata(str(root), image_size=size)
        seconds = time.perf_counter() - t
        parts = (data.train_images.numpy(), data.test_images.numpy())
        t = time.perf_counter()
        for part in parts:  # use the data once: a memory-mapped cache is read from disk here
            for i in range(0, part.shape[0], 8192):
                int(part[i:i + 8192, :, ::16, ::16].sum())  # 12 KiB per image: every page is touched
        touch = time.perf_counter() - t
    peak = _peak_rss_bytes()
    print(json.dumps({"mode": mode, "n": sum(p.shape[0] for p in parts), "seconds": seconds, "touch_seconds": touch,
                      "base_rss": base, "peak_rss": peak, "digest": _digest(parts)}), flush=True)


def _run(mode: str, root: Path, size: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--dir", str(root), "--size", str(size)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="images to generate (default 200,000)")
    ap.add_argument("--size", type=int, default=64, help="--image-size S (default 64)")
    ap.add_argument("--dir", default="/tmp/stg-load-bench", help="folder to generate into (emptied first)")
    ap.add_argument("--keep", action="store_true", help="keep the generated folder")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    root = Path(args.dir)
    if args.child:
        child(args.child, root, args.size)
        return
    shutil.rmtree(root, ignore_errors=True)
    generate(root, args.n)
    decoded = args.n * 3 * args.size * args.size
    print(f"decoded set: {args.n:,} x 3 x {args.size} x {args.size} uint8 = {decoded / 2**30:.2f} GiB; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    results = {}
    for mode in ("naive", "first", "cached"):
        r = results[mode] = _run(mode, root, args.size)
        extra = f", then reading every page {r['touch_seconds']:.1f} s" if mode != "naive" else ""
        print(f"{mode:>6}: {r['seconds']:8.1f} s ({r['n'] / r['seconds']:,.0f} img/s){extra}; peak RSS "
              f"{(r['peak_rss'] - r['base_rss']) / 2**30:.2f} GiB above the {r['base_rss'] / 2**30:.2f} GiB "
              f"before loading ({(r['peak_rss'] - r['base_rss']) / decoded:.2f} x the decoded set); "
              f"digest {r['digest']}", flush=True)
    same = len({r["digest"] for r in results.values()}) == 1
    nv, fs, ca = results["naive"], results["first"], results["cached"]
    mem = lambda r: r["peak_rss"] - r["base_rss"]  # noqa: E731
    print(f"identical arrays: {same}")
    print(f"time   first / naive  = {fs['seconds'] / nv['seconds']:.2f}   cached / first = "
          f"{ca['seconds'] / fs['seconds']:.4f}   (cached incl. reading every page: "
          f"{(ca['seconds'] + ca['touch_seconds']) / fs['seconds']:.3f})")
    print(f"memory first / naive  = {mem(fs) / mem(nv):.2f}   cached / naive = {mem(ca) / mem(nv):.2f}")
    print(f"cache: {sum(p.stat().st_size for p in (root / '.stg-cache').iterdir()) / 2**30:.2f} GiB in "
          f"{root / '.stg-cache'}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    if not same:
        raise SystemExit("the arrays differ")


if __name__ == "__main__":
    main()
