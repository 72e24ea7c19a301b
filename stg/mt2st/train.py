"""Training one model under an MT2ST schedule, with the auxiliary heads' work skipped once their
weight is 0 for good.

How the auxiliary work is skipped (``skip=True``). A schedule's auxiliary factor is exactly 0
below ``eps`` and never comes back (every schedule is non-increasing), so the training splits at an
epoch boundary into

1. the multi-task phase, epochs 1..s (s = ``AuxSchedule.multitask_epochs``): the model with all its
   task heads, loss ``sum_p L_p + a(t) sum_k L_k`` (``stg.mt2st.schedules.aux_weights``), through
   the training loop with its own checkpoint;
2. the primary phase, epochs s+1..E: the same model with its final layer cut to the primary rows
   (a smaller ``nn.Linear`` holding copies of those rows) and the labels and pos_weight cut to the
   primary columns, so the auxiliary logits, their BCE and their backward are not computed at all.
   The hand-off is a checkpoint of the loop: the phase-1 checkpoint with the head rows (parameters
   and Adam's moments) cut to the primary rows, so the loop resumes at epoch s+1 with the same
   per-epoch generators, the same Adam state and the same batch stream.

At the end the full model is put back together: trunk and primary rows from phase 2, auxiliary rows
as they were at the end of phase 1. Trunk and primary heads are then the ones a single training
with weight 0 on the auxiliaries would give (same ops, up to float reassociation in the head's
matmul; tested): a zero weight gives zero gradient, and dropout masks have the same shapes. Only the
auxiliary rows differ: with weight 0, Adam's momentum would keep moving them.

What it saves, honestly: for the paper CNN the head is 128 x T multiply-adds per image against
about 8.4 M for the convolutions, so the saving per epoch is within timing noise (measured in
``benchmarks/mt2st.py``). The paper's auxiliary work was expensive intrinsic evaluations of word
embeddings; here the auxiliary tasks share the trunk, so a time saving can only come from reaching
a target quality in fewer epochs, which the benchmark measures too.

Ensembles (grouped training) get the schedule's weights only (``skip`` does not apply): every task
is a primary task of its highest-membership specialist, so a fused ensemble needs every column.
"""

from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from stg.mt2st.schedules import AuxSchedule, aux_weights
from stg.runs.rundir import atomic_save
from stg.train.config import TrainConfig
from stg.train.device import DeviceData
from stg.train.hooks import Hook
from stg.train.loop import Monitor, load_checkpoint, replace_epochs, train_loop
from stg.train.models import head_names
from stg.train.schedules import Constant


@dataclass
class PhasedResult:
    """status: done | cancelled; history: one record per finished epoch of both phases (a
    ``phase`` field: 1 multi-task, 2 primary-only); seconds: training time of both phases;
    multitask_epochs: s."""

    status: str
    epochs_done: int
    history: list[dict[str, Any]]
    seconds: float
    multitask_epochs: int
    skipped: bool  # whether phase 2 ran on the primary rows only
    extra: dict[str, Any] = field(default_factory=dict)


def head_module(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent module, attribute name, the final ``nn.Linear``) of a model's task heads."""
    prefixes = head_names(model)
    if len(prefixes) != 1:
        raise TypeError(f"{type(model).__name__} has {len(prefixes)} head layers; expected one")
    path = prefixes[0].rstrip(".")
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    head = getattr(parent, attr)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"the task head {path!r} of {type(model).__name__} is not an nn.Linear")
    return parent, attr, head


