"""Build stg/data/assets/fashion_sample.npz: a reproducible class-stratified sample of real Fashion-MNIST.

400 train + 100 test images per class (4,000 + 1,000), chosen with numpy's default_rng(SEED)
from the original IDX files, stored with np.savez_compressed together with the source indices.

    python scripts/build_fashion_sample.py [--source DIR] [--out stg/data/assets/fashion_sample.npz]

DIR holds the four *-ubyte[.gz] files (default /usr/share/datasets/fashion-mnist, the Debian
package dataset-fashion-mnist).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stg.data.fashion import FILES, SYSTEM_DIR, find_files, read_idx  # noqa: E402

SEED = 20240607
PER_CLASS = {"train": 400, "test": 100}


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted (10 * per_class,) int64 indices, ``per_class`` drawn without replacement per class."""
    chosen = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SYSTEM_DIR)
    parser.add_argument("--out", type=Path, default=ROOT / "stg" / "data" / "assets" / "fashion_sample.npz")
    args = parser.parse_args()
    files = find_files([args.source])
    if files is None:
        raise SystemExit(f"error: Fashion-MNIST IDX files ({', '.join(FILES.values())}) not found in {args.source}")
    rng = np.random.default_rng(SEED)
    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        images = read_idx(files[f"{split}_images"], 3)
        labels = read_idx(files[f"{split}_labels"], 1)
        idx = stratified_indices(labels, PER_CLASS[split], rng)
        out[f"{split}_images"] = images[idx]
        out[f"{split}_labels"] = labels[idx]
        out[f"{split}_indices"] = idx
    provenance = (
        "Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, Zalando Research, MIT licence): "
        f"{PER_CLASS['train']} train + {PER_CLASS['test']} test images per class from the original IDX files, "
        f"numpy default_rng({SEED}); rows are train_indices / test_indices of the original files; "
        "rebuild with scripts/build_fashion_sample.py"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez_compressed(tmp, provenance=np.array(provenance), **out)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
