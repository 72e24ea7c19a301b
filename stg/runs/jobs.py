"""Background jobs for the dashboard: data-map runs and grouped training, one job per run directory.

A ``JobManager`` (one per app process, see ``get_manager``) runs each job in a daemon thread and
publishes, under a lock, the latest ``Progress`` event and a bounded log of events. Pages poll
``snapshot(run_path)``; they never hold a reference to the thread. Job lifetime is tied to the run
directory, not to a browser session: a reloaded page or a second tab asks for the same run path and
sees the same job. Jobs that finished before this process started (or whose process died) are read
back from ``run.json``.

This module never imports Streamlit (docs/architecture.md §1).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from stg.affinity.files import AffinityConfig
from stg.data.spec import DataSpec
from stg.train.config import TrainConfig
from stg.train.loop import Monitor, Progress
from stg.errors import StgError
from stg.runs.rundir import RunDir

JobFn = Callable[[Callable[[Progress], None], threading.Event], Any]
ACTIVE = "running"
FINAL = ("done", "failed", "cancelled")
MAX_EVENTS = 200


@dataclass(frozen=True)
class JobSnapshot:
    """An immutable copy of a job's state, safe to read from any thread.

    kind: "datamap" | "groups"; status: running | done | failed | cancelled;
    progress: the latest Progress (None before the first event); events: the last MAX_EVENTS
    non-step events (start, epoch, done, ...), oldest first.
    """

    run_path: str
    kind: str
    status: str
    progress: Progress | None
    events: tuple[Progress, ...]
    error: str | None
    started: float
    finished: float | None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.status == ACTIVE

    @property
    def label(self) -> str:
        """The progress line: ``progress_label`` of the latest event."""
        return progress_label(self.progress)

    @property
    def fraction(self) -> float:
        """Share of steps done, in [0, 1]."""
        p = self.progress
        if p is None or p.steps <= 0:
            return 1.0 if self.status == "done" else 0.0
        return min(1.0, max(0.0, p.step / p.steps))


def progress_label(p: Progress | None) -> str:
    """What a progress bar says for event ``p``, never past the last epoch and never backwards
    over a stream of events: "epoch E/N" while epoch E trains (step events carry the epoch in
    progress, 1-based), "epoch E/N done" after it (epoch events carry the epoch just finished),
    "starting" / "resuming after epoch E/N" at the start, "done" / "cancelled" at the end."""
    if p is None:
        return "starting"
    n = max(1, int(p.epochs))
    e = min(max(int(p.epoch), 0), n)
    if p.kind == "step":
        return f"epoch {max(e, 1)}/{n}"
    if p.kind == "epoch":
        return f"epoch {e}/{n} done"
    if p.kind == "start":
        return f"resuming after epoch {e}/{n}" if e else "starting"
    return {"done": f"done, {n}/{n} epochs", "cancelled": f"cancelled after epoch {e}/{n}"}.get(p.kind, p.kind)


def duration_text(seconds: float) -> str:
    """A time span as people say it: "45 s", "3 min 05 s", "2 h 07 min"; "?" when unknown (NaN, inf, < 0)."""
    if not (0 <= seconds < float("inf")):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def progress_text(snap: JobSnapshot) -> str:
    """What a job's progress bar says: what trains ("random (stage 2/3)"), ``progress_label``,
    the latest loss and the time left, e.g. "random (stage 2/3), epoch 3/5, loss 0.4123, about
    1 min 20 s left"; "starting" before the first event."""
    p = snap.progress
    parts = [p.message] if p is not None and p.message and p.kind in ("step", "epoch") else []
    parts.append(snap.label)
    if p is not None and p.kind in ("step", "epoch"):
        if p.loss == p.loss:
            parts.append(f"loss {p.loss:.4f}")
        if p.eta_s == p.eta_s:
            parts.append(f"about {duration_text(p.eta_s)} left")
    return ", ".join(parts)


class _Job:
    """Mutable job state; every field is read and written under ``lock``."""

    def __init__(self, run_path: str, kind: str, detail: dict[str, Any]):
        self.run_path = run_path
        self.kind = kind
        self.detail = detail
        self.lock = threading.Lock()
        self.cancel = threading.Event()
        self.status = ACTIVE
        self.progress: Progress | None = None
        self.events: deque[Progress] = deque(maxlen=MAX_EVENTS)
        self.error: str | None = None
        self.started = time.time()
        self.finished: float | None = None
        self.thread: threading.Thread | None = None

    def publish(self, p: Progress) -> None:
        with self.lock:
            self.progress = p
            if p.kind != "step":
                self.events.append(p)

    def finish(self, status: str, error: str | None = None) -> None:
        with self.lock:
            self.status = status
            self.error = error
            self.finished = time.time()

    def snapshot(self) -> JobSnapshot:
        with self.lock:
            return JobSnapshot(self.run_path, self.kind, self.status, self.progress, tuple(self.events),
                               self.error, self.started, self.finished, dict(self.detail))


