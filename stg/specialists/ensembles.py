"""k specialist models trained concurrently on one batch stream (STG-MTL step 4).

Every step gathers ONE batch; all k models (same architecture, each with its own (T,) task-weight
column of a (T, k) matrix W) take it in one fused forward/backward:

- ``cnn``: :class:`WideCNN`, the k paper CNNs fused into one network. The first conv sees the same
  input for every model, so it is one dense conv with k*32 output channels (exactly k separate
  convs); the next convs are grouped (``groups=k``); BatchNorm over k*channels keeps per-model
  statistics because BN is per channel; the head is batched linear layers with (k, in, out)
  weights (``baddbmm``) and independent dropout masks per model.
- ``resnet18`` / ``resnet18-cifar``: :class:`VmapEnsemble`, ``torch.func.stack_module_state`` +
  ``functional_call`` + ``vmap`` (vmap turns the batched-weight convs into grouped convs). The
  stacked BatchNorm buffers are passed in as vmapped inputs, so train mode uses each model's own
  batch statistics and updates each model's running mean/var in place, exactly as k standalone
  models do; eval mode uses each model's running statistics.
- ``mode="loop"``: a plain Python loop over k standalone models (the reference; also a fallback).

Model c is initialised with ``stg.train.rng.seeded(seeds[c], build_model(...))``: identical to a
standalone model built with that seed, so "concurrent == sequential" is testable. The k losses are
summed: parameters are disjoint, so each model gets its own gradient, and Adam over the fused
parameters is k independent Adams (Adam is elementwise and every model takes the same step count).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from stg.errors import StgError
from stg.train.config import TrainConfig
from stg.train.device import DeviceData, predict_logits, prepare_model
from stg.train.loop import LoopResult, Monitor, train_loop, weighted_total
from stg.train.loss import per_task_bce
from stg.train.models import Dropout, PaperCNN, build_model, head_names
from stg.train.rng import seeded
from stg.train.schedules import Schedule, membership_schedule

ENSEMBLE_MODES = ("auto", "wide", "vmap", "loop")


# ------------------------------------------------------------------------------------------------
# Ensembles: forward (B, C, H, W) -> (k, B, T); state_dicts() -> k standalone state dicts
# ------------------------------------------------------------------------------------------------
class Ensemble(nn.Module):
    """k models of one architecture. ``forward(x: (B, C, H, W)) -> (k, B, T)`` logits."""

    k: int

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """k state dicts, each loadable into the standalone model ``build_model`` makes."""
        raise NotImplementedError


class WideCNN(Ensemble):
    """k :class:`stg.train.models.PaperCNN` fused into one wide network (see module docstring).

    Parameter layout (c = model): conv/BN tensors are the k models' tensors concatenated on dim 0;
    ``fc1_weight``: (k, F, 128), ``fc1_bias``: (k, 128), ``fc2_weight``: (k, 128, T), ``fc2_bias``: (k, T).
    """

    def __init__(self, k: int, *, in_channels: int, size: int, n_tasks: int):
        super().__init__()
        self.k = k
        self.features = nn.Sequential(
            # the PaperCNN layer order (pool before ReLU); in-place ReLUs: this model is for CUDA
            nn.Conv2d(in_channels, k * 32, 5), nn.BatchNorm2d(k * 32), nn.MaxPool2d(2), nn.ReLU(inplace=True),
            nn.Conv2d(k * 32, k * 64, 3, padding=1, groups=k), nn.BatchNorm2d(k * 64), nn.ReLU(inplace=True),
            nn.Conv2d(k * 64, k * 64, 3, padding=1, groups=k), nn.BatchNorm2d(k * 64), nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
        )
        side = ((size - 4) // 2) // 2
        self.flat = 64 * side * side
        self.drop1 = Dropout(0.2)
        self.drop2 = Dropout(0.2)
        self.fc1_weight = nn.Parameter(torch.empty(k, self.flat, 128))
        self.fc1_bias = nn.Parameter(torch.empty(k, 128))
        self.fc2_weight = nn.Parameter(torch.empty(k, 128, n_tasks))
        self.fc2_bias = nn.Parameter(torch.empty(k, n_tasks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (B, k*64, s, s)
        h = h.reshape(h.shape[0], self.k, self.flat).transpose(0, 1)  # (k, B, F), model-major
        h = self.drop1(h)
        h = torch.relu(torch.baddbmm(self.fc1_bias.unsqueeze(1), h, self.fc1_weight))
        h = self.drop2(h)
        return torch.baddbmm(self.fc2_bias.unsqueeze(1), h, self.fc2_weight)  # (k, B, T)

    def head_names(self) -> tuple[str, ...]:
        return ("fc2_weight", "fc2_bias")

    @torch.no_grad()
    def load_state_dicts(self, states: Sequence[dict[str, torch.Tensor]]) -> None:
        """Fuse k PaperCNN state dicts into this network."""
        if len(states) != self.k:
            raise ValueError(f"expected {self.k} state dicts, got {len(states)}")
        own = self.state_dict()
        for key in own:
            if key.startswith("features."):
                if key.endswith("num_batches_tracked"):
                    own[key].copy_(states[0][key])
                else:
                    own[key].copy_(torch.cat([s[key] for s in states]))
        self.fc1_weight.copy_(torch.stack([s["head.2.weight"].t() for s in states]))
        self.fc1_bias.copy_(torch.stack([s["head.2.bias"] for s in states]))
        self.fc2_weight.copy_(torch.stack([s["head.5.weight"].t() for s in states]))
        self.fc2_bias.copy_(torch.stack([s["head.5.bias"] for s in states]))

    @torch.no_grad()
    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        out: list[dict[str, torch.Tensor]] = [{} for _ in range(self.k)]
        for key, value in self.state_dict().items():
            if key.startswith("features."):
                parts = [value] * self.k if key.endswith("num_batches_tracked") else value.chunk(self.k)
                for c in range(self.k):
                    out[c][key] = parts[c].detach().clone()
        for c in range(self.k):
            out[c]["head.2.weight"] = self.fc1_weight[c].t().detach().clone()
            out[c]["head.2.bias"] = self.fc1_bias[c].detach().clone()
            out[c]["head.5.weight"] = self.fc2_weight[c].t().detach().clone()
            out[c]["head.5.bias"] = self.fc2_bias[c].detach().clone()
        return out


def _escape(name: str) -> str:
    return name.replace(".", "__")


class VmapEnsemble(Ensemble):
    """k models stacked with ``torch.func.stack_module_state`` and run with ``vmap``.

    Stacked parameters and buffers are this module's own (names with '.' -> '__'), so ``.to()``,
    ``state_dict()`` and optimizers work as usual. BatchNorm: see the module docstring.
    """

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        from torch.func import stack_module_state

        self.k = len(models)
        params, buffers = stack_module_state(list(models))
        self._param_names = list(params)
        self._buffer_names = list(buffers)
        self.stacked = nn.ParameterList([nn.Parameter(params[n].detach().clone()) for n in self._param_names])
        for n in self._buffer_names:
            self.register_buffer(_escape(n), buffers[n].detach().clone())
        # The skeleton holds no data (meta tensors); functional_call swaps in every tensor.
        self._base = [copy.deepcopy(models[0]).to("meta")]

    def _call(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call

        return functional_call(self._base[0], (params, buffers), (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._base[0].train(self.training)
        params = dict(zip(self._param_names, self.stacked))
        buffers = {n: getattr(self, _escape(n)) for n in self._buffer_names}
        return torch.vmap(self._call, in_dims=(0, 0, None), randomness="different")(params, buffers, x)

    def skeleton_modules(self) -> Iterator[nn.Module]:
        """The modules of the shared skeleton (its dropouts take the run's generator)."""
        return self._base[0].modules()

    def head_names(self) -> tuple[str, ...]:
        heads = head_names(self._base[0])
        return tuple(f"stacked.{j}" for j, n in enumerate(self._param_names) if n.startswith(heads))

    @torch.no_grad()
    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        out: list[dict[str, torch.Tensor]] = []
        for c in range(self.k):
            state = {n: p[c].detach().clone() for n, p in zip(self._param_names, self.stacked)}
            state.update({n: getattr(self, _escape(n))[c].detach().clone() for n in self._buffer_names})
            out.append(state)
        return out


class LoopEnsemble(Ensemble):
    """k standalone models called one after another (the sequential reference)."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.k = len(models)
        self.models = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.models])

    def head_names(self) -> tuple[str, ...]:
        return tuple(f"models.{c}.{h}" for c, m in enumerate(self.models) for h in head_names(m))

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        return [{n: v.detach().clone() for n, v in m.state_dict().items()} for m in self.models]


def set_dropout(ensemble: nn.Module, p: float) -> None:
    """Set every dropout probability of ``ensemble`` (including a VmapEnsemble's skeleton) to ``p``.

    With p = 0 the fused and the sequential training are equal up to float rounding (dropout masks
    are independent draws per model in both, but not the same draws).
    """
    modules = list(ensemble.modules())
    if isinstance(ensemble, VmapEnsemble):
        modules += list(ensemble.skeleton_modules())
    for m in modules:
        if isinstance(m, nn.Dropout):
            m.p = p


def standalone_models(model: str, *, seeds: Sequence[int], in_channels: int, size: int, n_tasks: int) -> list[nn.Module]:
    """k fresh models; model c is ``build_model(...)`` initialised from seed ``seeds[c]`` (``stg.train.rng.seeded``)."""
    return [seeded(int(s), lambda: build_model(model, in_channels=in_channels, size=size, n_tasks=n_tasks))
            for s in seeds]


def build_ensemble(
    model: str, *, seeds: Sequence[int], in_channels: int, size: int, n_tasks: int, mode: str = "auto",
    device: torch.device | None = None,
) -> Ensemble:
    """k = len(seeds) models of architecture ``model`` as one module (on the CPU; move it yourself).

    mode: ``auto`` | ``wide`` (cnn only) | ``vmap`` | ``loop``. ``auto`` picks by the device the
    ensemble will train on: on CUDA, where small models are launch-bound, ``wide`` for the cnn and
    ``vmap`` otherwise; on the CPU, which is compute-bound, ``loop`` (measured 1.7x faster there
    than ``wide`` for 20 paper CNNs: oneDNN's grouped convolutions are slow).
    """
    if mode not in ENSEMBLE_MODES:
        raise StgError(f"unknown ensemble mode {mode!r}: choose one of {', '.join(ENSEMBLE_MODES)}")
    if not seeds:
        raise StgError("an ensemble needs at least one model")
    models = standalone_models(model, seeds=seeds, in_channels=in_channels, size=size, n_tasks=n_tasks)
    if mode == "auto":
        on_cuda = device is not None and torch.device(device).type == "cuda"
        mode = ("wide" if model == "cnn" else "vmap") if on_cuda else "loop"
    if mode == "wide":
        if not isinstance(models[0], PaperCNN):
            raise StgError(f"ensemble mode 'wide' is for model 'cnn' only, not {model!r}")
        wide = WideCNN(len(models), in_channels=in_channels, size=size, n_tasks=n_tasks)
        wide.load_state_dicts([m.state_dict() for m in models])
        return wide
    if mode == "vmap":
        return VmapEnsemble(models)
    return LoopEnsemble(models)


# ------------------------------------------------------------------------------------------------
# Loss, prediction, training
# ------------------------------------------------------------------------------------------------
def ensemble_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, pos_weight: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Per-model weighted BCE: (k,) with entry c = ``weighted_bce(logits[c], targets, task_weights=weights[:, c])``,
    as the training loop computes it. logits: (k, B, T);  targets: (B, T);  pos_weight: (T,);  weights: (T, k)."""
    return weighted_total(per_task_bce(logits, targets, pos_weight=pos_weight), weights.t())


def predict_ensemble(ensemble: Ensemble, data: DeviceData, *, batch_size: int = 512,
                     precision: str = "auto") -> torch.Tensor:
    """Eval-mode logits of all k models for a whole split: (k, N, T) float32 on the device."""
    return predict_logits(ensemble, data, batch_size=batch_size, batch_dim=1, precision=precision)


def train_ensemble(
    ensemble: Ensemble,
    weights: torch.Tensor | Schedule,
    train: DeviceData,
    pos_weight: torch.Tensor,
    config: TrainConfig,
    *,
    checkpoint: Path | None = None,
    identity: dict[str, Any] | None = None,
    label: str = "ensemble",
    monitor: Monitor | None = None,
    after_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    step_offset: int = 0,
    total_steps: int | None = None,
) -> LoopResult:
    """Train the k models of ``ensemble`` (already on ``train.device``) on one shared batch stream
    through the training loop (``stg.train.loop.train_loop``), for ``config.epochs`` epochs.

    weights: (T, k), column c = model c's task weights, or a ``Schedule`` of (k, T) weights. The
    batch stream (shuffle, augmentation, dropout) is drawn from ``config.seed``'s generators, so it
    is the data-map run's stream and every family sees the same batches. With ``checkpoint``, state
    is saved after every epoch and a checkpoint with the same ``identity`` is resumed: the result
    equals an uninterrupted run. The monitor's cancel stops within one step.
    """
    if not isinstance(weights, Schedule):
        weights = torch.as_tensor(weights)
        if weights.shape != (pos_weight.shape[0], ensemble.k):
            raise ValueError(f"weights must be (T, k) = ({pos_weight.shape[0]}, {ensemble.k}), "
                             f"got {tuple(weights.shape)}")
        weights = membership_schedule(weights)
    return train_loop(ensemble, train, pos_weight, config, schedule=weights, checkpoint=checkpoint,
                      identity=json.dumps(identity or {}, sort_keys=True), label=label, monitor=monitor,
                      after_epoch=after_epoch, step_offset=step_offset, total_steps=total_steps)


def to_device(ensemble: Ensemble, device: torch.device) -> Ensemble:
    """Move an ensemble to ``device`` (channels_last on CUDA, as the engine does)."""
    if isinstance(ensemble, VmapEnsemble):  # stacked 5-D conv weights have no channels_last layout
        return ensemble.to(device)
    out = prepare_model(ensemble, device)
    assert isinstance(out, Ensemble)
    return out
