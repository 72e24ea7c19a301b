"""Where grouped training runs its families: ``stg.specialists.grouped.run_local`` trains them in
this process; ``run_ray`` sends each family to a Ray cluster as one task."""

from __future__ import annotations

import math
from typing import Any

from stg.errors import StgError
from stg.specialists.grouped import GroupsPlan, StatusFn, train_family
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


def run_ray(plan: GroupsPlan, monitor: Monitor, status: dict[str, Any],
            write_status: StatusFn) -> dict[str, dict[str, Any]] | None:
    """Each family as one Ray task (started with a local Ray instance unless one is running);
    None when cancelled.

    Workers write their checkpoints under the plan's folder themselves, so it must be on a file
    system every worker sees (always true for a local instance). Progress is reported per
    finished family.
    """
    ray = import_ray()
    families, epochs, total_steps = plan.families, plan.config.epochs, plan.total_steps
    started = False
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
        started = True
    try:
        gpus = ray_gpu_share(plan.device, float(ray.cluster_resources().get("GPU", 0)), len(families))
        remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(train_family)
        ts = ray.put(plan.taskset)
        on = "cuda" if gpus else "cpu"  # a task sees only the GPU Ray gave it
        refs = {remote.remote(f, ts, plan.config, device=on, out=plan.out): f.name for f in families}
        results: dict[str, dict[str, Any]] = {}
        pending = list(refs)
        while pending:
            if monitor.cancelled():
                for ref in pending:
                    ray.cancel(ref, force=True)
                return None
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in ready:
                name = refs[ref]
                results[name] = ray.get(ref)
                status["families"][name]["epochs_done"] = results[name]["epochs_done"]
                write_status()
                monitor.emit(Progress("epoch", epochs, epochs, total_steps * len(results) // len(families),
                                      total_steps, message=f"{name}: done on Ray"))
        return {f.name: results[f.name] for f in families}
    finally:
        if started:
            ray.shutdown()
