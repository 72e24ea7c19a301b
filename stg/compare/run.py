"""``stg compare RUN --k K``: train every candidate grouping (``stg.compare.plan``) under one budget
for S seeds, resumably, and keep the report up to date.

The budget is the data-map run's (``stg.datamap.run.retrain_inputs``): architecture, batch size,
learning rate, augmentation, data, and ``epochs`` (default the run's) are the same for every
candidate; compare seed s sets the data order (TrainConfig.seed = s) and the initialisations
(model c of a candidate starts from seed ``s * 100003 + c``), for every candidate alike. Each
candidate's k models train as one fused ensemble (``stg.specialists.grouped.train_family``).

Files, under RUN/compare/K/:

    candidates.json    the candidates (groupings, weights, costs) decided on the first call; a
                       resumed compare reuses them, so a grouping is never re-selected halfway
    models/<key>.json  one finished training: its test metrics per task (key: a hash of weights,
                       combination, seed and budget; two methods that give the same grouping share
                       one training); models/<key>.pt is its checkpoint while it trains (deleted
                       once the .json is written)
    report.json, report.html, report.md   rewritten after every finished training (``stg.compare.report``)
    status.json        running | done | cancelled | failed, trainings done / total

A killed compare resumes where it stopped: finished trainings are read back, not retrained, and
an interrupted one resumes from its last finished epoch.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stg.compare.plan import CONTROLS, Candidate, build_candidates, candidates_for_seed, check_controls, training_key
from stg.errors import StgError
from stg.runs.rundir import RunDir, atomic_write_json, exclusive

EXECUTORS = ("local", "ray")
SEED_STRIDE = 100003  # model c of compare seed s starts from seed s * SEED_STRIDE + c


@dataclass(frozen=True)
class Training:
    """One trained ensemble: ``weights`` (T, k) for its k models, ``combine`` (T, k) for its
    predictions, compare seed ``seed``; ``names``: the candidates it stands for."""

    key: str
    seed: int
    weights: np.ndarray
    combine: np.ndarray
    names: tuple[str, ...]


@dataclass(frozen=True)
class ComparePlan:
    run: RunDir
    k: int
    seeds: list[int]
    config: Any  # TrainConfig with the epochs to train
    taskset: Any
    candidates: list[Candidate]
    trainings: list[Training]
    device: str
    executor: str
    selection_seconds: float

    @property
    def out(self) -> Path:
        return compare_dir(self.run, self.k)

    @property
    def task_names(self) -> list[str]:
        return list(self.taskset.task_names)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.taskset.train) // self.config.batch_size)

    def result_path(self, key: str) -> Path:
        return self.out / "models" / f"{key}.json"


def compare_dir(run: RunDir, k: int) -> Path:
    return run.path / "compare" / str(int(k))


def _budget(config) -> dict[str, Any]:
    return {"model": config.model, "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
            "augment": config.augment, "precision": config.precision}


def _load_or_build_candidates(run: RunDir, k: int, controls: list[str], m: float, task_names: list[str],
                              features: list[str] | None) -> tuple[list[Candidate], float]:
    path = compare_dir(run, k) / "candidates.json"
    settings = {"k": k, "m": m, "controls": controls, "task_names": task_names, "features": features}
    if path.is_file():
        try:
            import json

            saved = json.loads(path.read_text())
            if saved.get("settings") == settings:
                return [Candidate.from_meta(c) for c in saved["candidates"]], float(saved.get("seconds", 0.0))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable: decide again
    t0 = time.perf_counter()
    candidates = build_candidates(run, k, controls=controls, m=m, features=features)
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"settings": settings, "seconds": round(seconds, 3),
                             "candidates": [c.to_meta(task_names) for c in candidates]})
    return candidates, seconds


def check_seeds(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise StgError(f"--seeds must be at least 1, got {seeds}")
        return list(range(int(seeds)))
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out) or min(out) < 0:
        raise StgError(f"invalid seeds {list(seeds)}: use distinct non-negative integers")
    return out


def check_args(run: RunDir, k: int, *, seeds: int | Sequence[int], controls: Sequence[str] | str, executor: str,
               device: str) -> tuple[list[int], list[str]]:
    """The cheap checks, before anything is written: k, executor and device, seeds, controls."""
    from stg.train.device import resolve_device

    n_tasks = len(run.read()["task_names"])
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= n_tasks:
        raise StgError(f"invalid k {k!r}: must be between 2 and the number of tasks ({n_tasks})")
    if executor not in EXECUTORS:
        raise StgError(f"unknown executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    if executor == "ray":
        from stg.specialists.executors import import_ray

        import_ray()
    else:
        resolve_device(device)
    return check_seeds(seeds), check_controls(controls)


def plan_compare(run: RunDir, k: int, *, seeds: int | Sequence[int] = 3, epochs: int | None = None,
                 controls: Sequence[str] | str = CONTROLS, executor: str = "local", device: str = "auto",
                 taskset=None, m: float = 1.07, features: Sequence[str] | str | None = None) -> ComparePlan:
    """Validate and decide everything (candidates are built, or read back from candidates.json);
    trains nothing. StgError with a one-line reason on bad input."""
    from stg.datamap.run import retrain_inputs

    meta = run.read()
    task_names = list(meta["task_names"])
    seed_list, controls = check_args(run, k, seeds=seeds, controls=controls, executor=executor, device=device)
    config, taskset = retrain_inputs(run, meta, epochs=epochs, taskset=taskset)
    if isinstance(features, str):
        features = [f.strip() for f in features.split(",") if f.strip()]
    features = None if features is None else list(dict.fromkeys(features))
    candidates, seconds = _load_or_build_candidates(run, int(k), controls, float(m), task_names, features)
    budget = _budget(config)
    trainings: dict[str, Training] = {}
    for s in seed_list:
        for c in candidates_for_seed(candidates, s):
            key = training_key(c.weights, c.combine, s, budget)
            old = trainings.get(key)
            trainings[key] = Training(key, s, c.weights, c.combine, (old.names if old else ()) + (c.name,))
    return ComparePlan(run, int(k), seed_list, config, taskset, candidates, list(trainings.values()), device,
                       executor, seconds)


def load_results(plan: ComparePlan) -> dict[str, dict[str, Any]]:
    """The finished trainings on disk: {key: models/<key>.json}."""
    import json

    out = {}
    for t in plan.trainings:
        path = plan.result_path(t.key)
        if path.is_file():
            try:
                out[t.key] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # a torn file (cannot happen with atomic writes) is retrained
    return out


def _family(t: Training):
    from stg.specialists.grouped import Family

    return Family(t.key, t.weights, tuple(t.seed * SEED_STRIDE + c for c in range(t.weights.shape[1])))


def _finish(plan: ComparePlan, t: Training, r: dict[str, Any]) -> dict[str, Any]:
    """Test metrics of a finished training -> models/<key>.json (then its checkpoint goes)."""
    from stg.specialists.evaluate import ensemble_logits, evaluate_logits

    metrics = evaluate_logits(ensemble_logits(r["test_logits"], t.combine), plan.taskset.test.labels.numpy(),
                              plan.task_names)
    record = {"key": t.key, "seed": t.seed, "names": list(t.names), "k": int(t.weights.shape[1]),
              "seconds": r["seconds"], "epochs": plan.config.epochs, **metrics}
    atomic_write_json(plan.result_path(t.key), record)
    _family(t).checkpoint(plan.out / "models").unlink(missing_ok=True)
    return record


def _config(plan: ComparePlan, seed: int):
    return dataclasses.replace(plan.config, seed=int(seed))


def _run_local(plan: ComparePlan, todo: list[Training], monitor, on_result) -> bool:
    from stg.specialists.grouped import train_family

    total = len(todo) * plan.config.epochs * plan.steps_per_epoch
    for i, t in enumerate(todo):
        r = train_family(_family(t), plan.taskset, _config(plan, t.seed), device=plan.device, out=plan.out / "models",
                         monitor=monitor, step_offset=i * plan.config.epochs * plan.steps_per_epoch,
                         total_steps=total, label=f"{t.key} ({i + 1}/{len(todo)})")
        if r["status"] != "done":
            return False
        on_result(_finish(plan, t, r))
    return True


def _run_ray(plan: ComparePlan, todo: list[Training], monitor, on_result) -> bool:
    """Every training as one Ray task (``stg.specialists.executors.ray_train_families``); False if cancelled."""
    from stg.specialists.executors import ray_train_families

    return ray_train_families([(_family(t), _config(plan, t.seed)) for t in todo], plan.taskset,
                              out=plan.out / "models", device=plan.device, monitor=monitor,
                              on_result=lambda i, r: on_result(_finish(plan, todo[i], r)))


def run_compare(run: RunDir, k: int, *, seeds: int | Sequence[int] = 3, epochs: int | None = None,
                controls: Sequence[str] | str = CONTROLS, executor: str = "local", device: str = "auto",
                monitor=None, taskset=None, m: float = 1.07,
                features: Sequence[str] | str | None = None) -> dict[str, Any]:
    """Plan, train what is not trained yet, and write the report; returns report.json's contents
    (``status`` cancelled when the monitor cancelled; finished trainings are kept)."""
    from stg.compare.report import build_report, write_report
    from stg.train.loop import Monitor, Progress

    monitor = monitor or Monitor()
    check_args(run, k, seeds=seeds, controls=controls, executor=executor, device=device)
    compare_dir(run, k).mkdir(parents=True, exist_ok=True)
    with exclusive(compare_dir(run, k), "comparison"):
        plan = plan_compare(run, k, seeds=seeds, epochs=epochs, controls=controls, executor=executor, device=device,
                            taskset=taskset, m=m, features=features)
        results = load_results(plan)
        todo = [t for t in plan.trainings if t.key not in results]
        lock = threading.Lock()
        t_start = time.monotonic()

        def publish(status: str) -> dict[str, Any]:
            report = build_report(plan, results, status=status)
            report["wall_seconds_this_call"] = round(time.monotonic() - t_start, 3)
            write_report(plan.out, report)
            atomic_write_json(plan.out / "status.json", {"status": status, "done": len(results),
                                                         "total": len(plan.trainings),
                                                         "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})
            return report

        def on_result(record: dict[str, Any]) -> None:
            with lock:
                results[record["key"]] = record
                publish("running")

        publish("running")
        monitor.emit(Progress("start", 0, plan.config.epochs, 0, len(todo) * plan.config.epochs * plan.steps_per_epoch,
                              message=f"comparing {len(plan.candidates)} groupings at k={plan.k}: "
                                      f"{len(todo)} of {len(plan.trainings)} trainings to do "
                                      f"({len(plan.seeds)} seeds, {plan.config.epochs} epochs each)"))
        try:
            finished = (_run_local if executor == "local" else _run_ray)(plan, todo, monitor, on_result)
        except BaseException as e:
            atomic_write_json(plan.out / "status.json", {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                                         "done": len(results), "total": len(plan.trainings)})
            raise
        report = publish("done" if finished else "cancelled")
        kind = "done" if finished else "cancelled"
        monitor.emit(Progress(kind, plan.config.epochs, plan.config.epochs, 0, 0,
                              message=f"{kind}: {plan.out / 'report.html'}"))
        return report


# ------------------------------------------------------------------------------------------------
# For the dashboard: background job, reading back
# ------------------------------------------------------------------------------------------------
def start_compare_job(manager, run: RunDir, k: int, **options: Any):
    """Run ``run_compare(run, k, **options)`` as a background job of ``manager``
    (``stg.runs.jobs.JobManager``), keyed by RUN/compare/K so it does not block other jobs on the
    run. Bad input raises StgError here, before the job starts. Returns the job's snapshot."""
    from stg.train.loop import Monitor

    seeds, controls = check_args(run, k, seeds=options.get("seeds", 3), controls=options.get("controls", CONTROLS),
                                 executor=options.get("executor", "local"), device=options.get("device", "auto"))
    options = {**options, "seeds": seeds, "controls": controls}

    def fn(on_event, cancel):
        return run_compare(run, int(k), monitor=Monitor(on_event, cancel), **options)

    return manager.start(compare_dir(run, k), "compare", fn, detail={"k": int(k), "seeds": len(seeds)})


def comparisons(run: RunDir) -> list[int]:
    """The k's of ``run`` that have a comparison report, ascending."""
    root = run.path / "compare"
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "report.json").is_file())


def read_report(run: RunDir, k: int) -> dict[str, Any] | None:
    """RUN/compare/K/report.json, or None when there is none (yet)."""
    import json

    path = compare_dir(run, k) / "report.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise StgError(f"{path} is unreadable: {e}") from None
