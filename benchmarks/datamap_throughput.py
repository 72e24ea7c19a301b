"""Data-map training throughput: the stg engine vs a naive loop with the official code's structure.

Measured in one run, on the same data, model, batch size and device:
- engine:     ``stg.engine.train_datamap`` (recorder on, device-resident data, on-device augmentation,
              one vectorised loss); images/s of its training passes after the first epoch
- naive:      the official STG-MTL trainer's structure, its model as it runs (fp32, NCHW, torch's
              ``nn.Dropout``): a Dataset whose ``__getitem__`` builds the label vector with a Python loop over tasks and applies
              per-sample PIL transforms (RandomCrop + RandomHorizontalFlip + ToTensor + Normalize),
              a DataLoader, a Python loop of T ``BCEWithLogitsLoss`` calls, per-batch metric counts
              and ``loss.item()``, and the (T, B) transposed recorder update
- model-only: forward + backward + Adam on one fixed batch already on the device, in the engine's
              precision and layout (the ceiling)

Each loop is timed over ``--repeats`` passes and the medians are compared (ratios hold on a noisy
machine; absolute numbers do not). Prints a table; the last line is ``speedup_vs_naive=<x> fraction_of_model_only=<y>``.

    python benchmarks/datamap_throughput.py --quick            # CPU, a few minutes at most
    python benchmarks/datamap_throughput.py --device cuda --model resnet18 --n 20000
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from stg.engine import TrainConfig, autocast, prepare_model, resolve_device, train_datamap
from stg.loss import per_task_loop_bce, weighted_bce
from stg.models import Dropout, build_model
from stg.taskset import Split, TaskSet


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
    """The official model as it runs: fp32, NCHW, and torch's own ``nn.Dropout`` (stg swaps in a
    faster mask for it)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, Dropout):
                setattr(parent, name, torch.nn.Dropout(child.p))
    return model


def naive_images_per_s(ts: TaskSet, model_name: str, batch: int, device: torch.device, workers: int,
                       repeats: int) -> list[float]:
    """Images/s of each of ``repeats`` passes over the data (after two warm-up steps)."""
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
    train_loss, rates = 0.0, []
    for step, (idx, x, y) in enumerate(itertools.islice(itertools.cycle(loader), 2, None)):
        if step % len(loader) == 0:
            if step:
                _sync(device)
                rates.append(seen / (time.perf_counter() - t0))
            if len(rates) == repeats:
                return rates
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
    raise AssertionError("unreachable")


def model_only_images_per_s(ts: TaskSet, model_name: str, batch: int, device: torch.device, steps: int,
                            repeats: int) -> list[float]:
    """Images/s of ``repeats`` chunks of ``steps`` steps on one fixed batch (after three warm-up steps)."""
    c, size, _ = ts.image_shape
    model = prepare_model(build_model(model_name, in_channels=c, size=size, n_tasks=ts.n_tasks), device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, c, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = ts.train.labels[:batch].to(device)
    pw = ts.pos_weight.to(device)
    ones = torch.ones_like(pw)
    rates = []
    for i in range(3 + steps * repeats + 1):
        if i >= 3 and (i - 3) % steps == 0:
            _sync(device)
            if i > 3:
                rates.append(steps * batch / (time.perf_counter() - t0))
            if len(rates) == repeats:
                return rates
            t0 = time.perf_counter()
        with autocast(device):
            z = model(x)
        loss = weighted_bce(z, y, pos_weight=pw, task_weights=ones)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    raise AssertionError("unreachable")


def engine_images_per_s(ts: TaskSet, model_name: str, batch: int, device: torch.device, repeats: int) -> list[float]:
    """Images/s of the training pass of epochs 2 .. repeats + 1 (epoch 1 is warm-up)."""
    with tempfile.TemporaryDirectory() as tmp:
        meta = train_datamap(ts, TrainConfig(model=model_name, epochs=repeats + 1, batch_size=batch,
                                             device=str(device)), f"{tmp}/run")
    return [float(h["images_per_s"]) for h in meta["history"][1:]]


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
    ts = random_taskset(n, args.tasks, 32)
    repeats = args.repeats
    rows = [
        ("engine (recorder on)", engine_images_per_s(ts, args.model, args.batch_size, device, repeats)),
        (f"naive official-style loop ({args.workers} workers)",
         naive_images_per_s(ts, args.model, args.batch_size, device, args.workers, repeats)),
        ("model-only step", model_only_images_per_s(ts, args.model, args.batch_size, device,
                                                    max(4, n // args.batch_size // 2), repeats)),
    ]
    print(f"device={device} model={args.model} tasks={args.tasks} images={n} batch={args.batch_size} "
          f"threads={torch.get_num_threads()} repeats={repeats} (median, min-max)")
    print(f"{'loop':<40} {'img/s':>10} {'range':>17}")
    for name, rates in rows:
        print(f"{name:<40} {statistics.median(rates):>10,.0f} {min(rates):>8,.0f}-{max(rates):<8,.0f}")
    engine, naive, model_only = (statistics.median(r) for _, r in rows)
    print(f"speedup_vs_naive={engine / naive:.2f} fraction_of_model_only={engine / model_only:.2f}")


if __name__ == "__main__":
    main()
