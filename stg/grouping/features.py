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

**Feature variants** (``FEATURE_VARIANTS``, ``stg group --features NAME``). The paper's raw features
mix *how hard* a task is (its mean confidence) with *what it resembles* (which samples it finds
hard). The variants, for task t with data-map block ``a_t`` (N,) per (snapshot, stat) and affinity
Z (T, T) source x target:

- ``raw`` (default, the paper's): ``x_t = [a_t per block]``, Euclidean.
- ``centred``: each block centred and scaled to unit norm, ``z_t = (a_t - mean(a_t)) / ||a_t - mean(a_t)||``
  (0 for a constant block); then ``||z_t - z_u||^2 = sum_blocks 2 (1 - corr(a_t, a_u))``: the
  correlation distance, blind to each task's difficulty level and spread.
- ``rank``: each block replaced by its per-sample ranks (average ranks for ties), then ``centred``:
  ``sum_blocks 2 (1 - spearman(a_t, a_u))``; also blind to any monotone rescaling of confidence.
- ``tag-rows`` / ``cs-rows``: from the affinity the run recorded (``stg datamap --affinity tag,cs``),
  mean over its epochs, diagonal set to 0: ``x_t = [Z[t, :], Z[:, t]]`` (what t does to every task,
  then what every task does to t), Euclidean. Tasks that help and are helped by the same tasks
  land together.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


# -- feature variants ---------------------------------------------------------------------------
def centre_scale_rows(a: np.ndarray) -> np.ndarray:
    """a: (T, N) -> (T, N) float64, each row centred and scaled to unit Euclidean norm (0 for a
    constant row), so that ``||z_t - z_u||^2 = 2 (1 - corr(a_t, a_u))``."""
    z = np.asarray(a, dtype=np.float64)
    z = z - z.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.square(z).sum(axis=1, keepdims=True))
    return np.divide(z, norm, out=np.zeros_like(z), where=norm > 0)


def rank_rows(a: np.ndarray) -> np.ndarray:
    """a: (T, N) -> (T, N) float64 per-row average ranks (1..N; ties share their mean rank), then
    ``centre_scale_rows``: ``||z_t - z_u||^2 = 2 (1 - spearman(a_t, a_u))``."""
    from scipy.stats import rankdata

    return centre_scale_rows(rankdata(np.asarray(a, dtype=np.float64), axis=1))


def affinity_rows(z: np.ndarray) -> np.ndarray:
    """z: (T, T) affinity, source x target -> (T, 2T) float64 ``[Z[t, :], Z[:, t]]`` with Z[t, t] := 0."""
    z = np.array(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] != z.shape[1]:
        raise StgError(f"an affinity matrix must be (T, T), got shape {z.shape}")
    np.fill_diagonal(z, 0.0)
    return np.concatenate([z, z.T], axis=1)


@dataclass(frozen=True)
class FeatureVariant:
    """A way to turn a run into task features (module docstring). Data-map variants set ``block``
    (one (T, N) data-map block -> (T, N') transformed block, applied to every (snapshot, stat) block
    as it is read); affinity variants set ``affinity`` (the recorded method whose mean (T, T)
    matrix ``affinity_rows`` turns into features)."""

    name: str
    formula: str
    block: Callable[[np.ndarray], np.ndarray] | None = None
    affinity: str | None = None


FEATURE_VARIANTS: dict[str, FeatureVariant] = {}


def register_variant(variant: FeatureVariant) -> FeatureVariant:
    FEATURE_VARIANTS[variant.name] = variant
    return variant


for _v in (
    FeatureVariant("raw", "x_t = [confidence_t, variability_t], Euclidean (the paper's)", block=lambda a: a),
    FeatureVariant("centred", "each block centred, unit norm: distance^2 = sum 2 (1 - corr)", block=centre_scale_rows),
    FeatureVariant("rank", "each block's per-sample ranks, centred, unit norm: sum 2 (1 - spearman)", block=rank_rows),
    FeatureVariant("tag-rows", "x_t = [Z[t, :], Z[:, t]] of TAG's mean lookahead affinity, diagonal 0", affinity="tag"),
    FeatureVariant("cs-rows", "x_t = [Z[t, :], Z[:, t]] of the mean gradient cosine, diagonal 0", affinity="cs"),
):
    register_variant(_v)


def check_variant(name: str) -> FeatureVariant:
    if name not in FEATURE_VARIANTS:
        raise StgError(f"unknown task features {name!r}: use one of {', '.join(FEATURE_VARIANTS)}")
    return FEATURE_VARIANTS[name]


