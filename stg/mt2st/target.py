"""One target task trained with helper tasks under an MT2ST schedule, against the target trained
alone (``stl``) and with constant helpers (``mtl``).

``train_target_run(run, "shirt", helpers="G", schedule=make_schedule("switch"))`` trains, on the
run's data and training settings, one model per schedule (stl, mtl and the one asked for). Each
model has one head per task in ``[target] + helpers`` (helpers: the other tasks of the target's
argmax group in grouping G, or ``all`` the run's other tasks); all start from the same
initialisation (the run's seed) and see the same batch stream. The target weighs 1, each helper
``a(t)`` (``stg.mt2st.schedules``); once ``a`` is 0 for good the helpers' heads are dropped
(``stg.mt2st.train``). Every epoch the target's validation metrics are recorded.

RUN/mt2st/<target>/<helpers>/  (helpers: ``all`` or the grouping's name)
    <slug>.pt, <slug>.primary.pt   each schedule's loop checkpoints (re-running resumes)
    metrics.json                   {"target", "helpers", "helpers_from", "metric", "stl_final_val",
                                    "schedules": {slug: {"schedule": {...}, "describe", "test":
                                    {accuracy, balanced_accuracy, f1, auroc} on the target, "val":
                                    [metric per epoch], "seconds", "epoch_seconds", "multitask_epochs",
                                    "skipped", "factors", "epochs_to_stl", "seconds_to_stl"}},
                                    "config", "n_val", "n_test", "versions", "created"}

``epochs_to_stl``: the first epoch whose validation metric reaches the stl model's final one
(None when never), ``seconds_to_stl`` the training seconds up to it. Schedules trained by an earlier
call with the same settings are kept in metrics.json.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from stg.data.taskset import TaskSet
from stg.datamap.run import retrain_inputs
from stg.errors import StgError
from stg.mt2st.schedules import AuxSchedule, make_schedule
from stg.mt2st.train import PhasedResult, train_scheduled
from stg.runs.rundir import RunDir, atomic_write_json, check_name, exclusive
from stg.specialists.evaluate import METRICS, binary_metrics, evaluate_logits
from stg.train.config import TrainConfig
from stg.train.device import DeviceData, channel_stats, predict_logits, prepare_model, resolve_device
from stg.train.hooks import Hook
from stg.train.loop import Monitor, Progress
from stg.train.models import build_model
from stg.train.rng import seeded

VAL_METRICS = ("balanced_accuracy", "auroc")


class TargetValidation(Hook):
    """At the end of every epoch: the target's validation metrics (eval mode), as history fields
    ``val_balanced_accuracy`` and ``val_auroc``. ``column``: the target's output of ``model``."""

    def __init__(self, model: nn.Module, val: DeviceData, column: int, precision: str):
        self.model, self.val, self.column, self.precision = model, val, column, precision

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        z = predict_logits(self.model, self.val, precision=self.precision)[:, self.column:self.column + 1]
        m = binary_metrics(z, self.val.labels[:, :1].cpu())
        return {f"val_{k}": (None if not np.isfinite(m[k][0]) else round(float(m[k][0]), 6)) for k in VAL_METRICS}


