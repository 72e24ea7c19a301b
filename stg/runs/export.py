"""Export a grouping as JSON, CSV or YAML: one row per task.

Row: task, cluster (argmax), membership_0 .. membership_{k-1}, then one column per reference
with the task's group in it (empty / null when the task is in none of its groups).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from typing import Any

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
        buf = io.StringIO()
        fields = list(rows[0]) if rows else ["task", "cluster"]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: ("" if v is None else v) for key, v in row.items()})
        return buf.getvalue()
    doc = {"grouping": {key: v for key, v in grouping.items() if key not in _META_SKIP}, "tasks": rows}
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    import yaml

    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
