"""Epoch wall time with the per-epoch files written in the training thread vs on a background writer.

At the end of every epoch a data-map run writes the snapshot (RUN/datamap/epoch_NNN.npz: 3 float32
(T, N) arrays, 60 MB at CIFAR-100 size), the checkpoint (model, Adam, the recorder's Welford state:
4 float32 (N, T) arrays + the model) and run.json. ``stg.runs.writer.EpochWriter`` writes them on
one background thread while the next epoch trains (in order; at most one epoch behind). This
benchmark trains the same run both ways, alternating, in one process, at CIFAR-100 size by default
(50,000 training samples, 100 one-vs-rest tasks; synthetic random images, since only the sizes
matter here), and reports:

- the wall time of each epoch (from one epoch's end event to the next: training + the writes the
  training thread waits for) and of the whole run, per mode: ``sync`` (the previous behaviour: the
  files written in the training thread) and ``overlapped`` (the background writer);
- what the writes cost when done alone (snapshot, npz, checkpoint, run.json), for scale.

Each epoch's time outside its training steps (wall minus the steps' time the loop records) is
what the writes add to the critical path (plus validation, the same in both modes). The last line
is ``outside_steps_sync_over_overlapped=<ratio> epoch_wall_sync_over_overlapped=<ratio>``
(medians over the epochs after the first, which also holds the warm-up). Timings move with the machine's load; the ratio of the two
modes, taken round-robin in one run, is what to read.

    python benchmarks/epoch_writes.py --size 8 --threads 1 --epochs 3 --repeats 1   # CPU, a few minutes
    python benchmarks/epoch_writes.py --size 32 --model resnet18-cifar --device cuda --epochs 5   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stg.data.taskset import Split, TaskSet
from stg.datamap.recorder import DataMapRecorder
from stg.datamap.run import train_datamap
from stg.runs.rundir import RunDir, atomic_save
from stg.train.config import TrainConfig
from stg.train.loop import Monitor, Progress


def synthetic_taskset(n: int, n_tasks: int, size: int, seed: int = 0) -> TaskSet:
    """n random 3 x size x size uint8 images of n_tasks classes; one-vs-rest tasks; a small val split."""
    g = torch.Generator().manual_seed(seed)

    def split(m: int, offset: int) -> Split:
        classes = torch.randint(0, n_tasks, (m,), generator=g)
        images = torch.randint(0, 256, (m, 3, size, size), generator=g, dtype=torch.uint8)
        return Split(images, torch.nn.functional.one_hot(classes, n_tasks).float(), classes,
                     torch.arange(offset, offset + m))

    train, val = split(n, 0), split(max(n // 50, n_tasks), n)
    names = tuple(f"c{i:03d}" for i in range(n_tasks))
    pos = train.labels.sum(0).clamp_min(1)
    return TaskSet("bench", names, names, train, val, val, (n - pos) / pos, {}, "ovr:all", seed)


def timed_run(ts: TaskSet, config: TrainConfig, out: Path, background: bool) -> tuple[list[float], list[float], float]:
    """(wall seconds of each epoch, seconds of each epoch outside its training steps, wall seconds
    of the whole run) of one data-map run. The second is the epoch's wall time minus the steps'
    time the loop records in the history: validation plus whatever the training thread spends on
    (or waits for) the epoch's files."""
    marks: list[float] = []

    def on_event(p: Progress) -> None:
        if p.kind in ("start", "epoch"):
            marks.append(time.perf_counter())

    t0 = time.perf_counter()
    train_datamap(ts, config, out, monitor=Monitor(on_event), background_writes=background)
    total = time.perf_counter() - t0
    walls = [b - a for a, b in zip(marks, marks[1:])]
    steps = [float(h["seconds"]) for h in RunDir(out).read()["history"]]
    return walls, [w - s for w, s in zip(walls, steps)], total


