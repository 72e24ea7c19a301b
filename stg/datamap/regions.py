"""Cartography regions of a data map, selections of samples, and the tables the explorer exports.

Dataset Cartography (Swayamdipta et al., 2020) reads a task's data map (x = variability, y =
confidence, one point per training sample) in three regions:

- **easy-to-learn**: high confidence, low variability (the model is right from the start);
- **ambiguous**: high variability (the model keeps changing its mind);
- **hard-to-learn**: low confidence, low variability (consistently wrong: often mislabelled).

The paper ranks samples and keeps the top 33% of each ranking (most ambiguous = highest
variability, easy = highest confidence, hard = lowest confidence). A map drawn as a partition
needs thresholds; ``classify`` assigns each (task, sample) exactly one region, in this order:

    ambiguous   variability >= v
    easy        variability <  v  and  confidence >= c_high
    hard        variability <  v  and  confidence <= c_low
    other       the rest (c_low < confidence < c_high, low variability)
    missing     the sample has no label for the task (NaN in the data map)

``Thresholds.fixed`` gives one (c_high, c_low, v) for every task (defaults 0.75, 0.25, 0.2);
``Thresholds.quantiles(confidence, variability, q=1/3)`` gives each task the paper's cut-offs: v
= its (1 - q) variability quantile (top third most ambiguous), c_high = its (1 - q) confidence
quantile, c_low = its q confidence quantile. Missing entries (NaN) are left out of every quantile
and every count.

Nothing here imports Streamlit; the dashboard's explorer calls these functions.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stg.errors import StgError
from stg.runs.export import csv_text

REGIONS = ("easy", "ambiguous", "hard", "other")
REGION_LABELS = {"easy": "easy-to-learn", "ambiguous": "ambiguous", "hard": "hard-to-learn", "other": "other",
                 "missing": "no label"}
MISSING = -1  # region code of a (task, sample) pair without a label
EASY, AMBIGUOUS, HARD, OTHER = range(4)
DEFAULT_CONFIDENCE_HIGH = 0.75
DEFAULT_CONFIDENCE_LOW = 0.25
DEFAULT_VARIABILITY = 0.2
PAPER_QUANTILE = 1 / 3


@dataclass(frozen=True)
class Thresholds:
    """Region cut-offs, each a float (every task) or a (T,) array (one per task).

    confidence_high: easy-to-learn at or above it; confidence_low: hard-to-learn at or below it;
    variability: ambiguous at or above it.
    """

    confidence_high: Any = DEFAULT_CONFIDENCE_HIGH
    confidence_low: Any = DEFAULT_CONFIDENCE_LOW
    variability: Any = DEFAULT_VARIABILITY
    how: str = "fixed"

    @classmethod
    def fixed(cls, confidence_high: float = DEFAULT_CONFIDENCE_HIGH, confidence_low: float = DEFAULT_CONFIDENCE_LOW,
              variability: float = DEFAULT_VARIABILITY) -> "Thresholds":
        """One set of cut-offs for every task; StgError unless 0 <= c_low <= c_high <= 1 and 0 <= v <= 0.5."""
        for name, v, hi in (("confidence high", confidence_high, 1.0), ("confidence low", confidence_low, 1.0),
                            ("variability", variability, 0.5)):
            if not (isinstance(v, (int, float)) and 0.0 <= float(v) <= hi):
                raise StgError(f"{name} threshold must be between 0 and {hi}, got {v!r}")
        if confidence_low > confidence_high:
            raise StgError(f"confidence low ({confidence_low}) must not exceed confidence high ({confidence_high})")
        return cls(float(confidence_high), float(confidence_low), float(variability), "fixed")

    @classmethod
    def quantiles(cls, confidence: np.ndarray, variability: np.ndarray, q: float = PAPER_QUANTILE) -> "Thresholds":
        """Per-task cut-offs at quantile ``q`` (the paper's top / bottom third for q = 1/3).

        confidence, variability: (T, N) with NaN for missing labels -> thresholds of shape (T,).
        A task without any labelled sample gets NaN cut-offs (all its samples are missing anyway).
        """
        if not 0.0 < q < 0.5:
            raise StgError(f"quantile must be between 0 and 0.5, got {q}")
        conf, var = _pair(confidence, variability)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN cut-offs, by design
            c_high = np.nanquantile(conf, 1.0 - q, axis=1)
            c_low = np.nanquantile(conf, q, axis=1)
            v = np.nanquantile(var, 1.0 - q, axis=1)
        return cls(c_high, c_low, v, f"quantile {q:.3g}")

    def per_task(self, n_tasks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(c_high, c_low, v), each float64 (T,)."""
        out = []
        for value in (self.confidence_high, self.confidence_low, self.variability):
            a = np.asarray(value, dtype=np.float64)
            out.append(np.full(n_tasks, float(a)) if a.ndim == 0 else a.reshape(-1))
        if any(len(a) != n_tasks for a in out):
            raise StgError(f"thresholds hold {len(out[0])} tasks, the data map {n_tasks}")
        return out[0], out[1], out[2]

    def describe(self, task: int | None = None) -> str:
        """One line: the rule and its numbers (for ``task``'s cut-offs when they are per task)."""
        c_high, c_low, v = (np.asarray(x, dtype=np.float64) for x in
                            (self.confidence_high, self.confidence_low, self.variability))
        if c_high.ndim and task is not None:
            c_high, c_low, v = c_high[task], c_low[task], v[task]
        if c_high.ndim:
            return (f"per-task {self.how} cut-offs: ambiguous = top third by variability, easy = top third by "
                    "confidence, hard = bottom third by confidence")
        return (f"ambiguous: variability >= {float(v):.3f}; easy-to-learn: confidence >= {float(c_high):.3f}; "
                f"hard-to-learn: confidence <= {float(c_low):.3f} (both below that variability; {self.how})")


def _pair(confidence: np.ndarray, variability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=np.float32)
    var = np.asarray(variability, dtype=np.float32)
    if conf.ndim == 1:
        conf, var = conf[None], var.reshape(1, -1)
    if conf.shape != var.shape or conf.ndim != 2:
        raise StgError(f"confidence and variability must share a (T, N) shape, got {conf.shape} and {var.shape}")
    return conf, var


def classify(confidence: np.ndarray, variability: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """Region code of every (task, sample): (T, N) int8 in {EASY, AMBIGUOUS, HARD, OTHER, MISSING}
    (see the module docstring for the rule). A (N,) pair of inputs is one task: (1, N)."""
    conf, var = _pair(confidence, variability)
    c_high, c_low, v = (a[:, None] for a in thresholds.per_task(conf.shape[0]))
    codes = np.full(conf.shape, OTHER, dtype=np.int8)
    low_var = var < v
    codes[low_var & (conf <= c_low)] = HARD
    codes[low_var & (conf >= c_high)] = EASY  # c_low == c_high: a point on the line counts as easy
    codes[~low_var] = AMBIGUOUS
    codes[~(np.isfinite(conf) & np.isfinite(var))] = MISSING
    return codes


def region_counts(codes: np.ndarray) -> np.ndarray:
    """Samples per task and region: codes (T, N) -> (T, 4) int64 in the order of REGIONS
    (missing pairs are not counted)."""
    codes = np.asarray(codes)
    n_tasks = codes.shape[0]
    ok = codes >= 0
    flat = (np.arange(n_tasks)[:, None] * len(REGIONS) + np.where(ok, codes, 0))[ok]
    return np.bincount(flat, minlength=n_tasks * len(REGIONS)).reshape(n_tasks, len(REGIONS)).astype(np.int64)


def counts_table(codes: np.ndarray, task_names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per task: task, easy-to-learn, ambiguous, hard-to-learn, other, labelled, and the
    share of each region among the task's labelled samples (in %, one decimal)."""
    counts = region_counts(codes)
    rows = []
    for name, row in zip(task_names, counts):
        total = int(row.sum())
        out: dict[str, Any] = {"task": str(name)}
        out.update({REGION_LABELS[r]: int(c) for r, c in zip(REGIONS, row)})
        out["labelled"] = total
        out.update({f"% {REGION_LABELS[r]}": round(100.0 * int(c) / total, 1) if total else None
                    for r, c in zip(REGIONS, row)})
        rows.append(out)
    return rows


def ranked(confidence: np.ndarray, variability: np.ndarray, kind: str, n: int) -> np.ndarray:
    """Rows of one task's ``n`` most extreme samples, most extreme first: (<= n,) int64.

    kind "hard": lowest confidence first (ties: lower variability first, i.e. consistently wrong);
    "ambiguous": highest variability first (ties: confidence nearest 0.5 first);
    "easy": highest confidence first (ties: lower variability first).
    Missing (NaN) samples are never returned.
    """
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    var = np.asarray(variability, dtype=np.float64).ravel()
    ok = np.flatnonzero(np.isfinite(conf) & np.isfinite(var))
    c, v = conf[ok], var[ok]
    if kind == "hard":
        order = np.lexsort((v, c))
    elif kind == "ambiguous":
        order = np.lexsort((np.abs(c - 0.5), -v))
    elif kind == "easy":
        order = np.lexsort((v, -c))
    else:
        raise StgError(f"unknown ranking {kind!r}: use hard, ambiguous or easy")
    return ok[order[: max(0, int(n))]].astype(np.int64)


def selected_rows(points: Iterable[Mapping[str, Any]], n_samples: int) -> np.ndarray:
    """Sample rows of a Plotly selection: sorted unique (K,) int64.

    points: the ``selection["points"]`` of a Streamlit Plotly event; each point carries its
    sample row as the first entry of ``customdata`` (a list, or the {"0": row, ...} object a
    browser sends) or as ``customdata`` itself (a number). Points without customdata (a region outline, a highlight trace) are skipped; a row
    outside [0, n_samples) is an StgError (the selection belongs to another run).
    """
    rows = []
    for p in points:
        cd = p.get("customdata") if isinstance(p, Mapping) else None
        if cd is None:
            continue
        if isinstance(cd, Mapping):  # what a browser sends: Plotly's array as {"0": row, "1": ...}
            value = cd.get("0", cd.get(0))
        else:
            value = cd[0] if isinstance(cd, (list, tuple)) else cd
        try:
            rows.append(int(value))
        except (TypeError, ValueError):
            continue
    out = np.unique(np.asarray(rows, dtype=np.int64))
    if out.size and (out[0] < 0 or out[-1] >= n_samples):
        raise StgError(f"the selection holds sample rows outside this run's {n_samples} samples: select again")
    return out


def sample_table(
    rows: np.ndarray,
    *,
    task: int,
    dataset_index: np.ndarray,
    classes: np.ndarray,
    class_names: Sequence[str],
    labels: np.ndarray,
    datamap: Mapping[str, np.ndarray],
    codes: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One record per selected sample of one task, in ``rows`` order.

    rows: (K,) sample rows (the data maps' column order); dataset_index: (N,) the row of each
    sample in the dataset's training arrays; classes: (N,) class ids; labels: (N, T) with 0/1, or
    NaN / a negative value where the label is missing; datamap: {confidence, variability,
    correctness} (T, N); codes: (T, N) regions (from ``classify``) or None.
    Fields: row, dataset_index, class, label (0, 1 or None), confidence, variability, correctness
    (None when missing), region.
    """
    rows = np.asarray(rows, dtype=np.int64)
    lab = np.asarray(labels, dtype=np.float64)
    out = []
    for r in rows.tolist():
        cls = int(classes[r])
        y = lab[r, task] if lab.ndim == 2 else lab[r]
        rec: dict[str, Any] = {
            "row": r,
            "dataset_index": int(dataset_index[r]),
            "class": str(class_names[cls]) if 0 <= cls < len(class_names) else str(cls),
            "label": int(y) if np.isfinite(y) and y >= 0 else None,
        }
        for key in ("confidence", "variability", "correctness"):
            v = float(datamap[key][task, r])
            rec[key] = round(v, 6) if np.isfinite(v) else None
        if codes is not None:
            c = int(codes[task, r])
            rec["region"] = REGION_LABELS["missing"] if c < 0 else REGION_LABELS[REGIONS[c]]
        out.append(rec)
    return out


def records_text(records: Sequence[Mapping[str, Any]], fmt: str, *, meta: Mapping[str, Any] | None = None) -> str:
    """Selected samples as CSV (a header, one line per record; formula-like strings quoted) or JSON
    ({"meta": ..., "samples": records}, plus "dataset_index": the indices alone)."""
    if fmt == "csv":
        return csv_text(records, list(records[0]) if records else ["row", "dataset_index"])
    if fmt == "json":
        doc = {"meta": dict(meta or {}), "dataset_index": [int(r["dataset_index"]) for r in records],
               "samples": list(records)}
        return json.dumps(doc, indent=2) + "\n"
    raise StgError(f"unknown format {fmt!r}: use csv or json")


def epoch_note(epoch: int, variability: np.ndarray) -> str | None:
    """Why a map is flat, or None: after one epoch each sample has one observation, so its
    variability (the spread across epochs) is 0 and the map is a line on the left edge."""
    var = np.asarray(variability)
    finite = var[np.isfinite(var)]
    if finite.size and float(np.abs(finite).max()) == 0.0:
        if epoch <= 1:
            return ("Epoch 1: each sample has one observation so far, so its variability (the spread of its "
                    "confidence across epochs) is 0 and every point sits on the left edge. The map spreads out "
                    "from epoch 2; the regions are meaningful after a few epochs.")
        return ("Every variability is 0: with ddof 1 the spread needs two observations, so the map spreads out "
                "one epoch later.")
    return None
