"""Training on several processes with torch.distributed: ``torchrun --nproc-per-node N -m stg datamap ...``.

The same command line means the same training on 1 or N processes (to float rounding: the 2-rank
gloo test compares the data maps with a 1-process run's). How:

- **Launch.** torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; ``session``
  joins the default process group (NCCL on CUDA, gloo on the CPU), plus a gloo group for host-side
  messages (cancel, errors, the checkpoint, the epoch-end gathers), so those never touch the GPU.
  Rank r trains on ``cuda:LOCAL_RANK`` (``--device auto`` or ``cuda``) or the CPU.
- **One global sample order.** Every rank draws the epoch's permutation from the run's data
  generator, seeded from (seed, epoch) exactly as one process does (``stg.train.rng``), and cuts it
  into the same global batches of ``--batch-size`` B rows. Rank r trains on the r-th of W contiguous
  slices of each global batch (``torch.tensor_split``: sizes differ by at most one).
- **Data.** Rank r keeps rows [N r / W, N (r + 1) / W) of the training split on its device
  (``ShardedData``). A step assembles the global batch with one all-reduce of uint8 images: each
  rank fills the rows it holds and zeros elsewhere, and a sum with one non-zero term is exact. Then
  every rank crops/flips the whole global batch with the run's generator (the same draws as one
  process) and keeps its slice: B x H x W x C bytes per step on the wire, small next to the gradients.
- **Gradients.** DDP all-reduces the mean of the ranks' gradients. Task t's loss on rank r is its
  mean over the slice's labelled rows (all of them unless labels are missing) scaled by
  W max(1, m_rt) / max(1, M_t), m_rt and M_t the labelled rows of t in the slice and in the global
  batch (exactly 1 for equal slices with every label), so that mean is the gradient of the global
  batch mean; an epoch's short last batch is split like any other, and no row is dropped.
  Each slice must hold at least one row: ``check_batches`` refuses a batch size (or a last batch)
  smaller than W with a one-line error.
- **Batch norm.** ``sync_batchnorm``: statistics over the global batch (torch's ``SyncBatchNorm``
  on CUDA; ``SyncBatchNorm2d`` here on the CPU, where torch's has no kernel).
- **Hooks** see the global step as one process would: the batch's B rows, images and targets, the
  gathered (B, T) logits, the all-reduced per-task losses.
- **Data map.** Each rank records the Welford statistics of its own rows only (memory N T / W per
  rank; ``stg.datamap.shards``); rank 0 gathers them at the end of the epoch.
- **Files.** Rank 0 alone writes the run directory, after a gather: the same files as a 1-process
  run (data maps over all N samples, run.json, one checkpoint with the whole recorder), so the
  dashboard and ``stg group`` open it like any other, and it resumes on any number of processes.
  Rank 0 reads the checkpoint and broadcasts it: the run directory need only be on rank 0's disk.
- **Stop.** Cancel (Ctrl-C) is agreed on before every step, so all ranks stop at the same step
  (each rank takes every SIGINT as a cancel: torchrun forwards the terminal's Ctrl-C again). A
  killed rank makes torchrun stop the others; the run keeps its last finished epoch and the same
  command resumes it.

- **Affinity probes** (``--affinity``): rank 0 alone runs them, on the global batch (the hooks'
  view), with batch norm local to the probe (it holds the whole batch); they use no collective, so
  the other ranks wait for rank 0 at the next step. The same affinity as one process, for the same
  probing time on rank 0 (the 2-rank gloo test compares the files).

Not on several processes: extra training hooks (one process only) and CUDA graphs (DDP steps run
eagerly).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as tdist
from torch import nn

from stg.data.taskset import Split
from stg.errors import StgError
from stg.train.device import DeviceData

V = TypeVar("V")


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def launched_rank() -> int:
    """RANK as torchrun sets it (0 when not launched by torchrun): only rank 0 prints."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def rank_device(name: str) -> torch.device:
    """This rank's device for ``--device name``: cuda:LOCAL_RANK for auto (with CUDA) and cuda."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise StgError(f"--device {name}: with torchrun each rank uses cuda:LOCAL_RANK; pass --device cuda "
                       "(or auto, or cpu)")
    if not torch.cuda.is_available():
        raise StgError("--device cuda was asked for but no CUDA GPU is available: use --device cpu or auto")
    if local >= torch.cuda.device_count():
        raise StgError(f"rank with LOCAL_RANK {local} has no GPU ({torch.cuda.device_count()} visible): start at "
                       "most that many processes per node")
    return torch.device("cuda", local)


class Distributed:
    """This process's place among W ranks (see the module docstring). Build with ``session``."""

    def __init__(self, rank: int, world: int, device: torch.device, control: Any):
        self.rank, self.world, self.device, self.control = rank, world, device, control

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes the run directory and reports progress."""
        return self.rank == 0

    # -- who holds what -------------------------------------------------------------------------
    def shard(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """Rows [start, stop) of an n-row split that ``rank`` (default: this one) holds."""
        r = self.rank if rank is None else rank
        return n * r // self.world, n * (r + 1) // self.world

    def slice_sizes(self, b: int) -> list[int]:
        """Rows of a b-row global batch that each rank trains on, as ``torch.tensor_split`` cuts it."""
        return [b // self.world + (1 if r < b % self.world else 0) for r in range(self.world)]

    def local_slice(self, b: int) -> tuple[int, int]:
        """This rank's rows [lo, hi) of a b-row global batch."""
        sizes = self.slice_sizes(b)
        lo = sum(sizes[: self.rank])
        return lo, lo + sizes[self.rank]

    def check_batches(self, n: int, batch_size: int) -> None:
        """Every rank's slice of every batch must hold a row (an empty slice has no mean loss)."""
        last = n % batch_size
        if batch_size < self.world or 0 < last < self.world:
            size = batch_size if batch_size < self.world else last
            raise StgError(f"a batch of {size} images cannot be split across {self.world} processes (each needs "
                           f"at least one): use a --batch-size of at least {self.world} whose last batch of an "
                           f"epoch ({n} images) is not smaller than that")

    # -- on the training device (the default group) --------------------------------------------
    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place."""
        tdist.all_reduce(t)
        return t

    def gather_slices(self, local: torch.Tensor, b: int) -> torch.Tensor:
        """The ranks' slices (n_r, ...) of a b-row global batch, concatenated in rank order: (b, ...)."""
        sizes = self.slice_sizes(b)
        width = max(sizes)
        padded = local.new_zeros((width, *local.shape[1:]))
        padded[: local.shape[0]] = local
        chunks = [torch.empty_like(padded) for _ in range(self.world)]
        tdist.all_gather(chunks, padded)
        return torch.cat([c[:s] for c, s in zip(chunks, sizes)])

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DDP (its gradients are all-reduced in buckets during backward). Parameters
        start equal on every rank (same seeded init, or the same checkpoint)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # batch norm statistics are synchronised (sync_batchnorm), so buffers stay equal: no broadcast
        # before each forward (the argument's name changed in torch 2.14)
        params = inspect.signature(DistributedDataParallel).parameters
        no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False}
        return DistributedDataParallel(model, device_ids=ids, **no_sync)

    # -- on the host (the gloo control group) ---------------------------------------------------
    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank (a cancel is agreed on before each step)."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def on_writer(self, fn: Callable[[], V]) -> V:
        """``fn()`` run on rank 0 and its (picklable) result given to every rank. When it raises, rank 0
        re-raises and every other rank raises a one-line StgError with its message."""
        box: list[Any] = [None]
        error: BaseException | None = None
        if self.is_writer:
            try:
                box = [("ok", fn())]
            except BaseException as e:  # every rank must hear of it, or the others would wait forever
                error = e
                box = [("error", str(e) if isinstance(e, StgError) else f"{type(e).__name__}: {e}")]
        tdist.broadcast_object_list(box, src=0, group=self.control)
        kind, value = box[0]
        if error is not None:
            raise error
        if kind == "error":
            raise StgError(f"rank 0: {value}")
        return value

    def gather_rows(self, local: torch.Tensor, n: int) -> torch.Tensor | None:
        """Each rank's shard (``shard(n)`` rows along dim 0) gathered on rank 0 into (n, ...); None on
        the others. CPU tensors, over the control group."""
        local = local.detach().cpu().contiguous()
        sizes = [b - a for a, b in (self.shard(n, r) for r in range(self.world))]
        width = max(sizes)
        padded = local.new_zeros((width, *local.shape[1:]))
        padded[: local.shape[0]] = local
        chunks = [torch.empty_like(padded) for _ in range(self.world)] if self.is_writer else None
        tdist.gather(padded, chunks, dst=0, group=self.control)
        if chunks is None:
            return None
        return torch.cat([c[:s] for c, s in zip(chunks, sizes)])


