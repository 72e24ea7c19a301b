"""Typed readers of the run directory's JSON files (docs/architecture.md §2), validated once where
they are read: run.json (``RunRecord``), groupings/G.json (``GroupingRecord``) and
groups/G/metrics.json (``MetricsRecord``). A malformed file is a one-line StgError naming the file
and the field, never a traceback further down (a page, a training, an export).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from stg.data.spec import DataSpec
from stg.errors import StgError
from stg.runs.rundir import STATUSES
from stg.train.config import TrainConfig

TASK_KINDS = ("ovr", "attr", "union", "not", "random", "flipped")  # attr: one label column of multi-label data


def _bad(path: Path | str, what: str) -> StgError:
    return StgError(f"{path} is corrupt: {what}")


def _names(value: Any, path: Path | str, key: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _bad(path, f"{key} must be a non-empty list of names")
    if len(set(value)) != len(value):
        raise _bad(path, f"{key} has duplicate names")
    return list(value)


def _int(value: Any, path: Path | str, key: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(path, f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _references(value: Any, path: Path | str, task_names: list[str]) -> dict[str, dict[str, list[str]]]:
    if value is None:
        return {}
    ok = isinstance(value, Mapping) and all(
        isinstance(groups, Mapping) and all(isinstance(g, str) and isinstance(m, list)
                                            and all(isinstance(t, str) for t in m) for g, m in groups.items())
        for groups in value.values())
    if not ok:
        raise _bad(path, "references must be {reference: {group: [task names]}}")
    known = set(task_names)
    for ref, groups in value.items():
        stray = [t for members in groups.values() for t in members if t not in known]
        if stray:
            raise _bad(path, f"reference {ref!r} names unknown task {stray[0]!r}")
    return {r: {g: list(m) for g, m in groups.items()} for r, groups in value.items()}


@dataclass(frozen=True)
class RunRecord:
    """run.json of a data-map run."""

    path: Path
    status: str
    task_names: list[str]
    task_kinds: list[dict[str, str]]  # [] for runs written before kinds were stored
    config: TrainConfig
    data: DataSpec | None
    references: dict[str, dict[str, list[str]]]
    epochs_done: int
    history: list[dict[str, Any]]
    n_train: int | None
    error: str | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, meta: Mapping[str, Any], path: Path | str) -> "RunRecord":
        for key in ("task_names", "config", "status"):
            if key not in meta:
                raise StgError(f"not an stg run directory ({path} has no {key!r})")
        if meta.get("kind", "datamap") != "datamap":
            raise _bad(path, f"kind {meta.get('kind')!r} is not a data-map run")
        if meta["status"] not in STATUSES:
            raise _bad(path, f"status {meta['status']!r} is not one of {', '.join(STATUSES)}")
        names = _names(meta["task_names"], path, "task_names")
        try:
            config = TrainConfig.from_meta(meta["config"])
            data = DataSpec.from_meta(meta["data"]) if meta.get("data") is not None else None
        except StgError as e:
            raise _bad(path, str(e).removeprefix("run.json has ")) from None
        kinds = meta.get("task_kinds") or []
        if not isinstance(kinds, list) or (kinds and (
                len(kinds) != len(names)
                or not all(isinstance(k, Mapping) and k.get("kind") in TASK_KINDS for k in kinds))):
            raise _bad(path, f"task_kinds must list one of {', '.join(TASK_KINDS)} per task")
        history = meta.get("history") or []
        if not isinstance(history, list) or not all(isinstance(h, Mapping) for h in history):
            raise _bad(path, "history must be a list of objects")
        n_train = meta.get("n_train")
        return cls(
            path=Path(path),
            status=meta["status"],
            task_names=names,
            task_kinds=[dict(k) for k in kinds],
            config=config,
            data=data,
            references=_references(meta.get("references"), path, names),
            epochs_done=_int(meta.get("epochs_done", 0), path, "epochs_done"),
            history=[dict(h) for h in history],
            n_train=None if n_train is None else _int(n_train, path, "n_train", 1),
            error=meta.get("error") if isinstance(meta.get("error"), str) else None,
            raw=dict(meta),
        )

    def tasks_of_kind(self, kind: str) -> list[str]:
        """Names of the tasks made as ``kind`` (ovr, union, not, random, flipped)."""
        return [t for t, k in zip(self.task_names, self.task_kinds) if k.get("kind") == kind]

    def complement_pairs(self) -> list[tuple[str, str]]:
        """(task, its complement) for every complement task whose task is in the run."""
        names = set(self.task_names)
        return [(k["of"], t) for t, k in zip(self.task_names, self.task_kinds)
                if k.get("kind") == "not" and k.get("of") in names]


@dataclass(frozen=True)
class GroupingRecord:
    """groupings/G.json: a grouping of the run's tasks by any method.

    membership: (T, k) float64, non-negative: soft memberships (rows sum to 1) for clustering
    methods; 0/1 with possibly several 1s in a row for TAG-style selections (overlapping groups).
    labels: (T,) the group of each task (its highest membership, or the group serving it).
    """

    name: str
    method: str
    k: int
    task_names: list[str]
    membership: np.ndarray
    labels: np.ndarray
    scores: dict[str, dict[str, float]]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], path: Path | str, name: str) -> "GroupingRecord":
        names = _names(obj.get("task_names"), path, "task_names")
        k = obj.get("k")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise _bad(path, f"k must be a positive integer, got {k!r}")
        try:
            w = np.asarray(obj.get("membership"), dtype=np.float64)
        except (TypeError, ValueError):
            raise _bad(path, "membership must be a (T, k) matrix of numbers") from None
        if w.shape != (len(names), k) or not np.isfinite(w).all() or (w < 0).any():
            raise _bad(path, f"membership must be a ({len(names)}, {k}) matrix of non-negative numbers")
        labels = obj.get("labels")
        if labels is None:
            labels_arr = w.argmax(1)
        else:
            if not isinstance(labels, list) or len(labels) != len(names) or not all(
                    isinstance(v, int) and not isinstance(v, bool) and 0 <= v < k for v in labels):
                raise _bad(path, f"labels must be {len(names)} integers in [0, {k})")
            labels_arr = np.asarray(labels, dtype=np.int64)
        scores = obj.get("scores") or {}
        if not isinstance(scores, Mapping) or not all(isinstance(v, Mapping) for v in scores.values()):
            raise _bad(path, "scores must be {reference: {score: value}}")
        method = obj.get("method", "")
        if not isinstance(method, str):
            raise _bad(path, f"method must be a name, got {method!r}")
        return cls(name, method, k, names, w, labels_arr, {r: dict(s) for r, s in scores.items()}, dict(obj))


@dataclass(frozen=True)
class MetricsRecord:
    """groups/G/metrics.json: test metrics of a grouping's specialists and its baselines.

    models: {model name: {"per_task": {task: {metric: value or None}}, "mean": {metric: value or None}}}
    """

    grouping: str
    task_names: list[str]
    models: dict[str, dict[str, Any]]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], path: Path | str) -> "MetricsRecord":
        models = obj.get("models")
        if not isinstance(models, Mapping) or not models:
            raise _bad(path, "models must be a non-empty object")
        names = _names(obj.get("task_names"), path, "task_names")
        for model, block in models.items():
            if not isinstance(block, Mapping) or not isinstance(block.get("per_task"), Mapping) \
                    or not isinstance(block.get("mean"), Mapping):
                raise _bad(path, f"model {model!r} needs per_task and mean")
            for task, values in block["per_task"].items():
                if task not in names or not isinstance(values, Mapping) or not all(
                        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values.values()):
                    raise _bad(path, f"model {model!r} has a malformed entry for task {task!r}")
        return cls(str(obj.get("grouping", "")), names, {m: dict(b) for m, b in models.items()}, dict(obj))
