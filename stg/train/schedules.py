"""Task-weight schedules: who decides the weight of each task's loss, step by step.

The loss of a step is ``sum_t w_t * L_t`` for a model ((T,) weights) or, for an ensemble of k
models, ``sum_c sum_t w_ct * L_ct`` ((k, T) weights, row c = model c's weights). The training loop
owns one weight tensor on the device for the whole run and overwrites it in place (``copy_``) with
``schedule.weights(epoch, step)`` before the first step of every epoch (and before every step when
``per_step`` is true). In place matters: a CUDA graph captured once keeps reading that tensor, so
its replays see the new weights.

A schedule's weights must depend only on (epoch, step) and its own state, so a resumed run gets
the same weights as an uninterrupted one; state it keeps goes through ``state_dict``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


class Schedule:
    """Base class. ``weights(epoch, step)``: (T,) or (k, T) float, on any device; ``epoch`` is
    1-based, ``step`` the global 0-based step about to run."""

    per_step: bool = False

    def weights(self, epoch: int, step: int) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Constant(Schedule):
    """The same weights at every step: all ones for the data-map run, a membership matrix for the
    specialists of a grouping."""

    def __init__(self, weights: torch.Tensor):
        self._weights = torch.as_tensor(weights).detach().clone()

    def weights(self, epoch: int, step: int) -> torch.Tensor:
        return self._weights


def membership_schedule(membership: torch.Tensor) -> Constant:
    """The specialists' weights from a (T, k) membership matrix: (k, T), row c = column c."""
    return Constant(torch.as_tensor(membership).t().contiguous())


class ScaledSchedule(Schedule):
    """``base`` with the entries where ``scaled`` is true multiplied by ``factor(epoch, step)``
    (a float): e.g. MT2ST's auxiliary tasks, whose weight decays while the primary tasks keep theirs
    (``stg.mt2st.schedules``). base, scaled: (T,) or (k, T). ``factor`` must be a function of
    (epoch, step) alone (no state), so a resumed run gets the same weights."""

    def __init__(self, base: torch.Tensor, scaled: torch.Tensor, factor: Callable[[int, int], float], *,
                 per_step: bool = False):
        self.base = torch.as_tensor(base).detach().clone()
        self.scaled = torch.as_tensor(scaled, dtype=torch.bool)
        if self.scaled.shape != self.base.shape:
            raise ValueError(f"base {tuple(self.base.shape)} and scaled {tuple(self.scaled.shape)} differ in shape")
        self.factor = factor
        self.per_step = per_step

    def weights(self, epoch: int, step: int) -> torch.Tensor:
        return torch.where(self.scaled, self.base * float(self.factor(epoch, step)), self.base)