class ShardedData(DeviceData):
    """This rank's rows [start, stop) of a split on its device (``Distributed.shard``); ``batch`` gives
    the whole global batch, assembled from every rank's rows (see the module docstring). ``len`` is
    the whole split's N: the loop draws its permutation over all N rows."""

    def __init__(self, split: Split, dist: Distributed, mean: torch.Tensor, std: torch.Tensor):
        self.n_total = len(split)
        self.start, self.stop = dist.shard(self.n_total)
        part = Split(split.images[self.start:self.stop], split.labels[self.start:self.stop],
                     split.classes[self.start:self.stop], split.index[self.start:self.stop])
        super().__init__(part, dist.device, mean, std)
        self.dist = dist

    def __len__(self) -> int:
        return self.n_total

    def batch(
        self, index: torch.Tensor, *, augment: bool, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) global rows -> the global batch: images (B, C, H, W), labels (B, T), on every rank."""
        local = index - self.start
        own = (local >= 0) & (local < self.stop - self.start)
        rows = local.clamp(0, max(self.stop - self.start - 1, 0))  # no host sync: gather, then mask
        x = torch.where(own[:, None, None, None], self.images[rows], 0)  # (B, H, W, C) uint8
        y = torch.where(own[:, None], self.labels[rows], 0.0)  # where, not *: a missing label is NaN
        self.dist.all_reduce_(x)  # one non-zero term per row: the sum is exact
        self.dist.all_reduce_(y)
        return self.prepare(x, augment=augment, generator=generator), y


@contextlib.contextmanager
def session(device_name: str) -> Iterator[Distributed | None]:
    """Join the process group torchrun set up (None when this process was not launched by torchrun
    with more than one process); leave it on exit."""
    world = launched_world_size()
    if world == 1:
        yield None
        return
    device = rank_device(device_name)
    already = tdist.is_initialized()
    if not already:
        if device.type == "cuda":
            torch.cuda.set_device(device)
            try:
                tdist.init_process_group("nccl", device_id=device)
            except TypeError:  # torch < 2.3 has no device_id
                tdist.init_process_group("nccl")
        else:
            tdist.init_process_group("gloo")
    try:
        control = tdist.new_group(backend="gloo") if tdist.get_backend() != "gloo" else tdist.group.WORLD
        yield Distributed(tdist.get_rank(), tdist.get_world_size(), device, control)
    finally:
        if not already and tdist.is_initialized():
            tdist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the gradients (each rank's loss
    depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = x.clone()
        tdist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        g = grad.clone()
        tdist.all_reduce(g)
        return g


class SyncBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the global batch of all ranks, on any device (torch's ``SyncBatchNorm`` runs
    on GPUs only). In training, per channel c over the B global rows and H x W positions:

        n = sum_r n_r,  mean_c = sum_r sum x / n,  var_c = sum_r sum (x - mean_c)^2 / n  (two-pass)
        y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c

    with the sums all-reduced (differentiable: the backward all-reduces their gradients), and the
    running statistics updated as ``nn.BatchNorm2d`` does (unbiased var n / (n - 1)). Computed in
    float32. Eval mode uses the running statistics (no communication)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not tdist.is_initialized():
            return super().forward(x)
        dims = (0, 2, 3)
        shape = (1, -1, 1, 1)
        xf = x.float()
        count = torch.full((1,), float(x.numel() // x.shape[1]), device=x.device)
        sums = _AllReduceSum.apply(torch.cat([xf.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp_min(1)), alpha=m)
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every 2-D batch norm of ``model`` made synchronous across ranks, in place (the same parameter
    and buffer tensors, so the state_dict keys and the optimizer's parameters do not change)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SyncBatchNorm2d):
        out = SyncBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        return out
    for name, child in module.named_children():
        new = _convert_cpu(child)
        if new is not child:
            module.add_module(name, new)
    return module


def refuse_hooks(hooks: Sequence[object], what: str) -> None:
    """Extra training hooks see a rank's view of a step on several processes: refused for now."""
    if hooks:
        raise StgError(f"{what} runs on one process only: drop it, or train without torchrun")
