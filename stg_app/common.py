"""Shared page helpers: the runs folder, the job manager, the run picker, cached reads, error display.

Pages only arrange widgets and call library functions; anything numerical lives in ``stg``.
"""

from __future__ import annotations

import contextlib
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


_MARKDOWN = re.compile(r"[\\`*_\[\]<>|~$:]|^[#+\-=]|(?<=^\d)[.)]|(?<=^\d\d)[.)]", re.MULTILINE)
GUI_WORDS = (  # the CLI's words in library errors -> the dashboard's controls
    ("pass --download or put", "tick \u201cDownload if missing\u201d or put"),
    ("pass --download", "tick \u201cDownload if missing\u201d"),
    ("--download", "\u201cDownload if missing\u201d"),
    ("--epochs", "Epochs"), ("--batch-size", "Batch size"), ("--lr", "Learning rate"),
    ("--data-root", "Data root"), ("--tasks", "Tasks spec"), ("--limit", "Limit"), ("--seed", "Seed"),
)


NARROW_CSS = """<style>
/* Narrow windows (800 px with the sidebar open leaves about 500 px): a row of columns wraps onto
   the next line instead of squeezing each widget below a usable width, and the columns of a
   ``figures`` container (maps side by side) wrap sooner, so that no map is drawn narrower than
   24rem. A wide window is unchanged: every column already fits. */
[data-testid="stHorizontalBlock"] { flex-wrap: wrap; }
[data-testid="stColumn"] { min-width: min(10rem, 100%); }
[class*="st-key-figures"] [data-testid="stColumn"] { min-width: min(24rem, 100%); }
</style>"""


def figures(name: str):
    """A container whose columns hold figures: side by side in a wide window, one under the other
    in a narrow one (``NARROW_CSS``)."""
    return st.container(key=f"figures_{name}")


def plain(text: object) -> str:
    """``text`` escaped so that Streamlit's Markdown shows it as written: every Markdown, HTML,
    LaTeX and shortcode character gets a backslash (``train/<class>/*.png`` stays as it is)."""
    return _MARKDOWN.sub(lambda m: "\\" + m.group(0), str(text)).replace("\n", "  \n")


def gui_text(message: str) -> str:
    """A library error in the dashboard's words: ``--download`` is the "Download if missing" box."""
    for cli, gui in GUI_WORDS:
        message = message.replace(cli, gui)
    return message


def show_error(message: object) -> None:
    """One error box with ``message`` as plain text (never Markdown), in the dashboard's words."""
    st.error(plain(gui_text(str(message))), icon=":material/error:")


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Show an error as one error box instead of a traceback; the page goes on. An StgError is
    shown as it is; any other exception (a corrupt file a reader did not expect) as its type and
    message. Streamlit's own rerun / stop signals are not exceptions and pass through."""
    try:
        yield
    except StgError as e:
        show_error(e)
    except Exception as e:  # noqa: BLE001: a page must never show a traceback
        show_error(f"{type(e).__name__}: {e}".strip())


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


def url_state(key: str, default: Any, *, param: str | None = None, cast: Any = str,
              options: list | None = None) -> None:
    """Give the widget ``key`` its value from the URL query (``?param=``) the first time a session
    renders it (a reload or a shared link), else ``default``; pass no value to the widget itself.
    After the widget is drawn, ``remember`` writes its value back to the URL."""
    param = param or key
    if key in st.session_state and (options is None or st.session_state[key] in options):
        return
    value = default
    raw = st.query_params.get(param)
    if raw is not None:
        try:
            value = cast(raw)
        except (TypeError, ValueError):
            value = default
    if options is not None and value not in options:
        value = default
    st.session_state[key] = value


def remember(key: str, *, param: str | None = None) -> None:
    """Write widget ``key``'s value to the URL query so that a reload keeps it."""
    value = st.session_state.get(key)
    text = None if value is None else str(value)
    if text is not None and st.query_params.get(param or key) != text:
        st.query_params[param or key] = text


