"""The data-map run (STG-MTL step 1): one multi-task model on all tasks, trained through the one
training loop (``stg.train.loop``) with the data-map recorder as its hook, into a run directory.

This module owns the run directory's life cycle: check ``--out``, create or re-open RUN/run.json
(a run is resumed only with the same settings), hold RUN/.lock while training, write each epoch's
data map, checkpoint and history, and record how the run stopped (done, cancelled, failed, out of
memory). The step itself, determinism and resume are the loop's (see ``stg.train.loop``).
"""

from __future__ import annotations

import contextlib
import json
import platform
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from stg import __version__
from stg.affinity.files import AffinityConfig
from stg.data.spec import DataSpec
from stg.data.taskset import TaskSet
from stg.datamap.recorder import DataMapRecorder
from stg.datamap.shards import ShardedRecorder
from stg.errors import StgError
from stg.runs.rundir import LOCK_NAME, RunDir, atomic_save, exclusive
from stg.runs.writer import EpochWriter
from stg.train.config import STORAGE_FIELDS, TrainConfig, keep_every
from stg.train.device import DeviceData, channel_stats, predict_logits, prepare_model, resolve_device
from stg.train.distributed import Distributed, ShardedData, refuse_hooks, session
from stg.train.hooks import Hook, StepContext
from stg.train.loop import Monitor, Progress, replace_epochs, train_loop
from stg.train.loss import weighted_bce
from stg.train.models import build_model
from stg.train.rng import seeded
from stg.train.schedules import Constant


class RecordDataMap(Hook):
    """The data-map recorder as a training hook: a Welford update with each step's own logits
    after the update (captured in the CUDA graph: no host sync), and the epoch's snapshot written
    to RUN/datamap/epoch_NNN.npz at the end of the epoch."""

    def __init__(self, recorder: DataMapRecorder, run: RunDir, *, dtype: str = "float32", keep_every: int = 1,
                 writer: EpochWriter | None = None):
        self.recorder, self.run = recorder, run
        self.dtype, self.keep_every = dtype, keep_every  # storage: see RunDir.write_datamap
        self.writer = writer  # None: write in the training thread

    def after_update(self, ctx: StepContext) -> None:
        self.recorder.update(ctx.index, ctx.logits, ctx.targets)

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        snapshot = self.recorder.snapshot()  # fresh numpy copies: the next epoch cannot change them
        write = lambda: self.run.write_datamap(epoch, snapshot, dtype=self.dtype, keep_every=self.keep_every)  # noqa: E731
        if self.writer is None:
            write()
        else:
            self.writer.submit(epoch, write)
        return {}

    def state_dict(self) -> dict[str, Any]:
        return self.recorder.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recorder.load_state_dict(state)


class StopWhenDiverged(Hook):
    """Stops the run with a one-line error at the end of an epoch whose weights are no longer
    finite (a learning rate far too large): that epoch is never written, so the run keeps its last
    good epoch and run.json never holds a bare NaN. One host sync per epoch."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        finite = torch.stack([p.detach().isfinite().all() for p in self.model.parameters()]).all()
        if not bool(finite):
            raise StgError(f"training diverged in epoch {epoch} (the weights are no longer finite numbers): use a "
                           f"smaller --lr; the run keeps its {epoch - 1} finished epoch(s)")
        return {}


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
    for key in STORAGE_FIELDS:  # how snapshots are stored may change between sessions of one run
        cfg.pop(key)
    return {"train": cfg, "data": data_spec} | ({"affinity": affinity.to_meta()} if affinity.methods else {})


def _own_leftover(path: Path) -> bool:
    """What a run killed before its first run.json leaves in --out: the lock, samples.npz, temp files."""
    return path.name in (LOCK_NAME, "samples.npz") or (path.name.startswith(".") and path.name.endswith(".tmp"))


def check_out(out: Path) -> None:
    """``out`` must be a new folder, or one that holds an stg run; and writable. Writes nothing else."""
    if out.exists() and not out.is_dir():
        raise StgError(f"--out {out} exists and is not a directory")
    if out.is_dir() and not RunDir(out).exists() and any(not _own_leftover(p) for p in out.iterdir()):
        raise StgError(f"--out {out} is not empty and holds no stg run: choose a new folder")
    for part in ("datamap", "affinity", "groupings", "groups", "samples.npz", "checkpoint.pt", "run.json"):
        if (out / part).is_symlink():  # writes would land in another run (or anywhere)
            raise StgError(f"--out {out}: {part} is a symbolic link; a run's files must be its own")
    _check_writable(out)


def open_run(
    out: Path, taskset: TaskSet, config: TrainConfig, data_spec: dict[str, Any],
    affinity: AffinityConfig = AffinityConfig(),
) -> tuple[RunDir, dict[str, Any], bool]:
    """Create ``out`` as a new run, or check it holds the same run to resume. Returns (run, meta, resumed)."""
    run = RunDir(out)
    identity = _identity(config, data_spec, affinity)
    _remove_temp_files(run)  # a killed writer's; we hold the lock, so no writer of ours is live
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
    write_samples(run, taskset)  # before run.json: a run.json on disk means samples.npz is there
    run.write(meta)
    return run, meta, False


def _samples(taskset: TaskSet) -> dict[str, np.ndarray]:
    return {
        "index": taskset.train.index.numpy().astype(np.int64),
        "classes": taskset.train.classes.numpy().astype(np.int64),
        "labels": np.nan_to_num(taskset.train.labels.numpy(), nan=255).astype(np.uint8),  # 255: missing label
    }


def write_samples(run: RunDir, taskset: TaskSet) -> None:
    """RUN/samples.npz: index, classes and labels of every training sample (data-map row order)."""
    samples = _samples(taskset)
    atomic_save(run.path / "samples.npz", lambda f: np.savez(f, **samples))


def _samples_ok(run: RunDir, taskset: TaskSet) -> bool:
    """Whether RUN/samples.npz loads and holds exactly this task set's training samples."""
    try:
        with np.load(run.path / "samples.npz", allow_pickle=False) as z:
            return all(np.array_equal(z[k], v) for k, v in _samples(taskset).items())
    except Exception:  # missing, truncated, foreign: re-created from the task set
        return False


