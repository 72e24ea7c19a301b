"""Data-map training throughput: the stg engine vs a naive loop with the official code's structure.

Measured in one run, on the same data, model, batch size and device:
- engine:     ``stg.datamap.run.train_datamap`` (recorder on, device-resident data, on-device augmentation,
              one vectorised loss); images/s of its training passes after the first epoch
- naive:      the official STG-MTL trainer's structure, its model as it runs (fp32, NCHW, torch's
              ``nn.Dropout`` and ``nn.BatchNorm2d``, ReLU before max-pool, torch's default Adam, the
              C library's default allocator settings): a Dataset whose ``__getitem__`` builds the
              label vector with a Python loop over tasks and applies
              per-sample PIL transforms (RandomCrop + RandomHorizontalFlip + ToTensor + Normalize),
              a DataLoader, a Python loop of T ``BCEWithLogitsLoss`` calls, per-batch metric counts
              and ``loss.item()``, and the (T, B) transposed recorder update
- model-only: forward + backward + Adam on one fixed batch already on the device, in the engine's
              precision, layout and allocator settings, and as the engine runs a step (a CUDA graph
              replay on CUDA): the ceiling

Each loop runs in its own fresh process (so the engine's process-wide settings, ``stg.train.hostmem``,
never reach the naive loop) and is timed over ``--repeats`` passes, taken round-robin one at a time
so that a machine whose speed drifts slows all three alike; the medians are compared (ratios hold on
a noisy machine; absolute numbers do not). Prints a table; the last line is
``speedup_vs_naive=<x> fraction_of_model_only=<y>``.

    python benchmarks/datamap_throughput.py --quick            # CPU, a few minutes at most
    python benchmarks/datamap_throughput.py --device cuda --model resnet18 --n 20000
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from stg.datamap.run import train_datamap
from stg.train.config import TrainConfig
from stg.train.device import adam, autocast, prepare_model, resolve_device
from stg.train.loop import Monitor, Progress
from stg.train.loss import per_task_loop_bce, weighted_bce
from stg.train.models import BatchNorm2d, Dropout, build_model
from stg.train.stepgraph import WARMUP_STEPS, StepGraph
from stg.data.taskset import Split, TaskSet


LOOPS = ("engine", "naive", "model_only")


def random_taskset(n: int, n_tasks: int, size: int, seed: int = 0) -> TaskSet:
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, n_tasks, (n,), generator=g)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.nn.functional.one_hot(classes, n_tasks).float()
    split = Split(images, labels, classes, torch.arange(n))
    empty = Split(images[:0], labels[:0], classes[:0], torch.arange(0))
    names = tuple(f"c{i:03d}" for i in range(n_tasks))
    pos = labels.sum(0).clamp_min(1)
    return TaskSet("bench", names, names, split, empty, empty, (n - pos) / pos, {}, "ovr:all", seed)


class OfficialStyleDataset(Dataset):
    """Per-sample PIL transforms and a per-sample Python loop over tasks, as in the official code."""

    def __init__(self, images: np.ndarray, classes: np.ndarray, n_tasks: int):
        self.images, self.classes, self.n_tasks = images, classes, n_tasks
        self.transform = transforms.Compose([
            transforms.RandomCrop(images.shape[1], padding=4), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        ])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int):
        image = self.transform(Image.fromarray(self.images[idx]))
        labels = torch.tensor([1.0 if self.classes[idx] == t else 0.0 for t in range(self.n_tasks)])
        return idx, image, labels


def official_layers(model: torch.nn.Module) -> torch.nn.Module:
    """The official model as it runs: fp32, NCHW, torch's own ``nn.Dropout`` and ``nn.BatchNorm2d``
    (stg swaps in a faster mask, and a matrix-shaped batch norm on CPU), and ReLU before max-pool
    (stg pools first, an exact identity)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, Dropout):
                setattr(parent, name, torch.nn.Dropout(child.p))
            elif isinstance(child, BatchNorm2d):
                setattr(parent, name, torch.nn.BatchNorm2d(child.num_features))
        if isinstance(parent, torch.nn.Sequential):
            for i in range(len(parent) - 1):
                if isinstance(parent[i], torch.nn.MaxPool2d) and isinstance(parent[i + 1], torch.nn.ReLU):
                    parent[i], parent[i + 1] = parent[i + 1], parent[i]
    return model