def follow_latest(key: str, options: list) -> None:
    """A slider over growing ``options`` (epochs of a running training): it moves to the newest
    option as options appear while the user leaves it on the newest one, and stays where the user
    put it otherwise (or goes back to the newest when its value vanished)."""
    newest, mark = options[-1], f"{key}__newest"
    value = st.session_state.get(key)
    if value not in options or value == st.session_state.get(mark):
        st.session_state[key] = newest
    st.session_state[mark] = newest


def run_problem(name: str) -> str | None:
    """Why run ``name`` cannot be shown (one line), or None when its run.json reads."""
    try:
        read_meta(str(runs_root() / name), mtime(RunDir(runs_root() / name).run_json))
    except StgError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return None


def sidebar() -> RunDir | None:
    """Run picker + running jobs, on every page. The choice lives in session state and in ?run=."""
    names = run_names()
    current = st.session_state.get("selected_run") or st.query_params.get("run")
    if current not in names:
        current = names[0] if names else None
    if st.session_state.get("run_picker") not in names:
        st.session_state["run_picker"] = current
    with st.sidebar:
        st.caption("Runs folder")
        st.text(str(runs_root()))
        if not names:
            st.info("No runs yet: start one on **Overview** (one click) or **Train & data maps**.")
            st.session_state.pop("selected_run", None)
            return None
        mgr = manager()
        st.selectbox("Run", names, key="run_picker")
        chosen = st.session_state["run_picker"]
        problem = run_problem(chosen)
        status = "bad" if problem else mgr.status(runs_root() / chosen)
        st.caption(f"{STATUS_ICON.get(status, ':material/error:')} {status}")
        if problem:
            show_error(problem)
        st.session_state["selected_run"] = chosen
        if st.query_params.get("run") != chosen:
            st.query_params["run"] = chosen
        running_jobs(mgr)
    return RunDir(runs_root() / chosen)


def running_jobs(mgr: JobManager) -> None:
    """The sidebar's list of running jobs with their progress, refreshed while any job runs."""

    @st.fragment(run_every=POLL if mgr.running() else None)
    def panel() -> None:
        running = mgr.running()
        for j in running:
            st.caption(f"Running: {plain(Path(j.run_path).name)} ({j.kind}, {j.fraction:.0%}, {j.label})")
        if st.session_state.get("_jobs_seen") and not running:
            st.session_state["_jobs_seen"] = False
            st.rerun()  # the last job ended: redraw once without the timer
        st.session_state["_jobs_seen"] = bool(running)

    panel()


def require_run(run: RunDir | None, *, datamap: bool = True) -> dict[str, Any] | None:
    """run.json of the selected run, or None after telling the user what to do."""
    if run is None:
        st.info("Pick a run in the sidebar, or start one on **Train & data maps**.")
        return None
    problem = run_problem(run.path.name)
    if problem:
        show_error(problem)
        return None
    meta = read_meta(str(run.path), mtime(run.run_json))
    if datamap and not run.datamap_epochs():
        st.info(f"Run {plain(run.path.name)} has no data map yet (status: {manager().status(run.path)}). "
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


@st.cache_resource(max_entries=4, show_spinner="loading the run's training images")
def _samples(path: str, mtime: float, images: bool):
    from stg.datamap.thumbnails import load_run_samples

    return load_run_samples(path, load_images=images)


def run_samples(run: RunDir, *, images: bool = True):
    """The run's samples (``stg.datamap.thumbnails.RunSamples``): dataset rows, classes, labels,
    and the training images when the dataset loads here. Cached per run while samples.npz is unchanged."""
    return _samples(str(run.path), mtime(run.path / "samples.npz"), images)


def sample_index(run: RunDir) -> np.ndarray:
    """Original dataset row of each training sample of the run: (N,) int64."""
    try:
        return run_samples(run, images=False).dataset_index
    except StgError:
        n = run.load_datamap().get("confidence").shape[1]
        return np.arange(n)


def grouping_label(grouping: dict[str, Any]) -> str:
    s = f"{grouping.get('method')} k={grouping.get('k')}"
    if grouping.get("method") != "kmeans":
        s += f" m={grouping.get('fuzziness')}"
    return s
