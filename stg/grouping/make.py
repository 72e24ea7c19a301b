"""Group the tasks of a run -> scores against every reference -> RUN/groupings/G.json.

This is what ``stg group`` and the dashboard's grouping page call. Grouping methods are plug-ins
in one registry (``GROUPING_METHODS``), each reading what it needs from the run directory:
STG-MTL's clusterings of the data maps (``fuzzy-kmeans``, the paper's; ``fcm``; ``kmeans``) are
registered here; TAG's and gradient cosine's selections from the recorded affinities (``tag``,
``cs``) in ``stg.affinity.grouping``. Every method writes G.json in one schema (membership (T, k),
labels (T,), scores), so training, comparison, export and the app treat them alike.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from datetime import datetime, timezone
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from stg.errors import StgError
from stg.grouping.features import check_projection_dim, check_stats, check_variant, resolve_epochs, task_coordinates
from stg.grouping.fuzzy import FUZZY_METHODS, check_cluster_args, cluster_tasks, default_n_init
from stg.grouping.reference import compare
from stg.runs.rundir import RunDir, check_name

FEATURE_STATS = ("confidence", "variability")
STABILITY_SEEDS = 3  # G.json's stability: mean pairwise ARI of the partitions of seeds seed .. seed + 2


@dataclass(frozen=True)
class GroupingMethod:
    """A grouping method. ``group(run, task_names, *, k, m, seed, epochs, projection_dim, n_init, features)``
    returns its part of G.json: ``membership`` (T, k') with k' <= k, ``labels`` (T,) ints, and any
    extra fields; it may ignore options it has no use for. ``fuzzy``: whether m applies."""

    name: str
    group: Callable[..., dict[str, Any]]
    fuzzy: bool = False
    help: str = ""


GROUPING_METHODS: dict[str, GroupingMethod] = {}


def register_method(method: GroupingMethod) -> GroupingMethod:
    GROUPING_METHODS[method.name] = method
    return method


def method_names() -> list[str]:
    """Every registered grouping method (the data-map clusterings, then TAG's)."""
    import stg.affinity.grouping  # noqa: F401  (registers tag and cs)

    return list(GROUPING_METHODS)


def _cluster_datamaps(run: RunDir, task_names: list[str], *, k: int, m: float, method: str, seed: int,
                      epochs: str, projection_dim: int | None, n_init: int, features: str = "raw") -> dict[str, Any]:
    """STG-MTL: cluster the tasks' features (docs/architecture.md §4; ``features``: a variant of
    ``stg.grouping.features.FEATURE_VARIANTS``, the paper's ``raw`` by default). Adds the k-means
    cost of the chosen partition and its stability: the mean pairwise ARI of the partitions that
    seeds seed .. seed + STABILITY_SEEDS - 1 give (1 = every seed gives the same grouping)."""
    from stg.grouping.quality import kmeans_cost, stability

    variant = check_variant(features)
    stats = check_stats(FEATURE_STATS)
    if variant.block is not None:
        available = run.datamap_epochs()
        if not available:
            raise StgError(f"run {run.path} has no data map yet: run `stg datamap --out {run.path}` first")
        epoch_list = resolve_epochs(epochs, available)
    else:  # the affinity's epochs (all of them for "last", as TAG averages over the whole run)
        from stg.affinity.files import affinity_epochs

        have = affinity_epochs(run.path, variant.affinity)
        if not have:
            raise StgError(f"run {run.path} has no {variant.affinity} affinity for --features {features}: record it "
                           f"with `stg datamap ... --affinity {variant.affinity}`")
        epoch_list = resolve_epochs("all" if epochs == "last" else epochs, have)
    coords = task_coordinates(run, epochs=epochs, stats=stats, projection_dim=projection_dim, seed=seed,
                              features=features)
    result = cluster_tasks(coords, k=k, m=m, method=method, seed=seed, n_init=n_init)
    t0 = time.perf_counter()
    stab = stability(coords, k=k, m=m, method=method, seeds=range(seed, seed + STABILITY_SEEDS), n_init=n_init)
    stab_seconds = time.perf_counter() - t0
    return {
        "membership": result.membership,
        "labels": result.labels,
        "features": {
            "variant": features,
            "formula": variant.formula,
            "epochs": epoch_list,
            "stats": list(stats) if variant.block is not None else None,
            "projection_dim": projection_dim,
            "scaling": "none" if features == "raw" else features,
            "distance": "euclidean",
        },
        "n_iter": result.n_iter,
        "kmeans_cost": kmeans_cost(coords, result.labels),
        "stability": {"seeds": [int(v) for v in stab["seeds"]], "mean_ari": round(stab["mean_ari"], 6),
                      "same_partition": bool(np.all(stab["pairwise_ari"] > 1 - 1e-12)),
                      "kmeans_costs": [kmeans_cost(coords, lab) for lab in stab["labels"]],
                      "seconds": round(stab_seconds, 4)},
    }


_FEATURE_METHODS = ("fuzzy-kmeans", "fcm", "kmeans")  # the methods that cluster task features
for _name, _help in (("fuzzy-kmeans", "k-means on the data maps, then fuzzy membership (STG-MTL, the paper's)"),
                     ("fcm", "fuzzy c-means on the data maps"),
                     ("kmeans", "hard k-means on the data maps")):
    register_method(GroupingMethod(
        _name, lambda run, names, *, _m=_name, **o: _cluster_datamaps(run, names, method=_m, **o),
        fuzzy=_name in FUZZY_METHODS, help=_help))


def default_name(*, method: str, k: int, m: float, seed: int = 0, epochs: str = "last",
                 projection_dim: int | None = None, **settings: Any) -> str:
    """A name that differs whenever the result may differ: ``fuzzy-kmeans-k20-m1.07`` for the
    defaults; ``-s<seed>``, ``-p<dim>``, ``-e<epochs>`` when not default. m is written in full
    (the shortest text that reads back as the same float: 1.0700001 is not 1.07). Any other
    setting passed in ``settings`` (not None), and any name longer than 64 characters, adds
    ``-h<8 hex>``: a hash of every setting, so two different settings never share a name."""
    name = f"{method}-k{k}" + (f"-m{float(m)!r}" if method in FUZZY_METHODS else "")
    if seed:
        name += f"-s{seed}"
    if projection_dim:
        name += f"-p{projection_dim}"
    if epochs != "last":
        name += f"-e{epochs}"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    extra = {key: value for key, value in settings.items() if value is not None}
    if extra or len(name) > 64:
        every = {"method": method, "k": k, "m": float(m) if method in FUZZY_METHODS else None, "seed": seed,
                 "epochs": epochs, "projection_dim": projection_dim, **extra}
        digest = hashlib.sha256(json.dumps(every, sort_keys=True, default=str).encode()).hexdigest()[:8]
        name = f"{name[:64 - 10].rstrip('._-')}-h{digest}"
    return name


def make_grouping(
    run: RunDir,
    *,
    k: int,
    m: float = 1.07,
    method: str = "fuzzy-kmeans",
    seed: int = 0,
    name: str | None = None,
    epochs: str = "last",
    projection_dim: int | None = None,
    save: bool = True,
    n_init: int | None = None,
    features: str = "raw",
) -> dict[str, Any]:
    """Cluster the tasks of ``run`` and (if ``save``) write RUN/groupings/<name>.json.

    Features: the flattened [confidence, variability] of the chosen snapshots (docs/architecture.md §4),
    optionally randomly projected to ``projection_dim``; clustered through their exact isometric
    coordinates (cached in RUN/cache). Scores against every reference in run.json (tasks absent
    from a reference are left out of its score; ``n_tasks`` counts the rest).
    Everything is validated before anything is written. Returns the grouping dict:
      name, k, fuzziness, method, seed, n_init, task_names, membership (T lists of k floats),
      labels (T ints), scores {ref: {ari, nmi, purity, n_tasks}}, features {...}, n_iter,
      created (ISO time), elapsed_s.
    """
    start = time.perf_counter()
    meta = run.read()
    task_names = list(meta["task_names"])
    known = method_names()
    if method not in GROUPING_METHODS:
        raise StgError(f"unknown grouping method {method!r}: use one of {', '.join(known)}")
    plugin = GROUPING_METHODS[method]
    k, m, _ = check_cluster_args(len(task_names), k=k, m=m, method=method if plugin.fuzzy else "kmeans")
    if n_init is None:
        n_init = default_n_init(len(task_names), k)
    if isinstance(n_init, bool) or not isinstance(n_init, (int, np.integer)) or n_init < 1:
        raise StgError(f"invalid n_init {n_init!r}: use a positive integer (default: fuzzy.default_n_init)")
    check_variant(features)
    if features != "raw" and method not in _FEATURE_METHODS:
        raise StgError(f"--features applies to the data-map clusterings ({', '.join(_FEATURE_METHODS)}), "
                       f"not to {method}")
    projection_dim = check_projection_dim(projection_dim)
    name = check_name(name if name is not None else default_name(
        method=method, k=k, m=m if plugin.fuzzy else float("nan"), seed=seed, epochs=epochs,
        projection_dim=projection_dim) + ("" if features == "raw" else f"-{features}"), "grouping name")
    part = plugin.group(run, task_names, k=k, m=m, seed=seed, epochs=epochs, projection_dim=projection_dim,
                        n_init=n_init, features=features)
    membership = np.asarray(part.pop("membership"), dtype=np.float64)
    labels = np.asarray(part.pop("labels"), dtype=np.int64)
    references = meta.get("references") or {}
    scores = {ref: compare(labels, groups, task_names, missing="ignore") for ref, groups in references.items()}

    grouping = {
        "name": name,
        "k": int(membership.shape[1]),
        "fuzziness": m if plugin.fuzzy else None,
        "method": method,
        "seed": int(seed),
        "n_init": int(n_init),
        "task_names": task_names,
        "membership": [[float(v) for v in row] for row in membership],
        "labels": [int(v) for v in labels],
        "scores": scores,
        **part,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(time.perf_counter() - start, 4),
    }
    if save:
        run.write_grouping(name, grouping)
    return grouping


def summary_lines(grouping: dict[str, Any]) -> list[str]:
    """A human summary: header, one line per cluster (its tasks by decreasing membership), scores."""
    w = np.asarray(grouping["membership"], dtype=np.float64)
    labels = np.asarray(grouping["labels"], dtype=np.int64)
    names = list(grouping["task_names"])
    k = int(grouping["k"])
    head = f"{grouping.get('name', 'grouping')}: {grouping['method']}, k={k}"
    if grouping.get("fuzziness") is not None and grouping["method"] in FUZZY_METHODS:
        head += f", fuzziness m={grouping['fuzziness']:g}"
    head += f", seed={grouping['seed']}, {len(names)} tasks"
    if "kmeans_cost" in grouping:  # one line: the k-means cost and how the seed changes the partition
        stab = grouping.get("stability") or {}
        head += (f"; k-means cost {grouping['kmeans_cost']:.6g}, mean pairwise ARI {stab.get('mean_ari', float('nan')):.3f}"
                 f" over seeds {stab.get('seeds')}" + ("" if stab.get("same_partition") else " (the seed changes it)"))
    lines = [head]
    if "groups" in grouping:  # a selection of (possibly overlapping) groups: TAG, gradient cosine
        for c, members in enumerate(grouping["groups"]):
            served = {names[i] for i in np.flatnonzero(labels == c)}
            body = ", ".join(t if t in served else f"({t})" for t in members)
            lines.append(f"  group {c} ({len(members)} tasks, serves {len(served)}): {body}")
        lines.append("  (a task in parentheses helps the group's training but is served by another group)")
        gap = "optimal" if grouping.get("exact") else f"upper bound {grouping['bound']:.4g}"
        lines.append(f"  objective {grouping['objective']:.4g} ({gap})")
    for c in range(k if "groups" not in grouping else 0):
        members = np.flatnonzero(labels == c)
        members = members[np.argsort(-w[members, c], kind="stable")]
        if len(members) == 0:
            top = np.argsort(-w[:, c], kind="stable")[:3]
            lines.append(f"  cluster {c} (0 tasks; strongest: "
                         + ", ".join(f"{names[i]} {w[i, c]:.2f}" for i in top) + ")")
            continue
        body = ", ".join(f"{names[i]} {w[i, c]:.2f}" for i in members)
        lines.append(f"  cluster {c} ({len(members)} tasks): {body}")
    for ref, s in (grouping.get("scores") or {}).items():
        lines.append(f"  vs {ref}: ARI {s['ari']:.3f}  NMI {s['nmi']:.3f}  purity {s['purity']:.3f}"
                     + (f"  ({s['n_tasks']} of {len(names)} tasks)" if s.get("n_tasks", len(names)) != len(names) else ""))
    return lines


def quality_caption(grouping: dict[str, Any]) -> str:
    """One plain-text line for the dashboard: the k-means cost of the chosen partition and whether
    other seeds give the same one ('' for groupings without them, e.g. TAG selections)."""
    if "kmeans_cost" not in grouping:
        return ""
    stab = grouping.get("stability") or {}
    seeds = ", ".join(str(s) for s in stab.get("seeds", []))
    verdict = ("the same partition from every one" if stab.get("same_partition")
               else "the partition depends on the seed")
    return (f"k-means cost {grouping['kmeans_cost']:.6g} ({grouping.get('n_init', '?')} restarts); seeds {seeds}: "
            f"{verdict} (mean pairwise ARI {stab.get('mean_ari', float('nan')):.3f}); "
            f"features: {(grouping.get('features') or {}).get('variant', 'raw')}")
