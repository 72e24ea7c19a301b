"""Where grouped training runs its families: ``stg.specialists.grouped.run_local`` trains them in
this process; ``run_ray`` sends each family to a Ray cluster as one task."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

from stg.data.taskset import TaskSet
from stg.errors import StgError
from stg.specialists.grouped import Family, GroupsPlan, StatusFn, train_family
from stg.train.config import TrainConfig
from stg.train.loop import Monitor, Progress


def import_ray():
    try:
        import ray  # noqa: F401  (optional extra)
    except ImportError:
        raise StgError("the ray executor needs Ray: install the ray extra: pip install 'stg[ray]'") from None
    return ray


def ray_gpu_share(device: str, cluster_gpus: float, n_tasks: int) -> float:
    """The GPUs each of ``n_tasks`` Ray tasks asks for: a whole GPU each when the cluster has enough,
    else an equal share so that all of them run at once (1/2 each for 3 tasks on 2 GPUs); 0 for the
    CPU, and for ``auto`` on a cluster without GPUs."""
    if device == "cpu" or (device == "auto" and cluster_gpus < 1):
        return 0.0
    if cluster_gpus < 1:
        raise StgError(f"--device {device} with --executor ray: the Ray cluster has no GPU; use --device cpu or auto")
    return 1.0 / math.ceil(n_tasks / int(cluster_gpus))


def ray_train_families(jobs: Sequence[tuple[Family, TrainConfig]], taskset: TaskSet, *, out: Path, device: str,
                       monitor: Monitor, on_result: Callable[[int, dict[str, Any]], None]) -> bool:
    """Train each (family, config) of ``jobs`` as one Ray task (``train_family``), on a local Ray
    instance started here unless one is running; ``on_result(i, result)`` as job i finishes, in
    the order they finish. False when the monitor cancels: the pending tasks are cancelled.

    Workers write their checkpoints under ``out`` themselves, so it must be on a file system every
    worker sees (always true for a local instance).
    """
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False)
    try:
        gpus = ray_gpu_share(device, float(ray.cluster_resources().get("GPU", 0)), len(jobs))
        remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(train_family)
        ts = ray.put(taskset)
        on = "cuda" if gpus else "cpu"  # a task sees only the GPU Ray gave it
        refs = {remote.remote(family, ts, config, device=on, out=out): i for i, (family, config) in enumerate(jobs)}
        pending = list(refs)
        while pending:
            if monitor.cancelled():
                for ref in pending:
                    ray.cancel(ref, force=True)
                return False
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in ready:
                on_result(refs[ref], ray.get(ref))
        return True
    finally:
        if started:
            ray.shutdown()


def run_ray(plan: GroupsPlan, monitor: Monitor, status: dict[str, Any],
            write_status: StatusFn) -> dict[str, dict[str, Any]] | None:
    """Each family as one Ray task (``ray_train_families``); None when cancelled. Progress is
    reported per finished family."""
    families, epochs, total_steps = plan.families, plan.config.epochs, plan.total_steps
    results: dict[str, dict[str, Any]] = {}

    def on_result(i: int, result: dict[str, Any]) -> None:
        name = families[i].name
        results[name] = result
        status["families"][name]["epochs_done"] = result["epochs_done"]
        write_status()
        monitor.emit(Progress("epoch", epochs, epochs, total_steps * len(results) // len(families), total_steps,
                              message=f"{name} (done on Ray, {len(results)}/{len(families)})"))

    if not ray_train_families([(f, plan.config) for f in families], plan.taskset, out=plan.out, device=plan.device,
                              monitor=monitor, on_result=on_result):
        return None
    return {f.name: results[f.name] for f in families}