def write_costs(ts: TaskSet, run: Path, repeats: int = 3) -> dict[str, float]:
    """Median seconds of each per-epoch write done alone, with the run's own sizes."""
    t, n = ts.n_tasks, len(ts.train)
    rec = DataMapRecorder(n, t, device=torch.device("cpu"))
    rd = RunDir(run)
    state = torch.load(rd.checkpoint, weights_only=True)
    meta = rd.read()
    out: dict[str, list[float]] = {"snapshot": [], "npz": [], "checkpoint": [], "run.json": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        snap = rec.snapshot()
        t1 = time.perf_counter()
        rd.write_datamap(999, snap)
        t2 = time.perf_counter()
        atomic_save(run / "bench_ckpt.pt", lambda f: torch.save(state, f))
        t3 = time.perf_counter()
        rd.write(meta)
        t4 = time.perf_counter()
        for key, value in zip(out, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            value and out[key].append(value)
    rd.datamap_path(999).unlink()
    (run / "bench_ckpt.pt").unlink()
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50_000, help="training samples (default 50,000: CIFAR-100's)")
    ap.add_argument("--tasks", type=int, default=100, help="tasks (default 100: CIFAR-100's)")
    ap.add_argument("--size", type=int, default=16, help="image side (default 16; CIFAR is 32)")
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=2, help="runs per mode, alternating (default 2)")
    ap.add_argument("--root", default=None, help="folder for the runs (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ts = synthetic_taskset(args.n, args.tasks, args.size)
    config = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, device=args.device)
    root = Path(args.root or tempfile.mkdtemp(prefix="stg-epoch-writes-"))
    root.mkdir(parents=True, exist_ok=True)
    per_mode: dict[str, list[float]] = {"sync": [], "overlapped": []}
    outside: dict[str, list[float]] = {"sync": [], "overlapped": []}
    totals: dict[str, list[float]] = {"sync": [], "overlapped": []}
    last_run = None
    try:
        for r in range(args.repeats):
            order = ("sync", "overlapped") if r % 2 == 0 else ("overlapped", "sync")
            for mode in order:
                out = root / f"{mode}-{r}"
                epochs, extra, total = timed_run(ts, config, out, background=mode == "overlapped")
                per_mode[mode] += epochs[1:]  # the first epoch also holds the warm-up
                outside[mode] += extra[1:]
                totals[mode].append(total)
                print(f"repeat {r} {mode:>10}: epochs " + " ".join(f"{e:.2f}" for e in epochs)
                      + " s (outside the steps " + " ".join(f"{e:.2f}" for e in extra)
                      + f" s); run {total:.2f} s", flush=True)
                if last_run is not None:
                    shutil.rmtree(last_run, ignore_errors=True)
                last_run = out
        costs = write_costs(ts, last_run)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)

    snap_mb = 3 * args.tasks * args.n * 4 / 1e6
    print(f"\n{args.n} samples x {args.tasks} tasks, {args.model} on 3x{args.size}x{args.size}, batch "
          f"{args.batch_size}, {args.epochs} epochs, device {config.device}; snapshot {snap_mb:.0f} MB")
    print("per-epoch writes done alone (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in costs.items())
          + f"; sum {sum(costs.values()):.3f}")
    print(f"{'mode':>10} {'epoch wall s':>13} {'of it outside the steps s':>26} {'run wall s':>11}   (medians, epochs 2..)")
    med = {m: statistics.median(v) for m, v in per_mode.items()}
    out_med = {m: statistics.median(v) for m, v in outside.items()}
    for mode in per_mode:
        print(f"{mode:>10} {med[mode]:>13.3f} {out_med[mode]:>26.3f} {statistics.median(totals[mode]):>11.2f}")
    print(json.dumps({"epoch_wall_s": med, "outside_steps_s": out_med,
                      "run_wall_s": {m: statistics.median(v) for m, v in totals.items()}, "write_costs_s": costs}))
    print(f"outside_steps_sync_over_overlapped={out_med['sync'] / max(out_med['overlapped'], 1e-9):.3f} "
          f"epoch_wall_sync_over_overlapped={med['sync'] / med['overlapped']:.3f}")


if __name__ == "__main__":
    main()