Report = Callable[[Optional[float]], None]
"""Called with None once warmed up, then with each timed pass's images/s; returns when the next
pass may start."""


def naive_passes(ts: TaskSet, model_name: str, batch: int, device: torch.device, workers: int,
                 repeats: int, report: Report) -> None:
    """``repeats`` timed passes over the data (after two warm-up steps)."""
    c, size, _ = ts.image_shape
    model = official_layers(build_model(model_name, in_channels=c, size=size, n_tasks=ts.n_tasks)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    hwc = ts.train.images.permute(0, 2, 3, 1).numpy()
    data = OfficialStyleDataset(hwc, ts.train.classes.numpy(), ts.n_tasks)
    loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    pos_weight = ts.pos_weight.to(device)
    ones = torch.ones_like(pos_weight)
    t_, n_ = ts.n_tasks, len(ts.train)
    count = torch.zeros(t_, n_, device=device)
    mean = torch.zeros(t_, n_, device=device)
    m2 = torch.zeros(t_, n_, device=device)
    tp, fp, fn, tn = (torch.zeros(t_, device=device) for _ in range(4))
    train_loss, passes, t0, seen = 0.0, 0, 0.0, 0
    for step, (idx, x, y) in enumerate(itertools.islice(itertools.cycle(loader), 2, None)):
        if step % len(loader) == 0:
            if step:
                _sync(device)
                report(seen / (time.perf_counter() - t0))
                passes += 1
            else:
                report(None)
            if passes == repeats:
                return
            t0, seen = time.perf_counter(), 0
        x, y, idx = x.to(device), y.to(device), idx.to(device)
        z = model(x)
        loss = per_task_loop_bce(z.float(), y, pos_weight=pos_weight, task_weights=ones)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # the official per-batch metric counts (C10Metrics.update_metrics_iteration)
            pred = torch.sigmoid(z.float()) > 0.5
            tp += (pred & (y > 0.5)).sum(0)
            fp += (pred & (y < 0.5)).sum(0)
            fn += (~pred & (y > 0.5)).sum(0)
            tn += (~pred & (y < 0.5)).sum(0)
        train_loss += loss.item()  # the official loop syncs on the loss every batch
        with torch.no_grad():  # the official recorder: (T, B) transposed, column scatter
            p = torch.sigmoid(z.float()).t()
            c_ = 1 - (y.t() - p).abs()
            count[:, idx] += 1
            d = c_ - mean[:, idx]
            mean[:, idx] += d / count[:, idx]
            m2[:, idx] += d * (c_ - mean[:, idx])
        seen += len(idx)


def model_only_passes(ts: TaskSet, model_name: str, batch: int, device: torch.device, steps: int,
                      repeats: int, report: Report) -> None:
    """``repeats`` timed chunks of ``steps`` steps on one fixed batch (after the warm-up steps a CUDA
    graph capture needs), run as the engine runs its steps (``stg.train.stepgraph``)."""
    c, size, _ = ts.image_shape
    model = prepare_model(build_model(model_name, in_channels=c, size=size, n_tasks=ts.n_tasks), device)
    opt = adam(model.parameters(), 1e-3, device)
    x = torch.randn(batch, c, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = ts.train.labels[:batch].to(device)
    pw = ts.pos_weight.to(device)
    ones = torch.ones_like(pw)

    def step(_: torch.Tensor) -> torch.Tensor:
        with autocast(device):
            z = model(x)
        loss = weighted_bce(z, y, pos_weight=pw, task_weights=ones)
        loss.backward()
        opt.step()
        return loss.detach()

    run = StepGraph(step, batch_size=batch, device=device, optimizer=opt)
    index = torch.arange(batch, device=device)
    warmup = WARMUP_STEPS + 1
    t0 = 0.0
    for i in range(warmup + steps * repeats):
        if i >= warmup and (i - warmup) % steps == 0:
            _sync(device)
            report(steps * batch / (time.perf_counter() - t0) if i > warmup else None)
            t0 = time.perf_counter()
        run(index)
    _sync(device)
    report(steps * batch / (time.perf_counter() - t0))


def engine_passes(ts: TaskSet, model_name: str, batch: int, device: torch.device, repeats: int,
                  report: Report) -> None:
    """The training passes of epochs 2 .. repeats + 1 (epoch 1 is warm-up), as the engine times them."""

    def on_event(p: Progress) -> None:
        if p.kind == "epoch":
            report(p.images_per_s if p.epoch > 1 else None)

    with tempfile.TemporaryDirectory() as tmp:
        meta = train_datamap(ts, TrainConfig(model=model_name, epochs=repeats + 1, batch_size=batch,
                                             device=str(device)), f"{tmp}/run", monitor=Monitor(on_event))
    print(f"engine steps: {meta['history'][-1]['step']}", flush=True)


def _worker(conn: Connection, loop: str, args: argparse.Namespace, n: int) -> None:
    """One loop in a fresh process: it waits for "go" before every timed pass and sends back its rate."""

    def report(rate: float | None) -> None:
        conn.send(rate)
        conn.recv()

    device = resolve_device(args.device)
    ts = random_taskset(n, args.tasks, 32)
    if loop == "engine":
        engine_passes(ts, args.model, args.batch_size, device, args.repeats, report)
    elif loop == "naive":
        naive_passes(ts, args.model, args.batch_size, device, args.workers, args.repeats, report)
    else:
        steps = max(4, n // args.batch_size // 2)
        model_only_passes(ts, args.model, args.batch_size, device, steps, args.repeats, report)


def interleaved_rates(args: argparse.Namespace, n: int) -> dict[str, list[float]]:
    """Each loop in its own fresh process, warmed up one after another; then their timed passes in
    round-robin, one at a time, so a machine whose speed drifts slows all three alike."""
    ctx = mp.get_context("spawn")
    procs, conns = {}, {}
    try:
        for loop in LOOPS:
            conns[loop], child = ctx.Pipe()
            # not daemonic: the naive loop's DataLoader may start worker processes of its own
            procs[loop] = ctx.Process(target=_worker, args=(child, loop, args, n))
            procs[loop].start()
            if conns[loop].recv() is not None:
                raise RuntimeError(f"{loop}: expected a warm-up report first")
        rates: dict[str, list[float]] = {loop: [] for loop in LOOPS}
        for _ in range(args.repeats):
            for loop in LOOPS:
                conns[loop].send("go")
                rates[loop].append(float(conns[loop].recv()))
        for loop in LOOPS:
            conns[loop].send("go")
            procs[loop].join(timeout=120)
            if procs[loop].exitcode != 0:
                raise RuntimeError(f"{loop} loop exited with {procs[loop].exitcode}")
        return rates
    finally:
        for proc in procs.values():
            if proc.is_alive():
                proc.terminate()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes for a CPU run of a few minutes")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--n", type=int, default=None, help="training images (default 3072 quick, 20000 otherwise)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the naive loop (official default 0)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per loop; the table shows medians")
    args = ap.parse_args()
    device = resolve_device(args.device)
    n = args.n or (3072 if args.quick else 20000)
    rates = interleaved_rates(args, n)
    rows = [
        ("engine (recorder on)", rates["engine"]),
        (f"naive official-style loop ({args.workers} workers)", rates["naive"]),
        ("model-only step", rates["model_only"]),
    ]
    repeats = args.repeats
    print(f"device={device} model={args.model} tasks={args.tasks} images={n} batch={args.batch_size} "
          f"threads={torch.get_num_threads()} repeats={repeats} (median, min-max)")
    print(f"{'loop':<40} {'img/s':>10} {'range':>17}")
    for name, rates in rows:
        print(f"{name:<40} {statistics.median(rates):>10,.0f} {min(rates):>8,.0f}-{max(rates):<8,.0f}")
    engine, naive, model_only = (statistics.median(r) for _, r in rows)
    print(f"speedup_vs_naive={engine / naive:.2f} fraction_of_model_only={engine / model_only:.2f}")


if __name__ == "__main__":
    main()
