"""TAG's lookahead inter-task affinity (Fifty et al. 2021, Eq. 1), batched over the source tasks.

For a multi-task model (B, C, H, W) -> (B, T) logits with shared parameters theta (the trunk) and
task heads, on one batch (x, y):

    theta_i'  = theta - lr * grad_theta L_i(theta)        one SGD step on the SHARED parameters only,
                                                           with source task i's gradient; heads fixed
    Z[i, j]   = 1 - L_j(theta_i') / L_j(theta)              (divided by lr with ``normalize_by_lr``,
                                                           as both official codes store it)

``Z`` is (T, T), **source x target**: row i is the source task whose step is taken, column j the
task whose loss is measured. (``stg.affinity.selection`` wants recipient-major A[t, u], i.e. Z.T.)
Z > 0: task i's step lowers task j's loss.

Missing labels (NaN targets, multi-label data): each L_j is the mean over the batch's samples
labelled for j (``stg.train.loss.per_task_bce``). A source with no labelled sample in the batch has
a zero gradient, so its row is 0; a target with none has L_j = 0 and its column is set to 0.

How the losses are evaluated (the "probe mode", the same for L(theta), the gradients and
L(theta_i'), here and in ``naive_lookahead_affinity`` / ``stg.affinity.cosine``):

* BatchNorm: batch statistics (train-mode normalisation, as the official CelebA code's functional
  re-implementation), and the running statistics are neither read nor written: the model's buffers
  stay bit-identical. The forward runs on a data-free copy of the model (a "skeleton" of meta
  tensors, as ``stg.specialists.ensembles.VmapEnsemble`` does) through ``torch.func.functional_call``;
  its BatchNorm layers have ``track_running_stats`` off, so they normalise with batch statistics and
  touch no buffer. ``stg.train.models.BatchNorm2d``'s CPU channels_last fast path asks for the
  memory format, which ``vmap`` does not support, so the skeleton uses the standard BatchNorm
  forward (the same statistics).
* Dropout: OFF. The ratio L_j(theta_i') / L_j(theta) should measure the parameter change only, not
  two different dropout masks; with dropout off both losses see the same deterministic network,
  and the probe draws no random numbers (so the training run's random streams, and therefore the
  trained model, are the same with or without the probe). The gradient g_i is also the dropout-off
  gradient. (The official CelebA model has no dropout; the Taskonomy code's lookahead forwards
  use train mode.)
* Precision: ``"fp32"`` (default) computes in the parameters' dtype without autocast (and, on
  CUDA, without TF32: ``exact_float32``). For small
  learning rates 1 - L'/L is a small difference of two nearly equal losses, which bf16 (8 bits of
  mantissa) cannot resolve; ``benchmarks/affinity_speed.py`` measures the error. ``"bf16"`` runs
  the forwards under bf16 autocast (losses still in float32) for experiments.
* The lookahead step is plain SGD (Eq. 1), whatever optimizer trains the model (stg trains with
  Adam); pass the optimizer's current lr, as both official codes do.

Batched implementation (``lookahead_affinity``): one forward at theta under ``torch.func.vjp``
gives the T losses; the T per-task gradients of the shared parameters are the vjp with the T unit
cotangents, ``vmap``-ed (a batched backward through the one saved graph); the T lookahead parameter
sets are evaluated with ``functional_call`` ``vmap``-ed over the sources (``vmap`` turns the
per-source weights into one wide/grouped convolution). Sources go in chunks of ``chunk`` so the
memory stays bounded (``default_chunk``). ``naive_lookahead_affinity`` is the plain reference: a
deep copy of the model per source, backward of L_i, a manual SGD step, a new forward.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
import types
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from stg.errors import StgError
from stg.train.loss import per_task_bce

PRECISIONS = ("fp32", "bf16")
CUDA_BUDGET_FRACTION = 0.5  # of the GPU memory free at the time of the call
_TF32_LOCK = threading.Lock()


@contextlib.contextmanager
def exact_float32(device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """For an fp32 probe on CUDA: TF32 off for convolutions and matmuls while it runs (cuDNN's
    default rounds fp32 convolution inputs to a 10-bit mantissa, too coarse for 1 - L'/L), then
    the previous settings back. The flags are process-wide: probes in several threads take turns."""
    if device.type != "cuda" or precision != "fp32":
        yield
        return
    with _TF32_LOCK:
        old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


# ------------------------------------------------------------------------------------------------
# The probe-mode forward, shared with stg.affinity.cosine
# ------------------------------------------------------------------------------------------------
def _copy_memo(model: nn.Module) -> dict[int, Any]:
    """A ``copy.deepcopy`` memo that leaves out the model's dropout generators (the run's random
    streams) and its hooks (whose owners must not be copied)."""
    memo: dict[int, Any] = {}
    for m in model.modules():
        gen = getattr(m, "generator", None)
        if isinstance(gen, torch.Generator):
            memo[id(gen)] = None
        for key, value in vars(m).items():
            if "hooks" in key and isinstance(value, dict):
                memo[id(value)] = type(value)()
    return memo


def probe_skeleton(model: nn.Module) -> nn.Module:
    """A data-free copy of ``model`` (every parameter and buffer a meta tensor; forward hooks and
    dropout generators left out) in probe mode: train mode, dropout off, BatchNorm with batch
    statistics and no running statistics (see the module docstring). Call it through
    ``torch.func.functional_call`` with real tensors."""
    memo = _copy_memo(model)
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    skeleton = copy.deepcopy(model, memo)
    skeleton.train()
    for m in skeleton.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False  # train mode + no running stats: batch statistics, no writes
            if type(m).forward is not nn.modules.batchnorm._BatchNorm.forward:
                # vmap-safe, and local: a synchronised batch norm of a run on several processes
                # (stg.train.distributed) would all-reduce, but the probe sees the whole global batch
                m.forward = types.MethodType(nn.modules.batchnorm._BatchNorm.forward, m)
    return skeleton


class ProbeForward:
    """Per-task losses of ``model`` on one batch as a function of its shared parameters, in probe
    mode: ``losses(shared) -> (T,)``, where ``shared`` maps the names in ``shared_names`` to
    tensors (batched under ``vmap``); every other parameter and buffer is the model's own.

    x: (B, C, H, W), y: (B, T) {0, 1}, pos_weight: (T,); all cast to the parameters' dtype."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor,
                 shared_names: Sequence[str], precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise StgError(f"unknown probe precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        params = dict(model.named_parameters())
        names = list(dict.fromkeys(shared_names))
        missing = [n for n in names if n not in params]
        if missing:
            raise StgError(f"{missing[0]!r} is not a parameter of the model")
        if not names:
            raise StgError("the affinity probes need at least one shared parameter")
        self.names = names
        self.shared = {n: params[n].detach() for n in names}
        self.fixed = {n: p.detach() for n, p in params.items() if n not in self.shared}
        self.buffers = {n: b.detach() for n, b in model.named_buffers()}
        self.dtype = self.shared[names[0]].dtype
        self.device = self.shared[names[0]].device
        self.x = x.detach().to(self.dtype)
        self.y = y.detach().to(self.dtype)
        self.masked = bool(torch.isnan(self.y).any())  # missing labels (stg.train.loss), decided once
        self.pos_weight = pos_weight.detach().to(self.dtype)
        self.precision = precision
        self.skeleton = probe_skeleton(model)
        self._sizes: list[int] | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    def losses(self, shared: dict[str, torch.Tensor]) -> torch.Tensor:
        from torch.func import functional_call

        with self.autocast():
            logits = functional_call(self.skeleton, (shared, self.fixed, self.buffers), (self.x,))
        if logits.dim() != 2:
            raise StgError(f"the affinity probes need a multi-task model with (B, T) logits, got shape "
                           f"{tuple(logits.shape)}")
        return per_task_bce(logits, self.y, pos_weight=self.pos_weight, masked=self.masked).to(self.dtype)

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        """Record the byte size of every leaf module's output during the forwards inside."""
        sizes: list[int] = []

        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                sizes.append(out.numel() * out.element_size())

        handles = [m.register_forward_hook(hook) for m in self.skeleton.modules() if not list(m.children())]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            self._sizes = sizes

    def per_source_bytes(self) -> int:
        """Rough memory one source adds to a chunk: a few of the largest activations (forward and
        its gradient live together) plus a gradient and a parameter set."""
        largest = max(self._sizes or [self.x.numel() * self.x.element_size()])
        params = sum(t.numel() * t.element_size() for t in self.shared.values())
        return 6 * largest + 3 * params


def memory_budget(device: torch.device) -> int:
    """Bytes a chunk of sources may use on a GPU: half of its free memory."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * CUDA_BUDGET_FRACTION)


def default_chunk(n_tasks: int, per_source_bytes: int, device: torch.device) -> int:
    """How many sources to batch in one vmapped pass.

    CUDA: as many as the memory budget holds (at least 1, at most ``n_tasks``), split evenly so the
    last chunk is not a sliver; batching is what keeps a GPU busy on small models. CPU: 1, i.e. one
    plain vjp and one plain forward per source (still one shared forward at theta, no model copies):
    the work is the same T backward and T forward passes either way, the CPU is already saturated by
    one batch of 128-256 images, and ``vmap``'s batching rules (grouped convolutions, layout copies
    around BatchNorm and pooling) made a vmapped pass about 3x slower than the same number of plain
    passes (paper CNN, batch 256, 5 sources; 1 and 2 threads of a 2-core AVX-512 CPU; see
    ``benchmarks/affinity_speed.py``)."""
    if device.type != "cuda":
        return 1
    fit = max(1, memory_budget(device) // max(1, per_source_bytes))
    if fit >= n_tasks:
        return n_tasks
    pieces = math.ceil(n_tasks / fit)
    return math.ceil(n_tasks / pieces)


def _check_lr(lr: float) -> float:
    lr = float(lr)
    if not (lr > 0 and math.isfinite(lr)):
        raise StgError(f"the lookahead learning rate must be a positive number, got {lr}")
    return lr


def per_task_gradients(probe: ProbeForward, names: Sequence[str] | None = None, *,
                       chunk: int | None = None) -> Iterator[tuple[slice, torch.Tensor, dict[str, torch.Tensor]]]:
    """The base losses (T,) and the per-task gradients of the shared parameters ``names`` (all by
    default), in chunks of sources: yields (rows, base_losses, {name: (c, *shape)}) with rows the
    slice of source tasks. One forward; the T backward passes are one vmapped vjp per chunk (a
    plain vjp for a chunk of one)."""
    from torch.func import vjp, vmap

    names = list(names) if names is not None else probe.names
    primal = {n: probe.shared[n] for n in names}
    rest = {n: probe.shared[n] for n in probe.names if n not in primal}

    def losses(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return probe.losses({**rest, **p})

    with probe.measuring():
        base, vjp_fn = vjp(losses, primal)
    n_tasks = base.shape[0]
    size = chunk if chunk is not None else default_chunk(n_tasks, probe.per_source_bytes(), probe.device)
    size = max(1, min(int(size), n_tasks))
    eye = torch.eye(n_tasks, dtype=base.dtype, device=base.device)
    for start in range(0, n_tasks, size):
        rows = slice(start, min(start + size, n_tasks))
        if size == 1:  # a plain vjp: no batching rules to pay for
            (grads,) = vjp_fn(eye[start])
            grads = {n: g.unsqueeze(0) for n, g in grads.items()}
        else:
            (grads,) = vmap(vjp_fn)(eye[rows])
        yield rows, base, grads


# ------------------------------------------------------------------------------------------------
# The lookahead affinity
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def lookahead_affinity(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    pos_weight: torch.Tensor,
    *,
    lr: float,
    shared_names: Sequence[str],
    chunk: int | None = None,
    precision: str = "fp32",
    normalize_by_lr: bool = False,
) -> torch.Tensor:
    """TAG's lookahead affinity on one batch: (T, T) source x target, in the parameters' dtype, on
    their device (see the module docstring for the definition and the probe mode).

    x: (B, C, H, W); y: (B, T); pos_weight: (T,); lr > 0: the lookahead SGD step; shared_names: the
    parameters the lookahead moves (``[n for n, _ in stg.train.models.shared_parameters(model)]``);
    chunk: sources per vmapped pass (default ``default_chunk``: on CUDA what fits in memory, on
    CPU 1; a chunk of one source runs without ``vmap``). The model,
    its buffers and its ``.grad`` are left untouched."""
    from torch.func import vmap

    lr = _check_lr(lr)
    probe = ProbeForward(model, x, y, pos_weight, shared_names, precision)
    out: torch.Tensor | None = None
    with exact_float32(probe.device, precision):
        for rows, base, grads in per_task_gradients(probe, chunk=chunk):
            if out is None:
                out = base.new_empty(base.shape[0], base.shape[0])
            moved = {n: probe.shared[n] - lr * grads[n] for n in probe.names}  # (c, *shape) each
            del grads
            if rows.stop - rows.start == 1:  # a plain forward: no batching rules to pay for
                after = probe.losses({n: t[0] for n, t in moved.items()}).unsqueeze(0)
            else:
                after = vmap(probe.losses)(moved)  # (c, T)
            # a target with no labelled sample in the batch (missing labels) has base loss 0: no
            # evidence, affinity 0 (elsewhere this is exactly 1 - after / base)
            out[rows] = torch.where(base > 0, 1.0 - after / base, torch.zeros_like(after))
    assert out is not None
    return out / lr if normalize_by_lr else out


def probe_copy(model: nn.Module) -> nn.Module:
    """A real deep copy of ``model`` with dropout off (BatchNorm in train mode: batch statistics;
    the copy's own running statistics absorb the updates). Dropout generators and hooks are not
    copied."""
    clone = copy.deepcopy(model, _copy_memo(model))
    clone.train()
    for m in clone.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    return clone


def naive_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor,
                  precision: str) -> torch.Tensor:
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    device = next(model.parameters()).device
    ctx = (torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False) if precision == "bf16"
           else contextlib.nullcontext())
    with ctx:
        logits = model(x.to(dtype))
    return per_task_bce(logits, y.to(dtype), pos_weight=pos_weight.to(dtype)).to(dtype)


def naive_lookahead_affinity(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    pos_weight: torch.Tensor,
    *,
    lr: float,
    shared_names: Sequence[str],
    precision: str = "fp32",
    normalize_by_lr: bool = False,
) -> torch.Tensor:
    """The plain reference for ``lookahead_affinity`` (same result, same probe mode): per source
    task i, a deep copy of the model, zero grads, backward of L_i, ``p -= lr * p.grad`` on the shared
    parameters, a new forward. (T, T) source x target."""
    lr = _check_lr(lr)
    if precision not in PRECISIONS:
        raise StgError(f"unknown probe precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    shared = set(shared_names)
    with exact_float32(next(model.parameters()).device, precision):
        with torch.no_grad():
            base = naive_losses(probe_copy(model), x, y, pos_weight, precision)
        n_tasks = base.shape[0]
        out = base.new_empty(n_tasks, n_tasks)
        for i in range(n_tasks):
            clone = probe_copy(model)
            clone.zero_grad(set_to_none=True)
            naive_losses(clone, x, y, pos_weight, precision)[i].backward()
            with torch.no_grad():
                for name, p in clone.named_parameters():
                    if name in shared and p.grad is not None:
                        p -= lr * p.grad
                after = naive_losses(clone, x, y, pos_weight, precision)
                out[i] = torch.where(base > 0, 1.0 - after / base, torch.zeros_like(after))
    return out / lr if normalize_by_lr else out