def restrict_model(model: nn.Module, rows: Sequence[int]) -> nn.Module:
    """A copy of ``model`` whose final layer keeps only the output rows ``rows`` (copies of them)."""
    sub = copy.deepcopy(model)
    parent, attr, head = head_module(sub)
    idx = torch.as_tensor(list(rows), dtype=torch.long, device=head.weight.device)
    new = nn.Linear(head.in_features, len(rows), bias=head.bias is not None, device=head.weight.device,
                    dtype=head.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(head.weight[idx])
        if head.bias is not None:
            new.bias.copy_(head.bias[idx])
    setattr(parent, attr, new)
    return sub


def restrict_data(data: DeviceData, columns: Sequence[int]) -> DeviceData:
    """``data`` (same images on the device, same class) with only the label columns ``columns``."""
    out = copy.copy(data)
    out.labels = data.labels[:, list(columns)].contiguous()
    return out


def _head_keys(model: nn.Module) -> list[str]:
    prefix = head_names(model)[0]
    return [n for n, _ in model.named_parameters() if n.startswith(prefix)]


def restrict_checkpoint(state: dict[str, Any], model: nn.Module, rows: Sequence[int], *, identity: str) -> dict[str, Any]:
    """A loop checkpoint of ``model`` turned into one of ``restrict_model(model, rows)``: the head's
    parameters and their Adam moments cut to ``rows``; epoch, history and the rest kept."""
    keys = set(_head_keys(model))
    idx = torch.as_tensor(list(rows), dtype=torch.long)
    out = dict(state, identity=identity, hooks={}, schedule={})
    out["model"] = {k: (v[idx.to(v.device)].clone() if k in keys else v) for k, v in state["model"].items()}
    opt = copy.deepcopy(state["optimizer"])
    names = [n for n, _ in model.named_parameters()]
    for i, moments in opt["state"].items():
        if names[int(i)] in keys:
            for m in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                if m in moments:
                    moments[m] = moments[m][idx.to(moments[m].device)].clone()
    out["optimizer"] = opt
    return out


@torch.no_grad()
def merge_primary(model: nn.Module, sub: nn.Module, rows: Sequence[int]) -> None:
    """Copy the trained ``sub`` (``restrict_model(model, rows)``) back into ``model``: every
    parameter and buffer, the head into its rows; the other head rows stay as they are."""
    keys = set(_head_keys(model))
    full = model.state_dict()
    idx = torch.as_tensor(list(rows), dtype=torch.long)
    for k, v in sub.state_dict().items():
        if k in keys:
            full[k][idx.to(full[k].device)] = v
        else:
            full[k].copy_(v)


def train_scheduled(
    model: nn.Module,
    data: DeviceData,
    pos_weight: torch.Tensor,
    config: TrainConfig,
    *,
    primary: Sequence[int],
    schedule: AuxSchedule,
    base: torch.Tensor | None = None,
    skip: bool = True,
    checkpoint: Path | None = None,
    identity: dict[str, Any] | None = None,
    label: str = "",
    monitor: Monitor | None = None,
    hooks: Callable[[nn.Module, Sequence[int]], Sequence[Hook]] | None = None,
    after_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    step_offset: int = 0,
    total_steps: int | None = None,
) -> PhasedResult:
    """Train ``model`` ((B, C, H, W) -> (B, T) logits, already on ``data.device``) for
    ``config.epochs`` epochs with the tasks ``primary`` (column indices) weighing ``base`` (default
    1) and the others ``base * a(t)`` (see the module docstring for the two phases).

    checkpoint: a path stem; phase 1 saves to ``<stem>.pt`` and phase 2 to ``<stem>.primary.pt``,
    and both resume (None: a temporary folder for the hand-off). identity: what must match to
    resume. step_offset / total_steps: this training's place in a longer job's progress.
    hooks(model, columns): the hooks of a phase, given the model it trains and which of the
    full model's columns that model's outputs are (e.g. a validation hook). ``model`` holds the
    result when the status is done.
    """
    n_tasks = int(pos_weight.shape[0])
    primary = sorted(int(p) for p in primary)
    if not primary or primary[0] < 0 or primary[-1] >= n_tasks:
        raise ValueError(f"primary must be task indices in [0, {n_tasks}), got {primary}")
    base = torch.ones(n_tasks, dtype=torch.float64) if base is None else torch.as_tensor(base, dtype=torch.float64)
    epochs = config.epochs
    spe = -(-len(data) // config.batch_size)
    schedule.check(epochs, spe)
    s = schedule.multitask_epochs(epochs, spe) if skip else epochs
    meta = {**(identity or {}), "schedule": schedule.to_meta(), "primary": primary, "skip": skip}
    all_cols = list(range(n_tasks))
    tmp = None
    if checkpoint is None and 0 < s < epochs:
        tmp = tempfile.TemporaryDirectory(prefix="stg-mt2st-")
        checkpoint = Path(tmp.name) / "model"
    ck1 = None if checkpoint is None else checkpoint.with_name(checkpoint.name + ".pt")
    ck2 = None if checkpoint is None else checkpoint.with_name(checkpoint.name + ".primary.pt")
    history: list[dict[str, Any]] = []
    seconds = 0.0
    try:
        if s > 0:
            weights = aux_weights(base, [t in primary for t in all_cols], schedule, epochs=epochs,
                                  steps_per_epoch=spe)
            r1 = train_loop(model, data, pos_weight, replace_epochs(config, s), schedule=weights,
                            hooks=hooks(model, all_cols) if hooks else (), checkpoint=ck1,
                            identity=json.dumps({**meta, "phase": 1, "epochs": s}, sort_keys=True), label=label,
                            monitor=monitor, after_epoch=after_epoch, step_offset=step_offset,
                            total_steps=spe * epochs if total_steps is None else total_steps)
            history = [dict(r, phase=1) for r in r1.history]
            seconds = r1.seconds
            if r1.status != "done" or s == epochs:
                return PhasedResult(r1.status, r1.epochs_done, history, seconds, s, False)
        sub = restrict_model(model, primary)
        ident2 = json.dumps({**meta, "phase": 2}, sort_keys=True)
        if ck2 is not None and s > 0 and not ck2.is_file():
            assert ck1 is not None
            state = restrict_checkpoint(load_checkpoint(ck1, data.device), model, primary, identity=ident2)
            atomic_save(ck2, lambda f: torch.save(state, f))
        r2 = train_loop(sub, restrict_data(data, primary), pos_weight[primary], config,
                        schedule=Constant(base[primary]), hooks=hooks(sub, primary) if hooks else (),
                        checkpoint=ck2, identity=ident2, label=label, monitor=monitor, after_epoch=after_epoch,
                        step_offset=step_offset, total_steps=total_steps)
        history = history + [dict(r, phase=2) for r in r2.history[s:]]
        if r2.status == "done":
            merge_primary(model, sub, primary)
        return PhasedResult(r2.status, r2.epochs_done, history, seconds + sum(float(r["seconds"]) for r in
                                                                              r2.history[s:]), s, True)
    finally:
        if tmp is not None:
            tmp.cleanup()
