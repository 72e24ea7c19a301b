"""Task features from data maps (docs/architecture.md §4), random projection, and an exact low-dim embedding.

The paper's task feature is the task's data map flattened, no scaling, compared with the Euclidean
distance: ``x_t = [confidence_t, variability_t]`` of the last snapshot, ``D = 2 * N``.

Everything the clustering does (k-means, fuzzy c-means, fuzzy membership, silhouette, Xie-Beni)
depends on the tasks only through Euclidean distances between points and means of points. Those
live in the affine span of the T task vectors, so ``isometric_coordinates`` maps (T, D) features to
(T, r <= T) coordinates with the *same* pairwise distances (an eigendecomposition of the centred
Gram matrix, i.e. the exact PCA scores). Clustering on them gives the exact grouping in milliseconds;
a random projection (Johnson-Lindenstrauss) is only an approximation and is kept as an option.

Both are cached on disk under ``RUN/cache/`` keyed by the options and the data-map files' size and
mtime, so re-clustering a run never re-reads its data maps.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stg.errors import StgError
from stg.runs.rundir import DATAMAP_KEYS, RunDir, atomic_save

_CACHE_VERSION = 1
_PROJ_CHUNK = 4096  # rows of the projection matrix per generated chunk (fixed: part of the seed contract)
_GRAM_CHUNK = 8192  # feature columns per Gram block


# -- options ------------------------------------------------------------------------------------
def resolve_epochs(epochs: str, available: Sequence[int]) -> list[int]:
    """Turn "last" | "all" | "2,5" into a list of snapshot epochs present on disk."""
    if not available:
        raise StgError("no data map yet: run `stg datamap` first")
    spec = str(epochs).strip().lower()
    have = f"{available[0]}..{available[-1]}" if len(available) > 1 else str(available[0])
    if spec == "last":
        return [available[-1]]
    if spec == "all":
        return list(available)
    try:
        wanted = [int(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        wanted = []
    if not wanted:
        raise StgError(f"invalid epochs {epochs!r}: use 'last', 'all' or a comma list like '2,5' (run has {have})")
    missing = [e for e in wanted if e not in available]
    if missing:
        raise StgError(f"no data map for epoch(s) {missing}: the run has snapshots {list(available)}")
    return sorted(set(wanted))


def check_stats(stats: Sequence[str]) -> tuple[str, ...]:
    """Validate the data-map statistics used as features (a non-empty subset of DATAMAP_KEYS)."""
    stats = tuple(stats)
    bad = [s for s in stats if s not in DATAMAP_KEYS]
    if not stats or bad or len(set(stats)) != len(stats):
        raise StgError(f"invalid feature stats {list(stats)}: choose distinct names from {list(DATAMAP_KEYS)}")
    return stats


def check_projection_dim(projection_dim: int | None) -> int | None:
    if projection_dim is None:
        return None
    if isinstance(projection_dim, bool) or not isinstance(projection_dim, (int, np.integer)) or projection_dim < 1:
        raise StgError(f"invalid projection dim {projection_dim!r}: use a positive integer (e.g. 2048) or none")
    return int(projection_dim)


# -- pure functions -----------------------------------------------------------------------------
def random_projection(x: np.ndarray, *, dim: int, seed: int) -> np.ndarray:
    """Seeded Gaussian Johnson-Lindenstrauss projection: ``x @ R / sqrt(dim)``, R ~ N(0, 1).

    x: (T, D) float -> (T, dim) float32. R (D, dim) is generated in fixed chunks of 4096 rows, each
    from its own seed (seed, chunk index), so memory stays O(4096 * dim) for any D and the result
    depends only on (seed, dim, D).
    """
    dim = check_projection_dim(dim)
    x = np.asarray(x)
    if x.ndim != 2:
        raise StgError(f"random_projection expects a (T, D) array, got shape {x.shape}")
    n_tasks, n_dims = x.shape
    out = np.zeros((n_tasks, dim), dtype=np.float64)
    for i, start in enumerate(range(0, n_dims, _PROJ_CHUNK)):
        stop = min(start + _PROJ_CHUNK, n_dims)
        rng = np.random.default_rng([int(seed), i])
        r = rng.standard_normal((_PROJ_CHUNK, dim), dtype=np.float32)[: stop - start]
        out += x[:, start:stop].astype(np.float32, copy=False) @ r
    return (out / np.sqrt(dim)).astype(np.float32)


def isometric_coordinates(x: np.ndarray) -> np.ndarray:
    """Coordinates with exactly the pairwise Euclidean distances of the rows of ``x``.

    x: (T, D) float -> (T, r) float64 with r <= T (r >= 1): the PCA scores of ``x`` (centred Gram
    matrix ``G = Xc Xc^T``, accumulated in float64 over column blocks, then ``U sqrt(lambda)``),
    components in decreasing variance, each column's sign fixed so its largest entry is positive.
    Means of points (k-means / FCM centroids) map to the same means, so clustering is unchanged.
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise StgError(f"expected a (T, D) feature array, got shape {x.shape}")
    n_tasks, n_dims = x.shape
    gram = np.zeros((n_tasks, n_tasks), dtype=np.float64)
    for start in range(0, n_dims, _GRAM_CHUNK):
        block = x[:, start : start + _GRAM_CHUNK].astype(np.float64)
        block -= block.mean(axis=0)
        gram += block @ block.T
    gram = (gram + gram.T) / 2
    lam, vec = np.linalg.eigh(gram)
    lam, vec = lam[::-1], vec[:, ::-1]
    keep = lam > max(lam[0], 0.0) * 1e-13 * n_tasks
    if not keep.any():
        return np.zeros((n_tasks, 1))
    coords = vec[:, keep] * np.sqrt(lam[keep])
    signs = np.sign(coords[np.argmax(np.abs(coords), axis=0), np.arange(coords.shape[1])])
    return coords * np.where(signs == 0, 1.0, signs)


