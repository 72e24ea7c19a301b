"""2-D maps of the tasks for plots: PCA (exact, via the Gram matrix) or UMAP (imported lazily)."""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict

import numpy as np

from stg.errors import StgError
from stg.grouping.features import check_features, isometric_coordinates

PROJECTIONS = ("pca", "umap")
_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
_CACHE_SIZE = 32


def _digest(x: np.ndarray) -> str:
    x = np.ascontiguousarray(x)
    h = hashlib.blake2b(digest_size=16)
    h.update(str((x.shape, x.dtype.str)).encode())
    h.update(memoryview(x).cast("B"))
    return h.hexdigest()


def _pad2(y: np.ndarray) -> np.ndarray:
    out = np.zeros((y.shape[0], 2))
    out[:, : min(2, y.shape[1])] = y[:, :2]
    return out


def project_tasks(x: np.ndarray, *, method: str = "pca", seed: int = 0) -> np.ndarray:
    """x: (T, D) task features -> (T, 2) float64 coordinates for a scatter plot.

    pca:  the first two principal-component scores (exact; sign fixed so each axis's largest entry
          is positive); fewer than 2 non-degenerate components are padded with zeros.
    umap: umap-learn on the PCA coordinates, n_neighbors = min(15, T - 1), random_state=seed;
          falls back to PCA for T < 4 where UMAP is undefined.
    Results are cached in memory by (hash of x, method, seed).
    """
    if method not in PROJECTIONS:
        raise StgError(f"unknown projection {method!r}: use one of {', '.join(PROJECTIONS)}")
    x = check_features(x)
    key = (_digest(x), method, int(seed))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key].copy()
    coords = isometric_coordinates(x)
    if method == "pca" or x.shape[0] < 4:
        out = _pad2(coords)
    else:
        out = _umap(coords, seed)
    _CACHE[key] = out
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return out.copy()


def _umap(coords: np.ndarray, seed: int) -> np.ndarray:
    try:
        import umap
    except ImportError:
        raise StgError("UMAP projection needs umap-learn: pip install 'stg[umap]' (or use method='pca')") from None
    n_tasks = coords.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs overridden by random_state; small-n spectral notes
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=min(15, n_tasks - 1),
            random_state=int(seed),
            init="spectral" if n_tasks > 16 else "random",
        )
        out = reducer.fit_transform(coords)
    return np.asarray(out, dtype=np.float64)