def available_variants(run: RunDir) -> list[str]:
    """The variants ``run`` can give: every data-map variant once it has a data map, and each
    affinity variant whose affinity it recorded."""
    from stg.affinity.files import affinity_epochs

    have_map = bool(run.datamap_epochs())
    return [v.name for v in FEATURE_VARIANTS.values()
            if (v.block is not None and have_map) or (v.affinity is not None and affinity_epochs(run.path, v.affinity))]


# -- pure functions -----------------------------------------------------------------------------
def impute_unrecorded(a: np.ndarray, what: str = "data map", unlabelled: np.ndarray | None = None) -> np.ndarray:
    """One data-map block (T, N) with each unrecorded entry (NaN: the sample has no label for that
    task, multi-label data; ``stg.datamap.recorder``) replaced by its task's mean over the samples
    recorded for it:

        x_tn = a_tn                                 if (t, n) was recorded
             = mean over recorded m of a_tm         otherwise

    So every feature variant and the Euclidean distance work unchanged; a missing entry of task t
    sits at t's own average, adding ``(mean_t - x_un)^2`` to d(t, u)^2. The array itself (no copy)
    when nothing is NaN, so runs without missing labels give the very same features. StgError for
    inf, or a task with no recorded sample.

    unlabelled: (T, N) bool, the pairs that have no label (from RUN/samples.npz). Given, a NaN
    anywhere else is corruption, not a missing label, and is refused."""
    nan = np.isnan(a)
    if unlabelled is not None and (nan & ~unlabelled).any():
        bad = np.flatnonzero((nan & ~unlabelled).any(axis=1))
        raise StgError(f"{what} has NaN for labelled samples (task rows {bad[:5].tolist()}): the file is corrupt")
    if not nan.any():
        if not np.isfinite(a).all():
            bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
            raise StgError(f"{what} has NaN or inf (task rows {bad[:5].tolist()})")
        return a
    if np.isinf(a).any():
        bad = np.flatnonzero(np.isinf(a).any(axis=1))
        raise StgError(f"{what} has inf (task rows {bad[:5].tolist()})")
    empty = np.flatnonzero(nan.all(axis=1))
    if empty.size:
        raise StgError(f"{what}: tasks {empty[:5].tolist()} have no recorded sample")
    means = np.nanmean(a.astype(np.float64), axis=1).astype(a.dtype)
    return np.where(nan, means[:, None], a)


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


def _variant_key(key: dict, features: str) -> dict:
    """The cache key of a feature variant: the raw features' key unchanged, others add their name."""
    return key if features == "raw" else {**key, "variant": features}


def _affinity_features(run: RunDir, variant: FeatureVariant, epochs: str, projection_dim: int | None,
                       seed: int) -> np.ndarray:
    """(T, 2T) ``affinity_rows`` of the run's mean affinity (``stg.affinity.grouping.mean_affinity``)."""
    from stg.affinity.grouping import mean_affinity

    n_tasks = len(run.read()["task_names"])
    z, _ = mean_affinity(run.path, variant.affinity, "all" if epochs == "last" else epochs)
    if z.shape[0] != n_tasks:
        raise StgError(f"run {run.path}: the {variant.affinity} affinity has {z.shape[0]} tasks, the run {n_tasks}")
    x = affinity_rows(z)
    projection_dim = check_projection_dim(projection_dim)
    return random_projection(x, dim=projection_dim, seed=seed) if projection_dim is not None else x


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


def _unlabelled(run: RunDir, shape: tuple[int, ...]) -> np.ndarray:
    """(T, N) bool: the (task, sample) pairs without a label, from RUN/samples.npz's (N, T) uint8
    labels (255 = missing). All False when the file is missing or does not match ``shape``: then
    any NaN in a data map is corruption."""
    try:
        with np.load(run.path / "samples.npz", allow_pickle=False) as z:
            labels = np.asarray(z["labels"])
    except Exception:  # noqa: BLE001: missing / corrupt samples.npz: nothing is known to be unlabelled
        return np.zeros(shape, dtype=bool)
    if labels.shape[::-1] != tuple(shape):
        return np.zeros(shape, dtype=bool)
    return (labels == 255).T if labels.dtype == np.uint8 else np.isnan(labels).T