def resolve_helpers(run: RunDir, task_names: Sequence[str], target: str, helpers: str) -> list[str]:
    """The helper tasks of ``target``: ``all`` = every other task; else the name of a grouping of
    the run, whose argmax group of the target gives the helpers (StgError when it has none)."""
    names = list(task_names)
    if helpers == "all":
        return [t for t in names if t != target]
    spec = run.read_grouping(helpers)
    if list(spec.get("task_names", [])) != names:
        raise StgError(f"grouping {helpers!r} was made for other tasks than run {run.path}: group this run again")
    try:
        w = np.asarray(spec["membership"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise StgError(f"grouping {helpers!r} is corrupt: it needs a (T, k) membership matrix") from None
    if w.ndim != 2 or w.shape[0] != len(names):
        raise StgError(f"grouping {helpers!r} is corrupt: membership is {w.shape}, expected ({len(names)}, k)")
    labels = w.argmax(1)
    own = labels[names.index(target)]
    out = [t for t, g in zip(names, labels) if g == own and t != target]
    if not out:
        raise StgError(f"task {target!r} is alone in its group of grouping {helpers!r}: no helpers to train with; "
                       "use --helpers all")
    return out


def compare(entries: dict[str, dict[str, Any]], metric: str) -> float | None:
    """Fill ``epochs_to_stl`` / ``seconds_to_stl`` of every entry from the stl entry's final
    validation ``metric``; returns that value (None without an stl entry)."""
    stl = entries.get("stl")
    goal = stl["val"][-1] if stl and stl["val"] and stl["val"][-1] is not None else None
    for e in entries.values():
        reached = None
        if goal is not None:
            reached = next((i + 1 for i, v in enumerate(e["val"]) if v is not None and v >= goal - 1e-12), None)
        e["epochs_to_stl"] = reached
        e["seconds_to_stl"] = None if reached is None else round(sum(e["epoch_seconds"][:reached]), 3)
    return goal


def train_target(
    taskset: TaskSet,
    target: str,
    helpers: Sequence[str],
    schedule: AuxSchedule,
    config: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    metric: str = "balanced_accuracy",
    skip: bool = True,
    checkpoint: Path | None = None,
    identity: dict[str, Any] | None = None,
    monitor: Monitor | None = None,
    step_offset: int = 0,
    total_steps: int | None = None,
) -> dict[str, Any]:
    """Train ``target`` with ``helpers`` under ``schedule`` for ``config.epochs``; returns the
    metrics.json entry of the schedule (see the module docstring; ``status`` is added and is
    ``cancelled`` when the monitor stopped it). ``checkpoint``: a path stem (see
    ``stg.mt2st.train.train_scheduled``)."""
    names = list(taskset.task_names)
    columns = [names.index(target)] + [names.index(h) for h in helpers]
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    c, h, _ = taskset.image_shape
    mean, std = channel_stats(taskset.train.images)
    train = DeviceData(taskset.train, dev, mean, std)
    train.labels = train.labels[:, columns].contiguous()
    val = DeviceData(taskset.val, dev, mean, std)
    val.labels = val.labels[:, columns[:1]].contiguous()
    test = DeviceData(taskset.test, dev, mean, std)
    pos_weight = taskset.pos_weight[columns].to(device=dev, dtype=torch.float32)
    model = seeded(config.seed, lambda: build_model(config.model, in_channels=c, size=h, n_tasks=len(columns)))
    model = prepare_model(model, dev)
    slug = schedule.slug()

    def hooks(m: nn.Module, cols: Sequence[int]) -> list[Hook]:
        return [TargetValidation(m, val, list(cols).index(0), config.precision)]

    result: PhasedResult = train_scheduled(
        model, train, pos_weight, config, primary=[0], schedule=schedule, skip=skip, checkpoint=checkpoint,
        identity={**(identity or {}), "target": target, "helpers": list(helpers), "model": config.model,
                  "batch_size": config.batch_size, "lr": config.lr, "seed": config.seed, "augment": config.augment,
                  "precision": config.precision},
        label=slug, monitor=monitor, hooks=hooks, step_offset=step_offset, total_steps=total_steps)
    spe = -(-len(train) // config.batch_size)
    entry: dict[str, Any] = {
        "status": result.status,
        "schedule": schedule.to_meta(),
        "describe": schedule.describe(),
        "val": [r.get(f"val_{metric}") for r in result.history],
        "val_history": {m: [r.get(f"val_{m}") for r in result.history] for m in VAL_METRICS},
        "seconds": round(result.seconds, 3),
        "epoch_seconds": [float(r["seconds"]) for r in result.history],
        "multitask_epochs": result.multitask_epochs,
        "skipped": result.skipped,
        "factors": [schedule.factor_at(e, (e - 1) * spe, epochs=config.epochs, steps_per_epoch=spe)
                    for e in range(1, config.epochs + 1)],
        "loss": [r["loss"] for r in result.history],
    }
    if result.status == "done":
        z = predict_logits(model, test, precision=config.precision)[:, :1].cpu().numpy()
        y = taskset.test.labels[:, columns[:1]].numpy()
        entry["test"] = evaluate_logits(z, y, [target])["per_task"][target]
    return entry


# ------------------------------------------------------------------------------------------------
# On a run directory
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetPlan:
    """What ``train_target_run`` will train: validated inputs; schedules in order (stl, mtl, then
    the one asked for, once each)."""

    run: RunDir
    target: str
    helpers: list[str]
    helpers_from: str
    schedules: list[AuxSchedule]
    taskset: TaskSet
    config: TrainConfig
    device: str
    metric: str

    @property
    def out(self) -> Path:
        return self.run.path / "mt2st" / self.target / self.helpers_from

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.taskset.train) // self.config.batch_size)


def mt2st_dir(run: RunDir, target: str, helpers: str = "all") -> Path:
    """RUN/mt2st/<target>/<helpers>: where ``train_target_run`` writes."""
    return run.path / "mt2st" / target / helpers


def plan_target(
    run: RunDir,
    target: str,
    *,
    helpers: str = "all",
    schedule: AuxSchedule | str = "switch",
    epochs: int | None = None,
    device: str = "auto",
    metric: str = "balanced_accuracy",
    taskset: TaskSet | None = None,
) -> TargetPlan:
    """Validate everything (StgError with a one-line reason); writes nothing."""
    meta = run.read()
    task_names = list(meta["task_names"])
    if target not in task_names:
        shown = ", ".join(task_names[:12]) + (", ..." if len(task_names) > 12 else "")
        raise StgError(f"unknown target {target!r}: run {run.path} has the tasks {shown}")
    check_name(target, "target task name")
    check_name(helpers, "--helpers")
    if metric not in VAL_METRICS:
        raise StgError(f"unknown metric {metric!r}: choose one of {', '.join(VAL_METRICS)}")
    if isinstance(schedule, str):
        schedule = make_schedule(schedule)
    helper_names = resolve_helpers(run, task_names, target, helpers)
    resolve_device(device)
    config, taskset = retrain_inputs(run, meta, epochs=epochs, taskset=taskset)
    epochs = config.epochs
    if len(taskset.val) == 0:
        raise StgError(f"run {run.path} has no validation split: epochs to the stl model's quality need one")
    schedule.check(epochs, -(-len(taskset.train) // config.batch_size))
    order = [make_schedule("stl"), make_schedule("mtl"), schedule]
    schedules = list({s.slug(): s for s in order}.values())
    return TargetPlan(run, target, helper_names, helpers, schedules, taskset, config, device, metric)


def train_target_run(
    run: RunDir,
    target: str,
    *,
    helpers: str = "all",
    schedule: AuxSchedule | str = "switch",
    epochs: int | None = None,
    device: str = "auto",
    metric: str = "balanced_accuracy",
    monitor: Monitor | None = None,
    taskset: TaskSet | None = None,
) -> dict[str, Any]:
    """Train ``target`` of ``run`` under stl, mtl and ``schedule``; write and return
    RUN/mt2st/<target>/<helpers>/metrics.json (module docstring). Re-running resumes; the monitor's
    cancel stops within one step and returns {"status": "cancelled"} without writing metrics."""
    plan = plan_target(run, target, helpers=helpers, schedule=schedule, epochs=epochs, device=device, metric=metric,
                       taskset=taskset)
    monitor = monitor or Monitor()
    cfg, out = plan.config, plan.out
    spe = plan.steps_per_epoch
    total = spe * cfg.epochs * len(plan.schedules)
    settings = {**cfg.to_meta(), "device": device}
    with exclusive(out, "MT2ST training of this target"):
        monitor.emit(Progress("start", 0, cfg.epochs, 0, total, message=(
            f"training {target} with {len(plan.helpers)} helper(s) under "
            f"{', '.join(s.slug() for s in plan.schedules)}")))
        entries: dict[str, dict[str, Any]] = {}
        t0 = time.monotonic()
        for i, s in enumerate(plan.schedules):
            entry = train_target(plan.taskset, target, plan.helpers, s, cfg, device=device, metric=plan.metric,
                                 checkpoint=out / s.slug(), monitor=monitor, step_offset=i * spe * cfg.epochs,
                                 total_steps=total)
            if entry.pop("status") != "done":
                monitor.emit(Progress("cancelled", 0, cfg.epochs, 0, total, message="cancelled; finished epochs are kept"))
                return {"status": "cancelled", "target": target}
            entries[s.slug()] = entry
        previous = _previous(out / "metrics.json", settings, plan)
        entries = {**{k: v for k, v in previous.items() if k not in entries}, **entries}
        goal = compare(entries, plan.metric)
        metrics = {
            "target": target,
            "helpers": plan.helpers,
            "helpers_from": helpers,
            "metric": plan.metric,
            "stl_final_val": goal,
            "schedules": entries,
            "config": settings,
            "n_val": len(plan.taskset.val),
            "n_test": len(plan.taskset.test),
            "wall_seconds": round(time.monotonic() - t0, 3),
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_json(out / "metrics.json", metrics)
        monitor.emit(Progress("done", cfg.epochs, cfg.epochs, total, total, message=f"done: {out / 'metrics.json'}"))
        return metrics


def _previous(path: Path, settings: dict[str, Any], plan: TargetPlan) -> dict[str, dict[str, Any]]:
    """The schedules of an earlier metrics.json in the same folder, when trained with the same
    settings and helpers (else none)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if old.get("config") != settings or old.get("helpers") != plan.helpers or old.get("metric") != plan.metric:
        return {}
    return {k: v for k, v in (old.get("schedules") or {}).items() if isinstance(v, dict) and "test" in v}


def _versions() -> dict[str, str]:
    from stg.datamap.run import versions

    return versions()


def load_target_results(run: RunDir) -> list[dict[str, Any]]:
    """Every RUN/mt2st/<target>/<helpers>/metrics.json of ``run`` (newest first), each with its
    ``path``; unreadable files are skipped."""
    out = []
    for p in sorted((run.path / "mt2st").glob("*/*/metrics.json"), key=lambda q: q.stat().st_mtime, reverse=True):
        try:
            obj = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(obj, dict) and isinstance(obj.get("schedules"), dict):
            out.append({**obj, "path": str(p)})
    return out


def results_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per schedule: test metrics on the target, seconds, epochs and seconds to the stl
    model's final validation metric (for printing and the dashboard)."""
    rows = []
    for slug, e in metrics["schedules"].items():
        row: dict[str, Any] = {"schedule": slug}
        row.update({f"test_{m}": e.get("test", {}).get(m) for m in METRICS})
        row.update({"seconds": e.get("seconds"), "multitask_epochs": e.get("multitask_epochs"),
                    f"final_val_{metrics['metric']}": (e.get("val") or [None])[-1],
                    "epochs_to_stl": e.get("epochs_to_stl"), "seconds_to_stl": e.get("seconds_to_stl")})
        rows.append(row)
    return rows


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """Printable table of ``results_table``."""
    m = metrics["metric"]
    head = (f"{'schedule':<28}{'test bal.acc':>13}{'test auroc':>11}{'seconds':>9}{'mtl epochs':>11}"
            f"{'final val':>10}{'to stl':>8}{'s to stl':>9}")
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    lines = [f"target {metrics['target']} with {len(metrics['helpers'])} helper(s) ({metrics['helpers_from']}); "
             f"validation metric {m}; stl's final: {fmt(metrics.get('stl_final_val'), '.4f')}", head, "-" * len(head)]
    for r in results_table(metrics):
        lines.append(f"{r['schedule']:<28}{fmt(r['test_balanced_accuracy'], '.4f'):>13}{fmt(r['test_auroc'], '.4f'):>11}"
                     f"{fmt(r['seconds'], '.1f'):>9}{fmt(r['multitask_epochs'], 'd'):>11}"
                     f"{fmt(r[f'final_val_{m}'], '.4f'):>10}{fmt(r['epochs_to_stl'], 'd'):>8}"
                     f"{fmt(r['seconds_to_stl'], '.1f'):>9}")
    return lines
