"""Benchmark the data-map run and the grouping at T = 100 and T = 1,000 tasks (issue 18, item 3).

For each T the task set is ``synthetic-hierarchy:classes=T,super=S,...`` (S = 20 at T = 100, 100 at
T = 1,000, ``--supers``) with the *same* number
of training images (``--images``, split evenly over the T classes), so the two rows differ only in
the number of tasks. Each step runs as its own process (``stg.cli.main``) and is
measured there: wall time, and the peak resident set size (RSS) of that process alone (its own
``ru_maxrss`` at exit). On a CPU
there is no device memory (the table says n/a).

Steps per T:
  datamap      ``stg datamap --dataset ... --epochs E --device cpu`` (float32 snapshots, all kept)
  group        ``stg group RUN --k S --n-init R``: features of the last snapshot, isometric coordinates,
               k-means restarts, fuzzy membership; ARI against the planted superclasses
  group f16    the same run with its last snapshot stored as float16 (``--snapshot-dtype float16
               --keep-epochs last`` would leave exactly that on disk): ARI, and agreement (ARI)
               with the float32 grouping
Plus, in this process, the task features of every epoch (``--epochs all``) read streamed (one
snapshot at a time, ``stg.grouping.features._load_features``) against the naive all-at-once form
(every snapshot loaded, then concatenated): peak traced numpy memory and equality.

    python benchmarks/scale_tasks.py [--tasks 100,1000] [--images 12000] [--epochs 3] [--size 32] [--out DIR]

Timings are noisy on a shared machine (others' tests run at the same time); the peak RSS includes
the Python + torch baseline, printed on its own row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stg.grouping.features import _load_features  # noqa: E402
from stg.runs.rundir import DATAMAP_KEYS, RunDir  # noqa: E402

MIB = 2**20


def measure(args: list[str]) -> tuple[float, float, str]:
    """Run ``python args...`` from the repository root; (wall s, peak RSS MiB, stdout). Raises on failure."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(args)}\n{err[-2000:]}")
    peak = float("nan")
    for line in err.splitlines():
        if line.startswith("peak_rss_kib="):
            peak = int(line.split("=", 1)[1]) / 1024
    return wall, peak, out


# A wrapper that runs `stg` (or any code) and prints its own peak RSS (ru_maxrss, KiB on Linux) on
# stderr when it exits: the peak of exactly that process.
WRAP = ("import resource, sys\n"
        "from stg.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print(f'peak_rss_kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)\n"
        "sys.exit(code)\n")


def stg(*argv: str) -> tuple[float, float, str]:
    return measure(["-c", WRAP, *argv])


def baseline_rss() -> float:
    """Peak RSS of a process that imports what `stg datamap` imports and does nothing."""
    code = ("import resource, sys, torch, sklearn.cluster, stg.cli, stg.datamap.run, stg.grouping.make\n"
            "print(f'peak_rss_kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)\n")
    return measure(["-c", code])[1]


def naive_features(run: RunDir, epochs: list[int], stats: tuple[str, ...]) -> np.ndarray:
    """The all-at-once form: every snapshot loaded whole, kept, then concatenated."""
    maps = [run.load_datamap(e) for e in epochs]
    return np.concatenate([dm[s] for dm in maps for s in stats], axis=1)


def traced(fn):
    """(result, peak traced MiB, seconds) of fn(); numpy reports its buffers to tracemalloc."""
    tracemalloc.start()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / MIB
    tracemalloc.stop()
    return result, peak, seconds


