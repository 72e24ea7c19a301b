"""Grouped training of a grouping (STG-MTL step 4) with baselines, evaluation and comparison.

``train_groups(run, "G")`` trains, on the datamap run's data and training settings:

- ``grouped``: the k specialists of grouping G, model c with task weights W[:, c] (``hard=True``:
  one_hot(argmax W) instead);
- baselines: ``mtl`` (one model, all task weights 1), ``random`` (a seeded random hard grouping
  with the same k and cluster sizes), ``stl`` (T models, one per task, one-hot weights).

Each family is one :class:`stg.specialists.Ensemble` trained concurrently on one batch stream and
checkpointed after every epoch in RUN/groups/G/<family>.pt, so a killed call resumes with results
equal to an uninterrupted one. Test-split logits of every family give RUN/groups/G/metrics.json:

{"models": {"grouped" | "grouped_argmax" | "mtl" | "random" | "stl":
    {"per_task": {task: {accuracy, balanced_accuracy, f1, auroc}}, "mean": {...},
     "no_positive_prediction": [...], "auroc_undefined": [...]}},
 "gain_vs_mtl": {task: {balanced_accuracy, f1}}   (grouped - mtl; only when mtl is trained),
 "losers": [tasks whose balanced accuracy drops against mtl],
 "grouping", "split", "config", "timings", "random_labels", ...}

``grouped`` combines the specialists' logits with A = W (membership-weighted), ``grouped_argmax``
with A = one_hot(argmax W) (each task served by its highest-membership specialist).
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from stg.engine import DeviceData, Progress, TrainConfig, channel_stats, resolve_device, training_stopped, versions
from stg.errors import StgError
from stg.evaluate import METRICS, ensemble_logits, ensemble_weights, evaluate_logits
from stg.rundir import RunDir, atomic_write_json, exclusive
from stg.specialists import (
    build_ensemble,
    checkpoint_epoch,
    predict_ensemble,
    to_device,
    train_ensemble,
)
from stg.taskset import TaskSet

BASELINES = ("mtl", "random", "stl")
EXECUTORS = ("local", "ray")
EventFn = Callable[[Progress], None]


# ------------------------------------------------------------------------------------------------
# Validation and set-up
# ------------------------------------------------------------------------------------------------
def _membership(grouping: dict[str, Any], name: str, n_tasks: int) -> np.ndarray:
    try:
        w = np.asarray(grouping["membership"], dtype=np.float64)
        k = int(grouping["k"])
    except (KeyError, TypeError, ValueError):
        raise StgError(f"grouping {name!r} is corrupt: it needs k and a (T, k) membership matrix") from None
    if w.shape != (n_tasks, k) or k < 1:
        raise StgError(f"grouping {name!r} is corrupt: membership is {w.shape}, expected ({n_tasks}, {k})")
    if not np.isfinite(w).all() or (w < 0).any() or not np.allclose(w.sum(1), 1.0, atol=1e-4):
        raise StgError(f"grouping {name!r} is corrupt: membership rows must be non-negative and sum to 1")
    return w


def random_hard_grouping(labels: np.ndarray, *, seed: int) -> np.ndarray:
    """A random hard grouping with the same cluster sizes as ``labels`` (T,): a seeded shuffle."""
    rng = np.random.default_rng([int(seed), 20240517])
    return labels[rng.permutation(len(labels))]


def one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    """(T,) ints -> (T, k) float64 one-hot."""
    return np.eye(k)[labels]


def _train_config(meta: dict[str, Any]) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig(**{k: v for k, v in (meta.get("config") or {}).items() if k in names})
    except TypeError as e:
        raise StgError(f"run.json has a corrupt config: {e}") from None


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family: k models, (T, k) task weights, init seeds."""

    name: str
    weights: np.ndarray  # (T, k) float64
    seeds: tuple[int, ...]

    @property
    def k(self) -> int:
        return int(self.weights.shape[1])

    def checkpoint(self, out: Path) -> Path:
        return out / f"{self.name}.pt"

    def identity(self, config: TrainConfig, task_names: Sequence[str]) -> dict[str, Any]:
        return {"family": self.name, "model": config.model, "batch_size": config.batch_size, "lr": config.lr,
                "seed": config.seed, "augment": config.augment, "precision": config.precision,
                "seeds": list(self.seeds),
                "weights": self.weights.tolist(), "task_names": list(task_names)}