def _snapshot_ok(run: RunDir, epoch: int, shape: tuple[int, int]) -> bool:
    """Whether data map ``epoch`` loads with the (T, N) ``shape`` of this run."""
    try:
        dm = run.load_datamap(epoch)
    except StgError:
        return False
    return all(v.shape == shape for v in dm.values())


def _remove_temp_files(run: RunDir) -> None:
    """Temporary files a killed writer left behind (``atomic_save``'s ``.NAME.*.tmp``)."""
    for folder in (run.path, run.datamap_dir, *(run.path / "affinity").glob("*")):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


def verify_resume(run: RunDir, meta: dict[str, Any], taskset: TaskSet, config: TrainConfig) -> dict[str, Any]:
    """Check, before anything is written, that a run can be resumed, and re-create what it can.

    The checkpoint is the source of truth of a resumed run: its epoch is where training goes on
    and its history replaces run.json's (a kill between the checkpoint and run.json loses no
    epoch). It must load and not be ahead of ``config.epochs`` (else StgError, and the run is left
    as it was). samples.npz is re-created when missing or corrupt; the checkpointed epoch's
    snapshot is re-created from the recorder state in the checkpoint; an older snapshot that no
    longer loads is moved aside to ``epoch_NNN.npz.corrupt`` (it cannot be re-created);
    snapshots after the checkpoint's epoch (never committed) are removed, as are temp files.
    Returns {"epoch", "history", "repairs": [one line per repair]}.
    """
    from stg.train.loop import load_checkpoint

    epoch, history, recorder_state = 0, [], None
    if run.checkpoint.is_file():
        state = load_checkpoint(run.checkpoint)  # StgError when unreadable: nothing written yet
        if json.loads(state["identity"] or "null") != meta.get("identity"):
            raise StgError(f"{run.checkpoint} holds another training: move it away to restart")
        epoch = int(state["epoch"])
        if epoch > config.epochs:
            raise StgError(f"{run.checkpoint} is already trained for {epoch} epochs, more than the {config.epochs} "
                           "asked for: ask for at least that many or move it away")
        try:
            history = json.loads(state["history"])
        except (TypeError, ValueError):
            raise StgError(f"checkpoint {run.checkpoint} is corrupt (history): move it away to restart") from None
        recorder_state = state["hooks"].get("RecordDataMap") if isinstance(state["hooks"], dict) else None
    repairs = []
    if not _samples_ok(run, taskset):
        write_samples(run, taskset)
        repairs.append("re-created samples.npz")
    shape = (taskset.n_tasks, len(taskset.train))
    for e in run.datamap_epochs():
        if e > epoch:
            run.datamap_path(e).unlink(missing_ok=True)
        elif e < epoch and not _snapshot_ok(run, e, shape):
            run.datamap_path(e).replace(run.datamap_path(e).with_name(run.datamap_path(e).name + ".corrupt"))
            repairs.append(f"data map of epoch {e} was corrupt: moved to {run.datamap_path(e).name}.corrupt")
    if epoch and recorder_state is not None and not _snapshot_ok(run, epoch, shape):
        recorder = DataMapRecorder(shape[1], shape[0], device=torch.device("cpu"), ddof=config.ddof)
        recorder.load_state_dict(recorder_state)
        run.write_datamap(epoch, recorder.snapshot(), dtype=config.snapshot_dtype)
        repairs.append(f"re-created the data map of epoch {epoch} from the checkpoint")
    return {"epoch": epoch, "history": history, "repairs": repairs}


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
    background_writes: bool = True,
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
    c, h, w = taskset.image_shape
    if h != w:
        raise StgError(f"images must be square, got {h}x{w}")
    out = Path(out)
    spec = data_spec if data_spec is not None else DataSpec(taskset.dataset, tasks=taskset.tasks_spec)
    with session(config.device) as dist:  # None unless torchrun started several processes
        if dist is not None:
            return _train_datamap_distributed(taskset, config, out, spec, dist, monitor or Monitor(), hooks,
                                              affinity, background_writes)
        device = resolve_device(config.device)
        check_out(out)
        with exclusive(out, "data-map run"):
            return _train_datamap_locked(taskset, config, out, spec, device, monitor or Monitor(), hooks, affinity,
                                         background_writes)


