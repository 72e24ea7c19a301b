"""Train & data maps: start a data-map run in the background, watch it live, replay the data maps."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from stg.affinity.files import AffinityConfig  # noqa: E402
from stg.data.spec import DataSpec  # noqa: E402
from stg.train.config import TrainConfig  # noqa: E402
from stg.train.device import device_choices  # noqa: E402
from stg.errors import StgError  # noqa: E402
from stg.train.models import MODEL_NAMES  # noqa: E402
from stg.datamap.regions import epoch_note  # noqa: E402
from stg.plots import datamap_scatter, training_curves  # noqa: E402

DEFAULT_DATASET = "fashion-sample"


def dataset_names() -> list[str]:
    from stg.data.catalog import DATASET_NAMES

    return list(DATASET_NAMES)


def check_numbers(epochs: float, batch: float, lr: float) -> None:
    """The form's numbers, checked before any data is loaded (the widgets accept any number, so that
    the message names what is wrong instead of the button silently doing nothing)."""
    if epochs != int(epochs) or epochs < 1:
        raise StgError(f"Epochs must be a whole number of at least 1, got {epochs:g}")
    if batch != int(batch) or batch < 1:
        raise StgError(f"Batch size must be a whole number of at least 1, got {batch:g}")
    if not lr > 0:
        raise StgError(f"Learning rate must be above 0, got {lr:g}")


def start_run() -> None:
    """Form callback: validate, load the data, start the job; errors go to session state."""
    s = st.session_state
    s.pop("train_error", None)
    dataset = str(s["f_dataset"]).strip()
    try:
        if not dataset:
            raise StgError("give a dataset: a name (e.g. fashion-sample), hf:NAME, or the path of a folder or .npz")
        check_numbers(float(s["f_epochs"]), float(s["f_batch"]), float(s["f_lr"]))
        name = s["f_name"].strip() or common.new_run_name(Path(dataset.removeprefix("hf:")).name)
        from stg.runs.rundir import check_name

        check_name(name, "run name")
        root = s["f_root"].strip() or None
        limit = int(s["f_limit"])
        if limit < 0:
            raise StgError(f"Limit must be 0 (all images) or more, got {limit}")
        spec = DataSpec.make(dataset, data_root=root, tasks=s["f_tasks"].strip() or None,
                             limit=limit or None, split_seed=int(s["f_seed"]))
        config = TrainConfig(model=s["f_model"], epochs=int(s["f_epochs"]), batch_size=int(s["f_batch"]),
                             lr=float(s["f_lr"]), seed=int(s["f_seed"]), device=s["f_device"])
        out = common.runs_root() / name
        if common.RunDir(out).exists():
            raise StgError(f"run {name!r} already exists: choose another name (or pick it and press Resume)")
        with st.spinner("loading the data"):
            affinity = AffinityConfig.parse(["tag", "cs"] if s.get("f_affinity") else [], int(s["f_every"]))
            common.manager().start_datamap(out, spec, config, download=bool(s.get("f_download")), affinity=affinity)
    except StgError as e:
        s["train_error"] = str(e)
        return
    except Exception as e:  # noqa: BLE001: a loader's unexpected failure is shown, not raised
        s["train_error"] = f"{type(e).__name__}: {e}"
        return
    s["f_name"] = ""
    common.select_run(name)


def new_run_form(*, expanded: bool) -> None:
    names = dataset_names()
    with st.expander("Start a new data-map run", expanded=expanded), st.form("new_run"):
        c1, c2, c3 = st.columns(3)
        c1.text_input("Dataset", value=DEFAULT_DATASET, key="f_dataset",
                      help="a name (" + ", ".join(names) + "), a Hugging Face dataset as hf:NAME, or the path of "
                           "your own image folder (train/<class>/...) or .npz file. fashion-sample is embedded "
                           "and works offline; the others read the data root")
        c1.caption("Names: " + ", ".join(f"`{n}`" for n in names) + "; or `hf:NAME`; or a path.")
        c1.text_input("Data root (optional)", key="f_root", placeholder="~/.cache/stg/data")
        c1.checkbox("Download if missing", key="f_download",
                    help="CIFAR-10/100, Fashion-MNIST, CelebA from their official sources (needs internet)")
        c2.text_input("Tasks spec (optional)", key="f_tasks", placeholder="dataset default, e.g. composite, paper15",
                      help="ovr:all | ovr:C1,C2 | union:NAME=C1,C2 | not:NAME | random | flipped | a preset")
        c2.selectbox("Model", list(MODEL_NAMES), key="f_model")
        c2.selectbox("Device", device_choices(), key="f_device")
        c2.text_input("Run name (optional)", key="f_name", placeholder="a new name under the runs folder")
        c3.number_input("Epochs", value=5, step=1, key="f_epochs")
        c3.number_input("Batch size", value=128, step=32, key="f_batch")
        c3.number_input("Limit (training images, 0 = all)", value=0, step=500, key="f_limit",
                        help="0 trains on every training image of the dataset (the embedded sample: all 3,600 "
                             "after the 10% validation split); a number trains on that many, stratified")
        c3.number_input("Learning rate", value=1e-3, format="%g", key="f_lr")
        c3.number_input("Seed", min_value=0, value=0, key="f_seed")
        c1.checkbox("Record affinities", key="f_affinity",
                    help="TAG's lookahead affinity and the gradient cosine, for the Affinity page. TAG: one extra "
                         "backward and forward per task at each probe step, so it costs about T/F extra steps' "
                         "worth of time; on a CPU use a large F")
        c1.number_input("…every F steps", min_value=1, value=10, key="f_every")
        st.form_submit_button("Start run", type="primary", on_click=start_run)
    if "train_error" in st.session_state:
        common.show_error(st.session_state["train_error"])


def live_panel(run: common.RunDir) -> None:
    """Progress, cancel, the all-tasks grid and the detailed maps; refreshed by a fragment timer
    while the job runs, so the epoch slider and the maps follow the training."""
    mgr = common.manager()
    running = mgr.is_running(run.path)
    if running:
        st.session_state["watching"] = str(run.path)

    @st.fragment(run_every=common.POLL if running else None)
    def panel() -> None:
        snap = mgr.snapshot(run.path)
        status = mgr.status(run.path)
        meta = common.meta_of(run)
        epochs_done = run.datamap_epochs()
        if snap is not None and snap.running:
            p = snap.progress
            epochs = p.epochs if p else meta["config"]["epochs"]
            st.progress(snap.fraction, text=f"Training {common.plain(run.path.name)}: {snap.label}")
            c = st.columns(5)
            c[0].metric("Epochs done", f"{len(epochs_done)}/{epochs}")
            c[1].metric("Loss", f"{p.loss:.4f}" if p and p.loss == p.loss else "…")
            c[2].metric("Images/s", f"{p.images_per_s:,.0f}" if p else "…")
            c[3].metric("ETA", f"{p.eta_s:,.0f} s" if p and p.eta_s == p.eta_s else "…")
            c[4].button("Cancel", key="cancel_run", on_click=mgr.cancel, args=(run.path,))
        else:
            last = (meta.get("history") or [{}])[-1]
            speed = (f"; last epoch {last['images_per_s']:,.0f} img/s on {meta.get('device', '?')}"
                     + (" (CUDA graph)" if last.get("step") == "cuda-graph" else "")) if last else ""
            st.markdown(f"**{common.plain(run.path.name)}**: {common.STATUS_ICON.get(status, '')} {status}, "
                        f"{meta.get('epochs_done', 0)}/{meta['config']['epochs']} epochs, "
                        f"{len(meta['task_names'])} tasks, {meta.get('n_train', '?')} training samples"
                        f"{common.plain(speed)}")
            error = (snap.error if snap else None) or meta.get("error")
            if status == "failed" and error:
                common.show_error(error)
        if epochs_done:
            with common.errors():
                st.plotly_chart(common.datamap_grid_figure(run, epochs_done[-1]), key="grid",
                                config={"displaylogo": False})
                if epochs_done[-1] == 1:
                    st.caption("After epoch 1 every variability is 0 (one observation per sample): the maps are a "
                               "line on the left edge until epoch 2.")
        elif snap is not None and snap.running:
            st.info("The data-map grid appears when the first epoch finishes.")
        with common.errors():
            detail_view(run, meta)
        if st.session_state.get("watching") == str(run.path) and not (snap is not None and snap.running):
            del st.session_state["watching"]
            st.rerun()  # once, so the page redraws without the timer

    panel()


def resume_controls(run: common.RunDir, meta: dict) -> None:
    status = common.manager().status(run.path)
    if status not in ("cancelled", "interrupted", "failed", "done"):
        return
    done = int(meta.get("epochs_done", 0))
    with st.expander("Resume or extend this run"):
        epochs = st.number_input("Train up to epoch", value=max(int(meta["config"]["epochs"]), done + 1), step=1,
                                 key="resume_epochs", help=f"above {done}, the epochs already trained")
        if st.button("Resume", key="resume"):
            with common.errors():
                common.manager().resume_datamap(run.path, epochs=int(epochs))
                st.rerun()


def detail_view(run: common.RunDir, meta: dict) -> None:
    epochs = run.datamap_epochs()
    if not epochs:
        return
    st.subheader("Detailed data maps")
    names = list(meta["task_names"])
    c1, c2 = st.columns([3, 2])
    if "detail_tasks" not in st.session_state:
        st.session_state["detail_tasks"] = names[: min(2, len(names))]
    chosen = c1.multiselect("Tasks (up to 4)", names, max_selections=4, key="detail_tasks")
    epoch = epochs[-1]
    if len(epochs) > 1:
        common.follow_latest("detail_epoch", epochs)
        epoch = c2.select_slider("Epoch (replay training; follows the newest while on it)", options=epochs,
                                 key="detail_epoch")
    dm = common.datamap(run, epoch)
    cols = common.figures("detail").columns(max(1, min(2, len(chosen))))
    for i, task in enumerate(chosen):
        t = names.index(task)
        fig = datamap_scatter(dm["confidence"][t], dm["variability"][t], dm["correctness"][t],
                              task=f"{task}, epoch {epoch}", webgl=common.webgl())
        cols[i % len(cols)].plotly_chart(fig, key=f"scatter_{task}")
    note = epoch_note(epoch, dm["variability"])
    if note:
        st.caption(note)
    st.caption("See the images behind the points on **Explore samples**.")
    if meta.get("history"):
        st.plotly_chart(training_curves(meta["history"]), key="curves")


st.title("Train & data maps")
run = common.sidebar()
new_run_form(expanded=run is None or "train_error" in st.session_state)
if run is not None:
    st.divider()
    meta = common.require_run(run, datamap=False)
    if meta is not None:
        with common.errors():
            live_panel(run)
            resume_controls(run, meta)
