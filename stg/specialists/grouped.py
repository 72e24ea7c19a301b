"""Grouped training of a grouping (STG-MTL step 4) with baselines, evaluation and comparison.

``train_groups(run, "G")`` trains, on the datamap run's data and training settings:

- ``grouped``: the k specialists of grouping G, model c with task weights W[:, c] (``hard=True``:
  one_hot(argmax W) instead);
- baselines: ``mtl`` (one model, all task weights 1), ``random`` (a seeded random hard grouping
  with the same k and cluster sizes), ``stl`` (T models, one per task, one-hot weights).

Each family is one :class:`stg.specialists.ensembles.Ensemble` trained concurrently on one batch stream and
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

MT2ST schedule (``schedule=``, ``stg.mt2st.schedules``): specialist c's primary tasks are the tasks
whose highest membership is c, the other tasks are its auxiliaries, and an auxiliary task's
membership weight is multiplied by the schedule's factor a(t) (exactly 0 below eps, so zero
gradient; the fused ensemble still computes every head: every task is some specialist's primary
task). Only the ``grouped`` family takes the schedule; its checkpoint is ``grouped-<slug>.pt`` and
the schedule is part of its identity and of metrics.json's ``config.schedule``. Once a schedule
has zeroed the auxiliaries, a specialist's auxiliary heads stop learning, so ``grouped``
(membership-weighted, which reads them) mixes in stale heads: read ``grouped_argmax`` then.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from stg.data.taskset import TaskSet
from stg.datamap.run import retrain_inputs, training_stopped, versions
from stg.errors import StgError
from stg.mt2st.schedules import AuxSchedule, aux_weights, primary_of_membership
from stg.runs.rundir import RunDir, atomic_write_json, exclusive
from stg.specialists.baselines import BASELINES, parse_names
from stg.specialists.ensembles import build_ensemble, predict_ensemble, to_device, train_ensemble
from stg.specialists.evaluate import METRICS, ensemble_logits, ensemble_weights, evaluate_logits
from stg.train.config import TrainConfig
from stg.train.device import DeviceData, channel_stats, resolve_device
from stg.train.loop import Monitor, Progress, checkpoint_epoch

EXECUTORS = ("local", "ray")


# ------------------------------------------------------------------------------------------------
# Plan: validate everything and decide the families; writes nothing
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


@dataclass(frozen=True)
class Family:
    """One model family: k models, (T, k) task weights, init seeds; with an MT2ST ``schedule``,
    the auxiliary tasks' weights (not argmax of their row) are scaled by the schedule's factor."""

    name: str
    weights: np.ndarray  # (T, k) float64
    seeds: tuple[int, ...]
    schedule: AuxSchedule | None = None

    @property
    def k(self) -> int:
        return int(self.weights.shape[1])

    def checkpoint(self, out: Path) -> Path:
        return out / (f"{self.name}-{self.schedule.slug()}.pt" if self.schedule else f"{self.name}.pt")

    def identity(self, config: TrainConfig, task_names: Sequence[str]) -> dict[str, Any]:
        ident = {"family": self.name, "model": config.model, "batch_size": config.batch_size, "lr": config.lr,
                 "seed": config.seed, "augment": config.augment, "precision": config.precision,
                 "seeds": list(self.seeds),
                 "weights": self.weights.tolist(), "task_names": list(task_names)}
        if self.schedule is not None:
            ident["schedule"] = self.schedule.to_meta()
        return ident

    def task_weights(self, epochs: int, steps_per_epoch: int) -> torch.Tensor | Any:
        """What the training loop takes: the (T, k) weights, or a schedule of (k, T) weights."""
        if self.schedule is None:
            return torch.as_tensor(self.weights, dtype=torch.float32)
        return aux_weights(self.weights.T, primary_of_membership(self.weights), self.schedule, epochs=epochs,
                           steps_per_epoch=steps_per_epoch)


@dataclass(frozen=True)
class GroupsPlan:
    """What ``train_groups`` will train: the validated inputs and the families, in order (the
    grouping's specialists first, then the baselines)."""

    run: RunDir
    grouping: str
    task_names: list[str]
    taskset: TaskSet
    config: TrainConfig  # epochs = the epochs to train
    families: list[Family]
    grouped_weights: np.ndarray  # (T, k) the specialists' weights (membership, or its argmax one-hot)
    random_labels: np.ndarray  # (T,) the random baseline's grouping
    hard: bool
    executor: str
    device: str
    baselines: list[str]
    done_before: dict[str, int]  # epochs already in each family's checkpoint
    schedule: AuxSchedule | None = None  # MT2ST schedule of the specialists' auxiliary tasks
    serving: np.ndarray | None = None  # (T,) for a TAG-style selection: the group that serves each task

    def combinations(self) -> dict[str, np.ndarray]:
        """How the specialists' logits make each task's prediction: {model name: A (T, k)}.
        A clustering gives ``grouped`` (A = membership) and ``grouped_argmax`` (each task from its
        highest-membership specialist); a selection of overlapping groups gives ``grouped``, each
        task from the group that serves it (TAG's rule)."""
        if self.serving is not None:
            return {"grouped": one_hot(self.serving, self.grouped_weights.shape[1])}
        return {"grouped": ensemble_weights(self.grouped_weights, "membership"),
                "grouped_argmax": ensemble_weights(self.grouped_weights, "argmax")}

    @property
    def out(self) -> Path:
        return self.run.groups_dir(self.grouping)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.taskset.train) // self.config.batch_size)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs * len(self.families)


