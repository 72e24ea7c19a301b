"""MT2ST's claims on our setup: does a target task reach the single-task model's quality sooner, or
end better, when helper tasks are weighted by a diminish or switch schedule?

One target task of ``fashion-sample`` (embedded Fashion-MNIST; ``--tasks composite`` by default),
its helpers (``--helpers reference``: the other tasks of the target's group in the task set's
reference grouping, e.g. shirt -> tshirt_top, pullover, coat; or ``all``), trained through
``stg.mt2st.target.train_target`` under each schedule:

  stl            the target alone (a one-head model: the helpers' heads are never computed)
  mtl            helpers weigh 1 throughout
  diminish       the paper's w0 * exp(-eta * t^nu) (w0 = 1, eta = 0.5, nu = 1: no published values)
  diminish-code  the released code's 0.95^(2^t) (0 below 1e-3 from the 9th epoch on)
  switch         helpers weigh 1 for 60% of the epochs, then 0 (the code's 15 of 25)

Every schedule of a seed starts from the same initialisation and sees the same batch stream; seeds
change both (the data split stays). Per schedule, mean +- std over the seeds of:

  test bal.acc / auroc   the target's test metrics after the last epoch
  wall s                 wall-clock training seconds (all epochs; evaluation excluded)
  CPU s                  process CPU seconds, epoch by epoch (both threads; includes the per-epoch
                         validation, the same for every schedule): less disturbed by other processes
  CPU s/ep MT, 1T        CPU seconds per epoch with the helpers' heads (multi-task epochs), and
                         after they were dropped (primary-only epochs) -- the auxiliary work skipped
  ep->stl, s->stl        epochs, wall and CPU seconds until the target's validation metric first
                         reaches the stl model's final one (same seed), over the seeds that reach it
                         (reached: n of N seeds)

and, separately, the step time of the full model against the model cut to the target's head on
the same batches (interleaved repetitions): what skipping the auxiliary heads can save at best.

    python benchmarks/mt2st.py --quick        # CPU, 2 cores: about 2 minutes unloaded (10 epochs, 3 seeds)
    python benchmarks/mt2st.py                # full: all 3600 training images, 25 epochs, 5 seeds
    python benchmarks/mt2st.py --targets shirt,pullover,footwear --helpers all --device cuda

Timings on a shared machine are noisy: the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import torch

from stg.data.datasets import load_taskset
from stg.mt2st.schedules import make_schedule
from stg.mt2st.target import compare, train_target
from stg.mt2st.train import restrict_data, restrict_model
from stg.train.config import TrainConfig
from stg.train.device import DeviceData, adam, autocast, channel_stats, prepare_model, resolve_device
from stg.train.loop import Monitor
from stg.train.loss import per_task_bce
from stg.train.models import build_model
from stg.train.rng import seeded

SCHEDULES = ("stl", "mtl", "diminish", "diminish-code", "switch")


def helpers_of(taskset, target: str, how: str) -> tuple[list[str], str]:
    names = list(taskset.task_names)
    if how == "all":
        return [t for t in names if t != target], "all"
    for ref, groups in taskset.references.items():
        for members in groups.values():
            if target in members:
                return [t for t in members if t != target], f"reference {ref}"
    raise SystemExit(f"{target} is in no reference group; use --helpers all")


def step_times(taskset, target: str, helpers: list[str], config: TrainConfig, device: torch.device,
               reps: int = 60) -> tuple[float, float]:
    """Fastest seconds of one training step (forward, BCE, backward, Adam) of the model with every
    head and of the model cut to the target's head, on the same batches, interleaved (the minimum
    over ``reps``: the estimate least disturbed by other processes)."""
    names = list(taskset.task_names)
    cols = [names.index(target)] + [names.index(h) for h in helpers]
    c, h, _ = taskset.image_shape
    mean, std = channel_stats(taskset.train.images)
    data = DeviceData(taskset.train, device, mean, std)
    data.labels = data.labels[:, cols].contiguous()
    full = prepare_model(seeded(0, lambda: build_model(config.model, in_channels=c, size=h, n_tasks=len(cols))),
                         device)
    sub = restrict_model(full, [0])
    runs = {"full": (full, data, taskset.pos_weight[cols].to(device)),
            "primary": (sub, restrict_data(data, [0]), taskset.pos_weight[cols[:1]].to(device))}
    opts = {k: adam(m.parameters(), config.lr, device) for k, (m, _, _) in runs.items()}
    g = torch.Generator(device=device).manual_seed(0)
    times: dict[str, list[float]] = {"full": [], "primary": []}
    for i in range(reps + 3):
        index = torch.randperm(len(data), generator=g, device=device)[:config.batch_size]
        for key in (("full", "primary") if i % 2 else ("primary", "full")):
            model, d, pw = runs[key]
            x, y = d.batch(index, augment=config.augment, generator=g)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            opts[key].zero_grad(set_to_none=True)
            with autocast(device, config.precision):
                z = model(x)
            per_task_bce(z, y, pos_weight=pw).sum().backward()
            opts[key].step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= 3:
                times[key].append(time.perf_counter() - t0)
    return min(times["full"]), min(times["primary"])


def mean_std(values: list[float], digits: int = 3) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f}±{statistics.stdev(values):.{digits}f}"


def timed_training(taskset, target: str, helpers: list[str], schedule, config: TrainConfig, device: torch.device,
                   metric: str) -> dict[str, Any]:
    """``train_target`` plus the process CPU seconds of every epoch (``cpu_epoch_seconds``: from
    one epoch event to the next; includes the per-epoch validation, the same for every schedule).
    CPU time counts both threads but is far less disturbed than wall time by other processes."""
    marks = [time.process_time()]

    def on_event(p) -> None:
        if p.kind == "epoch":
            marks.append(time.process_time())

    e = train_target(taskset, target, helpers, schedule, config, device=device, metric=metric,
                     monitor=Monitor(on_event))
    e["cpu_epoch_seconds"] = [b - a for a, b in zip(marks, marks[1:])]
    return e


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU-sized: --epochs 10 --seeds 3")
    p.add_argument("--dataset", default="fashion-sample")
    p.add_argument("--tasks", default="composite")
    p.add_argument("--targets", default="shirt", help="comma list of target tasks (default shirt)")
    p.add_argument("--helpers", default="reference", choices=("reference", "all"))
    p.add_argument("--limit", type=int, default=None, help="training images (default: all)")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--metric", default="balanced_accuracy", choices=("balanced_accuracy", "auroc"))
    p.add_argument("--schedules", default=",".join(SCHEDULES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write every measurement to this file")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.seeds = 10, 3
    device = resolve_device(args.device)
    taskset = load_taskset(args.dataset, tasks=args.tasks, limit=args.limit)
    schedules = [make_schedule(s) for s in args.schedules.split(",")]
    for s in schedules:
        s.check(args.epochs)
    load0 = os.getloadavg()[0]
    t_start = time.monotonic()
    # untimed warm-up: the first training of a process pays for kernel selection
    train_target(taskset, args.targets.split(",")[0], [], make_schedule("stl"),
                 TrainConfig(epochs=1, batch_size=args.batch_size), device=device)
    record: dict[str, Any] = {"args": vars(args), "targets": {}}
    for target in args.targets.split(","):
        helpers, source = helpers_of(taskset, target, args.helpers)
        per_seed: list[dict[str, dict[str, Any]]] = []
        for seed in range(args.seeds):
            config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=seed)
            entries: dict[str, dict[str, Any]] = {}
            order = schedules[seed % len(schedules):] + schedules[:seed % len(schedules)]  # spread load drift
            for s in order:
                e = timed_training(taskset, target, helpers, s, config, device, args.metric)
                entries[s.name] = e
                print(f"  {target} seed {seed} {s.slug():<24} {e['seconds']:7.1f} s wall "
                      f"{sum(e['cpu_epoch_seconds']):7.1f} s CPU  test bal.acc {e['test']['balanced_accuracy']:.4f}  "
                      f"final val {e['val'][-1]}", flush=True)
            if "stl" in entries:
                compare(entries, args.metric)
                for e in entries.values():
                    n = e["epochs_to_stl"]
                    e["cpu_seconds_to_stl"] = None if n is None else sum(e["cpu_epoch_seconds"][:n])
            per_seed.append(entries)
        full_s, primary_s = step_times(taskset, target, helpers, TrainConfig(batch_size=args.batch_size), device)
        record["targets"][target] = {"helpers": helpers, "runs": per_seed, "step_full_s": full_s,
                                     "step_primary_s": primary_s}
        n_train = len(taskset.train)
        print()
        print(f"MT2ST on {args.dataset} ({args.tasks}), target {target}, helpers {', '.join(helpers)} ({source}); "
              f"{n_train} train / {len(taskset.val)} val / {len(taskset.test)} test images, {args.epochs} epochs, "
              f"batch {args.batch_size}, {args.seeds} seeds, {device}; validation metric {args.metric}")
        head = (f"{'schedule':<24}{'test bal.acc':>14}{'test auroc':>14}{'wall s':>12}{'CPU s':>12}"
                f"{'CPU s/ep MT':>12}{'CPU s/ep 1T':>12}{'ep->stl':>11}{'wall s->stl':>12}{'CPU s->stl':>12}"
                f"{'reached':>8}")
        print(head)
        print("-" * len(head))
        for s in schedules:
            runs = [r[s.name] for r in per_seed]
            mt = [x for r in runs for i, x in enumerate(r["cpu_epoch_seconds"]) if i < r["multitask_epochs"]]
            one = [x for r in runs for i, x in enumerate(r["cpu_epoch_seconds"]) if i >= r["multitask_epochs"]]
            reached = [r for r in runs if r.get("epochs_to_stl") is not None]
            print(f"{s.slug():<24}{mean_std([r['test']['balanced_accuracy'] for r in runs]):>14}"
                  f"{mean_std([r['test']['auroc'] for r in runs]):>14}{mean_std([r['seconds'] for r in runs], 1):>12}"
                  f"{mean_std([sum(r['cpu_epoch_seconds']) for r in runs], 1):>12}"
                  f"{(f'{statistics.mean(mt):.2f}' if mt else '-'):>12}{(f'{statistics.mean(one):.2f}' if one else '-'):>12}"
                  f"{mean_std([float(r['epochs_to_stl']) for r in reached], 1):>11}"
                  f"{mean_std([r['seconds_to_stl'] for r in reached], 1):>12}"
                  f"{mean_std([r['cpu_seconds_to_stl'] for r in reached], 1):>12}{f'{len(reached)}/{len(runs)}':>8}")
        print(f"one step, batch {args.batch_size}: every head {full_s * 1e3:.1f} ms, the target's head only "
              f"{primary_s * 1e3:.1f} ms (ratio {primary_s / full_s:.3f}): the most that skipping the helpers' "
              "heads can save")
    print(f"total {time.monotonic() - t_start:.0f} s; load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at "
          f"the end on {os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
