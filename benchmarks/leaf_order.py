"""How good and how fast the membership heatmap's task order is (``stg.grouping.order``).

    python benchmarks/leaf_order.py [--sizes 8,10,50,100,200,300] [--seeds 5]

For n tasks as random points in 20 dimensions (8 planted groups), the sum of distances between
neighbours (lower is better) and the time of:

- ``stg``: ``optimal_leaf_order``, our dynamic programme;
- ``scipy``: ``scipy.cluster.hierarchy.optimal_leaf_ordering`` on the same dendrogram;
- ``plain``: the dendrogram's own leaf order (``leaves_list``);
- ``all orders`` (the naive reference, n <= 10): the best of the 2^(n-1) orders the dendrogram
  allows, by enumeration.

Ratios are printed per size, averaged over the seeds: ``stg / best`` must be 1.000 where the
enumeration runs.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering  # noqa: E402
from scipy.spatial.distance import pdist  # noqa: E402

from stg.grouping.order import optimal_leaf_order  # noqa: E402


def path_length(x: np.ndarray, order) -> float:
    return float(np.linalg.norm(np.diff(x[np.asarray(order)], axis=0), axis=1).sum())


def all_orders(z: np.ndarray, n: int) -> list[list[int]]:
    def orders(node: int):
        if node < n:
            return [[node]]
        left, right = orders(int(z[node - n, 0])), orders(int(z[node - n, 1]))
        return [o for a, b in itertools.product(left, right) for o in (a + b, b + a)]
    return orders(2 * n - 2)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="8,10,50,100,200,300")
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    optimal_leaf_order(np.random.default_rng(0).normal(size=(5, 2)))  # imports, once
    print(f"{'n':>5} {'stg/scipy length':>17} {'stg/plain length':>17} {'stg/best':>9} "
          f"{'stg ms':>8} {'scipy ms':>9} {'stg/scipy time':>15}")
    for n in (int(v) for v in args.sizes.split(",")):
        rows = []
        for seed in range(args.seeds):
            g = np.random.default_rng(seed)
            centres = g.normal(scale=3.0, size=(8, 20))
            x = centres[g.integers(0, 8, n)] + g.normal(size=(n, 20))
            d = pdist(x)
            z = linkage(d, method="average")
            ours, t_ours = timed(lambda: optimal_leaf_order(x))
            theirs, t_theirs = timed(lambda: leaves_list(optimal_leaf_ordering(z, d)))
            best = min(path_length(x, o) for o in all_orders(z, n)) if n <= 10 else float("nan")
            mine = path_length(x, ours)
            rows.append((mine / path_length(x, theirs), mine / path_length(x, leaves_list(z)), mine / best,
                         t_ours * 1e3, t_theirs * 1e3))
        a = np.mean(rows, axis=0)
        print(f"{n:>5} {a[0]:>17.4f} {a[1]:>17.4f} {a[2]:>9.3f} {a[3]:>8.1f} {a[4]:>9.1f} {a[3] / a[4]:>15.2f}")


if __name__ == "__main__":
    main()
