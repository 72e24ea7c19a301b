"""Soft clustering of tasks (docs/architecture.md §4): fuzzy membership, k-means + fuzzification, FCM.

The membership formula (STG-MTL / fuzzy c-means), for task t and cluster c:

    d[t, c] = ||x_t - C_c||_2 + 1e-10
    w[t, c] = d[t, c] ** (-2 / (m - 1)) / sum_j d[t, j] ** (-2 / (m - 1))
            = softmax_c( -(2 / (m - 1)) * log d[t, c] )          <- computed this way

The raw power overflows for m near 1 (m = 1.07 gives exponent -28.6; 1e-10 ** -28.6 ~ 1e286) and
gives inf / inf = NaN below; the log-space softmax is exact and never overflows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from stg.errors import StgError

METHODS = ("fuzzy-kmeans", "fcm", "kmeans")
FUZZY_METHODS = ("fuzzy-kmeans", "fcm")
DIST_EPS = 1e-10


@dataclass(frozen=True)
class ClusterResult:
    """A soft clustering of T tasks into k clusters.

    membership: (T, k) float64, rows sum to 1 (one-hot for ``kmeans``)
    labels:     (T,) int64 = membership.argmax(1)
    centroids:  (k, D) float64, in the space of the features that were clustered
    Clusters are numbered in a stable order: by the smallest task index among each cluster's
    argmax members; clusters that are nobody's argmax come last (by their strongest task).
    """

    membership: np.ndarray
    labels: np.ndarray
    centroids: np.ndarray
    method: str
    k: int
    m: float
    seed: int
    n_iter: int


def distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Euclidean distances. x: (T, D), centroids: (k, D) -> (T, k) float64.

    Direct differences (not the ||x||^2 - 2 x.c + ||c||^2 expansion) so that a task sitting on its
    centroid gets exactly 0 and identical tasks get identical rows. Loops over clusters only.
    """
    x = np.asarray(x, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    out = np.empty((x.shape[0], centroids.shape[0]), dtype=np.float64)
    for c in range(centroids.shape[0]):
        out[:, c] = np.sqrt(np.square(x - centroids[c]).sum(axis=1))
    return out


def membership_from_distances(d: np.ndarray, *, m: float) -> np.ndarray:
    """d: (T, k) distances >= 0 -> (T, k) float64 memberships, log-space softmax (module docstring)."""
    logits = -(2.0 / (m - 1.0)) * np.log(np.asarray(d, dtype=np.float64) + DIST_EPS)
    logits -= logits.max(axis=1, keepdims=True)
    w = np.exp(logits)
    return w / w.sum(axis=1, keepdims=True)


def fuzzy_membership(x: np.ndarray, centroids: np.ndarray, *, m: float) -> np.ndarray:
    """Fuzzy c-means membership of each task in each cluster.

    x: (T, D), centroids: (k, D), m > 1 -> (T, k) float64, rows sum to 1, no NaN for any m > 1.
    """
    _check_m(m)
    return membership_from_distances(distances(x, centroids), m=m)


# -- validation ---------------------------------------------------------------------------------
def _check_m(m: float) -> float:
    try:
        m = float(m)
    except (TypeError, ValueError):
        raise StgError(f"invalid fuzziness {m!r}: use a number > 1 (the paper uses 1.07)") from None
    if not np.isfinite(m) or m <= 1.0:
        raise StgError(f"invalid fuzziness {m}: must be > 1 (the paper uses 1.07)")
    return m


def check_cluster_args(n_tasks: int, *, k: int, m: float, method: str) -> tuple[int, float, str]:
    """Validate (k, m, method) for T tasks; returns them normalised. Raises StgError (one line)."""
    if method not in METHODS:
        raise StgError(f"unknown clustering method {method!r}: use one of {', '.join(METHODS)}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise StgError(f"invalid k {k!r}: use an integer between 2 and the number of tasks ({n_tasks})")
    if k < 2 or k > n_tasks:
        raise StgError(f"invalid k {k}: must be between 2 and the number of tasks ({n_tasks})")
    if method in FUZZY_METHODS:
        m = _check_m(m)
    else:
        try:
            m = float(m)
        except (TypeError, ValueError):
            m = float("nan")  # unused by hard k-means
    return int(k), m, method


# -- clustering ---------------------------------------------------------------------------------
def _renumber(membership: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder clusters stably: by the first task (lowest index) whose argmax is the cluster."""
    n_tasks, k = membership.shape
    labels = membership.argmax(axis=1)
    first = np.full(k, n_tasks, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n_tasks))
    strongest = membership.argmax(axis=0)  # tie-break for clusters nobody picks
    order = np.lexsort((np.arange(k), strongest, first))
    return membership[:, order], centroids[order]


def _kmeans(x: np.ndarray, k: int, seed: int, n_init: int, max_iter: int):
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct tasks than k
        km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed).fit(x)
    return np.asarray(km.cluster_centers_, dtype=np.float64), int(km.n_iter_)


def _fcm(x: np.ndarray, k: int, m: float, seed: int, n_init: int, max_iter: int, eps: float):
    """Bezdek fuzzy c-means, k-means++ init; best of n_init runs by the FCM objective."""
    from sklearn.cluster import kmeans_plusplus

    rng = np.random.RandomState(seed)
    best = None
    for _ in range(n_init):
        centroids, _ = kmeans_plusplus(x, k, random_state=rng)
        centroids = centroids.astype(np.float64)
        n_iter = 0
        for n_iter in range(1, max_iter + 1):
            w = fuzzy_membership(x, centroids, m=m)
            wm = w**m
            mass = wm.sum(axis=0)
            new = centroids.copy()
            ok = mass > 1e-300  # a cluster nobody belongs to keeps its centroid
            new[ok] = (wm[:, ok].T @ x) / mass[ok, None]
            shift = float(np.square(new - centroids).sum())
            centroids = new
            if shift <= eps:
                break
        d = distances(x, centroids)
        w = membership_from_distances(d, m=m)
        objective = float(((w**m) * d**2).sum())
        if best is None or objective < best[0]:
            best = (objective, centroids, n_iter)
    return best[1], best[2]


def cluster_tasks(
    x: np.ndarray,
    *,
    k: int,
    m: float = 1.07,
    method: str = "fuzzy-kmeans",
    seed: int = 0,
    n_init: int = 10,
    max_iter: int = 300,
    eps: float = 0.01,
) -> ClusterResult:
    """Soft-cluster T tasks.

    x: (T, D) task features (or their ``isometric_coordinates``: same result, much faster).
    method:
      fuzzy-kmeans  sklearn KMeans(k, n_init, max_iter, random_state=seed), then one-shot fuzzy
                    membership from its centroids (the paper's STG-MTL).
      fcm           Bezdek fuzzy c-means: k-means++ init (seeded), alternate membership and
                    centroids sum w^m x / sum w^m until sum of squared centroid change <= eps
                    or max_iter; best of n_init starts by the FCM objective. Memberships are
                    those of the final centroids.
      kmeans        hard k-means, one-hot membership (m is ignored).
    Returns a ClusterResult with stably numbered clusters.
    """
    from stg.grouping.features import check_features

    x = check_features(x)
    k, m, method = check_cluster_args(x.shape[0], k=k, m=m, method=method)
    if n_init < 1 or max_iter < 1:
        raise StgError(f"invalid n_init={n_init} / max_iter={max_iter}: both must be >= 1")
    x = np.asarray(x, dtype=np.float64)
    if method == "fcm":
        centroids, n_iter = _fcm(x, k, m, seed, n_init, max_iter, eps)
    else:
        centroids, n_iter = _kmeans(x, k, seed, n_init, max_iter)
    if method == "kmeans":
        d = distances(x, centroids)
        membership = np.zeros_like(d)
        membership[np.arange(len(d)), d.argmin(axis=1)] = 1.0
    else:
        membership = fuzzy_membership(x, centroids, m=m)
    membership, centroids = _renumber(membership, centroids)
    return ClusterResult(
        membership=membership,
        labels=membership.argmax(axis=1).astype(np.int64),
        centroids=centroids,
        method=method,
        k=k,
        m=m,
        seed=int(seed),
        n_iter=n_iter,
    )
