"""Export a grouping as JSON, CSV or YAML: one row per task.

Row: task, cluster (argmax), membership_0 .. membership_{k-1}, then one column per reference
with the task's group in it (empty / null when the task is in none of its groups).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stg.errors import StgError

FORMATS = ("json", "csv", "yaml")
_META_SKIP = ("membership", "labels", "task_names")


def task_rows(grouping: Mapping[str, Any], references: Mapping[str, Mapping[str, list[str]]]) -> list[dict[str, Any]]:
    """One dict per task (in the grouping's task order), see the module docstring."""
    names = list(grouping["task_names"])
    membership = grouping["membership"]
    labels = grouping["labels"]
    k = int(grouping["k"])
    if len(membership) != len(names) or len(labels) != len(names):
        raise StgError("grouping is corrupt: membership/labels do not match task_names")
    lookup = {ref: {t: g for g, members in groups.items() for t in members} for ref, groups in references.items()}
    rows = []
    for i, name in enumerate(names):
        row: dict[str, Any] = {"task": name, "cluster": int(labels[i])}
        row.update({f"membership_{c}": float(membership[i][c]) for c in range(k)})
        row.update({_ref_column(ref): lookup[ref].get(name) for ref in references})
        rows.append(row)
    return rows


def _ref_column(ref: str) -> str:
    """A reference's column name; prefixed when it would clash with a fixed column."""
    return f"ref_{ref}" if ref in ("task", "cluster") or ref.startswith(("membership_", "ref_")) else ref


def export_grouping(grouping: Mapping[str, Any], references: Mapping[str, Mapping[str, list[str]]], *, fmt: str) -> str:
    """Render a grouping (as written by make_grouping) as text in ``fmt`` (json | csv | yaml).

    json / yaml: {"grouping": metadata (everything but the per-task arrays), "tasks": rows}.
    csv: a header then one line per task.
    """
    if fmt not in FORMATS:
        raise StgError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    rows = task_rows(grouping, references)
    if fmt == "csv":
        return csv_text(rows, list(rows[0]) if rows else ["task", "cluster"])
    doc = {"grouping": {key: v for key, v in grouping.items() if key not in _META_SKIP}, "tasks": rows}
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    import yaml

    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


# -- data maps and grouped-training metrics ---------------------------------------------------------
def export_filename(run_name: str, what: str, ext: str, *, epoch: int | None = None) -> str:
    """One naming scheme for every download: RUN_WHAT[_epoch_NNN].EXT (e.g. demo_datamap_epoch_005.npz
    and demo_datamap_epoch_005.csv name the same snapshot)."""
    stem = f"{run_name}_{what}" + (f"_epoch_{epoch:03d}" if epoch is not None else "")
    return f"{stem}.{ext}"


def datamap_npz(datamap: Mapping[str, np.ndarray], task_names: list[str], sample_index: np.ndarray, *,
                epoch: int, classes: np.ndarray | None = None) -> bytes:
    """A self-describing data-map snapshot: confidence, variability, correctness float32 (T, N),
    task_names (T,) str, sample_index (N,) int64 (each column's row in the dataset's training
    arrays), epoch () int64, and classes (N,) int64 when given. Loads with allow_pickle=False."""
    conf = np.asarray(datamap["confidence"], dtype=np.float32)
    if conf.shape != (len(task_names), len(sample_index)):
        raise StgError(f"data map is {conf.shape}, expected ({len(task_names)}, {len(sample_index)})")
    arrays: dict[str, np.ndarray] = {k: np.asarray(datamap[k], dtype=np.float32)
                                     for k in ("confidence", "variability", "correctness")}
    arrays["task_names"] = np.asarray([str(t) for t in task_names], dtype=np.str_)
    arrays["sample_index"] = np.asarray(sample_index, dtype=np.int64)
    arrays["epoch"] = np.asarray(int(epoch), dtype=np.int64)
    if classes is not None:
        arrays["classes"] = np.asarray(classes, dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def datamap_csv(datamap: Mapping[str, np.ndarray], task_names: list[str], tasks: list[str],
                sample_index: np.ndarray) -> str:
    """Long-format CSV of the chosen tasks: task, sample (dataset index), confidence, variability,
    correctness; a missing label (NaN) is an empty cell. Task names are quoted as CSV needs and
    never start a formula."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["task", "sample", "confidence", "variability", "correctness"])
    index = np.asarray(sample_index, dtype=np.int64)
    for t in tasks:
        i = task_names.index(t)
        cols = [np.asarray(datamap[k][i], dtype=np.float64) for k in ("confidence", "variability", "correctness")]
        name = safe_cell(t)
        for j in range(len(index)):
            writer.writerow([name, int(index[j]), *("" if not np.isfinite(c[j]) else f"{c[j]:.6f}" for c in cols)])
    return buf.getvalue()


def metrics_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Grouped-training metrics.json as rows: model, task, then one column per metric."""
    rows = []
    for model, block in (metrics.get("models") or {}).items():
        for task, values in (block.get("per_task") or {}).items():
            rows.append({"model": model, "task": task, **{k: values.get(k) for k in sorted(values)}})
    return rows


def export_metrics(metrics: Mapping[str, Any], *, fmt: str) -> str:
    """Grouped-training results as json (the whole metrics.json) or csv (``metrics_rows``)."""
    if fmt == "json":
        return json.dumps(metrics, indent=2) + "\n"
    if fmt != "csv":
        raise StgError(f"unknown export format {fmt!r}: use json or csv")
    rows = metrics_rows(metrics)
    return csv_text(rows, list(dict.fromkeys(k for r in rows for k in r)) or ["model", "task"])


def csv_text(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str:
    """``rows`` as CSV: a header of ``fields``, then one line per row, each cell ``safe_cell``
    (a missing or None cell empty)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: safe_cell(r.get(k)) for k in fields})
    return buf.getvalue()


def safe_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run as a formula (a string starting with =, +, -, @, tab or
    carriage return gets a leading quote); None is an empty cell."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value
