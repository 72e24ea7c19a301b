"""TAG and gradient-cosine groupings as grouping methods (``stg group RUN --method tag|cs``).

They read the affinities a data-map run recorded (``stg datamap ... --affinity tag,cs``; files in
``stg.affinity.files``). The matrix a grouping uses is the mean over the chosen epochs (all of them by
default: TAG averages its lookahead affinities over the whole training run), and
``stg.affinity.selection.select_groups`` picks at most k groups that maximise TAG's objective. The
groups may overlap: the membership matrix has a 1 for every group a task belongs to (several 1s in
a row), and ``labels`` is the group that serves each task (where it scores best). Numpy only:
``stg group`` loads no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stg.affinity.selection import membership, select_groups
from stg.affinity.files import AFFINITY_METHODS, affinity_epochs, load_affinity_epoch
from stg.errors import StgError
from stg.grouping.features import resolve_epochs
from stg.grouping.make import GroupingMethod, register_method
from stg.runs.rundir import RunDir

def mean_affinity(run_path: str | Path, method: str, epochs: str = "all") -> tuple[np.ndarray, list[int]]:
    """The mean (T, T) affinity over ``epochs`` ("all", "last" or "2,5"), and the epochs used."""
    if method not in AFFINITY_METHODS:
        raise StgError(f"unknown affinity {method!r}: use one of {', '.join(AFFINITY_METHODS)}")
    available = affinity_epochs(run_path, method)
    if not available:
        raise StgError(f"run {run_path} has no {method} affinity: record it with "
                       f"`stg datamap ... --affinity {method}` (a new run, or the same --out with more epochs)")
    chosen = resolve_epochs(epochs, available)
    mats = [load_affinity_epoch(run_path, method, e) for e in chosen]
    if len({m.shape for m in mats}) != 1:
        raise StgError(f"run {run_path}: {method} affinity files disagree on the number of tasks")
    mean = np.mean(mats, axis=0)
    if not np.isfinite(mean).all():
        raise StgError(f"run {run_path}: the {method} affinity has NaN or infinite entries")
    return mean, chosen


def _group_by_affinity(run: RunDir, task_names: list[str], *, k: int, method: str, seed: int, epochs: str,
                       **_: Any) -> dict[str, Any]:
    affinity, used = mean_affinity(run.path, method, "all" if epochs == "last" else epochs)
    if affinity.shape[0] != len(task_names):
        raise StgError(f"run {run.path}: the {method} affinity has {affinity.shape[0]} tasks, the run "
                       f"{len(task_names)}")
    try:
        # select_groups scores target t by A[t, u], the affinity of source u onto t: rows are
        # recipients, so the recorded source x target matrix goes in transposed
        sel = select_groups(affinity.T, k, method=method, seed=seed)
    except ValueError as e:
        raise StgError(str(e)) from None
    return {
        "membership": membership(sel, len(task_names)),
        "labels": np.asarray(sel.serving, dtype=np.int64),
        "groups": [[task_names[i] for i in g] for g in sel.groups],
        "serving": [int(v) for v in sel.serving],
        "k_requested": int(k),
        "objective": float(sel.objective),
        "bound": float(sel.bound),
        "exact": bool(sel.exact),
        "search_seconds": round(float(sel.seconds), 4),
        "affinity": {"source": f"affinity/{method}", "epochs": used},
    }


for _name, _help in (("tag", "TAG: groups that maximise the lookahead inter-task affinity (Fifty et al. 2021)"),
                     ("cs", "groups that maximise the gradient cosine similarity (TAG's CS baseline)")):
    register_method(GroupingMethod(
        _name, lambda run, names, *, _m=_name, **o: _group_by_affinity(run, names, method=_m, **o), help=_help))
