"""Benchmark `stg group` (make_grouping) on a CIFAR-100-sized run: T=100 tasks, N=45,000 samples.

Compares, in the same process, against a naive reference that follows the official STG-MTL code:
re-read the data map from disk every time, flatten it to (T, 2N), sklearn KMeans on the full
features, then the raw-power membership formula in a Python loop over tasks and clusters.

    python benchmarks/grouping_speed.py [--tasks 100] [--samples 45000] [--k 20] [--repeats 3]

Prints a table and a last line ``group_s=<x> recluster_s=<y> speedup_vs_naive=<z>``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stg.grouping.make import make_grouping  # noqa: E402
from stg.runs.rundir import RunDir  # noqa: E402


def synthetic_run(path: Path, *, n_tasks: int, n_samples: int, n_groups: int, seed: int = 0) -> tuple[RunDir, np.ndarray]:
    """A run directory with one data-map snapshot and planted task groups.

    One-vs-rest-like maps: most samples are easy (confidence near 1); each group shares a latent
    per-sample difficulty, each task adds its own noise; variability peaks at mid confidence.
    """
    rng = np.random.default_rng(seed)
    truth = np.arange(n_tasks) % n_groups
    difficulty = rng.beta(0.6, 3.0, size=(n_groups, n_samples)).astype(np.float32)
    conf = 1.0 - difficulty[truth] + rng.normal(0, 0.08, (n_tasks, n_samples)).astype(np.float32)
    conf = np.clip(conf, 0.0, 1.0).astype(np.float32)
    var = (0.45 * np.sqrt(conf * (1 - conf)) + np.abs(rng.normal(0, 0.02, (n_tasks, n_samples)))).astype(np.float32)
    names = [f"task{i:03d}" for i in range(n_tasks)]
    ref = {f"group{g:02d}": [names[i] for i in np.flatnonzero(truth == g)] for g in range(n_groups)}
    run = RunDir(path)
    path.mkdir(parents=True)
    run.write({"task_names": names, "references": {"planted": ref}, "config": {}, "status": "done"})
    run.write_datamap(10, {"confidence": conf, "variability": var, "correctness": (conf > 0.5).astype(np.float32)})
    return run, truth


def naive_grouping(run: RunDir, *, k: int, m: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The official code path: features from disk, KMeans on (T, 2N), raw-power membership loop."""
    from sklearn.cluster import KMeans

    epoch = run.datamap_epochs()[-1]
    with np.load(run.datamap_path(epoch), allow_pickle=False) as z:
        dm = np.stack([z["confidence"], z["variability"]], axis=-1)  # (T, N, 2), the paper's layout
    x = dm.reshape(dm.shape[0], -1)
    km = KMeans(n_clusters=k, n_init=10, max_iter=300, random_state=seed).fit(x)
    centers = km.cluster_centers_
    n_tasks = x.shape[0]
    w = np.zeros((n_tasks, k))
    for t in range(n_tasks):
        for c in range(k):
            num = (np.linalg.norm(x[t] - centers[c]) + 1e-10) ** (-2 / (m - 1))
            den = sum((np.linalg.norm(x[t] - centers[j]) + 1e-10) ** (-2 / (m - 1)) for j in range(k))
            w[t, c] = num / den
    return w, w.argmax(1)


def timed(fn, repeats: int, before=None):
    times, out = [], None
    for _ in range(repeats):
        if before:
            before()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--samples", type=int, default=45_000)
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--m", type=float, default=1.07)
    ap.add_argument("--projection-dim", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from sklearn.metrics import adjusted_rand_score

    tmp = Path(tempfile.mkdtemp(prefix="stg-bench-"))
    try:
        t0 = time.perf_counter()
        run, truth = synthetic_run(tmp / "run", n_tasks=args.tasks, n_samples=args.samples, n_groups=args.groups)
        print(f"synthetic run: T={args.tasks} N={args.samples} D={2 * args.samples} "
              f"({time.perf_counter() - t0:.1f} s to create)")
        clear = lambda: shutil.rmtree(run.path / "cache", ignore_errors=True)  # noqa: E731
        k, m = args.k, args.m

        group_s, exact = timed(lambda: make_grouping(run, k=k, m=m, save=True), args.repeats, before=clear)
        # re-clustering: other k / m / seed on the cached coordinates (what the app does on a slider move)
        variants = [dict(k=k, m=1.1), dict(k=max(2, k - 5), m=m), dict(k=k, m=m, seed=1), dict(k=k, m=m, method="fcm")]
        recl = []
        for v in variants:
            s, _ = timed(lambda v=v: make_grouping(run, save=False, **v), args.repeats)
            recl.append(s)
        recluster_s = statistics.median(recl)
        proj_s, proj = timed(
            lambda: make_grouping(run, k=k, m=m, projection_dim=args.projection_dim, save=False), 1, before=clear)
        proj_re_s, _ = timed(lambda: make_grouping(run, k=k, m=m, projection_dim=args.projection_dim, save=False),
                             args.repeats)

        naive_s, (naive_w, naive_labels) = timed(lambda: naive_grouping(run, k=k, m=m, seed=0), 1)
        naive_re_s, _ = timed(lambda: naive_grouping(run, k=k, m=1.1, seed=0), 1)

        ari_truth = adjusted_rand_score(truth, exact["labels"])
        ari_naive = adjusted_rand_score(naive_labels, exact["labels"])
        ari_proj = adjusted_rand_score(exact["labels"], proj["labels"])
        ari_proj_truth = adjusted_rand_score(truth, proj["labels"])
        # membership agreement with the naive path where they found the same partition
        w_ours = np.asarray(exact["membership"])
        rows = [
            ("stg group (cold: read map, coords, cluster, score, write)", group_s, naive_s),
            ("re-cluster from cached coordinates (median of 4 variants)", recluster_s, naive_re_s),
            (f"stg group, JL projection to {args.projection_dim} (cold)", proj_s, naive_s),
            (f"re-cluster from cached projection ({args.projection_dim})", proj_re_s, naive_re_s),
        ]
        print(f"\n{'step':62s} {'stg s':>9s} {'naive s':>9s} {'speedup':>8s}")
        for label, ours, ref in rows:
            print(f"{label:62s} {ours:9.3f} {ref:9.3f} {ref / ours:8.1f}x")
        print("\nagreement (ARI):")
        print(f"  exact grouping vs planted truth          {ari_truth:.4f}")
        print(f"  exact grouping vs naive official path    {ari_naive:.4f}")
        print(f"  JL-projected ({args.projection_dim}) vs exact grouping     {ari_proj:.4f}")
        print(f"  JL-projected vs planted truth            {ari_proj_truth:.4f}")
        if ari_naive == 1.0:
            perm = [int(np.bincount(naive_labels[np.asarray(exact['labels']) == c]).argmax()) for c in range(k)]
            print(f"  max |membership - naive membership|      {np.abs(w_ours - naive_w[:, perm]).max():.2e}")
        print(f"\ngroup_s={group_s:.3f} recluster_s={recluster_s:.4f} speedup_vs_naive={naive_s / group_s:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
