"""Held-in check of the task-feature variants and grouping methods (issue 14): for a data-map run,
each STG-MTL feature variant's and each TAG / cosine selection's ARI with every reference grouping,
the k-means cost and seed stability, and where the special tasks land (``random`` alone? ``footwear``
with ``not_footwear``?), for each k given.

    python benchmarks/feature_variants.py RUN --k 3,4            # e.g. a fashion-sample composite run
    python benchmarks/feature_variants.py RUN --k 20             # synthetic-hierarchy vs planted

Prints one row per (k, method); the last line says which variant scores best on every reference.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from stg.grouping.features import available_variants
from stg.grouping.make import make_grouping, method_names
from stg.runs.rundir import RunDir


def special(g: dict) -> str:
    names, labels = g["task_names"], np.asarray(g["labels"])
    notes = []
    if "random" in names:
        r = labels[names.index("random")]
        notes.append("random alone" if (labels == r).sum() == 1 else f"random with {(labels == r).sum() - 1}")
    if "footwear" in names and "not_footwear" in names:
        same = labels[names.index("footwear")] == labels[names.index("not_footwear")]
        notes.append("footwear+not_footwear together" if same else "footwear apart from not_footwear")
    return "; ".join(notes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--k", default="3")
    args = ap.parse_args()
    run = RunDir(args.run)
    refs = list(run.read().get("references") or {})
    best: dict[str, dict[str, float]] = {}
    print(f"{'k':>3} {'method':<22}" + "".join(f"{'ARI ' + r:>22}" for r in refs)
          + f" {'stability':>9} {'seconds':>8}  special tasks")
    for k in [int(v) for v in args.k.split(",")]:
        rows = [(f"stg-mtl/{v}", dict(method="fuzzy-kmeans", features=v)) for v in available_variants(run)]
        rows += [(m, dict(method=m)) for m in ("tag", "cs") if m in method_names() and f"{m}-rows" in available_variants(run)]
        for label, kw in rows:
            t0 = time.perf_counter()
            g = make_grouping(run, k=k, save=False, **kw)
            dt = time.perf_counter() - t0
            stab = (g.get("stability") or {}).get("mean_ari")
            aris = [g["scores"][r]["ari"] for r in refs]
            for r, a in zip(refs, aris):
                best.setdefault(f"k={k} {r}", {})[label] = a
            print(f"{k:>3} {label:<22}" + "".join(f"{a:>22.3f}" for a in aris)
                  + f" {'' if stab is None else f'{stab:.3f}':>9} {dt:>8.2f}  {special(g)}")
    for ref, scores in best.items():
        top = max(scores.values())
        print(f"best on {ref}: {', '.join(n for n, v in scores.items() if v == top)} (ARI {top:.3f})")


if __name__ == "__main__":
    main()