def parse_baselines(baselines: Sequence[str] | str) -> list[str]:
    """"mtl,random" (as the CLI spells it) or a list -> known baseline names, in order, once each."""
    return parse_names(baselines, BASELINES, "baseline")


def plan_groups(
    run: RunDir,
    grouping: str,
    *,
    epochs: int | None = None,
    baselines: Sequence[str] | str = ("mtl", "random"),
    hard: bool = False,
    executor: str = "local",
    device: str = "auto",
    taskset: TaskSet | None = None,
    schedule: AuxSchedule | None = None,
) -> GroupsPlan:
    """Validate a grouped training of ``run``'s grouping ``grouping`` and decide its families.
    Everything is checked here, before anything is written (StgError with a one-line reason)."""
    meta = run.read()
    task_names = list(meta["task_names"])
    n_tasks = len(task_names)
    if executor not in EXECUTORS:
        raise StgError(f"unknown executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    baselines = parse_baselines(baselines)
    record = run.grouping(grouping)
    spec = record.raw
    if list(spec.get("task_names", [])) != task_names:
        raise StgError(f"grouping {grouping!r} was made for other tasks than run {run.path} "
                       f"({len(spec.get('task_names', []))} tasks vs {n_tasks}): group this run again")
    serving = np.asarray(record.raw["serving"], dtype=np.int64) if "serving" in record.raw else None
    # a selection's rows hold a 1 for every group a task trains in; a clustering's rows sum to 1
    membership = record.membership if serving is not None else _membership(spec, grouping, n_tasks)
    if executor == "ray":
        if device not in ("auto", "cpu", "cuda"):
            raise StgError(f"--executor ray takes --device auto, cpu or cuda, not {device!r}: Ray gives each "
                           "task its GPU")
        from stg.specialists.executors import import_ray

        import_ray()
    else:
        resolve_device(device)
    config, taskset = retrain_inputs(run, meta, epochs=epochs, taskset=taskset)
    epochs = config.epochs
    if schedule is not None:
        if serving is not None:
            raise StgError(f"--schedule needs a clustering's memberships; grouping {grouping!r} is a "
                           f"{record.method} selection, whose groups already say which tasks help which")
        if hard:
            raise StgError("--schedule needs soft memberships: with --hard a specialist has no auxiliary tasks")
        schedule.check(epochs, -(-len(taskset.train) // config.batch_size))

    k = membership.shape[1]
    labels = serving if serving is not None else membership.argmax(1)
    grouped_w = one_hot(labels, k) if hard else membership
    rand_labels = random_hard_grouping(labels, seed=config.seed + int(spec.get("seed", 0)))
    families = [Family("grouped_hard" if hard else "grouped", grouped_w, tuple(config.seed + c for c in range(k)),
                       schedule)]
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
            if json.loads(ident) != json.loads(json.dumps(fam.identity(config, task_names), sort_keys=True)):
                raise StgError(f"{path} holds a training with other settings: move it away to restart")
            if e > epochs:
                raise StgError(f"{path} is already trained for {e} epochs, more than the {epochs} asked for")
            done_before[fam.name] = e
    return GroupsPlan(run, grouping, task_names, taskset, config, families, grouped_w, rand_labels, hard,
                      executor, device, baselines, done_before, schedule, serving)


# ------------------------------------------------------------------------------------------------
# Execute: train one family (locally, or inside a Ray worker), and all of them
# ------------------------------------------------------------------------------------------------
def train_family(
    family: Family,
    taskset: TaskSet,
    config: TrainConfig,
    *,
    device: str,
    out: Path,
    monitor: Monitor | None = None,
    after_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    step_offset: int = 0,
    total_steps: int | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Train (or resume) one family for ``config.epochs``; returns {status, epochs_done, seconds,
    history, test_logits (k, N, T) numpy or None when cancelled}. ``label`` names the family in
    progress events (default: its name)."""
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
        ensemble, family.task_weights(config.epochs, -(-len(train) // config.batch_size)), train, pos_weight, config,
        checkpoint=family.checkpoint(out), identity=family.identity(config, taskset.task_names),
        label=label or family.name, monitor=monitor, after_epoch=after_epoch, step_offset=step_offset,
        total_steps=total_steps,
    )
    logits = None
    if result.status == "done":
        logits = predict_ensemble(ensemble, test, batch_size=max(64, 4096 // ensemble.k),
                                  precision=config.precision).cpu().numpy()
    return {"status": result.status, "epochs_done": result.epochs_done, "seconds": round(result.seconds, 3),
            "history": result.history, "test_logits": logits}


StatusFn = Callable[..., None]


def run_local(plan: GroupsPlan, monitor: Monitor, status: dict[str, Any],
              write_status: StatusFn) -> dict[str, dict[str, Any]] | None:
    """Every family in this process, one after another, each a stage of the progress events
    ("random (stage 2/3)"); None when cancelled."""
    results = {}
    n = len(plan.families)
    for i, fam in enumerate(plan.families):
        def after_epoch(epoch: int, record: dict[str, Any], name: str = fam.name) -> None:
            status["families"][name]["epochs_done"] = epoch
            write_status()

        r = train_family(fam, plan.taskset, plan.config, device=plan.device, out=plan.out, monitor=monitor,
                         after_epoch=after_epoch, step_offset=i * plan.config.epochs * plan.steps_per_epoch,
                         total_steps=plan.total_steps, label=f"{fam.name} (stage {i + 1}/{n})")
        if r["status"] != "done":
            return None
        results[fam.name] = r
    return results


# ------------------------------------------------------------------------------------------------
# Evaluate: test-split metrics of every family
# ------------------------------------------------------------------------------------------------
def gain_vs_mtl(models: dict[str, Any], task_names: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Per task, grouped - mtl of balanced accuracy and F1 (None where either is undefined)."""
    gain = {}
    for t in task_names:
        g, m = models["grouped"]["per_task"][t], models["mtl"]["per_task"][t]
        gain[t] = {key: (None if g[key] is None or m[key] is None else round(g[key] - m[key], 6))
                   for key in ("balanced_accuracy", "f1")}
    return gain


def evaluate_plan(plan: GroupsPlan, results: dict[str, dict[str, Any]], wall_seconds: float) -> dict[str, Any]:
    """metrics.json's contents (see the module docstring) from every family's test logits."""
    taskset, task_names = plan.taskset, plan.task_names
    y_test = taskset.test.labels.numpy()
    models: dict[str, Any] = {}
    z = results[plan.families[0].name]["test_logits"]
    for name, combine in plan.combinations().items():
        models[name] = evaluate_logits(ensemble_logits(z, combine), y_test, task_names)
    for fam in plan.families[1:]:
        z = results[fam.name]["test_logits"]
        models[fam.name] = evaluate_logits(ensemble_logits(z, fam.weights), y_test, task_names)

    metrics: dict[str, Any] = {"models": models}
    if "mtl" in models:
        gain = gain_vs_mtl(models, task_names)
        metrics["gain_vs_mtl"] = gain
        metrics["losers"] = [t for t in task_names if (gain[t]["balanced_accuracy"] or 0.0) < 0]
    metrics.update({
        "grouping": plan.grouping,
        "k": int(plan.grouped_weights.shape[1]),
        "hard": plan.hard,
        "split": "test",
        "n_test": len(taskset.test),
        "task_names": task_names,
        "membership": plan.grouped_weights.tolist(),
        "serving": None if plan.serving is None else [int(v) for v in plan.serving],
        "random_labels": [int(v) for v in plan.random_labels] if "random" in models else None,
        "config": {**plan.config.to_meta(), "device": plan.device, "executor": plan.executor,
                   "baselines": plan.baselines,
                   "schedule": None if plan.schedule is None else plan.schedule.to_meta()},
        "timings": {name: r["seconds"] for name, r in results.items()} | {"wall_seconds": round(wall_seconds, 3)},
        "history": {name: r["history"] for name, r in results.items()},
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    return metrics


# ------------------------------------------------------------------------------------------------
# The public entry point
# ------------------------------------------------------------------------------------------------
def train_groups(
    run: RunDir,
    grouping: str,
    *,
    epochs: int | None = None,
    baselines: Sequence[str] | str = ("mtl", "random"),
    hard: bool = False,
    executor: str = "local",
    device: str = "auto",
    monitor: Monitor | None = None,
    taskset: TaskSet | None = None,
    schedule: AuxSchedule | None = None,
) -> dict[str, Any]:
    """Train grouping ``grouping``'s specialists and the ``baselines`` on ``run``'s data; write
    RUN/groups/<grouping>/metrics.json (see the module docstring) and return it.

    Same architecture, batch size, lr, augmentation and seed as the datamap run; ``epochs``
    defaults to the datamap run's. Re-running resumes every family from its last finished epoch.
    The monitor's cancel stops within one step; the return value is then {"status": "cancelled",
    ...} and no metrics.json is written. ``taskset``: the run's task set (rebuilt from run.json
    when None). ``schedule``: an MT2ST schedule of the specialists' auxiliary tasks (module
    docstring). Plan (validate), execute (train), evaluate (test metrics).
    """
    plan = plan_groups(run, grouping, epochs=epochs, baselines=baselines, hard=hard, executor=executor,
                       device=device, taskset=taskset, schedule=schedule)
    monitor = monitor or Monitor()
    out, epochs = plan.out, plan.config.epochs
    with exclusive(out, "grouped training of this grouping"):
        status = {"status": "running", "grouping": grouping, "hard": hard, "executor": executor, "epochs": epochs,
                  "schedule": None if schedule is None else schedule.to_meta(),
                  "families": {f.name: {"k": f.k, "epochs_done": plan.done_before.get(f.name, 0), "epochs": epochs}
                               for f in plan.families},
                  "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
        out.mkdir(parents=True, exist_ok=True)
        lock = threading.Lock()

        def write_status(**changes: Any) -> None:
            with lock:
                status.update(changes, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
                atomic_write_json(out / "status.json", status)

        write_status()
        monitor.emit(Progress("start", 0, epochs, sum(plan.done_before.values()) * plan.steps_per_epoch,
                              plan.total_steps, message=f"training {', '.join(f.name for f in plan.families)} "
                                                        f"for grouping {grouping}"))
        t_start = time.monotonic()
        try:
            if executor == "local":
                results = run_local(plan, monitor, status, write_status)
            else:
                from stg.specialists.executors import run_ray

                results = run_ray(plan, monitor, status, write_status)
        except BaseException as e:
            record, oom = training_stopped(e, f"training {plan.config.model} specialists at batch size "
                                              f"{plan.config.batch_size}", device)
            write_status(**record)
            if oom is not None:
                raise oom from None
            raise
        if results is None:
            write_status(status="cancelled")
            monitor.emit(Progress("cancelled", 0, epochs, 0, plan.total_steps,
                                  message="cancelled; finished epochs are kept"))
            return dict(status)
        metrics = evaluate_plan(plan, results, time.monotonic() - t_start)
        atomic_write_json(out / "metrics.json", metrics)
        write_status(status="done")
        monitor.emit(Progress("done", epochs, epochs, plan.total_steps, plan.total_steps,
                              message=f"done: {out / 'metrics.json'}"))
        return metrics


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
