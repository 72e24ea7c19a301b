"""The data-map run (STG-MTL step 1): one multi-task model on all tasks, trained through the one
training loop (``stg.train.loop``) with the data-map recorder as its hook, into a run directory.

This module owns the run directory's life cycle: check ``--out``, create or re-open RUN/run.json
(a run is resumed only with the same settings), hold RUN/.lock while training, write each epoch's
data map, checkpoint and history, and record how the run stopped (done, cancelled, failed, out of
memory). The step itself, determinism and resume are the loop's (see ``stg.train.loop``).
"""

from __future__ import annotations

import json
import platform
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from stg import __version__
from stg.affinity.files import AffinityConfig
from stg.data.spec import DataSpec
from stg.data.taskset import TaskSet
from stg.datamap.recorder import DataMapRecorder
from stg.errors import StgError
from stg.runs.rundir import LOCK_NAME, RunDir, atomic_save, exclusive
from stg.train.config import TrainConfig
from stg.train.device import DeviceData, channel_stats, predict_logits, prepare_model, resolve_device
from stg.train.hooks import Hook, StepContext
from stg.train.loop import Monitor, Progress, checkpoint_epoch, replace_epochs, train_loop
from stg.train.loss import weighted_bce
from stg.train.models import build_model
from stg.train.rng import seeded
from stg.train.schedules import Constant


class RecordDataMap(Hook):
    """The data-map recorder as a training hook: a Welford update with each step's own logits
    after the update (captured in the CUDA graph: no host sync), and the epoch's snapshot written
    to RUN/datamap/epoch_NNN.npz at the end of the epoch."""

    def __init__(self, recorder: DataMapRecorder, run: RunDir):
        self.recorder, self.run = recorder, run

    def after_update(self, ctx: StepContext) -> None:
        self.recorder.update(ctx.index, ctx.logits, ctx.targets)

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        self.run.write_datamap(epoch, self.recorder.snapshot())
        return {}

    def state_dict(self) -> dict[str, Any]:
        return self.recorder.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recorder.load_state_dict(state)


class Validate(Hook):
    """Validation loss and balanced accuracy at the end of every epoch, for the history."""

    def __init__(self, model: torch.nn.Module, val: DeviceData, pos_weight: torch.Tensor, precision: str):
        self.model, self.val, self.pos_weight, self.precision = model, val, pos_weight, precision

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        logits = predict_logits(self.model, self.val, precision=self.precision)
        return quick_metrics(logits, self.val.labels, self.pos_weight)


def quick_metrics(logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor) -> dict[str, float]:
    """Mean-over-tasks loss and balanced accuracy (as ``stg.specialists.evaluate``) of (N, T) logits against (N, T) labels."""
    from stg.specialists.evaluate import binary_metrics

    if logits.shape[0] == 0:
        return {}
    loss = weighted_bce(logits, labels, pos_weight=pos_weight, task_weights=torch.ones_like(pos_weight))
    balanced = binary_metrics(logits, labels)["balanced_accuracy"]
    return {"val_loss": float(loss) / labels.shape[1], "val_balanced_accuracy": float(np.nanmean(balanced))}


