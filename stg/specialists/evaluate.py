"""Per-task binary metrics from logits, and ensembles of k specialists' logits (docs/architecture.md §4).

Predictions: ``sigmoid(z) > threshold`` (0.5). Per task: accuracy, balanced accuracy (mean recall
over the classes present in the labels, as scikit-learn), F1 = 2TP / (2TP + FP + FN) with F1 = 0
when that is 0/0 (no positive label and no positive prediction); tasks with no positive prediction
are reported by name. AUROC: the rank-based Mann-Whitney formula on the logits (ties get average
ranks), NaN when the split holds only one class of the task.

Missing labels (NaN in ``labels``, multi-label data): every metric of task t is computed over the
samples labelled for t only (accuracy = right / labelled, the confusion counts and the AUROC's
ranks over those samples). With no NaN the numbers are the same as without this rule.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from scipy.special import expit
from scipy.stats import rankdata

METRICS = ("accuracy", "balanced_accuracy", "f1", "auroc")
ENSEMBLES = ("membership", "argmax", "uniform")


def _np(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def auroc(scores: Any, labels: Any) -> np.ndarray:
    """Per-column AUROC: scores (N, T), labels (N, T) in {0, 1} (NaN: missing, left out of that
    column) -> (T,) float64, NaN for one-class columns."""
    s, raw = _np(scores), _np(labels)
    missing = np.isnan(raw)
    if missing.any():  # each column over its labelled rows only
        out = np.full(s.shape[1], np.nan)
        for t in range(s.shape[1]):
            keep = ~missing[:, t]
            out[t] = auroc(s[keep, t : t + 1], raw[keep, t : t + 1])[0]
        return out
    y = raw > 0.5
    n = s.shape[0]
    ranks = rankdata(s, axis=0) if n else np.zeros_like(s)  # average ranks for ties
    n_pos = y.sum(0).astype(np.float64)
    n_neg = n - n_pos
    u = (ranks * y).sum(0) - n_pos * (n_pos + 1) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        out = u / (n_pos * n_neg)
    out[(n_pos == 0) | (n_neg == 0)] = np.nan
    return out


def binary_metrics(logits: Any, labels: Any, *, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """logits (N, T), labels (N, T) in {0, 1} or NaN (missing: that sample is left out of that task's
    metrics) -> {metric: (T,) float64} for METRICS, plus ``no_positive_prediction``: (T,) bool
    (F1 is 0 there by definition)."""
    z, raw = _np(logits), _np(labels)
    if z.shape != raw.shape or z.ndim != 2:
        raise ValueError(f"logits and labels must be the same (N, T) shape, got {z.shape} and {raw.shape}")
    labelled = ~np.isnan(raw)
    y = raw > 0.5
    pred = expit(z) > threshold
    tp = (pred & y & labelled).sum(0).astype(np.float64)
    fp = (pred & ~y & labelled).sum(0).astype(np.float64)
    fn = (~pred & y & labelled).sum(0).astype(np.float64)
    tn = (~pred & ~y & labelled).sum(0).astype(np.float64)
    n = labelled.sum(0).astype(np.float64)  # (T,): z.shape[0] for every task when nothing is missing
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = np.where(n > 0, (tp + tn) / np.where(n > 0, n, 1), np.nan)
        tpr = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        tnr = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        present = (~np.isnan(tpr)).astype(np.float64) + (~np.isnan(tnr))
        balanced = (np.nan_to_num(tpr) + np.nan_to_num(tnr)) / present
        denom = 2 * tp + fp + fn
        f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
    return {
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
        "f1": f1,
        "auroc": auroc(z, np.where(labelled, y, np.nan)),
        "no_positive_prediction": (tp + fp) == 0,
    }


def ensemble_weights(membership: Any, how: str = "membership") -> np.ndarray:
    """The (T, k) logit-combination matrix A from a membership matrix W (T, k).

    membership: A = W;  argmax: A = one_hot(argmax_c W[t, c]) (each task served by its
    highest-membership specialist);  uniform: A = 1/k (the official code's default).
    """
    w = _np(membership)
    if how == "membership":
        return w
    if how == "argmax":
        return np.eye(w.shape[1])[w.argmax(1)]
    if how == "uniform":
        return np.full_like(w, 1.0 / w.shape[1])
    raise ValueError(f"unknown ensemble {how!r}: choose one of {', '.join(ENSEMBLES)}")


def ensemble_logits(logits: Any, weights: Any) -> np.ndarray:
    """Per-task weighted sum of k models' logits: logits (k, N, T), weights A (T, k) -> (N, T).

    z_bar[b, t] = sum_c A[t, c] * z[c, b, t]
    """
    z, a = _np(logits), _np(weights)
    if z.ndim != 3 or a.shape != (z.shape[2], z.shape[0]):
        raise ValueError(f"expected logits (k, N, T) and weights (T, k), got {z.shape} and {a.shape}")
    return np.einsum("knt,tk->nt", z, a)


def _clean(v: float) -> float | None:
    return None if not math.isfinite(v) else round(float(v), 6)


def summarize(metrics: dict[str, np.ndarray], task_names: Sequence[str]) -> dict[str, Any]:
    """JSON-ready block for metrics.json (NaN -> null):
    {"per_task": {task: {accuracy, balanced_accuracy, f1, auroc}}, "mean": {...} (NaN-skipping task
    means), "no_positive_prediction": [tasks], "auroc_undefined": [tasks]}."""
    names = list(task_names)
    per_task = {t: {m: _clean(metrics[m][i]) for m in METRICS} for i, t in enumerate(names)}
    mean = {}
    for m in METRICS:
        v = metrics[m][np.isfinite(metrics[m])]
        mean[m] = _clean(v.mean()) if v.size else None
    return {
        "per_task": per_task,
        "mean": mean,
        "no_positive_prediction": [t for t, flag in zip(names, metrics["no_positive_prediction"]) if flag],
        "auroc_undefined": [t for t, v in zip(names, metrics["auroc"]) if not math.isfinite(v)],
    }


def evaluate_logits(logits: Any, labels: Any, task_names: Sequence[str], *, threshold: float = 0.5) -> dict[str, Any]:
    """``summarize(binary_metrics(logits, labels))``: logits (N, T), labels (N, T)."""
    return summarize(binary_metrics(logits, labels, threshold=threshold), task_names)
