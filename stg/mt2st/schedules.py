"""MT2ST's schedules of the auxiliary tasks' loss weight (Liu & Jiang 2024, arXiv 2406.18038).

The loss of a model is ``sum_p L_p + a(t) * sum_k b_k L_k``: primary tasks p always weigh 1 (times
their base weight), auxiliary tasks k weigh their base weight b_k (1 for a single target's helpers,
the membership for a grouping's specialist) times the schedule's auxiliary factor ``a(t)``.
``t`` is the training time in epochs, 0 at the first step: ``t = epoch - 1`` for per-epoch
schedules (the weight changes before each epoch), ``t = step / steps_per_epoch`` with ``per_step``.

=================  ===========================================  =====================================
name               a(t)                                         parameters (defaults)
=================  ===========================================  =====================================
``mtl``            1                                            none
``stl``            0                                            none
``diminish``       ``w0 * exp(-eta * t**nu)`` (the paper's)     w0 = 1, eta = 0.5, nu = 1 (the paper's
                                                                values were not published)
``diminish-code``  ``w0 ** (2 ** t)`` (the released code's:     w0 = 0.95 (gone, < 1e-3, from t = 8)
                   the weight is squared after every epoch)
``switch``         1 before the switch point, 0 from it on      switch_at = 0.6: a fraction of
                                                                training (0 < x < 1), or a whole
                                                                number of epochs (x >= 1); the code's
                                                                15 of 25 epochs = 0.6
=================  ===========================================  =====================================

Below ``eps`` (default 1e-3) the factor is exactly 0, so the auxiliary losses then contribute
exactly zero gradient (0 * L is 0; the released code's auxiliary terms carried no gradient at all,
see the module docstring of ``stg.mt2st.train``). The schedules here are pure functions of
(epoch, step): a resumed run gets the same weights, and they carry no checkpoint state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from stg.errors import StgError

SCHEDULES = ("mtl", "stl", "diminish", "diminish-code", "switch")
DEFAULT_EPS = 1e-3
DEFAULTS: dict[str, dict[str, float]] = {
    "diminish": {"w0": 1.0, "eta": 0.5, "nu": 1.0},
    "diminish-code": {"w0": 0.95},
    "switch": {"switch_at": 0.6},
}
PARAMS = ("w0", "eta", "nu", "switch_at")  # which applies to which schedule: DEFAULTS' keys


def _finite(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise StgError(f"--{name.replace('_', '-')} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise StgError(f"--{name.replace('_', '-')} must be a finite number, got {value!r}")
    return v


def _num(v: float) -> str:
    """A short, exact-enough spelling of a parameter for file names: 0.6, 1, 0.001, 1e-05."""
    return f"{v:g}"


@dataclass(frozen=True)
class AuxSchedule:
    """One schedule of the auxiliary factor (see the module docstring). Build it with
    :func:`make_schedule` (validates, fills the defaults); ``check(epochs, steps_per_epoch)``
    validates what depends on the training's length (the switch point)."""

    name: str
    w0: float = 0.0
    eta: float = 0.0
    nu: float = 0.0
    switch_at: float = 0.0
    eps: float = DEFAULT_EPS
    per_step: bool = False

    # -- the formula ---------------------------------------------------------------------------
    def raw(self, t: float, *, epochs: int, steps_per_epoch: int = 1) -> float:
        """a(t) before the eps cut; ``t`` in epochs (0 = the first step)."""
        if self.name == "mtl":
            return 1.0
        if self.name == "stl":
            return 0.0
        if self.name == "diminish":
            return self.w0 * math.exp(-self.eta * t ** self.nu)
        if self.name == "diminish-code":
            exponent = 2.0 ** t
            return 0.0 if exponent > 1e6 else self.w0 ** exponent  # w0 < 1: underflows to 0 anyway
        return 1.0 if t < self.switch_time(epochs, steps_per_epoch) - 1e-9 else 0.0

    def factor(self, t: float, *, epochs: int, steps_per_epoch: int = 1) -> float:
        """a(t), exactly 0 below ``eps``."""
        a = self.raw(t, epochs=epochs, steps_per_epoch=steps_per_epoch)
        return 0.0 if a < self.eps else a

    def time(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """t of (1-based ``epoch``, global 0-based ``step``): epoch - 1, or step / steps_per_epoch."""
        return step / steps_per_epoch if self.per_step else float(epoch - 1)

    def factor_at(self, epoch: int, step: int, *, epochs: int, steps_per_epoch: int) -> float:
        """The factor the training loop uses at (epoch, step)."""
        return self.factor(self.time(epoch, step, steps_per_epoch), epochs=epochs, steps_per_epoch=steps_per_epoch)

    def switch_time(self, epochs: int, steps_per_epoch: int = 1) -> float:
        """switch: the time (in epochs) of the first primary-only step. A fraction x of training is
        round(x * epochs) epochs, or round(x * steps) steps with ``per_step``."""
        if self.switch_at >= 1:
            return float(self.switch_at)
        if self.per_step:
            return round(self.switch_at * epochs * steps_per_epoch) / steps_per_epoch
        return float(round(self.switch_at * epochs))

    def multitask_epochs(self, epochs: int, steps_per_epoch: int) -> int:
        """How many leading epochs have some step with an auxiliary factor > 0; every later epoch
        is primary-only (the factors never come back: every schedule here is non-increasing).
        0 for ``stl``, ``epochs`` for ``mtl``."""
        for e in range(1, epochs + 1):
            if self.factor_at(e, (e - 1) * steps_per_epoch, epochs=epochs, steps_per_epoch=steps_per_epoch) == 0.0:
                return e - 1
        return epochs

    def curve(self, epochs: int, steps_per_epoch: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(t, a(t)) at every step the weights are written: per epoch, or per step (for plots)."""
        if self.per_step:
            steps = np.arange(epochs * steps_per_epoch)
            t = steps / steps_per_epoch
        else:
            t = np.arange(epochs, dtype=np.float64)
        a = np.array([self.factor(float(x), epochs=epochs, steps_per_epoch=steps_per_epoch) for x in t])
        return t, a

    # -- validation -----------------------------------------------------------------------------
    def check(self, epochs: int, steps_per_epoch: int = 1) -> None:
        """StgError when the switch point is not inside a training of ``epochs`` epochs."""
        if self.name != "switch":
            return
        at = self.switch_time(epochs, steps_per_epoch)
        unit = "steps" if self.per_step and self.switch_at < 1 else "epochs"
        if not 0 < at < epochs:
            where = (f"after {_num(at * steps_per_epoch)} of {epochs * steps_per_epoch} steps" if unit == "steps"
                     else f"after {_num(at)} of {epochs} epochs")
            hint = (f"give a fraction in (0, 1) or a whole number of epochs from 1 to {epochs - 1}" if epochs > 1
                    else "a 1-epoch training can switch only with --per-step and a fraction")
            raise StgError(f"--switch-at {_num(self.switch_at)} puts the switch {where}, outside training: {hint}")

    # -- records --------------------------------------------------------------------------------
    def params(self) -> dict[str, float]:
        """The parameters that apply to this schedule."""
        return {k: getattr(self, k) for k in DEFAULTS.get(self.name, {})}

    def to_meta(self) -> dict[str, Any]:
        """JSON for identities and metrics.json: the name, the parameters that apply, eps and
        per_step where they matter."""
        out: dict[str, Any] = {"name": self.name, **self.params()}
        if self.name in ("diminish", "diminish-code"):
            out["eps"] = self.eps
        if self.name in ("diminish", "diminish-code", "switch"):
            out["per_step"] = self.per_step
        return out

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "AuxSchedule":
        meta = dict(meta)
        return make_schedule(str(meta.pop("name", "")), **meta)

    def slug(self) -> str:
        """A file-name-safe label: stl, mtl, switch-0.6, diminish-w1-eta0.5-nu1, diminish-code-w0.95
        (+ -eps<eps> when not the default, + -per-step)."""
        p = self.params()
        if self.name == "switch":
            s = f"switch-{_num(p['switch_at'])}"
        elif self.name == "diminish":
            s = f"diminish-w{_num(p['w0'])}-eta{_num(p['eta'])}-nu{_num(p['nu'])}"
        elif self.name == "diminish-code":
            s = f"diminish-code-w{_num(p['w0'])}"
        else:
            return self.name
        if self.name != "switch" and self.eps != DEFAULT_EPS:
            s += f"-eps{_num(self.eps)}"
        return s + ("-per-step" if self.per_step else "")

    def describe(self) -> str:
        """One line for people: 'diminish: a(t) = 1 * exp(-0.5 * t^1), 0 below 0.001 (per epoch)'."""
        when = "per step" if self.per_step else "per epoch"
        if self.name == "mtl":
            return "mtl: auxiliary tasks weigh 1 throughout"
        if self.name == "stl":
            return "stl: auxiliary tasks weigh 0 (the primary tasks alone)"
        if self.name == "diminish":
            return (f"diminish: a(t) = {_num(self.w0)} * exp(-{_num(self.eta)} * t^{_num(self.nu)}), "
                    f"0 below {_num(self.eps)} ({when})")
        if self.name == "diminish-code":
            return f"diminish-code: a(t) = {_num(self.w0)}^(2^t), 0 below {_num(self.eps)} ({when})"
        frac = f"{_num(self.switch_at)} of training" if self.switch_at < 1 else f"epoch {_num(self.switch_at)}"
        return f"switch: auxiliary tasks weigh 1, then 0 from {frac} on ({when})"


def make_schedule(
    name: str,
    *,
    w0: float | None = None,
    eta: float | None = None,
    nu: float | None = None,
    switch_at: float | None = None,
    eps: float | None = None,
    per_step: bool = False,
) -> AuxSchedule:
    """A validated :class:`AuxSchedule`; parameters left None take the schedule's defaults.

    StgError (one line) for an unknown name, a parameter given to a schedule it does not apply to,
    a negative eta, nu <= 0, w0 out of range, eps outside [0, 1), a switch point <= 0 or a
    fractional number of epochs."""
    if name not in SCHEDULES:
        raise StgError(f"unknown schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
    given = {"w0": w0, "eta": eta, "nu": nu, "switch_at": switch_at}
    applies = DEFAULTS.get(name, {})
    for key, value in given.items():
        if value is not None and key not in applies:
            users = [s for s in SCHEDULES if key in DEFAULTS.get(s, {})]
            raise StgError(f"--{key.replace('_', '-')} applies to the {' and '.join(users)} schedule"
                           f"{'s' if len(users) > 1 else ''} only, not to {name}")
    if eps is not None and name not in ("diminish", "diminish-code"):
        raise StgError(f"--eps applies to the diminish schedules only, not to {name}")
    if per_step and name in ("mtl", "stl"):
        raise StgError(f"--per-step applies to the diminish and switch schedules only, not to {name}")
    values = {k: _finite(k, given[k] if given[k] is not None else v) for k, v in applies.items()}
    e = DEFAULT_EPS if eps is None else _finite("eps", eps)
    if not 0 <= e < 1:
        raise StgError(f"--eps must be in [0, 1), got {_num(e)}")
    if "eta" in values and values["eta"] < 0:
        raise StgError(f"--eta must be >= 0 (a decay rate), got {_num(values['eta'])}")
    if "nu" in values and values["nu"] <= 0:
        raise StgError(f"--nu must be > 0, got {_num(values['nu'])}")
    if name == "diminish" and values["w0"] <= 0:
        raise StgError(f"--w0 must be > 0, got {_num(values['w0'])}")
    if name == "diminish-code" and not 0 < values["w0"] < 1:
        raise StgError(f"--w0 of diminish-code must be in (0, 1) (it is squared every epoch), got {_num(values['w0'])}")
    if name == "switch":
        at = values["switch_at"]
        if at <= 0 or (at >= 1 and at != int(at)):
            raise StgError(f"--switch-at must be a fraction of training in (0, 1) or a whole number of epochs "
                           f">= 1, got {_num(at)}")
    return AuxSchedule(name, eps=e, per_step=bool(per_step), **values)


def factors(schedule: AuxSchedule, epochs: int, steps_per_epoch: int = 1) -> list[float]:
    """The factor at the first step of every epoch (1-based epochs 1..epochs)."""
    return [schedule.factor_at(e, (e - 1) * steps_per_epoch, epochs=epochs, steps_per_epoch=steps_per_epoch)
            for e in range(1, epochs + 1)]


def aux_weights(base: Any, primary: Any, schedule: AuxSchedule, *, epochs: int, steps_per_epoch: int):
    """The training loop's ``Schedule`` of task weights: ``base`` where ``primary`` is true, ``base *
    a(t)`` elsewhere. base, primary: (T,) for a model or (k, T) for an ensemble (row c = model c)."""
    import torch

    from stg.train.schedules import ScaledSchedule

    base_t = torch.as_tensor(np.asarray(base, dtype=np.float64) if not isinstance(base, torch.Tensor) else base)
    mask = ~torch.as_tensor(np.asarray(primary, dtype=bool))
    if mask.shape != base_t.shape:
        raise ValueError(f"base {tuple(base_t.shape)} and primary {tuple(mask.shape)} must have one shape")

    def factor(epoch: int, step: int) -> float:
        return schedule.factor_at(epoch, step, epochs=epochs, steps_per_epoch=steps_per_epoch)

    return ScaledSchedule(base_t, mask, factor, per_step=schedule.per_step)


def primary_of_membership(membership: Any) -> np.ndarray:
    """(k, T) bool: task t is a primary task of specialist c when c is its highest-membership
    specialist (ties: the first); the other tasks are c's auxiliaries."""
    w = np.asarray(membership, dtype=np.float64)  # (T, k)
    return (np.eye(w.shape[1], dtype=bool)[w.argmax(1)]).T.copy()

