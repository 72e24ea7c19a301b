"""The one training loop: the data-map run and grouped training (one model, or an ensemble of k
specialists) both train through ``train_loop``.

Per step (no per-sample Python, no host sync): gather a batch of uint8 images resident on the
device, crop/flip on the device, forward (channels_last; bf16 autocast where ``use_bf16``), the
per-task BCE of every task ((T,) for a model, (k, T) for an ensemble, ``per_task_bce``), the loss
``sum(per_task * weights)`` with the weights a ``Schedule`` writes in place, backward, the hooks'
``before_update``, Adam, the hooks' ``after_update``. On CUDA the whole step is captured once in a
CUDA graph and replayed for every full-size batch (``stg.train.stepgraph``); steps where a
periodic hook (``every`` > 1) is due run eagerly with that hook added.

Per epoch: re-seed the run's generators from (seed, epoch) (``stg.train.rng``), write the
schedule's weights, run the steps (cancel is checked before each one), call each hook's
``end_epoch`` (files, history fields), save the checkpoint atomically (model, Adam, hooks,
schedule, history), then ``after_epoch`` (the caller's bookkeeping, e.g. run.json). A run resumed
from its checkpoint continues exactly as an uninterrupted run would (bitwise on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from stg.errors import StgError
from stg.runs.rundir import atomic_save
from stg.train.config import TrainConfig
from stg.train.device import DeviceData, adam, autocast
from stg.train.hooks import Hook, StepContext
from stg.train.loss import per_task_bce
from stg.train.models import set_dropout_generator, set_dropout_rows, shared_parameters
from stg.train.rng import RunGenerators
from stg.train.schedules import Schedule
from stg.train.stepgraph import StepGraph

if TYPE_CHECKING:
    from stg.runs.writer import EpochWriter
    from stg.train.distributed import Distributed


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


EventFn = Callable[[Progress], None]


class Monitor:
    """Where a training reports to (``on_event`` gets every ``Progress``) and how it is stopped
    (``cancel``: set it from any thread; the loop stops before its next step). One object is
    passed down whole from the CLI or the dashboard to the loop."""

    def __init__(self, on_event: EventFn | None = None, cancel: threading.Event | None = None):
        self.on_event = on_event
        self.cancel = cancel if cancel is not None else threading.Event()

    def emit(self, event: Progress) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def cancelled(self) -> bool:
        return self.cancel.is_set()


@dataclass
class LoopResult:
    """status: done | cancelled; history: one record per finished epoch; seconds: training time."""

    status: str
    epochs_done: int
    history: list[dict[str, Any]]
    seconds: float


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """A shuffled pass over n rows in batches (the last may be smaller): every row once."""
    perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
    return list(perm.split(batch_size))


def weighted_total(task_losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_t w_t * L_t per model: () from (T,), (k,) from (k, T)."""
    return (task_losses * weights).sum(-1)


