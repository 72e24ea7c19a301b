"""Task orders for display: tasks that are alike next to each other (the membership heatmap).

``optimal_leaf_order`` is Bar-Joseph et al. 2001's dynamic programme over a dendrogram (scipy's
``optimal_leaf_ordering`` can return a worse order than its optimum, scipy issue 11227);
``similarity_order`` applies it to clusters and to the tasks inside each. NumPy and SciPy only.
"""

from __future__ import annotations

import numpy as np

from stg.errors import StgError


def similarity_order(coords: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Task order in which each cluster is a block and similar tasks sit next to each other.

    coords: (T, r) task coordinates whose Euclidean distances are the task-feature distances
    (``stg.grouping`` clusters on them); labels: (T,) hard cluster per task -> (T,) permutation.
    Clusters come in the optimal leaf order (``optimal_leaf_order``) of their centroids'
    average-linkage dendrogram; inside a cluster, tasks come in that of their own, each block
    turned to start near where the last one ended (``orient_blocks``). A plain sort by
    membership (``stg.plots.membership_order``) keeps the blocks but puts unrelated tasks side by side.
    """
    x = np.asarray(coords, dtype=np.float64)
    lab = np.asarray(labels).ravel()
    if x.ndim != 2 or len(x) != len(lab):
        raise StgError(f"coords must be (T, r) with T = {len(lab)} labels, got shape {x.shape}")
    clusters = np.unique(lab)
    centroids = np.stack([x[lab == c].mean(axis=0) for c in clusters])
    blocks = []
    for c in clusters[optimal_leaf_order(centroids)]:
        members = np.flatnonzero(lab == c)
        blocks.append(members[optimal_leaf_order(x[members])])
    return np.concatenate(orient_blocks(x, blocks))


def orient_blocks(x: np.ndarray, blocks: list[np.ndarray]) -> list[np.ndarray]:
    """Each block forwards or reversed so that a block starts near where the previous one ends:
    the first pair's four orientations by the least junction distance, then each next block by its
    own. x: (T, r); blocks: index arrays into x."""
    if len(blocks) < 2:
        return blocks

    def gap(i: int, j: int) -> float:
        return float(np.linalg.norm(x[i] - x[j]))

    a, b = blocks[0], blocks[1]
    a, b = min(((p, q) for p in (a, a[::-1]) for q in (b, b[::-1])), key=lambda pq: gap(pq[0][-1], pq[1][0]))
    out = [a, b]
    for block in blocks[2:]:
        out.append(block if gap(out[-1][-1], block[0]) <= gap(out[-1][-1], block[-1]) else block[::-1])
    return out


OPTIMAL_ORDER_MAX = 300  # O(n^3) time, O(n^2) memory: beyond this, the plain dendrogram order


def optimal_leaf_order(points: np.ndarray) -> np.ndarray:
    """The leaf order of the average-linkage dendrogram of ``points`` (n, r) that minimises the sum
    of Euclidean distances between neighbours, out of the 2^(n-1) orders the dendrogram allows
    (flip any node): (n,) permutation. Bar-Joseph et al. 2001's dynamic programme:

        M[i, j] = min over k in L, m in R of  M_L[i, k] + d(k, m) + M_R[m, j]

    the cheapest order of node v = (L, R) that starts at leaf i of L and ends at leaf j of R. Each
    leaf pair has one lowest common node, so one (n, n) matrix holds every node's M. Written here
    because scipy's ``optimal_leaf_ordering`` can return a worse order than its optimum (scipy
    issue 11227; the test compares against all 2^(n-1) orders). Above ``OPTIMAL_ORDER_MAX`` points,
    the plain dendrogram order.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import pdist, squareform

    x = np.asarray(points, dtype=np.float64)
    n = len(x)
    if n < 3:
        return np.arange(n)
    condensed = pdist(x)
    z = linkage(condensed, method="average")
    if n > OPTIMAL_ORDER_MAX:
        return leaves_list(z)
    d = squareform(condensed)
    best = np.zeros((n, n))
    kids: dict[int, tuple[int, int]] = {}
    leaves: list[list[int]] = [[i] for i in range(n)]

    def within(node: int) -> np.ndarray:
        """M of one node, over its leaves: an order of the whole node runs from a leaf of one child
        to a leaf of the other (pairs under one child belong to a lower node: infinite here)."""
        ids = leaves[node]
        sub = best[np.ix_(ids, ids)].copy()
        if node >= n:
            split = len(leaves[kids[node][0]])
            sub[:split, :split] = np.inf
            sub[split:, split:] = np.inf
        return sub

    for node, (a, b) in enumerate(z[:, :2].astype(np.int64), start=n):
        left, right = leaves[a], leaves[b]
        via = np.min(within(a)[:, :, None] + d[np.ix_(left, right)][None, :, :], axis=1)  # [i, m]
        cost = np.min(via[:, :, None] + within(b)[None, :, :], axis=1)  # [i, j]
        best[np.ix_(left, right)] = cost
        best[np.ix_(right, left)] = cost.T
        kids[node] = (int(a), int(b))
        leaves.append(left + right)

    def walk(node: int, i: int, j: int) -> list[int]:
        """The cheapest order of ``node``'s leaves from i to j (i, j under different children)."""
        if node < n:
            return [i]
        a, b = kids[node]
        if i not in leaves[a]:
            a, b = b, a
        first, second = leaves[a], leaves[b]
        total = within(a)[first.index(i)][:, None] + d[np.ix_(first, second)] + within(b)[:, second.index(j)][None, :]
        k, m = np.unravel_index(np.argmin(total), total.shape)
        return walk(a, i, first[k]) + walk(b, second[m], j)

    root = 2 * n - 2
    a, b = kids[root]
    pairs = best[np.ix_(leaves[a], leaves[b])]
    i, j = np.unravel_index(np.argmin(pairs), pairs.shape)
    return np.asarray(walk(root, leaves[a][i], leaves[b][j]), dtype=np.int64)
