"""The training engine: one multi-task model on all tasks, recording data maps into a run directory.

Hot loop (per step, no per-sample Python, no host sync): gather a batch of uint8 images already
resident on the device, crop/flip on the device, forward (channels_last; bf16 autocast on CUDA and
on CPUs with native bf16, see ``use_bf16``),
one vectorised weighted BCE over (B, T), backward, Adam, then a Welford update of the data map with
the step's own logits, then any probes. On CUDA that whole step is captured once in a CUDA graph and
replayed for every full-size batch (``stg.stepgraph``).

Determinism: every epoch re-seeds its RNG streams from (seed, epoch), so a run resumed from its
last finished epoch continues exactly as an uninterrupted run would (bitwise on CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import platform
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from stg import __version__
from stg.augment import crop_flip
from stg.datamap import DataMapRecorder
from stg.errors import StgError
from stg.hostmem import retain_freed_memory
from stg.loss import weighted_bce
from stg.models import MODEL_NAMES, build_model
from stg.rundir import LOCK_NAME, RunDir, atomic_save, exclusive
from stg.stepgraph import StepGraph
from stg.taskset import Split, TaskSet


PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``ddof`` applies to the data map's variability (see ``stg.datamap``)."""

    model: str = "cnn"
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    augment: bool = True
    ddof: int = 0
    precision: str = "auto"

    def validate(self, n_train: int) -> None:
        if self.model not in MODEL_NAMES:
            raise StgError(f"unknown model {self.model!r}: choose one of {', '.join(MODEL_NAMES)}")
        if self.epochs < 1:
            raise StgError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise StgError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.batch_size > n_train:
            raise StgError(f"--batch-size {self.batch_size} is larger than the training split ({n_train} images)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise StgError(f"--lr must be a positive number, got {self.lr}")
        if self.ddof not in (0, 1):
            raise StgError(f"--ddof must be 0 or 1, got {self.ddof}")
        if self.precision not in PRECISIONS:
            raise StgError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class Progress:
    """One progress event. kind: start | step | epoch | done | cancelled | failed."""

    kind: str
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float = float("nan")
    images_per_s: float = 0.0
    eta_s: float = float("nan")
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class StepInfo:
    """What a probe sees after each optimizer step (the step's own forward pass). The tensors are
    valid during ``on_step`` only: on CUDA they are a graph's outputs, rewritten by the next step."""

    model: nn.Module
    images: torch.Tensor  # (B, C, H, W) float, the augmented, normalised batch
    logits: torch.Tensor  # (B, T) float32, detached
    targets: torch.Tensor  # (B, T) float32
    index: torch.Tensor  # (B,) int64 rows of the training split
    epoch: int  # 1-based
    step: int  # global step, 0-based


class Probe(Protocol):
    """A per-step hook (TAG's lookahead affinity plugs in here). Must not sync the host."""

    def on_step(self, info: StepInfo) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


EventFn = Callable[[Progress], None]


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N`` (the N-th visible GPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    index = name[len("cuda:"):] if name.startswith("cuda:") else None
    if name != "cuda" and not (index is not None and index.isdigit()):
        raise StgError(f"unknown device {name!r}: choose auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise StgError(f"--device {name} was asked for but no CUDA GPU is available: use --device cpu or auto")
    if index is not None and int(index) >= torch.cuda.device_count():
        raise StgError(f"--device {name}: there is no such GPU ({torch.cuda.device_count()} visible, "
                       "numbered from 0)")
    return torch.device(name)


def device_choices() -> list[str]:
    """What a user can pick: auto, cpu, and cuda (plus cuda:0, cuda:1, ... with several GPUs)."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["auto", "cpu", "cuda"] + ([f"cuda:{i}" for i in range(n)] if n > 1 else [])


class DeviceData:
    """A split resident on the device: uint8 images stored (N, H, W, C), float labels (N, T)."""

    def __init__(self, split: Split, device: torch.device, mean: torch.Tensor, std: torch.Tensor):
        self.images = split.images.permute(0, 2, 3, 1).contiguous().to(device)  # channels-last storage
        self.labels = split.labels.to(device=device, dtype=torch.float32)
        self.shift = (-mean / std).to(device)  # (C,): x_norm = x * scale + shift
        self.scale = (1.0 / std).to(device)
        self.device = device

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(
        self, index: torch.Tensor, *, augment: bool, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) rows -> normalised float images (B, C, H, W) in channels_last memory, labels (B, T)."""
        x = self.images[index]  # (B, H, W, C) uint8
        if augment:
            assert generator is not None
            x = crop_flip(x, pad=max(1, x.shape[2] // 8), generator=generator)
        x = torch.addcmul(self.shift, x.float(), self.scale)  # (B, H, W, C) float32
        return x.permute(0, 3, 1, 2), self.labels[index]


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in pixel units: two (C,) tensors."""
    sample = images[: min(len(images), 10_000)].double()
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1.0)
    return mean.float(), std.float()


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """A shuffled pass over n rows in batches (the last may be smaller): every row once."""
    perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
    return list(perm.split(batch_size))


def epoch_generator(seed: int, epoch: int, device: torch.device,
                    generator: torch.Generator | None = None) -> torch.Generator:
    """The epoch's RNG stream (shuffle + augmentation); also re-seeds dropout's global RNG.
    Re-seeds ``generator`` in place when given (a CUDA graph keeps reading the generator it was
    captured with), else makes a new one."""
    torch.manual_seed(seed * 1_000_003 + epoch)
    g = generator if generator is not None else torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + epoch)
    return g


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    """bf16 autocast: on GPUs with native bf16 (NVIDIA compute capability 8.0 and up, ROCm), and on
    CPUs with native bf16 units (AMX or AVX512-BF16), where it doubles the paper CNN's training rate;
    plain fp32 elsewhere (emulated bf16 would be slower)."""
    if precision != "auto":
        return precision == "bf16"
    return _native_bf16(device)


@functools.lru_cache(maxsize=None)
def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.version.hip) or torch.cuda.get_device_properties(device).major >= 8
    cpu = getattr(torch, "cpu", None)
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return device.type == "cpu" and any(bool(getattr(cpu, name, lambda: False)()) for name in probes)


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast where ``use_bf16``; no cast cache (each weight is cast once per forward anyway,
    and cached casts must not outlive a CUDA graph capture)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(device, precision),
                          cache_enabled=False)


def adam(params: Iterable[nn.Parameter], lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam with the official trainer's settings (betas 0.9/0.999, eps 1e-8, no weight decay), as one
    fused kernel per step (CPU and CUDA) instead of a loop over parameter tensors; on CUDA with its
    step count on the device, so a CUDA graph can capture it (``stg.stepgraph``)."""
    return torch.optim.Adam(params, lr=lr, fused=True, capturable=device.type == "cuda")


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to ``device`` in channels_last layout (faster convolutions on CUDA and oneDNN CPUs).
    On CPU, also keep freed activation memory in the process (``stg.hostmem``)."""
    if device.type == "cpu":
        retain_freed_memory()
    return model.to(device).to(memory_format=torch.channels_last)


@torch.no_grad()
def predict_logits(model: nn.Module, data: DeviceData, *, batch_size: int = 1024, batch_dim: int = 0,
                   precision: str = "auto") -> torch.Tensor:
    """Eval-mode logits for a whole split, float32 on the device: (N, T) for a model; for an
    ensemble whose output is (k, B, T) pass ``batch_dim=1`` to get (k, N, T)."""
    was_training = model.training
    model.eval()
    rows = torch.arange(len(data), device=data.device)
    out = []
    for index in rows.split(batch_size) if len(data) else [rows]:  # an empty split still gives its shape
        x, _ = data.batch(index, augment=False, generator=None)
        with autocast(data.device, precision):
            out.append(model(x).float())
    model.train(was_training)
    return torch.cat(out, dim=batch_dim)


def quick_metrics(logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor) -> dict[str, float]:
    """Mean-over-tasks loss and balanced accuracy (as ``stg.evaluate``) of (N, T) logits against (N, T) labels."""
    from stg.evaluate import binary_metrics

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


def _identity(config: TrainConfig, data_spec: dict[str, Any]) -> dict[str, Any]:
    """What must match for a run directory to be resumed (epochs may grow, device may change)."""
    cfg = dataclasses.asdict(config)
    cfg.pop("epochs")
    cfg.pop("device")
    return {"train": cfg, "data": data_spec}


def check_out(out: Path) -> None:
    """``out`` must be a new folder, or one that holds an stg run; and writable. Writes nothing else."""
    if out.exists() and not out.is_dir():
        raise StgError(f"--out {out} exists and is not a directory")
    if out.is_dir() and not RunDir(out).exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise StgError(f"--out {out} is not empty and holds no stg run: choose a new folder")
    _check_writable(out)


def open_run(
    out: Path, taskset: TaskSet, config: TrainConfig, data_spec: dict[str, Any]
) -> tuple[RunDir, dict[str, Any], bool]:
    """Create ``out`` as a new run, or check it holds the same run to resume. Returns (run, meta, resumed)."""
    run = RunDir(out)
    identity = _identity(config, data_spec)
    if run.exists():
        meta = run.read()
        if meta.get("kind") != "datamap":
            raise StgError(f"--out {out} holds a {meta.get('kind', 'foreign')!r} run, not a data-map run")
        if meta.get("identity") != identity:
            diff = _describe_difference(meta.get("identity", {}), identity)
            raise StgError(f"--out {out} holds another run ({diff}): choose a new folder or the same settings")
        if list(meta["task_names"]) != list(taskset.task_names):
            raise StgError(f"--out {out} holds a run with different tasks: choose a new folder")
        meta["config"] = dataclasses.asdict(config)
        return run, meta, True
    meta = {
        "kind": "datamap",
        "status": "running",
        "config": dataclasses.asdict(config),
        "identity": identity,
        "data": data_spec,
        "dataset": taskset.dataset,
        "tasks_spec": taskset.tasks_spec,
        "task_names": list(taskset.task_names),
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
    data_spec: dict[str, Any] | None = None,
    on_event: EventFn | None = None,
    cancel: threading.Event | None = None,
    probes: Sequence[Probe] = (),
) -> dict[str, Any]:
    """Train one multi-task model on all tasks of ``taskset`` and record its data maps in ``out``.

    Re-running on the same ``out`` resumes from the last finished epoch (same results as an
    uninterrupted run). ``cancel`` stops within one step: the run is marked cancelled and keeps
    its last finished epoch. Returns the final run.json contents.
    """
    config.validate(len(taskset.train))
    device = resolve_device(config.device)
    c, h, w = taskset.image_shape
    if h != w:
        raise StgError(f"images must be square, got {h}x{w}")
    out = Path(out)
    spec = data_spec if data_spec is not None else {"dataset": taskset.dataset, "tasks": taskset.tasks_spec}
    check_out(out)
    with exclusive(out, "data-map run"):
        return _train_datamap_locked(taskset, config, out, spec, device, on_event, cancel, probes)


def _train_datamap_locked(
    taskset: TaskSet,
    config: TrainConfig,
    out: Path,
    spec: dict[str, Any],
    device: torch.device,
    on_event: EventFn | None,
    cancel: threading.Event | None,
    probes: Sequence[Probe],
) -> dict[str, Any]:
    """train_datamap's body, run while holding the run directory's lock: a failure is recorded in
    run.json (status failed or cancelled, and the error), and running out of memory becomes a
    one-line StgError."""
    run, meta, resumed = open_run(out, taskset, config, spec)
    try:
        return _train_run(run, meta, resumed, taskset, config, device, on_event, cancel, probes)
    except BaseException as e:
        record, oom = training_stopped(e, f"training {config.model} at batch size {config.batch_size}", device)
        meta.update(record)
        run.write(meta)
        if oom is not None:
            raise oom from None
        raise


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


def _train_run(
    run: RunDir,
    meta: dict[str, Any],
    resumed: bool,
    taskset: TaskSet,
    config: TrainConfig,
    device: torch.device,
    on_event: EventFn | None,
    cancel: threading.Event | None,
    probes: Sequence[Probe],
) -> dict[str, Any]:
    emit = on_event or (lambda p: None)
    cancel = cancel or threading.Event()
    c, h, _ = taskset.image_shape
    mean, std = channel_stats(taskset.train.images)
    train = DeviceData(taskset.train, device, mean, std)
    val = DeviceData(taskset.val, device, mean, std)
    pos_weight = taskset.pos_weight.to(device=device, dtype=torch.float32)
    task_weights = torch.ones_like(pos_weight)

    torch.manual_seed(config.seed)
    model = prepare_model(build_model(config.model, in_channels=c, size=h, n_tasks=taskset.n_tasks), device)
    optimizer = adam(model.parameters(), config.lr, device)
    recorder = DataMapRecorder(len(train), taskset.n_tasks, device=device, ddof=config.ddof)

    start_epoch = 0
    if resumed and run.checkpoint.is_file():
        start_epoch = _load_checkpoint(run, model, optimizer, recorder, probes, device)
    meta.update(status="running", epochs_done=start_epoch, device=str(device), error=None)
    meta["history"] = meta.get("history", [])[:start_epoch]
    run.write(meta)

    g = torch.Generator(device=device)
    step = StepGraph(_datamap_step(model, optimizer, recorder, train, pos_weight, task_weights, config, g),
                     batch_size=config.batch_size, device=device, optimizer=optimizer, generators=[g])
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    emit(Progress("start", start_epoch, config.epochs, start_epoch * steps_per_epoch, total_steps,
                  message=f"{'resuming' if resumed else 'starting'} on {device}"))
    for epoch in range(start_epoch + 1, config.epochs + 1):
        result = _run_epoch(
            step, g, model, probes, len(train), config,
            epoch=epoch, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
            emit=emit, cancel=cancel,
        )
        if result is None:
            meta.update(status="cancelled")
            run.write(meta)
            emit(Progress("cancelled", epoch - 1, config.epochs, (epoch - 1) * steps_per_epoch, total_steps,
                          message="cancelled; the run keeps its last finished epoch"))
            return meta
        epoch_loss, seconds = result
        metrics = quick_metrics(predict_logits(model, val, precision=config.precision), val.labels, pos_weight)
        run.write_datamap(epoch, recorder.snapshot())
        _save_checkpoint(run, model, optimizer, recorder, probes, epoch)
        record = {"epoch": epoch, "loss": epoch_loss, "seconds": round(seconds, 3),
                  "images_per_s": round(len(train) / seconds, 1), "step": step.mode, **metrics}
        meta["history"].append(record)
        meta.update(epochs_done=epoch, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
        meta["timings"] = {"train_seconds": round(sum(r["seconds"] for r in meta["history"]), 3)}
        run.write(meta)
        emit(Progress("epoch", epoch, config.epochs, epoch * steps_per_epoch, total_steps, loss=epoch_loss,
                      images_per_s=record["images_per_s"], eta_s=seconds * (config.epochs - epoch),
                      metrics=metrics))
    meta.update(status="done")
    run.write(meta)
    emit(Progress("done", config.epochs, config.epochs, total_steps, total_steps, message=f"done: {run.path}"))
    return meta


def _datamap_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    recorder: DataMapRecorder,
    train: DeviceData,
    pos_weight: torch.Tensor,
    task_weights: torch.Tensor,
    config: TrainConfig,
    g: torch.Generator,
) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """The training step as a function of the batch's (B,) row index, for ``StepGraph``: returns
    (loss: (), images: (B, C, H, W), logits: (B, T) float32, targets: (B, T)), all detached."""

    def step(index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, y = train.batch(index, augment=config.augment, generator=g)
        with autocast(train.device, config.precision):
            logits = model(x)
        logits = logits.float()
        loss = weighted_bce(logits, y, pos_weight=pos_weight, task_weights=task_weights)
        loss.backward()
        optimizer.step()
        detached = logits.detach()
        recorder.update(index, detached, y)
        return loss.detach(), x, detached, y

    return step


def _run_epoch(
    step: StepGraph[tuple[torch.Tensor, ...]],
    g: torch.Generator,
    model: nn.Module,
    probes: Sequence[Probe],
    n_train: int,
    config: TrainConfig,
    *,
    epoch: int,
    steps_per_epoch: int,
    total_steps: int,
    emit: EventFn,
    cancel: threading.Event,
) -> tuple[float, float] | None:
    """One pass over the training split. Returns (mean loss, seconds), or None when cancelled."""
    model.train()
    epoch_generator(config.seed, epoch, step.device, g)
    loss_sum = torch.zeros((), device=step.device)
    t0 = last_event = time.monotonic()
    step0 = (epoch - 1) * steps_per_epoch
    for i, index in enumerate(epoch_batches(n_train, config.batch_size, g, step.device)):
        if cancel.is_set():
            return None
        loss, x, logits, y = step(index)
        for probe in probes:
            probe.on_step(StepInfo(model, x, logits, y, index, epoch, step0 + i))
        loss_sum += loss * len(index)
        now = time.monotonic()
        if now - last_event > 0.5:
            done = i + 1
            rate = done * config.batch_size / (now - t0)
            remaining = (total_steps - step0 - done) * config.batch_size / max(rate, 1e-9)
            emit(Progress("step", epoch, config.epochs, step0 + done, total_steps, loss=float(loss),
                          images_per_s=rate, eta_s=remaining))
            last_event = now
    mean_loss = float(loss_sum) / n_train  # waits for the device: the timing covers all the work
    return mean_loss, time.monotonic() - t0


def _save_checkpoint(run: RunDir, model, optimizer, recorder, probes: Sequence[Probe], epoch: int) -> None:
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "recorder": recorder.state_dict(),
        "probes": [p.state_dict() for p in probes],
    }
    atomic_save(run.checkpoint, lambda f: torch.save(state, f))


def _load_checkpoint(run: RunDir, model, optimizer, recorder, probes: Sequence[Probe], device) -> int:
    try:
        state = torch.load(run.checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        recorder.load_state_dict(state["recorder"])
        for probe, s in zip(probes, state.get("probes", [])):
            probe.load_state_dict(s)
        return int(state["epoch"])
    except Exception as e:  # a corrupt or foreign checkpoint must not be silently trained over
        raise StgError(f"checkpoint {run.checkpoint} cannot be loaded ({type(e).__name__}): move it away to restart") from None
