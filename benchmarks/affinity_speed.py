"""What the inter-task affinity probes cost: TAG's lookahead affinity (stg.affinity.lookahead) and
the gradient cosine (stg.affinity.cosine), on the paper CNN with CIFAR-shaped random data
(3x32x32 uint8 resident on the device, crop/flip per batch), for T = 10 and T = 100 tasks.

  (a) training   the training loop (stg.train.loop, the data-map run's step: CUDA graph on a GPU,
                 bf16 autocast where native) for 2 epochs of ``--steps`` steps, plain vs with
                 ``TagAffinity(every=F)``; the second epoch's seconds (steady state: the CUDA
                 graph is captured in the first). overhead = probe epoch / plain epoch.
  (b) one batch  the batched probe (``lookahead_affinity`` / ``gradient_cosine`` with their default
                 chunk) vs the naive reference (a model copy and a backward per source /
                 T autograd.grad calls); best of ``--repeat``. On the CPU also the vmapped probe
                 at ``--vmap-chunk`` sources per pass, which the default does not use there.
  (c) precision  max |Z_bf16 - Z_fp32| / max |Z_fp32| of the lookahead affinity at the run's lr:
                 why the probe computes in float32.

Prints a table, then a last line
``overhead_T10=<a> overhead_T100=<a> speedup_T10=<naive/batched> speedup_T100=<naive/batched>``.

    python benchmarks/affinity_speed.py --quick                 # CPU, about a minute
    python benchmarks/affinity_speed.py                         # CPU: T = 10, 100, batch 256
    python benchmarks/affinity_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Callable

import torch

from stg.affinity.cosine import gradient_cosine, naive_gradient_cosine
from stg.affinity.lookahead import lookahead_affinity, naive_lookahead_affinity
from stg.affinity.probe import TagAffinity
from stg.data.taskset import Split
from stg.train.config import TrainConfig
from stg.train.device import DeviceData, channel_stats, prepare_model, resolve_device, use_bf16
from stg.train.loop import train_loop
from stg.train.models import build_model, shared_parameters
from stg.train.rng import seeded
from stg.train.schedules import Constant


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_data(n: int, n_tasks: int, device: torch.device) -> tuple[DeviceData, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = (torch.rand(n, n_tasks, generator=g) < 0.1).float()
    split = Split(images, labels, torch.zeros(n, dtype=torch.int64), torch.arange(n))
    mean, std = channel_stats(images)
    pos = labels.sum(0)
    return DeviceData(split, device, mean, std), ((n - pos) / pos.clamp_min(1)).to(device)


def model_for(n_tasks: int, device: torch.device) -> torch.nn.Module:
    return prepare_model(seeded(0, lambda: build_model("cnn", in_channels=3, size=32, n_tasks=n_tasks)), device)


def epoch_seconds(n_tasks: int, args: argparse.Namespace, device: torch.device, probe: bool) -> tuple[float, float]:
    """(seconds of the second epoch, seconds its probes took) of ``args.steps`` steps per epoch."""
    data, pos_weight = make_data(args.steps * args.batch_size, n_tasks, device)
    config = TrainConfig(epochs=2, batch_size=args.batch_size, device=str(device))
    with tempfile.TemporaryDirectory() as out:
        hooks = [TagAffinity(out, every=args.every)] if probe else []
        result = train_loop(model_for(n_tasks, device), data, pos_weight, config,
                            schedule=Constant(torch.ones(n_tasks)), hooks=hooks)
    last = result.history[-1]
    return float(last["seconds"]), float(last.get("tag_seconds", 0.0))


def best_of(fn: Callable[[], object], repeat: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tasks", default="10,100", help="comma-separated task counts")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="training steps per epoch in (a)")
    parser.add_argument("--every", type=int, default=10, help="probe frequency F in (a)")
    parser.add_argument("--repeat", type=int, default=2, help="timings in (b) are the best of this many")
    parser.add_argument("--vmap-chunk", type=int, default=10, help="CPU only: sources per vmapped pass")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="batch 64, T = 10 and 30, 10 steps, F = 5")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.tasks, args.steps, args.every, args.repeat = 64, "10,30", 10, 5, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    tasks = [int(t) for t in args.tasks.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); training precision: {'bf16' if use_bf16(device) else 'fp32'}; "
          f"batch {args.batch_size}; paper CNN, 3x32x32; F = {args.every}")
    rows: list[tuple[str, int, float, str]] = []
    overhead: dict[int, float] = {}
    speedup: dict[int, float] = {}
    for n_tasks in tasks:
        # (a) the training loop, plain vs with the probe every F steps
        plain, _ = epoch_seconds(n_tasks, args, device, probe=False)
        probed, probe_s = epoch_seconds(n_tasks, args, device, probe=True)
        overhead[n_tasks] = probed / plain
        probes = sum(1 for s in range(args.steps, 2 * args.steps) if s % args.every == 0)  # second epoch
        rows.append((f"train epoch, plain ({args.steps} steps)", n_tasks, plain,
                     f"{plain / args.steps * 1e3:.1f} ms/step"))
        rows.append((f"train epoch, TAG every {args.every}", n_tasks, probed,
                     f"x{overhead[n_tasks]:.2f} of plain; {probes} probes, {probe_s / max(probes, 1):.3f} s each"))

        # (b) one batch: batched vs naive
        data, pos_weight = make_data(args.batch_size, n_tasks, device)
        x, y = data.batch(torch.arange(args.batch_size, device=device), augment=False, generator=None)
        model = model_for(n_tasks, device).train()
        names = [n for n, _ in shared_parameters(model)]
        lr = TrainConfig().lr
        kw = dict(lr=lr, shared_names=names)
        batched = best_of(lambda: lookahead_affinity(model, x, y, pos_weight, **kw), args.repeat, device)
        naive = best_of(lambda: naive_lookahead_affinity(model, x, y, pos_weight, **kw), args.repeat, device)
        speedup[n_tasks] = naive / batched
        rows.append(("TAG probe, batched (default chunk)", n_tasks, batched, f"naive / this = {naive / batched:.2f}"))
        if device.type == "cpu":
            chunk = min(args.vmap_chunk, n_tasks)
            vm = best_of(lambda: lookahead_affinity(model, x, y, pos_weight, chunk=chunk, **kw), 1, device)
            rows.append((f"TAG probe, vmapped (chunk {chunk})", n_tasks, vm, f"naive / this = {naive / vm:.2f}"))
        rows.append(("TAG probe, naive (copy + backward per source)", n_tasks, naive, ""))
        cs = best_of(lambda: gradient_cosine(model, x, y, pos_weight, shared_names=names), args.repeat, device)
        cs_naive = best_of(lambda: naive_gradient_cosine(model, x, y, pos_weight, shared_names=names), 1, device)
        rows.append(("CS probe, batched", n_tasks, cs, f"naive / this = {cs_naive / cs:.2f}"))
        rows.append(("CS probe, naive (T autograd.grad)", n_tasks, cs_naive, ""))

        # (c) why float32: the bf16 probe's error
        z32 = lookahead_affinity(model, x, y, pos_weight, **kw)
        z16 = lookahead_affinity(model, x, y, pos_weight, precision="bf16", **kw)
        err = float((z16 - z32).abs().max() / z32.abs().max())
        off = ~torch.eye(n_tasks, dtype=torch.bool, device=z32.device)
        err_off = float((z16 - z32)[off].abs().max() / z32[off].abs().max())
        rows.append(("TAG probe in bf16: relative error", n_tasks, float("nan"),
                     f"max |dZ|/max |Z| = {err:.3f} (off-diagonal: {err_off:.3f}) at lr {lr:g}"))
        print(f"... T = {n_tasks} done", flush=True)

    width = max(len(r[0]) for r in rows)
    print(f"\n{'measurement':<{width}}  {'T':>4}  {'seconds':>9}  note")
    for label, n_tasks, seconds, note in rows:
        sec = "" if seconds != seconds else f"{seconds:9.3f}"
        print(f"{label:<{width}}  {n_tasks:>4}  {sec:>9}  {note}")
    print(" ".join([f"overhead_T{t}={overhead[t]:.2f}" for t in tasks]
                   + [f"speedup_T{t}={speedup[t]:.2f}" for t in tasks]))


if __name__ == "__main__":
    main()