def run_key(path: str | Path) -> str:
    """The key a run directory is known by: its absolute, normalised path."""
    return str(Path(path).expanduser().resolve())


class JobManager:
    """Runs engine jobs in background threads, at most one per run directory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}

    # -- starting ---------------------------------------------------------------------------
    def start(self, run_path: str | Path, kind: str, fn: JobFn, *, detail: dict[str, Any] | None = None) -> JobSnapshot:
        """Run ``fn(on_event, cancel)`` in a background thread for ``run_path``.

        Raises StgError if a job is already running on that run directory.
        """
        key = run_key(run_path)
        with self._lock:
            old = self._jobs.get(key)
            if old is not None and old.snapshot().running:
                raise StgError(f"a {old.kind} job is already running on {Path(key).name}: wait for it or cancel it first")
            job = _Job(key, kind, detail or {})
            self._jobs[key] = job
        job.thread = threading.Thread(target=self._work, args=(job, fn), name=f"stg-{kind}-{Path(key).name}",
                                      daemon=True)
        job.thread.start()
        return job.snapshot()

    @staticmethod
    def _work(job: _Job, fn: JobFn) -> None:
        try:
            result = fn(job.publish, job.cancel)
        except StgError as e:
            job.finish("failed", str(e))
            return
        except BaseException as e:  # a job must never kill the app; keep the reason for the page
            job.finish("failed", f"{type(e).__name__}: {e}")
            job.detail["traceback"] = traceback.format_exc(limit=8)
            return
        status = result.get("status") if isinstance(result, dict) else None
        if job.cancel.is_set() and status not in ("done",):
            status = "cancelled"
        job.finish(status if status in FINAL else "done")

    def start_datamap(
        self,
        out: str | Path,
        data_spec: DataSpec,
        config: TrainConfig,
        *,
        loader: Callable[..., Any] | None = None,
        download: bool = False,
        affinity: AffinityConfig = AffinityConfig(),
    ) -> JobSnapshot:
        """Load the task set now (bad input raises StgError here), then train in the background
        (``affinity``: also record TAG / gradient-cosine affinities, see ``stg.affinity.probe``).

        data_spec: what to load (``stg.data.spec.DataSpec``).
        ``download`` fetches a missing dataset first (needs internet). ``out`` that already holds
        the same run resumes it.
        """
        from stg.datamap.run import train_datamap

        key = run_key(out)
        self._refuse_if_running(key)
        self._refuse_second_datamap(key)
        from stg.data.datasets import load_taskset, load_taskset_from_spec

        spec = data_spec
        taskset = load_taskset_from_spec(spec, download=download, loader=loader or load_taskset)
        config.validate(len(taskset.train))

        def fn(on_event, cancel):
            return train_datamap(taskset, config, key, data_spec=spec, monitor=Monitor(on_event, cancel),
                                 affinity=affinity)

        detail = {"dataset": spec.dataset, "tasks": len(taskset.task_names), "epochs": config.epochs}
        snap = self.start(key, "datamap", fn, detail=detail)
        self._wait_for_run_json(key, timeout=10.0)
        return self.snapshot(key) or snap

    def _wait_for_run_json(self, key: str, *, timeout: float) -> None:
        """Let the engine create run.json (it does so first) so run pickers list the new run at once."""
        deadline = time.monotonic() + timeout
        run = RunDir(key)
        while time.monotonic() < deadline and not run.exists() and self.is_running(key):
            time.sleep(0.02)

    def resume_datamap(self, run_path: str | Path, *, epochs: int | None = None, device: str | None = None,
                       loader: Callable[..., Any] | None = None) -> JobSnapshot:
        """Continue a cancelled/interrupted run (or extend a finished one to ``epochs``)."""
        meta = RunDir(run_path).read()
        cfg = dict(meta.get("config") or {})
        done = int(meta.get("epochs_done") or 0)
        if epochs is not None:
            if int(epochs) <= done:
                raise StgError(f"run {Path(run_path).name} has already trained {done} epoch{'s' * (done != 1)}: "
                               f"set a target above {done} to train further")
            cfg["epochs"] = int(epochs)
        elif done >= int(cfg.get("epochs") or 0) and meta.get("status") == "done":
            raise StgError(f"run {Path(run_path).name} is done ({done} epochs): set a target above {done} to extend it")
        if device is not None:
            cfg["device"] = device
        return self.start_datamap(run_path, DataSpec.from_meta(meta.get("data")), TrainConfig.from_meta(cfg),
                                  loader=loader, affinity=AffinityConfig.from_meta(meta.get("affinity")))

    def start_groups(self, run_path: str | Path, grouping: str, **options: Any) -> JobSnapshot:
        """Train the specialists of ``grouping`` (and baselines) in the background: stg.specialists.grouped.train_groups."""
        from stg.specialists.grouped import train_groups

        run = RunDir(run_path)
        run.read_grouping(grouping)  # fail now, not in the thread, on an unknown grouping

        def fn(on_event, cancel):
            return train_groups(run, grouping, monitor=Monitor(on_event, cancel), **options)

        return self.start(run_path, "groups", fn, detail={"grouping": grouping})

    def _refuse_second_datamap(self, key: str) -> None:
        """One data-map training at a time per app: a second one would share the same CPU or GPU,
        so both would run at about half speed, and a GPU could run out of memory."""
        busy = [s for s in self.running() if s.kind == "datamap" and s.run_path != key]
        if busy:
            raise StgError(f"the data-map run {Path(busy[0].run_path).name} is training in this app: wait for it "
                           "or cancel it first (two runs at once would share the same processor and each take "
                           "about twice as long; from a shell, `stg datamap` can run another on a different device)")

    def _refuse_if_running(self, key: str) -> None:
        snap = self.snapshot(key)
        if snap is not None and snap.running:
            raise StgError(f"a {snap.kind} job is already running on {Path(key).name}: wait for it or cancel it first")

    # -- watching ---------------------------------------------------------------------------
    def snapshot(self, run_path: str | Path) -> JobSnapshot | None:
        """The job of this run directory started by this process, or None."""
        with self._lock:
            job = self._jobs.get(run_key(run_path))
        return job.snapshot() if job is not None else None

    def jobs(self) -> list[JobSnapshot]:
        with self._lock:
            jobs = list(self._jobs.values())
        return [j.snapshot() for j in jobs]

    def running(self) -> list[JobSnapshot]:
        return [s for s in self.jobs() if s.running]

    def is_running(self, run_path: str | Path) -> bool:
        snap = self.snapshot(run_path)
        return snap is not None and snap.running

    def status(self, run_path: str | Path) -> str:
        """running | done | failed | cancelled | interrupted | missing.

        A live job's status wins; otherwise run.json's. A run.json that says "running" with no
        job in this process was interrupted (its process died): it can be resumed.
        """
        snap = self.snapshot(run_path)
        if snap is not None and (snap.running or snap.kind == "datamap"):
            return snap.status
        return run_status(run_path)

    def cancel(self, run_path: str | Path) -> bool:
        """Ask the job on this run to stop (within one step). False if none is running."""
        with self._lock:
            job = self._jobs.get(run_key(run_path))
        if job is None or not job.snapshot().running:
            return False
        job.cancel.set()
        return True

    def wait(self, run_path: str | Path, timeout: float | None = None) -> JobSnapshot | None:
        """Block until the job ends (tests, CLI); returns its final snapshot."""
        with self._lock:
            job = self._jobs.get(run_key(run_path))
        if job is None:
            return None
        if job.thread is not None:
            job.thread.join(timeout)
        return job.snapshot()


def run_status(run_path: str | Path) -> str:
    """Status read back from run.json: done | failed | cancelled | interrupted | missing."""
    run = RunDir(run_path)
    if not run.exists():
        return "missing"
    try:
        status = run.read().get("status", "failed")
    except StgError:
        return "failed"
    return "interrupted" if status == ACTIVE else status


_MANAGER: JobManager | None = None
_MANAGER_LOCK = threading.Lock()


def get_manager() -> JobManager:
    """The process-wide JobManager (the app also wraps this in st.cache_resource)."""
    global _MANAGER
    with _MANAGER_LOCK:
        if _MANAGER is None:
            _MANAGER = JobManager()
        return _MANAGER