def check_features(x: np.ndarray, what: str = "features") -> np.ndarray:
    """x: (T, D) -> the same array; StgError if not 2-D, empty, or not finite."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise StgError(f"{what} must be a non-empty (T, D) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        rows = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise StgError(f"{what} contain NaN or inf (task rows {rows[:5].tolist()}); recompute the data map")
    return x


# -- on a run -----------------------------------------------------------------------------------
def _cache_path(run: RunDir, kind: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return run.path / "cache" / f"{kind}_{digest}.npy"


def _cache_key(run: RunDir, epochs: list[int], stats: tuple[str, ...], projection_dim: int | None, seed: int) -> dict:
    files = []
    for e in epochs:
        st = run.datamap_path(e).stat()
        files.append([run.datamap_path(e).name, st.st_size, st.st_mtime_ns])
    return {
        "version": _CACHE_VERSION,
        "epochs": epochs,
        "stats": list(stats),
        "projection_dim": projection_dim,
        "seed": int(seed) if projection_dim is not None else None,
        "files": files,
    }


def _cache_load(path: Path, n_tasks: int) -> np.ndarray | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if arr.ndim != 2 or arr.shape[0] != n_tasks or not np.isfinite(arr).all():
        return None
    return arr


def _cache_save(path: Path, arr: np.ndarray) -> None:
    try:
        atomic_save(path, lambda f: np.save(f, arr, allow_pickle=False))
    except OSError:
        pass  # a read-only run directory still works, just without the cache


def _prepare(run: RunDir, epochs: str, stats: Sequence[str], projection_dim: int | None):
    meta = run.read()
    stats = check_stats(stats)
    projection_dim = check_projection_dim(projection_dim)
    available = run.datamap_epochs()
    if not available:
        raise StgError(f"run {run.path} has no data map yet: run `stg datamap --out {run.path}` first")
    return meta, resolve_epochs(epochs, available), stats, projection_dim


def _load_features(run: RunDir, epochs: list[int], stats: tuple[str, ...], n_tasks: int) -> np.ndarray:
    blocks = []
    for e in epochs:
        dm = run.load_datamap(e)
        path = run.datamap_path(e)
        for s in stats:
            arr = dm[s]
            if arr.shape[0] != n_tasks:
                raise StgError(f"data map {path} has {arr.shape[0]} tasks but run.json lists {n_tasks}")
            finite = np.isfinite(arr)
            if not finite.all():
                bad = np.flatnonzero(~finite.all(axis=1))
                raise StgError(f"data map {path} has NaN or inf in {s!r} (task rows {bad[:5].tolist()})")
            blocks.append(arr)
    return np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]


def task_features(
    run: RunDir,
    *,
    epochs: str = "last",
    stats: tuple[str, ...] = ("confidence", "variability"),
    projection_dim: int | None = None,
    seed: int = 0,
    cache: bool = True,
) -> np.ndarray:
    """Task feature matrix of a run: (T, D) float32.

    D = len(epochs) * len(stats) * N, laid out as blocks [epoch][stat] of N samples each (Euclidean
    distances do not depend on the order). With ``projection_dim`` the result is
    ``random_projection(x, dim=projection_dim, seed=seed)``: (T, projection_dim), cached on disk.
    The unprojected matrix is not cached: it is as large as the data maps it is read from.
    """
    meta, epoch_list, stats, projection_dim = _prepare(run, epochs, stats, projection_dim)
    n_tasks = len(meta["task_names"])
    path = None
    if projection_dim is not None and cache:
        path = _cache_path(run, "features", _cache_key(run, epoch_list, stats, projection_dim, seed))
        hit = _cache_load(path, n_tasks) if path.is_file() else None
        if hit is not None:
            return hit.astype(np.float32, copy=False)
    x = _load_features(run, epoch_list, stats, n_tasks)
    if projection_dim is not None:
        x = random_projection(x, dim=projection_dim, seed=seed)
        if path is not None:
            _cache_save(path, x)
    return x


def task_coordinates(
    run: RunDir,
    *,
    epochs: str = "last",
    stats: tuple[str, ...] = ("confidence", "variability"),
    projection_dim: int | None = None,
    seed: int = 0,
    cache: bool = True,
) -> np.ndarray:
    """``isometric_coordinates(task_features(run, ...))``: (T, r <= T) float64, cached on disk.

    Same pairwise distances as the task features, so clustering these is clustering the features.
    """
    meta, epoch_list, stats, projection_dim = _prepare(run, epochs, stats, projection_dim)
    n_tasks = len(meta["task_names"])
    path = _cache_path(run, "coords", _cache_key(run, epoch_list, stats, projection_dim, seed))
    if cache and path.is_file():
        hit = _cache_load(path, n_tasks)
        if hit is not None:
            return hit.astype(np.float64, copy=False)
    x = task_features(run, epochs=epochs, stats=stats, projection_dim=projection_dim, seed=seed, cache=cache)
    coords = isometric_coordinates(x)
    if cache:
        _cache_save(path, coords)
    return coords
