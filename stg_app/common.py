"""Shared page helpers: the runs folder, the job manager, the run picker, cached reads, error display.

Pages only arrange widgets and call library functions; anything numerical lives in ``stg``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import streamlit as st

from stg.errors import StgError  # noqa: F401 (pages use common.StgError)
from stg.runs.jobs import JobManager, get_manager
from stg.runs.records import RunRecord  # noqa: F401 (pages use common.RunRecord)
from stg.runs.rundir import RunDir, list_runs

STATUS_ICON = {"running": ":material/autorenew:", "done": ":material/check_circle:", "failed": ":material/error:",
               "cancelled": ":material/stop_circle:", "interrupted": ":material/pause_circle:",
               "missing": ":material/help:"}
POLL = "1.5s"  # live-update period of fragments while a job runs


def runs_root() -> Path:
    """The runs folder: $STG_RUNS (set by `stg app --runs`), default ./runs."""
    return Path(os.environ.get("STG_RUNS", "runs")).expanduser().resolve()


@st.cache_resource
def manager() -> JobManager:
    """The process-wide JobManager: jobs outlive browser sessions and page reloads."""
    return get_manager()


def webgl() -> bool:
    """WebGL scatter unless STG_NO_WEBGL is set (headless browsers without a GPU)."""
    return os.environ.get("STG_NO_WEBGL", "") in ("", "0")


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Show an StgError as a one-line st.error instead of a traceback; the page goes on."""
    try:
        yield
    except StgError as e:
        st.error(str(e))


def new_run_name(prefix: str) -> str:
    """A fresh, valid run folder name: <prefix>-YYYYmmdd-HHMMSS."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", prefix).strip("-._") or "run"
    return f"{clean[:40]}-{time.strftime('%Y%m%d-%H%M%S')}"


# -- run picker -------------------------------------------------------------------------------------
def run_names() -> list[str]:
    return [p.name for p in list_runs(runs_root())]


def select_run(name: str) -> None:
    """Make ``name`` the selected run (e.g. right after starting it)."""
    st.session_state["selected_run"] = name
    st.session_state["run_picker"] = name
    st.query_params["run"] = name


def sidebar() -> RunDir | None:
    """Run picker + running jobs, on every page. The choice lives in session state and in ?run=."""
    names = run_names()
    current = st.session_state.get("selected_run") or st.query_params.get("run")
    if current not in names:
        current = names[0] if names else None
    if st.session_state.get("run_picker") not in names:
        st.session_state["run_picker"] = current
    with st.sidebar:
        st.caption(f"Runs folder: `{runs_root()}`")
        if not names:
            st.info("No runs yet: start one on **Train & data maps**.")
            st.session_state.pop("selected_run", None)
            return None
        mgr = manager()
        st.selectbox("Run", names, key="run_picker")
        chosen = st.session_state["run_picker"]
        status = mgr.status(runs_root() / chosen)
        st.caption(f"{STATUS_ICON.get(status, '')} {status}")
        st.session_state["selected_run"] = chosen
        if st.query_params.get("run") != chosen:
            st.query_params["run"] = chosen
        running = mgr.running()
        if running:
            st.caption("Running: " + ", ".join(f"{Path(j.run_path).name} ({j.kind}, {j.fraction:.0%})"
                                               for j in running))
    return RunDir(runs_root() / chosen)


def require_run(run: RunDir | None, *, datamap: bool = True) -> dict[str, Any] | None:
    """run.json of the selected run, or None after telling the user what to do."""
    if run is None:
        st.info("Pick a run in the sidebar, or start one on **Train & data maps**.")
        return None
    try:
        meta = read_meta(str(run.path), mtime(run.run_json))
    except StgError as e:
        st.error(str(e))
        return None
    if datamap and not run.datamap_epochs():
        st.info(f"Run `{run.path.name}` has no data map yet (status: {manager().status(run.path)}). "
                "Wait for its first epoch on **Train & data maps**.")
        return None
    return meta


# -- cached reads (keyed by file mtimes so a new epoch invalidates) ---------------------------------
def mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(max_entries=32, show_spinner=False)
def read_meta(path: str, mtime: float) -> dict[str, Any]:
    return RunDir(path).read()


def meta_of(run: RunDir) -> dict[str, Any]:
    return read_meta(str(run.path), mtime(run.run_json))


@st.cache_data(max_entries=4, show_spinner=False)
def _datamap(path: str, epoch: int, mtime: float) -> dict[str, np.ndarray]:
    return RunDir(path).load_datamap(epoch)


def datamap(run: RunDir, epoch: int) -> dict[str, np.ndarray]:
    """{confidence, variability, correctness}: float32 (T, N) of one epoch snapshot."""
    return _datamap(str(run.path), epoch, mtime(run.datamap_path(epoch)))


@st.cache_data(max_entries=8, show_spinner=False)
def _grid(path: str, epoch: int, mtime: float, bins: int):
    from stg.plots import datamap_grid

    run = RunDir(path)
    dm = _datamap(path, epoch, mtime)
    names = run.read()["task_names"]
    return datamap_grid(dm["confidence"], dm["variability"], names, bins=bins,
                        title=f"Data maps after epoch {epoch} (x: variability, y: confidence)")


def datamap_grid_figure(run: RunDir, epoch: int, *, bins: int = 24):
    return _grid(str(run.path), epoch, mtime(run.datamap_path(epoch)), bins)


@st.cache_data(max_entries=8, show_spinner=False)
def _coords(path: str, mtime: float, epochs: str) -> np.ndarray:
    from stg.grouping.features import task_coordinates

    return task_coordinates(RunDir(path), epochs=epochs)


def task_coords(run: RunDir, *, epochs: str = "last") -> np.ndarray:
    """Exact low-dim coordinates of the task features (T, r): cached in memory and on disk."""
    last = run.datamap_epochs()[-1]
    return _coords(str(run.path), mtime(run.datamap_path(last)), epochs)


def datamap_csv(dm: dict[str, np.ndarray], task_names: list[str], tasks: list[str], index: np.ndarray) -> bytes:
    """Long-format CSV of chosen tasks: task, sample, confidence, variability, correctness."""
    buf = io.StringIO()
    buf.write("task,sample,confidence,variability,correctness\n")
    for t in tasks:
        i = task_names.index(t)
        block = np.column_stack([index, dm["confidence"][i], dm["variability"][i], dm["correctness"][i]])
        lines = (f"{t},{int(r[0])},{r[1]:.6f},{r[2]:.6f},{r[3]:.6f}\n" for r in block)
        buf.writelines(lines)
    return buf.getvalue().encode()


def sample_index(run: RunDir) -> np.ndarray:
    """Original dataset row of each training sample of the run: (N,) int64."""
    path = run.path / "samples.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            return np.asarray(z["index"])
    except (OSError, KeyError, ValueError):
        n = run.load_datamap().get("confidence").shape[1]
        return np.arange(n)


def grouping_label(grouping: dict[str, Any]) -> str:
    s = f"{grouping.get('method')} k={grouping.get('k')}"
    if grouping.get("method") != "kmeans":
        s += f" m={grouping.get('fuzziness')}"
    return s