def train_loop(
    model: nn.Module,
    data: DeviceData,
    pos_weight: torch.Tensor,
    config: TrainConfig,
    *,
    schedule: Schedule,
    hooks: Sequence[Hook] = (),
    checkpoint: Path | None = None,
    identity: str = "",
    label: str = "",
    monitor: Monitor | None = None,
    after_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    writer: "EpochWriter | None" = None,
    step_offset: int = 0,
    total_steps: int | None = None,
    dist: "Distributed | None" = None,
) -> LoopResult:
    """Train ``model`` (already on ``data.device``) for ``config.epochs`` epochs.

    model: (B, C, H, W) -> (B, T) logits, or an ensemble -> (k, B, T); pos_weight: (T,);
    ``schedule`` gives (T,) or (k, T) weights to match. With ``checkpoint``, state is saved there
    after every epoch and an existing checkpoint is resumed when its ``identity`` (a JSON string of
    what must match) is the same; StgError when it is another training's or has more epochs.
    ``step_offset`` / ``total_steps`` place this training's steps in a longer job's progress.
    ``writer`` (``stg.runs.writer.EpochWriter``): write the checkpoint on its background thread;
    the caller closes it.
    ``dist`` (``stg.train.distributed``): this process is one of several ranks training together;
    ``data`` is its ``ShardedData``; rank 0 writes the checkpoint (see that module's docstring).
    """
    device = data.device
    monitor = monitor or Monitor()
    optimizer = adam(model.parameters(), config.lr, device)
    gens = RunGenerators(device)
    set_dropout_generator(model, gens.dropout)
    start_epoch, history = 0, []
    state = _read_checkpoint(checkpoint, device, dist)
    if state is not None and checkpoint is not None:
        start_epoch, history = _load(checkpoint, state, identity, label, config.epochs, model, optimizer, hooks,
                                     schedule)

    weights = torch.as_tensor(schedule.weights(start_epoch + 1, 0)).to(device=device, dtype=pos_weight.dtype).clone()
    every_step = [h for h in hooks if h.every == 1]
    periodic = [h for h in hooks if h.every > 1]
    shared = shared_parameters(model) if hooks else []
    clock = {"epoch": 0, "step": 0}
    masked = bool(torch.isnan(data.labels).any())  # missing labels: the masked loss (stg.train.loss), once here

    def step(index: torch.Tensor, extra: Sequence[Hook] = ()) -> torch.Tensor:
        """One step on the (B,) rows ``index``; returns the (detached) per-model loss: () or (k,)."""
        x, y = data.batch(index, augment=config.augment, generator=gens.data)
        with autocast(device, config.precision):
            logits = model(x)
        losses = per_task_bce(logits, y, pos_weight=pos_weight, masked=masked)
        total = weighted_total(losses, weights)
        total.sum().backward()
        active = (*every_step, *extra)
        ctx = None
        if active:
            ctx = StepContext(model, index, x, y, logits.detach().float(), losses.detach(), weights, pos_weight,
                              shared, float(optimizer.param_groups[0]["lr"]), config.precision,
                              clock["epoch"], clock["step"])
            for h in active:
                h.before_update(ctx)
        optimizer.step()
        for h in active:
            h.after_update(ctx)
        return total.detach()

    if dist is not None:
        step = _distributed_step(dist, model, data, pos_weight, config, optimizer, gens, weights, every_step,
                                 shared, clock)
    run_step = StepGraph(step, batch_size=config.batch_size, device=device, optimizer=optimizer,
                         generators=gens.all())
    if dist is not None:
        run_step.enabled = False  # DDP's gradient all-reduce is not captured: eager steps
    n = len(data)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = total_steps if total_steps is not None else steps_per_epoch * config.epochs
    seconds = sum(float(r["seconds"]) for r in history)
    for epoch in range(start_epoch + 1, config.epochs + 1):
        model.train()
        gens.start_epoch(config.seed, epoch)
        step0 = (epoch - 1) * steps_per_epoch
        weights.copy_(schedule.weights(epoch, step0))
        loss_sum = torch.zeros_like(weights[..., 0])
        t0 = last_event = time.monotonic()
        for i, index in enumerate(epoch_batches(n, config.batch_size, gens.data, device)):
            if dist.any(monitor.cancelled()) if dist is not None else monitor.cancelled():  # all ranks stop together
                return LoopResult("cancelled", epoch - 1, history, seconds)
            global_step = step0 + i
            clock.update(epoch=epoch, step=global_step)
            if schedule.per_step and i:
                weights.copy_(schedule.weights(epoch, global_step))
            due = [h for h in periodic if global_step % h.every == 0]
            loss = run_step.eager(index, due) if due else run_step(index)
            loss_sum += loss * len(index)
            now = time.monotonic()
            if now - last_event > 0.5:
                done = i + 1
                rate = done * config.batch_size / (now - t0)
                remaining = (total - step_offset - global_step - 1) * config.batch_size / max(rate, 1e-9)
                monitor.emit(Progress("step", epoch, config.epochs, step_offset + global_step + 1, total,
                                      loss=float(loss.mean()), images_per_s=rate, eta_s=remaining, message=label))
                last_event = now
        mean_loss = (loss_sum / n).tolist()  # waits for the device: the timing covers all the work
        took = time.monotonic() - t0
        seconds += took
        extras: dict[str, Any] = {}
        for h in hooks:
            extras.update(h.end_epoch(epoch) or {})
        record = {"epoch": epoch, "loss": mean_loss, "seconds": round(took, 3), "images_per_s": round(n / took, 1),
                  "step": run_step.mode, **extras}
        history.append(record)
        if checkpoint is not None:
            _save(checkpoint, epoch, identity, model, optimizer, hooks, schedule, history, writer, dist)
        if after_epoch is not None:
            after_epoch(epoch, record)
        losses = mean_loss if isinstance(mean_loss, list) else [mean_loss]
        numbers = {k: float(v) for k, v in extras.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        monitor.emit(Progress("epoch", epoch, config.epochs, step_offset + epoch * steps_per_epoch, total,
                              loss=sum(losses) / len(losses), images_per_s=n / took,
                              eta_s=(total - step_offset - epoch * steps_per_epoch) * took / steps_per_epoch,
                              metrics=numbers,
                              message=label))
    return LoopResult("done", config.epochs, history, seconds)


def _distributed_step(dist: "Distributed", model: nn.Module, data: DeviceData, pos_weight: torch.Tensor,
                      config: TrainConfig, optimizer: torch.optim.Optimizer, gens: RunGenerators,
                      weights: torch.Tensor, every_step: Sequence[Hook], shared: list[tuple[str, nn.Parameter]],
                      clock: dict[str, int]) -> Callable[..., torch.Tensor]:
    """The step of one rank among several (``stg.train.distributed``): ``step(index)`` takes the
    global batch's (B,) rows, as one process would, trains on this rank's contiguous slice
    [lo, hi) of it with batch norm synchronised and DDP's gradient all-reduce, and returns the
    global batch's loss. The slice's mean loss is scaled by W n_r / B (per task, n and B count
    labelled rows), so that DDP's mean over the ranks of their gradients is the gradient of the
    global batch mean; hooks see the global step
    (the B rows, images and targets, the gathered (B, T) logits, the all-reduced per-task losses)."""
    from stg.train.distributed import sync_batchnorm

    net = dist.wrap(sync_batchnorm(model, data.device))

    def step(index: torch.Tensor, extra: Sequence[Hook] = ()) -> torch.Tensor:
        x, y = data.batch(index, augment=config.augment, generator=gens.data)  # the global batch
        b = len(index)
        lo, hi = dist.local_slice(b)
        set_dropout_rows(model, (lo, hi, b))  # the global batch's masks, as one process draws them
        with autocast(data.device, config.precision):
            logits = net(x[lo:hi])
        losses = per_task_bce(logits, y[lo:hi], pos_weight=pos_weight)
        # task t's loss is a mean over the labelled rows (all rows but missing labels): over this
        # slice's m_t here, over the batch's M_t in one process; W max(1, m_t) / max(1, M_t) turns
        # DDP's mean over ranks into the latter (exactly 1 for equal slices with every label)
        labelled = ~torch.isnan(y)
        share = labelled[lo:hi].sum(0).clamp_min(1) * dist.world / labelled.sum(0).clamp_min(1)
        weighted = losses * share.to(losses.dtype)
        weighted_total(weighted, weights).sum().backward()
        global_losses = dist.all_reduce_(weighted.detach().clone()) / dist.world  # (T,) or (k, T), as one process
        active = (*every_step, *extra)
        ctx = None
        if active:
            all_logits = dist.gather_slices(logits.detach().float(), b)
            ctx = StepContext(model, index, x, y, all_logits, global_losses, weights, pos_weight, shared,
                              float(optimizer.param_groups[0]["lr"]), config.precision, clock["epoch"], clock["step"])
            for h in active:
                h.before_update(ctx)
        optimizer.step()
        for h in active:
            h.after_update(ctx)
        return weighted_total(global_losses, weights)

    return step


def _save(path: Path, epoch: int, identity: str, model: nn.Module, optimizer: torch.optim.Optimizer,
          hooks: Sequence[Hook], schedule: Schedule, history: list[dict[str, Any]],
          writer: "EpochWriter | None" = None, dist: "Distributed | None" = None) -> None:
    """The checkpoint of ``epoch``, atomically; with ``writer``, a CPU copy of the state is written
    on the writer's thread after the epoch's other files (``stg.runs.writer``)."""
    state = {
        "epoch": epoch,
        "identity": identity,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "hooks": {key: h.state_dict() for key, h in _keyed(hooks).items()},
        "schedule": schedule.state_dict(),
        "history": json.dumps(history),
    }
    if dist is not None and not dist.is_writer:
        return  # the state was gathered (hooks' state_dict) for rank 0, which writes it
    if writer is None:
        atomic_save(path, lambda f: torch.save(state, f))
        return
    from stg.runs.writer import cpu_copy

    frozen = cpu_copy(state)  # the next epoch's steps change the live tensors
    writer.submit(epoch, lambda: atomic_save(path, lambda f: torch.save(frozen, f)))


CHECKPOINT_KEYS = ("epoch", "identity", "model", "optimizer", "hooks", "schedule", "history")


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A training checkpoint (``torch.load(weights_only=True)``); StgError when unreadable."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        missing = [k for k in CHECKPOINT_KEYS if k not in state]
        if missing:
            raise KeyError(missing[0])
        return state
    except Exception as e:  # a corrupt or foreign checkpoint must not be silently trained over
        raise StgError(f"checkpoint {path} cannot be loaded ({type(e).__name__}): move it away to restart") from None


def checkpoint_epoch(path: Path) -> tuple[int, str]:
    """(epochs done, identity JSON) of a checkpoint, read on the CPU."""
    state = load_checkpoint(path)
    return int(state["epoch"]), str(state["identity"])


def _read_checkpoint(path: Path | None, device: torch.device, dist: "Distributed | None") -> dict[str, Any] | None:
    """The checkpoint's state, or None when there is none. On several ranks rank 0 reads it (on the
    CPU) and broadcasts it: the run directory need only be on rank 0's disk."""
    if path is None:
        return None
    if dist is None:
        return load_checkpoint(path, device) if path.is_file() else None
    return dist.on_writer(lambda: load_checkpoint(path) if path.is_file() else None)


def _load(path: Path, state: dict[str, Any], identity: str, label: str, epochs: int, model: nn.Module,
          optimizer: torch.optim.Optimizer, hooks: Sequence[Hook], schedule: Schedule) -> tuple[int, list[dict[str, Any]]]:
    if json.loads(state["identity"] or "null") != json.loads(identity or "null"):
        raise StgError(f"{path} holds another training ({label or 'run'}): move it away to restart")
    done = int(state["epoch"])
    if done > epochs:
        raise StgError(f"{path} is already trained for {done} epochs, more than the {epochs} asked for: ask for "
                       "at least that many or move it away")
    saved = state["hooks"]
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for key, hook in _keyed(hooks).items():
            if key in saved:
                hook.load_state_dict(saved[key])
            elif hook.state_dict():
                raise StgError(f"{path} has no saved state for the training hook {key!r}: resume with the same "
                               "options or move it away")
        schedule.load_state_dict(state["schedule"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise StgError(f"checkpoint {path} cannot be loaded ({type(e).__name__}): move it away to restart") from None
    return done, json.loads(state["history"])


def _keyed(hooks: Sequence[Hook]) -> dict[str, Hook]:
    """Hooks by checkpoint key: the class name, numbered when a class appears more than once. A
    hook without state may be added or left out when a run is resumed."""
    out: dict[str, Hook] = {}
    for h in hooks:
        key, n = type(h).__name__, 1
        while key in out:
            n += 1
            key = f"{type(h).__name__}-{n}"
        out[key] = h
    return out


def replace_epochs(config: TrainConfig, epochs: int) -> TrainConfig:
    """``config`` with another epoch count (grouped training may train longer than the data-map run)."""
    return dataclasses.replace(config, epochs=epochs)