def versions() -> dict[str, str]:
    return {"stg": __version__, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".stg-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise StgError(f"cannot write to {path}: {e.strerror or e}") from None


def _identity(config: TrainConfig, data_spec: dict[str, Any], affinity: AffinityConfig) -> dict[str, Any]:
    """What must match for a run directory to be resumed (epochs may grow, device may change)."""
    cfg = config.to_meta()
    cfg.pop("epochs")
    cfg.pop("device")
    return {"train": cfg, "data": data_spec} | ({"affinity": affinity.to_meta()} if affinity.methods else {})


def check_out(out: Path) -> None:
    """``out`` must be a new folder, or one that holds an stg run; and writable. Writes nothing else."""
    if out.exists() and not out.is_dir():
        raise StgError(f"--out {out} exists and is not a directory")
    if out.is_dir() and not RunDir(out).exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise StgError(f"--out {out} is not empty and holds no stg run: choose a new folder")
    _check_writable(out)


def open_run(
    out: Path, taskset: TaskSet, config: TrainConfig, data_spec: dict[str, Any],
    affinity: AffinityConfig = AffinityConfig(),
) -> tuple[RunDir, dict[str, Any], bool]:
    """Create ``out`` as a new run, or check it holds the same run to resume. Returns (run, meta, resumed)."""
    run = RunDir(out)
    identity = _identity(config, data_spec, affinity)
    if run.exists():
        meta = run.read()
        if meta.get("kind") != "datamap":
            raise StgError(f"--out {out} holds a {meta.get('kind', 'foreign')!r} run, not a data-map run")
        if meta.get("identity") != identity:
            diff = _describe_difference(meta.get("identity", {}), identity)
            raise StgError(f"--out {out} holds another run ({diff}): choose a new folder or the same settings")
        if list(meta["task_names"]) != list(taskset.task_names):
            raise StgError(f"--out {out} holds a run with different tasks: choose a new folder")
        meta["config"] = config.to_meta()
        return run, meta, True
    meta = {
        "kind": "datamap",
        "status": "running",
        "config": config.to_meta(),
        "identity": identity,
        "data": data_spec,
        "affinity": affinity.to_meta(),
        "dataset": taskset.dataset,
        "tasks_spec": taskset.tasks_spec,
        "task_names": list(taskset.task_names),
        "task_kinds": [dict(k) for k in taskset.task_kinds],
        "references": taskset.references,
        "n_train": len(taskset.train),
        "n_val": len(taskset.val),
        "n_test": len(taskset.test),
        "image_shape": list(taskset.image_shape),
        "pos_weight": [float(p) for p in taskset.pos_weight.tolist()],
        "epochs_done": 0,
        "history": [],
        "timings": {},
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    run.write(meta)
    samples = {
        "index": taskset.train.index.numpy().astype(np.int64),
        "classes": taskset.train.classes.numpy().astype(np.int64),
        "labels": taskset.train.labels.numpy().astype(np.uint8),
    }
    atomic_save(run.path / "samples.npz", lambda f: np.savez(f, **samples))
    return run, meta, False


def _describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    diffs = []
    for part in ("train", "data"):
        a, b = old.get(part, {}), new.get(part, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                diffs.append(f"{key}={a.get(key)!r}, not {b.get(key)!r}")
    return "; ".join(diffs[:3]) or "different settings"


def train_datamap(
    taskset: TaskSet,
    config: TrainConfig,
    out: str | Path,
    *,
    data_spec: DataSpec | None = None,
    monitor: Monitor | None = None,
    hooks: Sequence[Hook] = (),
    affinity: AffinityConfig = AffinityConfig(),
) -> dict[str, Any]:
    """Train one multi-task model on all tasks of ``taskset`` and record its data maps in ``out``.

    ``affinity``: also record TAG's lookahead affinity and/or the gradient cosine every F steps
    into RUN/affinity/ (``stg.affinity.probe``), in the same training run. ``hooks`` run in the
    training loop after the data-map recorder and the affinity probes (``stg.train.hooks``).
    Re-running on the same ``out`` resumes from the last finished epoch (same results as an
    uninterrupted run). ``monitor`` gets progress events; its cancel stops within one step: the
    run is marked cancelled and keeps its last finished epoch. Returns the final run.json contents.
    """
    config.validate(len(taskset.train))
    device = resolve_device(config.device)
    c, h, w = taskset.image_shape
    if h != w:
        raise StgError(f"images must be square, got {h}x{w}")
    out = Path(out)
    spec = data_spec if data_spec is not None else DataSpec(taskset.dataset, tasks=taskset.tasks_spec)
    check_out(out)
    with exclusive(out, "data-map run"):
        return _train_datamap_locked(taskset, config, out, spec, device, monitor or Monitor(), hooks, affinity)


def _train_datamap_locked(
    taskset: TaskSet,
    config: TrainConfig,
    out: Path,
    spec: DataSpec,
    device: torch.device,
    monitor: Monitor,
    hooks: Sequence[Hook],
    affinity: AffinityConfig,
) -> dict[str, Any]:
    """train_datamap's body, run while holding the run directory's lock: a failure is recorded in
    run.json (status failed or cancelled, and the error), and running out of memory becomes a
    one-line StgError."""
    run, meta, resumed = open_run(out, taskset, config, spec.to_meta(), affinity)
    if affinity.methods:
        from stg.affinity.probe import probes  # lazy: torch.func machinery

        hooks = [*probes(run.path, affinity), *hooks]
    try:
        return _train_run(run, meta, resumed, taskset, config, device, monitor, hooks)
    except BaseException as e:
        record, oom = training_stopped(e, f"training {config.model} at batch size {config.batch_size}", device)
        meta.update(record)
        run.write(meta)
        if oom is not None:
            raise oom from None
        raise


def _train_run(
    run: RunDir,
    meta: dict[str, Any],
    resumed: bool,
    taskset: TaskSet,
    config: TrainConfig,
    device: torch.device,
    monitor: Monitor,
    hooks: Sequence[Hook],
) -> dict[str, Any]:
    c, h, _ = taskset.image_shape
    mean, std = channel_stats(taskset.train.images)
    train = DeviceData(taskset.train, device, mean, std)
    val = DeviceData(taskset.val, device, mean, std)
    pos_weight = taskset.pos_weight.to(device=device, dtype=torch.float32)
    model = seeded(config.seed, lambda: build_model(config.model, in_channels=c, size=h, n_tasks=taskset.n_tasks))
    model = prepare_model(model, device)
    recorder = DataMapRecorder(len(train), taskset.n_tasks, device=device, ddof=config.ddof)
    all_hooks = [RecordDataMap(recorder, run), Validate(model, val, pos_weight, config.precision), *hooks]
    start_epoch = checkpoint_epoch(run.checkpoint)[0] if resumed and run.checkpoint.is_file() else 0
    meta.update(status="running", epochs_done=start_epoch, device=str(device), error=None)
    meta["history"] = meta.get("history", [])[:start_epoch]
    run.write(meta)

    steps_per_epoch = -(-len(train) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    monitor.emit(Progress("start", start_epoch, config.epochs, start_epoch * steps_per_epoch, total_steps,
                          message=f"{'resuming' if resumed else 'starting'} on {device}"))

    def after_epoch(epoch: int, record: dict[str, Any]) -> None:
        meta["history"] = meta["history"][: epoch - 1] + [record]
        meta.update(epochs_done=epoch, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
        meta["timings"] = {"train_seconds": round(sum(r["seconds"] for r in meta["history"]), 3)}
        run.write(meta)

    result = train_loop(model, train, pos_weight, config, schedule=Constant(torch.ones(taskset.n_tasks)),
                        hooks=all_hooks, checkpoint=run.checkpoint, identity=json.dumps(meta["identity"], sort_keys=True),
                        monitor=monitor, after_epoch=after_epoch)
    if result.status == "cancelled":
        meta.update(status="cancelled")
        run.write(meta)
        done = result.epochs_done
        monitor.emit(Progress("cancelled", done, config.epochs, done * steps_per_epoch, total_steps,
                              message="cancelled; the run keeps its last finished epoch"))
        return meta
    meta.update(status="done")
    run.write(meta)
    monitor.emit(Progress("done", config.epochs, config.epochs, total_steps, total_steps, message=f"done: {run.path}"))
    return meta


def retrain_inputs(run: RunDir, meta: dict[str, Any], *, epochs: int | None,
                   taskset: TaskSet | None) -> tuple[TrainConfig, TaskSet]:
    """What a later training on a data-map run's data uses (grouped training, ``stg mt2st``): the
    run's TrainConfig with ``epochs`` (default: the run's), and its task set (rebuilt from run.json
    when None), checked to be the run's. StgError with a one-line reason; writes nothing."""
    config = TrainConfig.from_meta(meta.get("config"))
    epochs = config.epochs if epochs is None else int(epochs)
    if epochs < 1:
        raise StgError(f"--epochs must be at least 1, got {epochs}")
    config = replace_epochs(config, epochs)
    if taskset is None:
        from stg.data.datasets import load_taskset_from_spec  # lazy: loaders are heavy

        taskset = load_taskset_from_spec(meta.get("data"))
    if list(taskset.task_names) != list(meta["task_names"]) or \
            len(taskset.train) != meta.get("n_train", len(taskset.train)):
        raise StgError(f"the task set does not match run {run.path} (tasks or training split differ)")
    config.validate(len(taskset.train))
    return config, taskset


def training_stopped(
    e: BaseException, what: str, device: torch.device | str
) -> tuple[dict[str, Any], StgError | None]:
    """How a training that ``e`` stopped is recorded ({status, error}, for run.json or status.json),
    and the one-line StgError to raise instead of ``e`` when it ran out of memory (GPU or host)
    while ``what``, else None."""
    if isinstance(e, KeyboardInterrupt):
        return {"status": "cancelled", "error": None}, None
    if not isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return {"status": "failed", "error": f"{type(e).__name__}: {e}"}, None
    tried = re.search(r"[Tt]ried to allocate [\d.]+ \w+", str(e))
    detail = f" ({tried.group(0).lower()})" if tried else ""
    oom = StgError(f"out of memory on {device}{detail} while {what}: use a smaller --batch-size or model; "
                   "finished epochs are kept, so the same command resumes")
    return {"status": "failed", "error": str(oom)}, oom


