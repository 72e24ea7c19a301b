"""Soft clustering of tasks (docs/architecture.md §4): fuzzy membership, k-means + fuzzification, FCM.

The membership formula (STG-MTL / fuzzy c-means), for task t and cluster c:

    d[t, c] = ||x_t - C_c||_2 + 1e-10
    w[t, c] = d[t, c] ** (-2 / (m - 1)) / sum_j d[t, j] ** (-2 / (m - 1))
            = softmax_c( -(2 / (m - 1)) * log d[t, c] )          <- computed this way

The raw power overflows for m near 1 (m = 1.07 gives exponent -28.6; 1e-10 ** -28.6 ~ 1e286) and
gives inf / inf = NaN below; the log-space softmax is exact and never overflows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stg.errors import StgError

METHODS = ("fuzzy-kmeans", "fcm", "kmeans")
FUZZY_METHODS = ("fuzzy-kmeans", "fcm")
DIST_EPS = 1e-10
# k-means restarts by default. With 10 the optimum k-means reaches depended on the seed (on
# synthetic-hierarchy at k = 20 seed 0 stopped at ARI 0.93 with the planted groups, seeds 1, 3, 4 at
# 1.0); clustering runs on T x r isometric coordinates (r <= T), so restarts cost milliseconds and
# 300 make every seed reach the same, lowest-cost partition there (tests/test_compare.py, README).
N_INIT = 300


def default_n_init(n_tasks: int, k: int) -> int:
    """Restarts when the caller names none: N_INIT up to the size where they were measured
    (T = 100 tasks, k = 20), then fewer, so the work stays about that of N_INIT restarts there:

        n_init = clip(N_INIT * (100^2 * 20) / (T^2 * k), 10, N_INIT)

    One restart costs about T * r * k per Lloyd iteration on (T, r <= T) coordinates; at T = 1,000,
    k = 100 one took 4.4 s, so 300 of them (times 4 with the stability seeds) took hours."""
    work = N_INIT * (100 * 100 * 20) / (max(n_tasks, 1) ** 2 * max(k, 1))
    return int(min(N_INIT, max(10, round(work))))


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


_CHUNK = 2_000_000  # restarts run in chunks of at most this many (restart, task, cluster) distances


def kmeanspp_starts(x: np.ndarray, k: int, n_starts: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ (as scikit-learn: 2 + floor(log k) candidates per step, keep the one that
    lowers the potential most), for ``n_starts`` restarts at once. x: (T, D) -> task indices (R, k).

    Candidates are drawn with probability proportional to the squared distance to the closest
    centre chosen so far, from a precomputed (T, T) table of squared distances.
    """
    n_tasks = len(x)
    sq = np.einsum("td,td->t", x, x)
    d2 = np.maximum(sq[:, None] - 2.0 * (x @ x.T) + sq[None, :], 0.0)
    np.fill_diagonal(d2, 0.0)
    n_trials = 2 + int(np.log(k))
    rows = np.arange(n_starts)
    idx = np.empty((n_starts, k), dtype=np.int64)
    idx[:, 0] = rng.integers(0, n_tasks, n_starts)
    closest = d2[idx[:, 0]]  # (R, T)
    for c in range(1, k):
        cum = np.cumsum(closest, axis=1)
        u = rng.random((n_starts, n_trials)) * cum[:, -1:]
        cand = np.minimum((cum[:, None, :] <= u[:, :, None]).sum(-1), n_tasks - 1)  # (R, trials): searchsorted
        new = np.minimum(closest[:, None, :], d2[cand])  # (R, trials, T)
        best = new.sum(-1).argmin(axis=1)
        idx[:, c] = cand[rows, best]
        closest = new[rows, best]
    return idx


def lloyd(x: np.ndarray, centres: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Lloyd's iterations for R restarts at once until no task changes cluster (or max_iter).

    x: (T, D), centres: (R, k, D) -> (centres (R, k, D), labels (R, T), inertia (R,), iterations). Each task goes
    to its nearest centre (ties: the lower index), each centre to the mean of its tasks; a centre
    with no task stays where it is.
    """
    k = centres.shape[1]
    sq = np.einsum("td,td->t", x, x)
    labels = None
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        dist = sq[None, :, None] - 2.0 * np.swapaxes(centres @ x.T, 1, 2) + np.einsum("rkd,rkd->rk", centres, centres)[:, None, :]
        new_labels = dist.argmin(axis=2)  # (R, T)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        onehot = (labels[:, :, None] == np.arange(k)).astype(np.float64)  # (R, T, k)
        counts = onehot.sum(axis=1)  # (R, k)
        sums = np.swapaxes(onehot, 1, 2) @ x  # (R, k, D)
        centres = np.where(counts[:, :, None] > 0, sums / np.maximum(counts, 1.0)[:, :, None], centres)
    inertia = np.square(x[None, :, :] - np.take_along_axis(centres, labels[:, :, None], axis=1)).sum(axis=(1, 2))
    return centres, labels, inertia, n_iter


def _kmeans(x: np.ndarray, k: int, seed: int, n_init: int, max_iter: int):
    """k-means: ``n_init`` greedy k-means++ starts (seeded), Lloyd's iterations, the lowest inertia
    (ties: the first). All restarts run as arrays at once, in chunks: T x r isometric coordinates
    are small, so N_INIT restarts cost milliseconds (scikit-learn's KMeans loops over restarts and
    took ~2 ms each). Returns (centroids (k, D), n_iter)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK // max(1, len(x) * k))
    best = None
    for start in range(0, n_init, chunk):
        r = min(chunk, n_init - start)
        centres, labels, inertia, n_iter = lloyd(x, x[kmeanspp_starts(x, k, r, rng)], max_iter)
        i = int(np.argmin(inertia))
        if best is None or inertia[i] < best[0]:
            best = (float(inertia[i]), centres[i], n_iter)
    return best[1], best[2]


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
    n_init: int = N_INIT,
    max_iter: int = 300,
    eps: float = 0.01,
) -> ClusterResult:
    """Soft-cluster T tasks.

    x: (T, D) task features (or their ``isometric_coordinates``: same result, much faster).
    method:
      fuzzy-kmeans  k-means (greedy k-means++ starts, Lloyd; ``kmeanspp_starts``, ``lloyd``: the
                    algorithm of sklearn's KMeans, all restarts at once), then one-shot fuzzy
                    membership from its centroids (the paper's STG-MTL). ``n_init`` defaults to
                    N_INIT restarts (see there) so that the optimum does not depend on the seed.
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