def as_float16_run(src: Path, dst: Path) -> RunDir:
    """A copy of run ``src`` whose only snapshot is its last one, stored as float16."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for name in ("run.json", "samples.npz"):
        shutil.copy2(src / name, dst / name)
    run, last = RunDir(src), RunDir(src).datamap_epochs()[-1]
    RunDir(dst).write_datamap(last, run.load_datamap(last), dtype="float16")
    return RunDir(dst)


def probe_cost(tasks: list[int], batch: int, size: int, repeat: int = 2) -> list[tuple[int, float, float]]:
    """TAG's lookahead probe on one batch (``stg.affinity.lookahead.lookahead_affinity``, CPU,
    paper CNN, fp32 as the probe runs) against one plain forward + backward of the same model and
    batch: [(T, probe s, step s)], best of ``repeat``."""
    import torch

    from stg.affinity.lookahead import lookahead_affinity
    from stg.train.models import build_model, shared_parameters
    from stg.train.rng import seeded

    out = []
    for t in tasks:
        model = seeded(0, lambda: build_model("cnn", in_channels=3, size=size, n_tasks=t))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, size, size, generator=g)
        y = (torch.rand(batch, t, generator=g) < 0.2).float()
        pw = torch.full((t,), 4.0)
        names = [n for n, _ in shared_parameters(model)]

        def probe() -> None:
            lookahead_affinity(model, x, y, pw, lr=1e-3, shared_names=names)

        def step() -> None:
            model.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(model(x), y, pos_weight=pw).backward()

        times = []
        for fn in (probe, step):
            best = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            times.append(best)
        out.append((t, times[0], times[1]))
    return out


def group_breakdown(run: RunDir, k: int, n_init: int = 10) -> dict[str, float]:
    """Where `stg group` spends its time, step by step, in this process (seconds): reading the
    features of the last snapshot, the centred Gram matrix (2 T^2 D flops) and its eigendecomposition
    (isometric coordinates), and k-means with ``n_init`` restarts + fuzzy membership (m = 1.07)."""
    from stg.grouping.features import _GRAM_CHUNK
    from stg.grouping.fuzzy import cluster_tasks

    n_tasks = len(run.read()["task_names"])
    t0 = time.perf_counter()
    x = _load_features(run, [run.datamap_epochs()[-1]], ("confidence", "variability"), n_tasks)
    t1 = time.perf_counter()
    gram = np.zeros((n_tasks, n_tasks))
    for start in range(0, x.shape[1], _GRAM_CHUNK):  # as isometric_coordinates does
        block = x[:, start:start + _GRAM_CHUNK].astype(np.float64)
        block -= block.mean(axis=0)
        gram += block @ block.T
    t2 = time.perf_counter()
    lam, vec = np.linalg.eigh((gram + gram.T) / 2)
    t3 = time.perf_counter()
    keep = lam > lam.max() * 1e-13 * n_tasks
    coords = vec[:, keep] * np.sqrt(lam[keep])
    t4 = time.perf_counter()
    cluster_tasks(coords, k=k, m=1.07, n_init=n_init)
    t5 = time.perf_counter()
    return {"T": n_tasks, "D": x.shape[1], "r": coords.shape[1], "read_s": t1 - t0, "gram_s": t2 - t1,
            "gram_gflops": 2 * n_tasks**2 * x.shape[1] / (t2 - t1) / 1e9, "eigh_s": t3 - t2,
            "kmeans_s": t5 - t4, "n_init": n_init, "k": k}


def write_seconds(run: RunDir) -> dict[str, float]:
    """Seconds to write the run's last snapshot as float32 and as float16 (to a scratch folder), and
    the file sizes in MiB."""
    dm = run.load_datamap()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "float16"):
            scratch = RunDir(Path(tmp) / dtype)
            t0 = time.perf_counter()
            scratch.write_datamap(1, dm, dtype=dtype)
            out[f"write_{dtype}_s"] = time.perf_counter() - t0
            out[f"{dtype}_mib"] = scratch.datamap_path(1).stat().st_size / MIB
    return out


def print_breakdown(run: RunDir, k: int, n_init: int) -> None:
    b = group_breakdown(run, k, n_init)
    w = write_seconds(run)
    print(f"{run.path}: T={b['T']} D={b['D']} r={b['r']}: read features {b['read_s']:.2f} s, Gram {b['gram_s']:.2f} s "
          f"({b['gram_gflops']:.1f} GFLOP/s), eigh {b['eigh_s']:.2f} s, k-means k={b['k']} x {b['n_init']} restarts "
          f"+ membership {b['kmeans_s']:.2f} s; snapshot write float32 {w['write_float32_s']:.2f} s "
          f"({w['float32_mib']:.1f} MiB), float16 {w['write_float16_s']:.2f} s ({w['float16_mib']:.1f} MiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="100,1000", help="comma list of task counts ('' to skip)")
    ap.add_argument("--supers", default="20,100", help="planted superclasses per --tasks value, also the k of "
                    "`stg group` ('' for T/5 each)")
    ap.add_argument("--images", type=int, default=12000, help="training images in all (split over the classes)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--size", type=int, default=32, help="image side (synthetic-hierarchy's size option)")
    ap.add_argument("--probe-tasks", default="5,10,20", help="T values for the TAG probe cost ('' to skip)")
    ap.add_argument("--probe-batch", type=int, default=16)
    ap.add_argument("--n-init", type=int, default=10,
                    help="k-means restarts for `stg group` (its default, 300, and 3 more seeds' worth for the "
                         "stability it records, take tens of minutes at T = 1,000 and k = 100 on 2 cores)")
    ap.add_argument("--breakdown", default=None, help="only time group's steps and the snapshot writes on this "
                    "existing run (k = its planted superclasses), e.g. a run this benchmark kept with --out")
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    if args.breakdown:
        run = RunDir(args.breakdown)
        print_breakdown(run, len(run.read()["references"]["planted"]), args.n_init)
        return
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="stg-scale-"))
    base = baseline_rss()
    rows, notes, breakdowns = [], [], []
    tasks = [int(x) for x in args.tasks.split(",") if x.strip()]
    supers = [int(x) for x in args.supers.split(",") if x.strip()] if args.supers else [t // 5 for t in tasks]
    if tasks and len(supers) != len(tasks):
        raise SystemExit("--supers needs one value per --tasks value")
    for t, n_super in zip(tasks, supers):
        per_class = max(2, args.images // t)
        dataset = f"synthetic-hierarchy:classes={t},super={n_super},train={per_class},test={max(1, per_class // 4)},size={args.size}"
        run_path = out / f"T{t}"
        shutil.rmtree(run_path, ignore_errors=True)
        wall, rss, _ = stg("datamap", "--dataset", dataset, "--epochs", str(args.epochs), "--model", args.model,
                           "--device", "cpu", "--out", str(run_path))
        run = RunDir(run_path)
        meta = run.read()
        n = meta["n_train"]
        epochs = run.datamap_epochs()
        f32_bytes = run.datamap_path(epochs[-1]).stat().st_size
        history = meta["history"]
        train_s = sum(r["seconds"] for r in history)
        rows.append((t, n, "datamap", wall, rss, f"{args.epochs} epochs, {train_s / len(history):.1f} s/epoch in the loop; "
                     f"val bal. acc. {history[-1].get('val_balanced_accuracy', float('nan')):.3f}"))
        import torch

        state = torch.load(run.checkpoint, map_location="cpu", weights_only=True)
        rec = state["hooks"]["RecordDataMap"]
        rec_bytes = sum(v.numel() * v.element_size() for v in rec.values())
        rec_dtypes = sorted({str(v.dtype).replace("torch.", "") for v in rec.values()})

        k = n_super
        wall, rss, _ = stg("group", str(run_path), "--k", str(k), "--name", "bench", "--n-init", str(args.n_init))
        g32 = run.read_grouping("bench")
        ari = g32["scores"]["planted"]["ari"]
        rows.append((t, n, f"group k={k}", wall, rss, f"ARI vs planted {ari:.3f}"))

        run16 = as_float16_run(run_path, out / f"T{t}-f16")
        f16_bytes = run16.datamap_path(epochs[-1]).stat().st_size
        wall, rss, _ = stg("group", str(run16.path), "--k", str(k), "--name", "bench", "--n-init", str(args.n_init))
        g16 = run16.read_grouping("bench")
        from sklearn.metrics import adjusted_rand_score

        agree = adjusted_rand_score(g32["labels"], g16["labels"])
        err = max(float(np.abs(run16.load_datamap()[s] - run.load_datamap()[s]).max()) for s in DATAMAP_KEYS)
        breakdowns.append(run)
        rows.append((t, n, f"group k={k} (float16)", wall, rss,
                     f"ARI vs planted {g16['scores']['planted']['ari']:.3f}, vs float32 grouping {agree:.3f}; "
                     f"max |f16 - f32| {err:.2e}"))

        stats = ("confidence", "variability")
        ref, ref_peak, ref_s = traced(lambda: naive_features(run, epochs, stats))
        got, got_peak, got_s = traced(lambda: _load_features(run, epochs, stats, t))
        equal = bool(np.array_equal(ref, got))
        feat_mib = ref.nbytes / MIB
        del ref, got
        notes.append(f"T={t}: N={n}; recorder state {rec_bytes / MIB:.1f} MiB ({', '.join(rec_dtypes)}; "
                     f"= N x (4 + 3 x 4 T) bytes = {n * (4 + 12 * t) / MIB:.1f} MiB); snapshot "
                     f"{f32_bytes / MIB:.1f} MiB float32, {f16_bytes / MIB:.1f} MiB float16 ({f16_bytes / f32_bytes:.2f}x); "
                     f"features of all {len(epochs)} epochs ({feat_mib:.1f} MiB): streamed peak {got_peak:.1f} MiB "
                     f"in {got_s:.2f} s vs all-at-once {ref_peak:.1f} MiB in {ref_s:.2f} s "
                     f"({ref_peak / max(got_peak, 1e-9):.2f}x), equal: {equal}")

    print(f"runs in {out}; dataset images per class = --images / T; device memory: n/a (CPU only)")
    print(f"baseline peak RSS (python + torch + stg imported, nothing done): {base:.0f} MiB\n")
    print("| T | N train | step | wall s | peak RSS MiB | device memory | notes |")
    print("|---|---|---|---|---|---|---|")
    for t, n, step, wall, rss, note in rows:
        print(f"| {t:,} | {n:,} | {step} | {wall:.1f} | {rss:.0f} | n/a (CPU) | {note} |")
    print()
    for line in notes:
        print(line)
    if breakdowns:
        print(f"\nstg group step by step (this process; one k-means with {args.n_init} restarts; `stg group` also "
              "runs 3 more seeds for its stability score):")
    for run in breakdowns:
        print_breakdown(run, len(run.read()["references"]["planted"]), args.n_init)
    probe_tasks = [int(x) for x in args.probe_tasks.split(",") if x.strip()]
    if probe_tasks:
        print(f"\nTAG lookahead probe, one batch of {args.probe_batch} {args.size}x{args.size} images, paper CNN, "
              "CPU fp32 (best of 2)")
        print("| T | probe s | forward+backward s | probe / step | probe / (T x step) |")
        print("|---|---|---|---|---|")
        for t, probe_s, step_s in probe_cost(probe_tasks, args.probe_batch, args.size):
            print(f"| {t} | {probe_s:.3f} | {step_s:.4f} | {probe_s / step_s:.1f} | {probe_s / (t * step_s):.2f} |")
    print("\nresult " + json.dumps({f"T{r[0]}_{r[2].split()[0]}{'_f16' if 'float16' in r[2] else ''}_s": round(r[3], 1)
                                  for r in rows}))


if __name__ == "__main__":
    main()