# ------------------------------------------------------------------------------------------------
# Training one family (local, or inside a Ray worker)
# ------------------------------------------------------------------------------------------------
def _train_family(
    family: Family,
    taskset: TaskSet,
    config: TrainConfig,
    *,
    epochs: int,
    device: str,
    out: Path,
    emit: EventFn | None = None,
    on_epoch: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
    step_offset: int = 0,
    total_steps: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) one family; returns {status, epochs_done, seconds, history, test_logits (k, N, T) numpy}."""
    dev = resolve_device(device)
    c, h, _ = taskset.image_shape
    mean, std = channel_stats(taskset.train.images)
    train = DeviceData(taskset.train, dev, mean, std)
    test = DeviceData(taskset.test, dev, mean, std)
    pos_weight = taskset.pos_weight.to(device=dev, dtype=torch.float32)
    ensemble = build_ensemble(config.model, seeds=family.seeds, in_channels=c, size=h, n_tasks=taskset.n_tasks,
                              device=dev)
    ensemble = to_device(ensemble, dev)
    result = train_ensemble(
        ensemble, torch.as_tensor(family.weights, dtype=torch.float32), train, pos_weight,
        epochs=epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed, augment=config.augment,
        precision=config.precision, checkpoint=family.checkpoint(out),
        identity=family.identity(config, taskset.task_names),
        label=family.name, on_event=emit, on_epoch=on_epoch, cancel=cancel,
        step_offset=step_offset, total_steps=total_steps,
    )
    logits = None
    if result.status == "done":
        logits = predict_ensemble(ensemble, test, batch_size=max(64, 4096 // ensemble.k),
                                  precision=config.precision).cpu().numpy()
    return {"status": result.status, "epochs_done": result.epochs_done, "seconds": round(result.seconds, 3),
            "history": result.history, "test_logits": logits}


# ------------------------------------------------------------------------------------------------
# The public entry point
# ------------------------------------------------------------------------------------------------
def train_groups(
    run: RunDir,
    grouping: str,
    *,
    epochs: int | None = None,
    baselines: Sequence[str] = ("mtl", "random"),
    hard: bool = False,
    executor: str = "local",
    device: str = "auto",
    on_event: EventFn | None = None,
    cancel: threading.Event | None = None,
    taskset: TaskSet | None = None,
) -> dict[str, Any]:
    """Train grouping ``grouping``'s specialists and the ``baselines`` on ``run``'s data; write
    RUN/groups/<grouping>/metrics.json (see the module docstring) and return it.

    Same architecture, batch size, lr, augmentation and seed as the datamap run; ``epochs``
    defaults to the datamap run's. Re-running resumes every family from its last finished epoch.
    ``cancel`` stops within one step; the return value is then {"status": "cancelled", ...} and no
    metrics.json is written. ``taskset``: the run's task set (rebuilt from run.json when None).
    Everything is validated before anything is written (StgError with a one-line reason).
    """
    meta = run.read()
    task_names = list(meta["task_names"])
    n_tasks = len(task_names)
    if executor not in EXECUTORS:
        raise StgError(f"unknown executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    if isinstance(baselines, str):  # "mtl,random" as the CLI spells it
        baselines = [b.strip() for b in baselines.split(",") if b.strip()]
    baselines = list(dict.fromkeys(baselines))
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        raise StgError(f"unknown baseline {bad[0]!r}: choose from {', '.join(BASELINES)}")
    spec = run.read_grouping(grouping)
    if list(spec.get("task_names", [])) != task_names:
        raise StgError(f"grouping {grouping!r} was made for other tasks than run {run.path} "
                       f"({len(spec.get('task_names', []))} tasks vs {n_tasks}): group this run again")
    membership = _membership(spec, grouping, n_tasks)
    config = _train_config(meta)
    epochs = config.epochs if epochs is None else int(epochs)
    if epochs < 1:
        raise StgError(f"--epochs must be at least 1, got {epochs}")
    if executor == "ray":
        if device not in ("auto", "cpu", "cuda"):
            raise StgError(f"--executor ray takes --device auto, cpu or cuda, not {device!r}: Ray gives each "
                           "task its GPU")
        _import_ray()
    else:
        resolve_device(device)
    if taskset is None:
        from stg.datasets import load_taskset_from_spec  # lazy: loaders are heavy

        taskset = load_taskset_from_spec(meta.get("data") or {})
    if list(taskset.task_names) != task_names or len(taskset.train) != meta.get("n_train", len(taskset.train)):
        raise StgError(f"the task set does not match run {run.path} (tasks or training split differ)")
    config.validate(len(taskset.train))

    k = membership.shape[1]
    labels = membership.argmax(1)
    grouped_w = one_hot(labels, k) if hard else membership
    rand_labels = random_hard_grouping(labels, seed=config.seed + int(spec.get("seed", 0)))
    families = [Family("grouped_hard" if hard else "grouped", grouped_w, tuple(config.seed + c for c in range(k)))]
    for b in baselines:
        if b == "mtl":
            families.append(Family("mtl", np.ones((n_tasks, 1)), (config.seed,)))
        elif b == "random":
            families.append(Family("random", one_hot(rand_labels, k), tuple(config.seed + c for c in range(k))))
        elif b == "stl":
            families.append(Family("stl", np.eye(n_tasks), tuple(config.seed + t for t in range(n_tasks))))

    out = run.groups_dir(grouping)
    done_before = {}
    for fam in families:  # refuse a foreign or longer checkpoint before writing anything
        path = fam.checkpoint(out)
        if path.is_file():
            e, ident = checkpoint_epoch(path)
            if json.loads(ident) != json.loads(json.dumps(fam.identity(config, task_names))):
                raise StgError(f"{path} holds a training with other settings: move it away to restart")
            if e > epochs:
                raise StgError(f"{path} is already trained for {e} epochs, more than the {epochs} asked for")
            done_before[fam.name] = e

    with exclusive(out, "grouped training of this grouping"):
        emit = on_event or (lambda p: None)
        cancel = cancel or threading.Event()
        steps_per_epoch = -(-len(taskset.train) // config.batch_size)
        total_steps = steps_per_epoch * epochs * len(families)
        status = {"status": "running", "grouping": grouping, "hard": hard, "executor": executor, "epochs": epochs,
                  "families": {f.name: {"k": f.k, "epochs_done": done_before.get(f.name, 0), "epochs": epochs}
                               for f in families},
                  "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
        out.mkdir(parents=True, exist_ok=True)
        lock = threading.Lock()

        def write_status(**changes: Any) -> None:
            with lock:
                status.update(changes, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
                atomic_write_json(out / "status.json", status)

        write_status()
        emit(Progress("start", 0, epochs, sum(done_before.values()) * steps_per_epoch, total_steps,
                      message=f"training {', '.join(f.name for f in families)} for grouping {grouping}"))
        t_start = time.monotonic()
        try:
            if executor == "local":
                results = _run_local(families, taskset, config, epochs=epochs, device=device, out=out, emit=emit,
                                     cancel=cancel, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                                     status=status, write_status=write_status)
            else:
                results = _run_ray(families, taskset, config, epochs=epochs, device=device, out=out, emit=emit,
                                   cancel=cancel, total_steps=total_steps, status=status, write_status=write_status)
        except BaseException as e:
            record, oom = training_stopped(e, f"training {config.model} specialists at batch size "
                                              f"{config.batch_size}", device)
            write_status(**record)
            if oom is not None:
                raise oom from None
            raise
        if results is None:
            write_status(status="cancelled")
            emit(Progress("cancelled", 0, epochs, 0, total_steps, message="cancelled; finished epochs are kept"))
            return dict(status)

        y_test = taskset.test.labels.numpy()
        models: dict[str, Any] = {}
        grouped_name = families[0].name
        z = results[grouped_name]["test_logits"]
        for name, how in (("grouped", "membership"), ("grouped_argmax", "argmax")):
            models[name] = evaluate_logits(ensemble_logits(z, ensemble_weights(grouped_w, how)), y_test, task_names)
        for fam in families[1:]:
            z = results[fam.name]["test_logits"]
            models[fam.name] = evaluate_logits(ensemble_logits(z, fam.weights), y_test, task_names)

        metrics: dict[str, Any] = {"models": models}
        if "mtl" in models:
            gain = {}
            for t in task_names:
                g, m = models["grouped"]["per_task"][t], models["mtl"]["per_task"][t]
                gain[t] = {key: (None if g[key] is None or m[key] is None else round(g[key] - m[key], 6))
                           for key in ("balanced_accuracy", "f1")}
            metrics["gain_vs_mtl"] = gain
            metrics["losers"] = [t for t in task_names if (gain[t]["balanced_accuracy"] or 0.0) < 0]
        metrics.update({
            "grouping": grouping,
            "k": k,
            "hard": hard,
            "split": "test",
            "n_test": len(taskset.test),
            "task_names": task_names,
            "membership": grouped_w.tolist(),
            "random_labels": [int(v) for v in rand_labels] if "random" in models else None,
            "config": {**dataclasses.asdict(config), "epochs": epochs, "device": device, "executor": executor,
                       "baselines": baselines},
            "timings": {name: r["seconds"] for name, r in results.items()}
                       | {"wall_seconds": round(time.monotonic() - t_start, 3)},
            "history": {name: r["history"] for name, r in results.items()},
            "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
        atomic_write_json(out / "metrics.json", metrics)
        write_status(status="done")
        emit(Progress("done", epochs, epochs, total_steps, total_steps, message=f"done: {out / 'metrics.json'}"))
        return metrics


def _run_local(families: list[Family], taskset: TaskSet, config: TrainConfig, *, epochs: int, device: str,
               out: Path, emit: EventFn, cancel: threading.Event, steps_per_epoch: int, total_steps: int,
               status: dict[str, Any], write_status: Callable[..., None]) -> dict[str, dict[str, Any]] | None:
    results = {}
    for i, fam in enumerate(families):
        def on_epoch(e: int, name: str = fam.name) -> None:
            status["families"][name]["epochs_done"] = e
            write_status()

        r = _train_family(fam, taskset, config, epochs=epochs, device=device, out=out, emit=emit,
                          on_epoch=on_epoch, cancel=cancel, step_offset=i * epochs * steps_per_epoch,
                          total_steps=total_steps)
        if r["status"] != "done":
            return None
        results[fam.name] = r
    return results


def _import_ray():
    try:
        import ray  # noqa: F401  (optional extra)
    except ImportError:
        raise StgError("the ray executor needs Ray: install the ray extra: pip install 'stg[ray]'") from None
    return ray


def ray_gpu_share(device: str, cluster_gpus: float, n_tasks: int) -> float:
    """The GPUs each of ``n_tasks`` Ray tasks asks for: a whole GPU each when the cluster has enough,
    else an equal share so that all of them run at once (1/2 each for 3 tasks on 2 GPUs); 0 for the
    CPU, and for ``auto`` on a cluster without GPUs."""
    if device == "cpu" or (device == "auto" and cluster_gpus < 1):
        return 0.0
    if cluster_gpus < 1:
        raise StgError(f"--device {device} with --executor ray: the Ray cluster has no GPU; use --device cpu or auto")
    return 1.0 / math.ceil(n_tasks / int(cluster_gpus))


def _run_ray(families: list[Family], taskset: TaskSet, config: TrainConfig, *, epochs: int, device: str,
             out: Path, emit: EventFn, cancel: threading.Event, total_steps: int, status: dict[str, Any],
             write_status: Callable[..., None]) -> dict[str, dict[str, Any]] | None:
    """Each family as one Ray task (started with a local Ray instance unless one is running).

    Workers write their checkpoints under ``out`` themselves, so ``out`` must be on a file system
    every worker sees (always true for a local instance). Progress is reported per finished family.
    """
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
        started = True
    try:
        gpus = ray_gpu_share(device, float(ray.cluster_resources().get("GPU", 0)), len(families))
        remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_train_family)
        ts = ray.put(taskset)
        on = "cuda" if gpus else "cpu"  # a task sees only the GPU Ray gave it
        refs = {remote.remote(f, ts, config, epochs=epochs, device=on, out=out): f.name for f in families}
        results: dict[str, dict[str, Any]] = {}
        pending = list(refs)
        while pending:
            if cancel.is_set():
                for ref in pending:
                    ray.cancel(ref, force=True)
                return None
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in ready:
                name = refs[ref]
                results[name] = ray.get(ref)
                status["families"][name]["epochs_done"] = results[name]["epochs_done"]
                write_status()
                emit(Progress("epoch", epochs, epochs, total_steps * len(results) // len(families), total_steps,
                              message=f"{name}: done on Ray"))
        return {f.name: results[f.name] for f in families}
    finally:
        if started:
            ray.shutdown()


# ------------------------------------------------------------------------------------------------
# Printing
# ------------------------------------------------------------------------------------------------
def summary_table(metrics: dict[str, Any], *, top: int = 5) -> list[str]:
    """Printable lines: one row per model with its mean metrics, then the tasks that gain and lose
    most (balanced accuracy, grouped - mtl) when an mtl baseline was trained."""
    head = f"{'model':<16}" + "".join(f"{m:>19}" for m in METRICS)
    lines = [head, "-" * len(head)]
    for name, block in metrics["models"].items():
        row = f"{name:<16}"
        for m in METRICS:
            v = block["mean"].get(m)
            row += f"{'n/a' if v is None else f'{v:.4f}':>19}"
        lines.append(row)
    gain = metrics.get("gain_vs_mtl")
    if gain:
        scored = [(t, g["balanced_accuracy"], g["f1"]) for t, g in gain.items() if g["balanced_accuracy"] is not None]
        scored.sort(key=lambda r: r[1], reverse=True)
        fmt = "  {:<24} balanced accuracy {:+.4f}  F1 {}"
        f1s = lambda v: "n/a" if v is None else f"{v:+.4f}"  # noqa: E731
        lines.append("")
        lines.append("top gains vs mtl (grouped - mtl):")
        lines += [fmt.format(t, b, f1s(f)) for t, b, f in scored[:top] if b > 0] or ["  (none)"]
        lines.append(f"top losses vs mtl ({len(metrics.get('losers', []))} tasks lose):")
        lines += [fmt.format(t, b, f1s(f)) for t, b, f in reversed(scored[-top:]) if b < 0] or ["  (none)"]
    return lines
