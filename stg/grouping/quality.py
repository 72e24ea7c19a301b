"""How many clusters, and how stable is a grouping? (The paper picks k by hand; spec 4.3.)

Pass ``isometric_coordinates(features)`` (or ``task_coordinates(run)``) as ``x`` for speed: every
index here depends only on Euclidean distances, so the values are those of the full features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stg.errors import StgError
from stg.grouping.fuzzy import N_INIT, ClusterResult, cluster_tasks, distances


def kmeans_cost(x: np.ndarray, labels: np.ndarray) -> float:
    """The k-means objective of a hard partition: sum over tasks of the squared distance to the mean
    of its cluster. x: (T, D) (or its isometric coordinates: same value), labels: (T,) ints."""
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    total = 0.0
    for c in np.unique(labels):
        pts = x[labels == c]
        total += float(np.square(pts - pts.mean(axis=0)).sum())
    return total


_hard_inertia = kmeans_cost


def _silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette of the hard labels (Euclidean); NaN where undefined (< 2 or == T clusters)."""
    n_labels = len(np.unique(labels))
    if n_labels < 2 or n_labels >= len(labels):
        return float("nan")
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(x, labels, metric="euclidean"))


def partition_coefficient(membership: np.ndarray) -> float:
    """Bezdek's fuzzy partition coefficient: mean over tasks of sum_c w^2, in [1/k, 1]. membership: (T, k)."""
    return float(np.square(membership).sum(axis=1).mean())


def xie_beni(x: np.ndarray, result: ClusterResult) -> float:
    """Xie-Beni index: sum w^m d^2 / (T * min_{c != c'} ||C_c - C_c'||^2); lower is better.

    x: (T, D). Hard k-means uses w one-hot (so m does not matter). inf if two centroids coincide.
    """
    d = distances(x, result.centroids)
    m = result.m if result.method != "kmeans" else 1.0
    compact = float(((result.membership**m) * d**2).sum())
    sep = distances(result.centroids, result.centroids) ** 2
    sep[np.diag_indices_from(sep)] = np.inf
    min_sep = float(sep.min())
    return compact / (len(x) * min_sep) if min_sep > 0 else float("inf")


def scan_k(
    x: np.ndarray,
    *,
    ks: Sequence[int],
    m: float = 1.07,
    method: str = "fuzzy-kmeans",
    seed: int = 0,
    n_init: int = 10,
) -> list[dict]:
    """Cluster for every k in ``ks`` and score it. x: (T, D). (10 restarts per k, not N_INIT: a scan
    clusters up to 29 times, and it ranks k's rather than fixing the grouping.)

    Returns one dict per k (in the order given): k, silhouette (hard labels, Euclidean; NaN when
    undefined), partition_coefficient (mean sum w^2; 1 = crisp), xie_beni (lower is better),
    inertia (sum of squared distances to the hard-cluster means), n_clusters_used (distinct labels).
    """
    if not ks:
        raise StgError("scan_k needs at least one k")
    x = np.asarray(x, dtype=np.float64)
    rows = []
    for k in ks:
        res = cluster_tasks(x, k=k, m=m, method=method, seed=seed, n_init=n_init)
        rows.append(
            {
                "k": int(k),
                "silhouette": _silhouette(x, res.labels),
                "partition_coefficient": partition_coefficient(res.membership),
                "xie_beni": xie_beni(x, res),
                "inertia": _hard_inertia(x, res.labels),
                "n_clusters_used": int(len(np.unique(res.labels))),
            }
        )
    return rows


def recommend_k(scan: Sequence[dict]) -> int:
    """The k with the highest silhouette (ties: the smaller k); NaN silhouettes are skipped.

    Silhouette is used because it is scale-free and comparable across k, unlike inertia (always
    falls with k) or the partition coefficient (depends on m and on distance concentration).
    """
    valid = [(r["silhouette"], -r["k"]) for r in scan if np.isfinite(r.get("silhouette", np.nan))]
    if not valid:
        raise StgError("cannot recommend k: the silhouette is undefined for every k scanned (need 2 <= k < T)")
    return -max(valid)[1]


def stability(
    x: np.ndarray,
    *,
    k: int,
    m: float = 1.07,
    method: str = "fuzzy-kmeans",
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    n_init: int = N_INIT,
) -> dict:
    """How much the grouping depends on the seed. x: (T, D); S = len(seeds) >= 2.

    Returns:
      labels       (S, T) int hard labels per seed
      consensus    (T, T) float: fraction of seeds in which tasks i and j share a hard cluster
      pairwise_ari (S, S) float: adjusted Rand index between the seeds' labelings
      mean_ari     float: mean of the off-diagonal pairwise ARI (1 = identical partitions)
      per_task     (T,) float in [0.5, 1]: mean over other tasks j of max(C_ij, 1 - C_ij);
                   1 = the task always has the same cluster-mates
    Use n_init=1 to see the seed sensitivity of a single k-means run (the paper's sklearn default).
    """
    from sklearn.metrics import adjusted_rand_score

    seeds = list(seeds)
    if len(seeds) < 2:
        raise StgError(f"stability needs at least 2 seeds, got {len(seeds)}")
    x = np.asarray(x, dtype=np.float64)
    labels = np.stack([cluster_tasks(x, k=k, m=m, method=method, seed=s, n_init=n_init).labels for s in seeds])
    n_seeds, n_tasks = labels.shape
    onehot = np.zeros((n_seeds, n_tasks, k))
    onehot[np.arange(n_seeds)[:, None], np.arange(n_tasks)[None, :], labels] = 1.0
    consensus = np.einsum("stc,suc->tu", onehot, onehot) / n_seeds
    ari = np.ones((n_seeds, n_seeds))
    for i in range(n_seeds):
        for j in range(i + 1, n_seeds):
            ari[i, j] = ari[j, i] = adjusted_rand_score(labels[i], labels[j])
    off = ~np.eye(n_seeds, dtype=bool)
    agree = np.maximum(consensus, 1 - consensus)
    per_task = (agree.sum(axis=1) - 1.0) / max(n_tasks - 1, 1)
    return {
        "seeds": seeds,
        "labels": labels,
        "consensus": consensus,
        "pairwise_ari": ari,
        "mean_ari": float(ari[off].mean()),
        "per_task": per_task,
    }
