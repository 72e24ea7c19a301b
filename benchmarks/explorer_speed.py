"""How fast the explorer page answers on a large run: 100 tasks x 45,000 training samples.

    python benchmarks/explorer_speed.py [--tasks 100] [--samples 45000] [--repeats 3]

Builds a synthetic run directory (random data maps for epochs 1-3, samples.npz, and a user .npz
dataset of 45,000 random 28x28 images so thumbnails load), then drives stg_app/views/9_explore.py
with Streamlit's AppTest: one first load, then each interaction (change task, move a threshold,
switch to per-task thirds, select 500 points, carry them to another task, change epoch) timed as
the wall time of the script rerun that answers it (server side, what AppTest measures; the
browser's drawing is not included). The naive reference in the same run: the same interaction
with every point sent to the browser (points shown = all samples) instead of the 5,000-point
subsample, and the per-sample Python loop of the region rule against the vectorised ``classify``.
Timings are noisy on a shared machine; the ratios hold better than the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def build_run(root: Path, n_tasks: int, n: int) -> Path:
    rng = np.random.default_rng(0)
    data = root / "big.npz"
    total = int(round(n / 0.9))  # 10% go to the validation split
    classes = rng.integers(0, n_tasks, total).astype(np.int64)
    np.savez(data, train_images=rng.integers(0, 256, (total, 28, 28), dtype=np.uint8), train_labels=classes,
             test_images=rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
             test_labels=rng.integers(0, n_tasks, 100).astype(np.int64))
    from stg.data.datasets import load_taskset
    from stg.data.spec import DataSpec
    from stg.runs.rundir import RunDir
    from stg.train.config import TrainConfig

    spec = DataSpec.make(str(data))
    ts = load_taskset(str(data))
    run = RunDir(root / "runs" / "big")
    run.path.mkdir(parents=True)
    n_train = len(ts.train)
    meta = {"kind": "datamap", "status": "done", "config": TrainConfig(epochs=3).to_meta(), "data": spec.to_meta(),
            "dataset": ts.dataset, "task_names": list(ts.task_names), "task_kinds": [dict(k) for k in ts.task_kinds],
            "references": {}, "n_train": n_train, "epochs_done": 3, "history": []}
    run.write(meta)
    np.savez(run.path / "samples.npz", index=ts.train.index.numpy(), classes=ts.train.classes.numpy(),
             labels=ts.train.labels.numpy().astype(np.uint8))
    for e in (1, 2, 3):
        conf = rng.random((len(ts.task_names), n_train), dtype=np.float32)
        var = rng.random((len(ts.task_names), n_train), dtype=np.float32) * 0.5 * (e > 1)
        run.write_datamap(e, {"confidence": conf, "variability": var, "correctness": conf > 0.5})
    return root / "runs"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--samples", type=int, default=45_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = build_run(Path(tmp), args.tasks, args.samples)
        os.environ["STG_RUNS"] = str(runs)
        os.environ["STG_NO_WEBGL"] = "0"
        from streamlit.testing.v1 import AppTest

        from stg.datamap import regions as R

        at = AppTest.from_file(str(ROOT / "stg_app" / "views" / "9_explore.py"), default_timeout=600)
        first = timed(at.run)
        assert not at.exception, at.exception
        names = at.selectbox(key="ex_task").options
        n = json.loads((runs / "big" / "run.json").read_text())["n_train"]
        steps = {
            "change task": lambda i: at.selectbox(key="ex_task").set_value(names[(i + 1) % len(names)]).run(),
            "move threshold": lambda i: at.slider(key="ex_v").set_value(0.1 + 0.01 * i).run(),
            "per-task thirds": lambda i: at.radio(key="ex_rule").set_value("thirds" if i % 2 == 0 else "fixed").run(),
            "select 500 points": lambda i: select(at, n, i),
            # three reruns: select, carry, show another task with the carried samples outlined
            "select + carry + other task": lambda i: (select(at, n, i), at.button(key="ex_carry").click().run(),
                                                      at.selectbox(key="ex_task").set_value(names[i % len(names)]).run()),
            "change epoch": lambda i: at.select_slider(key="ex_epoch").set_value(1 + i % 3).run(),
        }
        print(f"{args.tasks} tasks x {n:,} samples; first load {first:.2f} s (data maps, images, caches)")
        results = {}
        for name, step in steps.items():
            times = [timed(lambda: step(i)) for i in range(args.repeats)]
            assert not at.exception, (name, at.exception)
            results[name] = statistics.median(times)
            print(f"  {name:24s} median {results[name]:.3f} s  ({', '.join(f'{t:.3f}' for t in times)})")
        at.number_input(key="ex_points").set_value(50_000).run()
        naive = statistics.median(timed(lambda: at.selectbox(key="ex_task").set_value(names[i]).run())
                                  for i in range(args.repeats))
        print(f"  change task, all {n:,} points sent: median {naive:.3f} s "
              f"(ratio {naive / results['change task']:.1f}x the 5,000-point subsample)")
        conf = np.random.default_rng(1).random((4, 5000)).astype(np.float32)
        var = conf * 0.4
        thr = R.Thresholds.fixed()
        fast = timed(lambda: R.classify(conf, var, thr))
        slow = timed(lambda: [[(2 if v >= 0.2 else 0 if c >= 0.75 else 2 if c <= 0.25 else 3)
                               for c, v in zip(cr, vr)] for cr, vr in zip(conf, var)])
        print(f"  classify 4 x 5,000: vectorised {fast * 1e3:.2f} ms, per-sample loop {slow * 1e3:.1f} ms "
              f"(ratio {slow / fast:.0f}x)")
        print(f"slowest interaction {max(results.values()):.3f} s (goal: < 0.5 s)")


def select(at, n: int, i: int) -> None:
    rows = np.random.default_rng(i).choice(n, 500, replace=False).tolist()
    key = f"ex_map_{at.selectbox(key='ex_task').value}_{at.select_slider(key='ex_epoch').value}"
    at.session_state[key] = {"selection": {"points": [{"customdata": [r]} for r in rows], "point_indices": [],
                                           "box": [], "lasso": []}}
    at.run()


if __name__ == "__main__":
    sys.exit(main())