def _train_datamap_locked(
    taskset: TaskSet,
    config: TrainConfig,
    out: Path,
    spec: DataSpec,
    device: torch.device,
    monitor: Monitor,
    hooks: Sequence[Hook],
    affinity: AffinityConfig,
    background_writes: bool = True,
    dist: Distributed | None = None,
    ready: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """train_datamap's body, run while holding the run directory's lock: a failure is recorded in
    run.json (status failed or cancelled, and the error), and running out of memory becomes a
    one-line StgError. With ``dist``, this is rank 0 of several; ``ready`` tells the others that
    the run directory is open and training starts."""
    run, meta, resumed = open_run(out, taskset, config, spec.to_meta(), affinity)
    # a resume that cannot go on fails here, before anything is written: the run stays as it was
    resume = verify_resume(run, meta, taskset, config) if resumed else {"epoch": 0, "history": [], "repairs": []}
    if affinity.methods:
        from stg.affinity.probe import probes  # lazy: torch.func machinery

        hooks = [*probes(run.path, affinity), *hooks]
    writer = EpochWriter(background=background_writes)
    committed: dict[str, Any] = {}  # the run.json last written (the background writer's may lag meta)
    try:
        return _train_run(run, meta, resume, taskset, config, device, monitor, hooks, writer, committed, dist, ready)
    except BaseException as e:
        writer.close(raise_errors=False)  # the last complete epoch's files reach the disk
        record, oom = training_stopped(e, f"training {config.model} at batch size {config.batch_size}", device)
        if committed or not resumed:  # a resume that failed before it wrote anything leaves the run as it was
            run.write({**(committed or meta), **record})
        if oom is not None:
            raise oom from None
        raise


def _train_run(
    run: RunDir,
    meta: dict[str, Any],
    resume: dict[str, Any],
    taskset: TaskSet,
    config: TrainConfig,
    device: torch.device,
    monitor: Monitor,
    hooks: Sequence[Hook],
    writer: EpochWriter,
    committed: dict[str, Any],
    dist: Distributed | None = None,
    ready: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    c, h, _ = taskset.image_shape
    mean, std = channel_stats(taskset.train.images)
    train = DeviceData(taskset.train, device, mean, std) if dist is None else ShardedData(taskset.train, dist, mean, std)
    val = DeviceData(taskset.val, device, mean, std)
    pos_weight = taskset.pos_weight.to(device=device, dtype=torch.float32)
    model = seeded(config.seed, lambda: build_model(config.model, in_channels=c, size=h, n_tasks=taskset.n_tasks))
    model = prepare_model(model, device)
    recorder = DataMapRecorder(len(train), taskset.n_tasks, device=device, ddof=config.ddof) if dist is None else \
        ShardedRecorder(len(train), taskset.n_tasks, dist, device=device, ddof=config.ddof)
    storage = {"dtype": config.snapshot_dtype, "keep_every": keep_every(config.keep_epochs)}
    all_hooks = [StopWhenDiverged(model), RecordDataMap(recorder, run, **storage, writer=writer),
                 Validate(model, val, pos_weight, config.precision), *hooks]
    start_epoch = resume["epoch"]
    meta.update(status="running", epochs_done=start_epoch, device=str(device), error=None)
    if dist is not None:
        meta["processes"] = dist.world  # torchrun ranks that train this session
    else:
        meta.pop("processes", None)
    meta["history"] = resume["history"]  # the checkpoint's: run.json may lag it by one epoch
    if resume["repairs"]:
        meta["repairs"] = [*meta.get("repairs", []), *resume["repairs"]]
    run.write(meta)
    committed.update(json.loads(json.dumps(meta)))

    steps_per_epoch = -(-len(train) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    monitor.emit(Progress("start", start_epoch, config.epochs, start_epoch * steps_per_epoch, total_steps,
                          message=f"{'resuming' if start_epoch else 'starting'} on {device}"
                          + "".join(f"; {r}" for r in resume["repairs"])))

    def after_epoch(epoch: int, record: dict[str, Any]) -> None:
        meta["history"] = meta["history"][: epoch - 1] + [record]
        meta.update(epochs_done=epoch, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
        meta["timings"] = {"train_seconds": round(sum(r["seconds"] for r in meta["history"]), 3)}
        frozen = json.loads(json.dumps(meta))  # after the epoch's snapshot and checkpoint, in order

        def write() -> None:
            run.write(frozen)
            committed.clear()
            committed.update(frozen)

        writer.submit(epoch, write)

    ready()
    result = train_loop(model, train, pos_weight, config, schedule=Constant(torch.ones(taskset.n_tasks)),
                        hooks=all_hooks, checkpoint=run.checkpoint, identity=json.dumps(meta["identity"], sort_keys=True),
                        monitor=monitor, after_epoch=after_epoch, writer=writer, dist=dist)
    writer.close()  # every epoch's files are on disk before the run says how it ended
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


# -- several processes (torchrun): see stg.train.distributed ----------------------------------------
def _train_datamap_distributed(
    taskset: TaskSet,
    config: TrainConfig,
    out: Path,
    spec: DataSpec,
    dist: Distributed,
    monitor: Monitor,
    hooks: Sequence[Hook],
    affinity: AffinityConfig,
    background_writes: bool,
) -> dict[str, Any]:
    """One rank of a data-map run on several processes. Rank 0 does everything a 1-process run does
    (checks ``out``, holds the lock, opens or resumes the run, validates, writes every file after
    gathering the others' shards, reports progress) and tells the others when training starts, or
    why it cannot; the other ranks train their slices and send rank 0 their rows. Every rank returns
    rank 0's final run.json contents."""
    # --affinity: rank 0 alone probes (its hooks see the global batch, as one process's do); the
    # probes use no collective, so the other ranks simply wait for it at the next step
    refuse_hooks(hooks, "a data-map run with extra training hooks")
    dist.check_batches(len(taskset.train), config.batch_size)
    if not dist.is_writer:
        return _follow_run(taskset, config, out, spec, dist, monitor, affinity)
    told = [False]

    def ready() -> None:
        told[0] = True
        dist.on_writer(lambda: None)

    try:
        check_out(out)
        with exclusive(out, "data-map run"):
            meta = _train_datamap_locked(taskset, config, out, spec, dist.device, monitor, hooks, affinity,
                                         background_writes, dist=dist, ready=ready)
    except BaseException as e:
        if not told[0]:  # the other ranks are waiting to hear whether training starts
            with contextlib.suppress(BaseException):
                dist.on_writer(lambda: _raise(e))
        raise
    return dist.on_writer(lambda: meta)


def _raise(e: BaseException) -> None:
    raise e


class _NoWrites:
    """The epoch writer of a rank that is not rank 0: its files are rank 0's to write."""

    def submit(self, epoch: int, fn: Callable[[], None]) -> None:
        pass

    def close(self, raise_errors: bool = True) -> None:
        pass


def _follow_run(taskset: TaskSet, config: TrainConfig, out: Path, spec: DataSpec, dist: Distributed,
                monitor: Monitor, affinity: AffinityConfig) -> dict[str, Any]:
    """A rank other than 0: wait for rank 0 to open the run, then train this rank's slices."""
    c, h, _ = taskset.image_shape
    mean, std = channel_stats(taskset.train.images)
    train = ShardedData(taskset.train, dist, mean, std)
    pos_weight = taskset.pos_weight.to(device=dist.device, dtype=torch.float32)
    model = seeded(config.seed, lambda: build_model(config.model, in_channels=c, size=h, n_tasks=taskset.n_tasks))
    model = prepare_model(model, dist.device)
    recorder = ShardedRecorder(len(train), taskset.n_tasks, dist, device=dist.device, ddof=config.ddof)
    # rank 0's hooks in the same order, less its writes and validation (parameters are equal on every
    # rank, so a diverged run stops on all of them at the same point)
    hooks = [StopWhenDiverged(model), RecordDataMap(recorder, RunDir(out), writer=_NoWrites())]  # type: ignore[arg-type]
    identity = json.dumps(_identity(config, spec.to_meta(), affinity), sort_keys=True)  # as rank 0's run.json
    dist.on_writer(lambda: None)  # rank 0 has opened the run (or raises its error here)
    train_loop(model, train, pos_weight, config, schedule=Constant(torch.ones(taskset.n_tasks)), hooks=hooks,
               checkpoint=RunDir(out).checkpoint, identity=identity, monitor=Monitor(cancel=monitor.cancel),
               dist=dist)
    return dist.on_writer(lambda: None)  # type: ignore[return-value]  (rank 0 sends its run.json)


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