def _load_features(run: RunDir, epochs: list[int], stats: tuple[str, ...], n_tasks: int,
                   transform: Callable[[np.ndarray], np.ndarray] = lambda a: a) -> np.ndarray:
    """The (T, D) blocks [epoch][stat] of the data maps, each passed through ``transform`` (a
    feature variant's ``block``) as it is read.

    Streamed: one (T, N) block in memory at a time (one stat of one snapshot, read from its npz
    alone), copied into the preallocated (T, D) result as it is read, so the peak is the result plus
    about two blocks (reading an npz member buffers it once). Loading every snapshot whole, then
    concatenating, peaked at more than twice the result."""
    n_blocks = len(epochs) * len(stats)
    unlabelled: np.ndarray | None = None
    out: np.ndarray | None = None
    width = 0
    for i_epoch, e in enumerate(epochs):
        path = run.datamap_path(e)
        for i_stat, s in enumerate(stats):
            arr = run.load_datamap(e, keys=(s,))[s]
            if arr.shape[0] != n_tasks:
                raise StgError(f"data map {path} has {arr.shape[0]} tasks but run.json lists {n_tasks}")
            if unlabelled is None:
                unlabelled = _unlabelled(run, arr.shape)
            arr = impute_unrecorded(arr, f"data map {path} {s!r}", unlabelled)  # missing labels (multi-label data)
            block = transform(arr)
            del arr
            if n_blocks == 1:
                return block
            if out is None:
                width = block.shape[1]
                out = np.empty((n_tasks, n_blocks * width), dtype=block.dtype)
            if block.shape[1] != width:
                raise StgError(f"data map {path} has {block.shape[1]} samples, the first snapshot read {width}")
            i = i_epoch * len(stats) + i_stat
            out[:, i * width:(i + 1) * width] = block
            del block  # before the next block is read
    assert out is not None  # epochs and stats are non-empty (resolve_epochs, check_stats)
    return out


def task_features(
    run: RunDir,
    *,
    epochs: str = "last",
    stats: tuple[str, ...] = ("confidence", "variability"),
    projection_dim: int | None = None,
    seed: int = 0,
    cache: bool = True,
    features: str = "raw",
) -> np.ndarray:
    """Task feature matrix of a run: (T, D) float32.

    D = len(epochs) * len(stats) * N, laid out as blocks [epoch][stat] of N samples each (Euclidean
    distances do not depend on the order). With ``projection_dim`` the result is
    ``random_projection(x, dim=projection_dim, seed=seed)``: (T, projection_dim), cached on disk.
    The unprojected matrix is not cached: it is as large as the data maps it is read from.
    ``features``: a name in ``FEATURE_VARIANTS`` (module docstring); an affinity variant gives
    (T, 2T) from the run's affinity files (mean over all their epochs unless ``epochs`` names some).
    """
    variant = check_variant(features)
    if variant.affinity is not None:
        return _affinity_features(run, variant, epochs, projection_dim, seed)
    meta, epoch_list, stats, projection_dim = _prepare(run, epochs, stats, projection_dim)
    n_tasks = len(meta["task_names"])
    path = None
    if projection_dim is not None and cache:
        path = _cache_path(run, "features", _variant_key(_cache_key(run, epoch_list, stats, projection_dim, seed),
                                                         features))
        hit = _cache_load(path, n_tasks) if path.is_file() else None
        if hit is not None:
            return hit.astype(np.float32, copy=False)
    x = _load_features(run, epoch_list, stats, n_tasks, variant.block)
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
    features: str = "raw",
) -> np.ndarray:
    """``isometric_coordinates(task_features(run, ...))``: (T, r <= T) float64, cached on disk
    (data-map variants; affinity variants are (T, 2T) and cost nothing to recompute).

    Same pairwise distances as the task features, so clustering these is clustering the features.
    """
    if check_variant(features).affinity is not None:
        return isometric_coordinates(task_features(run, epochs=epochs, projection_dim=projection_dim, seed=seed,
                                                   features=features))
    meta, epoch_list, stats, projection_dim = _prepare(run, epochs, stats, projection_dim)
    n_tasks = len(meta["task_names"])
    path = _cache_path(run, "coords", _variant_key(_cache_key(run, epoch_list, stats, projection_dim, seed), features))
    if cache and path.is_file():
        hit = _cache_load(path, n_tasks)
        if hit is not None:
            return hit.astype(np.float64, copy=False)
    x = task_features(run, epochs=epochs, stats=stats, projection_dim=projection_dim, seed=seed, cache=cache,
                      features=features)
    coords = isometric_coordinates(x)
    if cache:
        _cache_save(path, coords)
    return coords
