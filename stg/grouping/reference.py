"""Compare a grouping with a reference grouping (CIFAR-100 superclasses, planted truth, ...).

A reference is ``{group name: [task names]}`` as stored in run.json. Cluster numbers are arbitrary,
so every score here is invariant to relabelling the clusters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from stg.errors import StgError

Reference = Mapping[str, Sequence[str]]


def reference_labels(reference: Reference, task_names: Sequence[str], *, missing: str = "error") -> np.ndarray:
    """Group index of every task, groups numbered in the reference's order: (T,) int64.

    Names in the reference that are not tasks of this run are ignored. A task in no group raises
    StgError (``missing="error"``) or gets -1 (``missing="ignore"``); a task in two groups raises.
    """
    if missing not in ("error", "ignore"):
        raise StgError(f"invalid missing={missing!r}: use 'error' or 'ignore'")
    index = {name: i for i, name in enumerate(task_names)}
    out = np.full(len(task_names), -1, dtype=np.int64)
    for g, (group, members) in enumerate(reference.items()):
        for name in members:
            i = index.get(name)
            if i is None:
                continue
            if out[i] >= 0 and out[i] != g:
                raise StgError(f"task {name!r} is in two reference groups ({list(reference)[out[i]]!r} and {group!r})")
            out[i] = g
    if missing == "error" and (out < 0).any():
        absent = [task_names[i] for i in np.flatnonzero(out < 0)]
        more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
        raise StgError(f"tasks missing from the reference grouping: {', '.join(map(repr, absent[:5]))}{more}")
    return out


def _check_labels(labels: Sequence[int], task_names: Sequence[str]) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(task_names):
        raise StgError(f"labels must be one int per task ({len(task_names)}), got shape {labels.shape}")
    if len(labels) and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0):
        raise StgError("cluster labels must be non-negative integers")
    return labels.astype(np.int64)


def _counts(labels: np.ndarray, ref: np.ndarray, n_groups: int, n_clusters: int) -> np.ndarray:
    """(groups, clusters) co-occurrence counts of tasks present in the reference."""
    table = np.zeros((n_groups, n_clusters), dtype=np.int64)
    keep = ref >= 0
    np.add.at(table, (ref[keep], labels[keep]), 1)
    return table


def compare(
    labels: Sequence[int], reference: Reference, task_names: Sequence[str], *, missing: str = "error"
) -> dict[str, float]:
    """Agreement of cluster labels (T,) with a reference: {"ari", "nmi", "purity", "n_tasks"}.

    ari: sklearn adjusted_rand_score; nmi: normalized_mutual_info_score (arithmetic mean);
    purity: sum over clusters of the largest overlap with one reference group, divided by T.
    With ``missing="ignore"`` tasks in no reference group are left out (n_tasks says how many count).
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = _check_labels(labels, task_names)
    ref = reference_labels(reference, task_names, missing=missing)
    keep = ref >= 0
    n = int(keep.sum())
    if n == 0:
        return {"ari": float("nan"), "nmi": float("nan"), "purity": float("nan"), "n_tasks": 0}
    lab, rf = labels[keep], ref[keep]
    table = _counts(lab, rf, int(rf.max()) + 1, int(lab.max()) + 1)
    return {
        "ari": float(adjusted_rand_score(rf, lab)),
        "nmi": float(normalized_mutual_info_score(rf, lab)),
        "purity": float(table.max(axis=0).sum() / n),
        "n_tasks": n,
    }


def compare_groupings(a: Sequence[int], b: Sequence[int]) -> dict[str, float]:
    """Agreement of two groupings' labels (T,) of the same tasks: {"ari", "nmi"} (1 = the same
    partition up to renaming; ARI about 0 for unrelated ones)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise StgError(f"the two groupings label different task sets ({a.shape} and {b.shape})")
    return {"ari": float(adjusted_rand_score(a, b)), "nmi": float(normalized_mutual_info_score(a, b))}


def contingency(
    labels: Sequence[int], reference: Reference, task_names: Sequence[str], *, k: int | None = None
):
    """pandas DataFrame of task counts: rows = reference groups (in order), columns = clusters 0..k-1.

    Every task must be in the reference, so the table sums to T.
    """
    import pandas as pd

    labels = _check_labels(labels, task_names)
    ref = reference_labels(reference, task_names)
    n_clusters = max(int(k or 0), int(labels.max()) + 1 if len(labels) else 0)
    table = _counts(labels, ref, len(reference), n_clusters)
    frame = pd.DataFrame(table, index=list(reference), columns=list(range(n_clusters)))
    frame.index.name, frame.columns.name = "reference group", "cluster"
    return frame


def split_merge(labels: Sequence[int], reference: Reference, task_names: Sequence[str]) -> list[dict]:
    """Where the clusters and the reference disagree.

    One dict per reference group spread over several clusters:
        {"kind": "split", "group": g, "clusters": {cluster: [tasks]}}
    and one per cluster holding tasks of several reference groups:
        {"kind": "merge", "cluster": c, "groups": {group: [tasks]}}
    Splits come first (reference order), then merges (cluster order).
    """
    labels = _check_labels(labels, task_names)
    ref = reference_labels(reference, task_names)
    groups = list(reference)
    out: list[dict] = []
    for g, group in enumerate(groups):
        members = np.flatnonzero(ref == g)
        clusters = sorted(set(labels[members].tolist()))
        if len(clusters) > 1:
            parts = {c: [task_names[i] for i in members if labels[i] == c] for c in clusters}
            out.append({"kind": "split", "group": group, "clusters": parts})
    for c in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == c)
        in_groups = sorted(set(ref[members].tolist()))
        if len(in_groups) > 1:
            parts = {groups[g]: [task_names[i] for i in members if ref[i] == g] for g in in_groups}
            out.append({"kind": "merge", "cluster": c, "groups": parts})
    return out
