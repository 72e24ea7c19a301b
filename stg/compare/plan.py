"""What ``stg compare`` trains: every grouping method and feature variant the run allows, plus the
controls, each as the task weights of its models and the rule that turns their logits into each
task's prediction.

Candidates (``Candidate.name``):

- ``stg-mtl`` (STG-MTL: fuzzy k-means on the paper's raw data-map features) and
  ``stg-mtl/<variant>`` for every other feature variant the run has
  (``stg.grouping.features.FEATURE_VARIANTS``: centred, rank, and tag-rows / cs-rows when the run
  recorded that affinity); weights = combine = the fuzzy membership (T, k), as ``stg train-groups``.
- ``tag`` / ``cs``: TAG's group selection on the recorded affinity (when recorded); weights = 1 for
  every group a task belongs to, combine = one_hot(the group that serves it).
- controls: ``mtl`` (one model, every weight 1), ``stl`` (one model per task), ``random`` (a random
  hard grouping with the cluster sizes of ``stg-mtl``, drawn anew for every seed).
- ``ref/<name>``: each reference grouping of the dataset, hard; tasks it does not list share one
  extra group.

Each candidate carries its hard labels (for agreement, ARI) and the wall-clock cost of producing it:
``training_s`` (the data-map run's training, without the affinity probes), ``probe_s`` (the probes of
the affinity it reads) and ``selection_s`` (measured here: features, clustering / selection).
Controls and references cost 0.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from stg.errors import StgError
from stg.grouping.features import FEATURE_VARIANTS, available_variants
from stg.grouping.make import make_grouping, method_names
from stg.grouping.reference import reference_labels
from stg.runs.rundir import RunDir
from stg.specialists.baselines import parse_names

CONTROLS = ("mtl", "stl", "random")
STG_MTL = "fuzzy-kmeans"  # the paper's clustering
SELECTIONS = ("tag", "cs")  # TAG's selection on a recorded affinity


@dataclass(frozen=True)
class Candidate:
    """One way of training the T tasks. weights (T, k): task weights of the k models' losses;
    combine (T, k): task t's prediction is sum_c combine[t, c] * z_c[t]; labels (T,): the hard
    partition used for agreement (ARI); cost: seconds to produce the grouping."""

    name: str
    kind: str  # method | control | reference
    weights: np.ndarray
    combine: np.ndarray
    labels: np.ndarray
    cost: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.weights.shape[1])

    @property
    def total_cost_s(self) -> float:
        return float(sum(self.cost.values()))

    def to_meta(self, task_names: Sequence[str]) -> dict[str, Any]:
        groups = [[task_names[i] for i in np.flatnonzero(self.labels == c)] for c in range(int(self.labels.max()) + 1)]
        return {"name": self.name, "kind": self.kind, "k": self.k, "weights": self.weights.tolist(),
                "combine": self.combine.tolist(), "labels": [int(v) for v in self.labels],
                "groups": [g for g in groups if g], "cost": self.cost, "total_cost_s": round(self.total_cost_s, 4),
                "detail": self.detail}

    @classmethod
    def from_meta(cls, d: dict[str, Any]) -> "Candidate":
        return cls(d["name"], d["kind"], np.asarray(d["weights"], dtype=np.float64),
                   np.asarray(d["combine"], dtype=np.float64), np.asarray(d["labels"], dtype=np.int64),
                   dict(d.get("cost") or {}), dict(d.get("detail") or {}))


def one_hot(labels: np.ndarray, k: int | None = None) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    return np.eye(int(labels.max()) + 1 if k is None else k)[labels]


def random_labels(labels: np.ndarray, seed: int) -> np.ndarray:
    """A random hard grouping with the cluster sizes of ``labels`` (T,): a seeded shuffle (the
    random baseline of ``stg train-groups``)."""
    from stg.specialists.grouped import random_hard_grouping

    return random_hard_grouping(np.asarray(labels, dtype=np.int64), seed=seed)


def run_costs(meta: dict[str, Any]) -> dict[str, float]:
    """Seconds of the data-map run from run.json's history: ``training_s`` (all epochs, minus the
    affinity probes) and ``probe_<method>_s`` (each affinity's probes)."""
    history = meta.get("history") or []
    total = float(sum(float(r.get("seconds", 0.0)) for r in history))
    probes = {m: float(sum(float(r.get(f"{m}_seconds", 0.0)) for r in history)) for m in SELECTIONS}
    out = {"training_s": round(total - sum(probes.values()), 3)}
    out.update({f"probe_{m}_s": round(v, 3) for m, v in probes.items()})
    return out


def _from_grouping(name: str, g: dict[str, Any], cost: dict[str, float]) -> Candidate:
    w = np.asarray(g["membership"], dtype=np.float64)
    labels = np.asarray(g["labels"], dtype=np.int64)
    combine = one_hot(labels, w.shape[1]) if "serving" in g else w
    detail = {key: g[key] for key in ("scores", "kmeans_cost", "stability", "features", "objective") if key in g}
    return Candidate(name, "method", w, combine, labels, cost, detail)


def method_candidates(run: RunDir, k: int, *, m: float = 1.07, seed: int = 0,
                      features: Sequence[str] | None = None) -> list[Candidate]:
    """STG-MTL for every feature variant the run has (or those of ``features`` it has), and TAG /
    cosine selections when recorded."""
    meta = run.read()
    costs = run_costs(meta)
    have = available_variants(run)
    if features is not None:
        unknown = [f for f in features if f not in have]
        if unknown:
            raise StgError(f"run {run.path} cannot give task features {unknown[0]!r}: it has {', '.join(have)}")
    out = []
    for variant in (have if features is None else [v for v in have if v in features]):
        t0 = time.perf_counter()
        g = make_grouping(run, k=k, m=m, method=STG_MTL, seed=seed, save=False, features=variant)
        spent = time.perf_counter() - t0 - float((g.get("stability") or {}).get("seconds", 0.0))
        cost = {"training_s": costs["training_s"], "selection_s": round(spent, 4)}
        affinity = FEATURE_VARIANTS[variant].affinity
        if affinity:
            cost["probe_s"] = costs[f"probe_{affinity}_s"]
        out.append(_from_grouping("stg-mtl" if variant == "raw" else f"stg-mtl/{variant}", g, cost))
    names = method_names()
    for method in SELECTIONS:
        if method not in names or f"{method}-rows" not in have:
            continue
        t0 = time.perf_counter()
        g = make_grouping(run, k=k, method=method, seed=seed, save=False)
        cost = {"training_s": costs["training_s"], "probe_s": costs[f"probe_{method}_s"],
                "selection_s": round(time.perf_counter() - t0, 4)}
        out.append(_from_grouping(method, g, cost))
    return out


def control_candidates(task_names: Sequence[str], sizes_from: np.ndarray, controls: Sequence[str]) -> list[Candidate]:
    """mtl, stl, random (seed 0's draw; ``random_labels(labels, seed)`` for the others)."""
    n = len(task_names)
    made = {
        "mtl": lambda: Candidate("mtl", "control", np.ones((n, 1)), np.ones((n, 1)), np.zeros(n, dtype=np.int64)),
        "stl": lambda: Candidate("stl", "control", np.eye(n), np.eye(n), np.arange(n, dtype=np.int64)),
        "random": lambda: _random(sizes_from, 0),
    }
    return [made[c]() for c in controls]


def _random(labels: np.ndarray, seed: int) -> Candidate:
    r = random_labels(labels, seed)
    w = one_hot(r, int(labels.max()) + 1)
    return Candidate("random", "control", w, w, r, {}, {"seed": seed, "sizes_from": [int(v) for v in labels]})


def reference_candidates(task_names: Sequence[str], references: dict[str, Any]) -> list[Candidate]:
    """Each reference grouping, hard; tasks it does not list share one extra group."""
    out = []
    for ref, groups in (references or {}).items():
        labels = reference_labels(groups, task_names, missing="ignore")
        if (labels < 0).any():
            labels = np.where(labels < 0, labels.max() + 1, labels)
        _, labels = np.unique(labels, return_inverse=True)  # drop empty groups
        w = one_hot(labels)
        out.append(Candidate(f"ref/{ref}", "reference", w, w, labels.astype(np.int64), {},
                             {"unlisted_tasks": [t for t, v in zip(task_names, reference_labels(
                                 groups, task_names, missing="ignore")) if v < 0]}))
    return out


def check_controls(controls: Sequence[str] | str) -> list[str]:
    """The controls as ``parse_names`` reads them; mtl must be one (every gain is against it)."""
    out = parse_names(controls, CONTROLS, "control")
    if "mtl" not in out:
        raise StgError("the comparison needs the mtl control: every gain is measured against it")
    return out


def build_candidates(run: RunDir, k: int, *, controls: Sequence[str] = CONTROLS, m: float = 1.07,
                     seed: int = 0, features: Sequence[str] | None = None) -> list[Candidate]:
    """Every candidate of the comparison, methods first, then controls, then references."""
    meta = run.read()
    task_names = list(meta["task_names"])
    methods = method_candidates(run, k, m=m, seed=seed, features=features)
    sizes = methods[0].labels if methods else np.arange(len(task_names)) % k
    return methods + control_candidates(task_names, sizes, check_controls(controls)) + \
        reference_candidates(task_names, meta.get("references") or {})


def candidates_for_seed(candidates: Sequence[Candidate], seed: int) -> list[Candidate]:
    """The candidates as trained with compare seed ``seed``: the random control redrawn."""
    out = []
    for c in candidates:
        if c.name == "random":
            c = _random(np.asarray(c.detail.get("sizes_from", c.labels), dtype=np.int64), seed)
        out.append(c)
    return out


def training_key(weights: np.ndarray, combine: np.ndarray, seed: int, ident: dict[str, Any]) -> str:
    """A name for one training, from what determines its result: identical trainings (two methods
    that give the same grouping) share it and are trained once."""
    blob = json.dumps({"w": np.round(weights, 12).tolist(), "a": np.round(combine, 12).tolist(), "seed": seed,
                       **ident}, sort_keys=True)
    return "t" + hashlib.sha256(blob.encode()).hexdigest()[:16]
