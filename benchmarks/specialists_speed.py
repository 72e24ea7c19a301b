"""k specialists trained concurrently (one fused model, one batch stream) vs one after another.

CIFAR-shaped random data (3x32x32 uint8, resident on the device, crop/flip per batch) with 100
tasks. Three measurements on the same device, same steps and batch size:

  one       a single standalone model (build_model + Adam + weighted_bce), the engine's step;
            the median over the k standalone runs
  sequential k standalone models trained one after another (the naive way)
  concurrent the k models fused (stg.specialists.ensembles.build_ensemble: wide CNN / vmapped ResNet)

Prints a table and a last line
``concurrent_vs_one=<time(k concurrent)/time(1 model)> sequential_vs_concurrent=<speedup>``.

    python benchmarks/specialists_speed.py --quick            # CPU, well under 2 minutes
    python benchmarks/specialists_speed.py --device cuda --steps 50 --batch-size 256
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from stg.train.device import DeviceData, adam, autocast, channel_stats, prepare_model, resolve_device
from stg.train.loop import epoch_batches
from stg.train.loss import weighted_bce
from stg.train.models import MODEL_NAMES, build_model
from stg.specialists.ensembles import build_ensemble, ensemble_loss, to_device
from stg.train.stepgraph import WARMUP_STEPS, StepGraph, graphs_enabled
from stg.data.taskset import Split


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_data(n: int, n_tasks: int, device: torch.device) -> DeviceData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = (torch.rand(n, n_tasks, generator=g) < 0.1).float()
    split = Split(images, labels, torch.zeros(n, dtype=torch.int64), torch.arange(n))
    mean, std = channel_stats(images)
    return DeviceData(split, device, mean, std)


def batches(data: DeviceData, steps: int, batch_size: int) -> list[torch.Tensor]:
    g = torch.Generator(device=data.device).manual_seed(1)
    out: list[torch.Tensor] = []
    while len(out) < steps:
        out += [b for b in epoch_batches(len(data), batch_size, g, data.device) if len(b) == batch_size]
    return out[:steps]


def time_steps(module: torch.nn.Module, loss_fn, data: DeviceData, index: list[torch.Tensor], warmup: int) -> float:
    """Seconds for len(index) Adam steps of ``module`` on ``loss_fn(logits, y)``, run as the engine
    runs its steps (``stg.train.stepgraph``), after ``warmup`` untimed steps (at least the warm-up and
    capture steps of a CUDA graph)."""
    opt = adam(module.parameters(), 1e-3, data.device)
    g = torch.Generator(device=data.device).manual_seed(2)

    def step(idx: torch.Tensor) -> torch.Tensor:
        x, y = data.batch(idx, augment=True, generator=g)
        with autocast(data.device):
            logits = module(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        opt.step()
        return loss.detach()

    run = StepGraph(step, batch_size=len(index[0]), device=data.device, optimizer=opt, generators=[g])
    if graphs_enabled(data.device):
        warmup = max(warmup, WARMUP_STEPS + 1)
    untimed = (index * (warmup // len(index) + 1))[:warmup]
    t0 = 0.0
    for i, idx in enumerate(untimed + index):
        if i == warmup:
            _sync(data.device)
            t0 = time.perf_counter()
        run(idx)
    _sync(data.device)
    return time.perf_counter() - t0


def time_one(model_name: str, seed: int, data: DeviceData, index: list[torch.Tensor], weights: torch.Tensor,
             pos_weight: torch.Tensor, warmup: int) -> float:
    """Seconds for len(index) steps of one standalone model."""
    torch.manual_seed(seed)
    model = prepare_model(build_model(model_name, in_channels=3, size=32, n_tasks=len(pos_weight)), data.device)
    return time_steps(model, lambda z, y: weighted_bce(z, y, pos_weight=pos_weight, task_weights=weights),
                      data, index, warmup)


def time_concurrent(model_name: str, k: int, data: DeviceData, index: list[torch.Tensor], weights: torch.Tensor,
                    pos_weight: torch.Tensor, warmup: int, mode: str) -> tuple[float, str]:
    """Seconds for the k-model ensemble (``mode``, as stg.specialists.ensembles.build_ensemble), and its class name."""
    ens = to_device(build_ensemble(model_name, seeds=list(range(k)), in_channels=3, size=32,
                                   n_tasks=len(pos_weight), mode=mode, device=data.device), data.device)
    seconds = time_steps(ens, lambda z, y: ensemble_loss(z, y, pos_weight=pos_weight, weights=weights).sum(),
                         data, index, warmup)
    return seconds, type(ens).__name__


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few steps, small batch (CPU, < 2 minutes)")
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default="cnn", choices=MODEL_NAMES)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--tasks", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3, help="rounds of sequential + concurrent; medians shown")
    p.add_argument("--mode", default="auto", help="ensemble mode: auto (stg's choice for the device), wide, vmap, loop")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    batch = args.batch_size or (64 if args.quick else 256)
    steps = args.steps or (3 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    data = make_data(max(4 * batch, 2048), args.tasks, device)
    index = batches(data, steps + warmup, batch)
    pos_weight = torch.full((args.tasks,), 9.0, device=device)
    w = torch.rand(args.tasks, args.k, generator=torch.Generator().manual_seed(3))
    w = (w / w.sum(1, keepdim=True)).to(device)

    # rounds of (k standalone models one after another, then the k concurrently), so a machine whose
    # speed drifts slows both alike; "one" is the median standalone run (robust to warm-up)
    ones, seqs, concs = [], [], []
    for _ in range(args.repeats):
        per_model = [time_one(args.model, c, data, index, w[:, c], pos_weight, warmup) for c in range(args.k)]
        conc, kind = time_concurrent(args.model, args.k, data, index, w, pos_weight, warmup, args.mode)
        ones.append(statistics.median(per_model))
        seqs.append(sum(per_model))
        concs.append(conc)
    one, seq, conc = statistics.median(ones), statistics.median(seqs), statistics.median(concs)
    ratios = sorted(s / c for s, c in zip(seqs, concs))

    print(f"device={device} model={args.model} k={args.k} tasks={args.tasks} batch={batch} steps={steps} "
          f"threads={torch.get_num_threads()} concurrent={kind} cuda_graphs={graphs_enabled(device)} "
          f"repeats={args.repeats} (medians; "
          f"sequential/concurrent per round {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"{'mode':<12}{'models':>8}{'seconds':>10}{'model-img/s':>14}{'vs one':>9}")
    for name, models, secs in (("one", 1, one), ("sequential", args.k, seq), ("concurrent", args.k, conc)):
        rate = models * steps * batch / secs
        print(f"{name:<12}{models:>8}{secs:>10.3f}{rate:>14.1f}{secs / one:>9.2f}")
    print(f"concurrent_vs_one={conc / one:.3f} sequential_vs_concurrent={seq / conc:.3f}")


if __name__ == "__main__":
    main()
