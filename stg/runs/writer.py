"""Per-epoch files written off the training's critical path (docs/architecture.md §2).

At the end of an epoch the data-map run has three files to write: the snapshot
(RUN/datamap/epoch_NNN.npz), the loop's checkpoint (RUN/checkpoint.pt) and run.json. Written in
the training thread they cost about as much as a GPU epoch at CIFAR-100 size (issue 18), so an
``EpochWriter`` writes them on one background thread while the next epoch trains.

Guarantees:
- **Order.** Jobs run one at a time, in the order submitted: an epoch's snapshot, then its
  checkpoint, then run.json. The checkpoint is the commit point of an epoch: it is written only
  after that epoch's snapshot is on disk, and run.json only after the checkpoint. A crash at any
  moment leaves the last checkpointed epoch complete (its snapshot exists; resume rebuilds
  run.json's history from the checkpoint, see ``stg.datamap.run``).
- **At most one epoch behind.** The first job of epoch e waits until every job of epoch e - 1 is
  done, so at most one epoch's files (a snapshot and a checkpoint copy) are held in memory.
- **Errors are not lost.** After a failed job the rest of the queue is dropped (a checkpoint
  must never follow a missing snapshot) and the error is raised in the training thread at its
  next ``submit`` or at ``close``.

Callers hand over data that training will not change any more: the snapshot's numpy arrays are
fresh copies, and the checkpoint's tensors are copied to the CPU first (``cpu_copy``).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import torch


def cpu_copy(obj: Any) -> Any:
    """``obj`` (nested dicts, lists, tuples of tensors and plain values) with every tensor copied
    to the CPU: a snapshot that later training steps cannot change while it is being written."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [cpu_copy(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(cpu_copy(v) for v in obj)
    return obj


class EpochWriter:
    """Runs per-epoch write jobs on one background thread (``background=False``: in the calling
    thread, at ``submit``; the same order and errors, for comparison and for debugging)."""

    def __init__(self, background: bool = True):
        self.background = background
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._epoch: int | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._work, name="stg-epoch-writer", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._error is None:  # after a failure the rest of the queue is dropped
                    job()
            except BaseException as e:  # noqa: BLE001 - handed to the training thread
                self._error = e
            finally:
                self._jobs.task_done()

    def submit(self, epoch: int, job: Callable[[], None]) -> None:
        """Queue ``job`` (a write of epoch ``epoch``); the first job of a new epoch first waits
        for the previous epoch's jobs. Raises the error of an earlier failed job."""
        if epoch != self._epoch:
            self.wait()
            self._epoch = epoch
        self._raise()
        if not self.background:
            job()
            return
        self._jobs.put(job)

    def wait(self) -> None:
        """Block until every queued job is done; raise the first job error, if any."""
        if self._thread is not None:
            self._jobs.join()
        self._raise()

    def close(self, *, raise_errors: bool = True) -> None:
        """Finish the queued jobs and stop the thread. ``raise_errors`` False: keep a job error
        quiet (the caller is already handling another failure)."""
        try:
            if self._thread is not None and self._thread.is_alive():
                self._jobs.join()
                self._jobs.put(None)
                self._thread.join()
        finally:
            if raise_errors:
                self._raise()

    def _raise(self) -> None:
        if self._error is not None:  # sticky: nothing is written after a failed job
            raise self._error
