"""JobManager: background runs, progress snapshots, cancel, one job per run, re-attach by path."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import pytest

from stg.data.spec import DataSpec
from stg.train.config import TrainConfig
from stg.errors import StgError
from stg.runs.jobs import JobManager, get_manager, run_status
from stg.runs.rundir import RunDir
from tiny import tiny_taskset

SPEC = DataSpec("tiny")


def tiny_loader(n_train: int = 96):
    def load(name, **kwargs):
        return tiny_taskset(n_train=n_train)

    return load


def wait_until(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_run_publishes_progress_and_finishes(tmp_path: Path) -> None:
    mgr = JobManager()
    out = tmp_path / "run"
    snap = mgr.start_datamap(out, SPEC, TrainConfig(epochs=2, batch_size=32, device="cpu"), loader=tiny_loader())
    assert snap.kind == "datamap"
    assert RunDir(out).exists()  # run.json is there as soon as start returns
    final = mgr.wait(out, timeout=60)
    assert final is not None and final.status == "done" and final.error is None
    kinds = [e.kind for e in final.events]
    assert kinds[0] == "start" and kinds.count("epoch") == 2 and kinds[-1] == "done"
    assert final.fraction == 1.0
    assert mgr.status(out) == "done"
    assert RunDir(out).datamap_epochs() == [1, 2]
    # a new manager (a restarted app) reads the status back from run.json
    assert JobManager().snapshot(out) is None
    assert JobManager().status(out) == "done"


def test_one_job_per_run_and_reattach_by_path(tmp_path: Path) -> None:
    mgr = JobManager()
    out = tmp_path / "run"
    release = threading.Event()

    def blocking(on_event, cancel):
        release.wait(30)
        return {"status": "done"}

    mgr.start(out, "datamap", blocking)
    try:
        with pytest.raises(StgError, match="already running"):
            mgr.start(out, "groups", blocking)
        with pytest.raises(StgError, match="already running"):
            mgr.start_datamap(tmp_path / "." / "run", SPEC, TrainConfig(epochs=1, batch_size=32, device="cpu"),
                              loader=tiny_loader())
        # the same run reached by another spelling of its path is the same job (a reloaded page, a 2nd tab)
        again = mgr.snapshot(str(tmp_path / "x" / ".." / "run"))
        assert again is not None and again.running
        assert [j.run_path for j in mgr.running()] == [str(out.resolve())]
        # another run directory is independent
        mgr.start(tmp_path / "other", "datamap", lambda on_event, cancel: {"status": "done"})
        assert mgr.wait(tmp_path / "other", timeout=10).status == "done"
    finally:
        release.set()
    assert mgr.wait(out, timeout=10).status == "done"
    # once finished, a new job may start on the same run
    mgr.start(out, "datamap", lambda on_event, cancel: {"status": "done"})
    assert mgr.wait(out, timeout=10).status == "done"


def test_cancel_stops_the_run_and_resume_finishes_it(tmp_path: Path) -> None:
    mgr = JobManager()
    out = tmp_path / "run"
    loader = tiny_loader(n_train=2000)
    config = TrainConfig(epochs=40, batch_size=8, device="cpu")
    mgr.start_datamap(out, SPEC, config, loader=loader)
    wait_until(lambda: (s := mgr.snapshot(out)) is not None and s.progress is not None and s.progress.kind != "start"
               or not mgr.is_running(out))
    assert mgr.is_running(out)
    assert mgr.cancel(out) is True
    final = mgr.wait(out, timeout=60)
    assert final.status == "cancelled"
    assert final.events[-1].kind == "cancelled"
    meta = RunDir(out).read()
    assert meta["status"] == "cancelled" and meta["epochs_done"] < 40
    assert mgr.cancel(out) is False  # nothing left to cancel
    # resume to a smaller target so the test stays short
    done_before = meta["epochs_done"]
    mgr.resume_datamap(out, epochs=done_before + 1, loader=loader)
    assert mgr.wait(out, timeout=120).status == "done"
    assert RunDir(out).read()["epochs_done"] == done_before + 1


def test_failures_are_reported_not_raised(tmp_path: Path) -> None:
    mgr = JobManager()

    def bad(on_event, cancel):
        raise StgError("k=99 is larger than the number of tasks (13)")

    def crash(on_event, cancel):
        raise RuntimeError("boom")

    mgr.start(tmp_path / "a", "groups", bad)
    mgr.start(tmp_path / "b", "groups", crash)
    a, b = mgr.wait(tmp_path / "a", timeout=10), mgr.wait(tmp_path / "b", timeout=10)
    assert a.status == "failed" and a.error == "k=99 is larger than the number of tasks (13)"
    assert b.status == "failed" and b.error == "RuntimeError: boom" and "traceback" in b.detail


def test_bad_input_raises_before_any_thread(tmp_path: Path) -> None:
    mgr = JobManager()
    with pytest.raises(StgError, match="batch-size"):
        mgr.start_datamap(tmp_path / "r", SPEC, TrainConfig(epochs=1, batch_size=10_000, device="cpu"),
                          loader=tiny_loader())
    assert mgr.jobs() == [] and not (tmp_path / "r").exists()
    with pytest.raises(StgError):
        mgr.start_groups(tmp_path / "r", "nope")


def test_status_read_back_from_run_json(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    assert run_status(run.path) == "missing"
    run.path.mkdir()
    run.write({"task_names": ["a"], "config": {}, "status": "running"})
    assert run_status(run.path) == "interrupted"  # no process is training it any more
    assert JobManager().status(run.path) == "interrupted"
    run.write({"task_names": ["a"], "config": {}, "status": "cancelled"})
    assert run_status(run.path) == "cancelled"


def test_get_manager_is_a_singleton(monkeypatch: pytest.MonkeyPatch) -> None:
    import stg.runs.jobs as jobs

    manager = get_manager()
    assert isinstance(manager, JobManager) and get_manager() is manager
    # the dashboard's manager (stg_app/common.py, also cached by streamlit) is this same one
    if importlib.util.find_spec("streamlit") is not None:
        monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "stg_app"))
        import common

        assert common.manager() is manager and common.manager() is manager

    # created once even when many threads ask at once for the first one (a slow constructor
    # leaves every thread time to see "no manager yet")
    made: list[JobManager] = []

    class SlowManager(JobManager):
        def __init__(self) -> None:
            made.append(self)
            time.sleep(0.05)
            super().__init__()

    monkeypatch.setattr(jobs, "_MANAGER", None)
    monkeypatch.setattr(jobs, "JobManager", SlowManager)
    barrier = threading.Barrier(8, timeout=30)
    got: list[JobManager] = []

    def ask() -> None:
        barrier.wait()
        got.append(get_manager())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(made) == 1 and len(got) == 8 and all(m is made[0] for m in got)
    assert get_manager() is made[0]
