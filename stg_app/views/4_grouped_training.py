"""Grouped training: one specialist per cluster (membership-weighted) plus baselines, then results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from stg.train.device import device_choices  # noqa: E402
from stg.plots import gain_bar, results_rows  # noqa: E402

METRICS = ("balanced_accuracy", "accuracy", "f1", "auroc")


def launch_form(run: common.RunDir, grouping: str) -> None:
    with st.form("groups_form"):
        c1, c2, c3 = st.columns(3)
        epochs = c1.number_input("Epochs (0 = the run's)", min_value=0, value=0, key="gt_epochs")
        baselines = c2.multiselect("Baselines", ["mtl", "random", "stl"], default=["mtl", "random"], key="gt_base")
        device = c3.selectbox("Device", device_choices(), key="gt_device")
        hard = c1.checkbox("Hard groups (membership 0/1)", key="gt_hard")
        if st.form_submit_button("Train specialists", type="primary"):
            with common.errors():
                common.manager().start_groups(run.path, grouping, epochs=int(epochs) or None,
                                              baselines=tuple(baselines), hard=bool(hard), device=device)
                st.session_state["gt_watching"] = str(run.path)


def progress_panel(run: common.RunDir, grouping: str) -> None:
    mgr = common.manager()
    running = mgr.is_running(run.path)

    @st.fragment(run_every=common.POLL if running else None)
    def panel() -> None:
        snap = mgr.snapshot(run.path)
        if snap is not None and snap.running:
            p = snap.progress
            label = f"{snap.kind} job on {run.path.name}"
            if p is not None:
                label += f": epoch {p.epoch}/{p.epochs}" + (f", {p.message}" if p.message else "")
            st.progress(snap.fraction, text=label)
            st.button("Cancel", key="gt_cancel", on_click=mgr.cancel, args=(run.path,))
        elif snap is not None and snap.kind == "groups" and snap.status == "failed":
            st.error(snap.error or "grouped training failed")
        if st.session_state.get("gt_watching") == str(run.path) and not running and not (snap and snap.running):
            del st.session_state["gt_watching"]
            st.rerun()
        if snap is not None and not snap.running and running:
            st.rerun()

    panel()


def results(run: common.RunDir, grouping: str) -> None:
    path = run.groups_dir(grouping) / "metrics.json"
    if not path.is_file():
        st.info(f"No results for grouping {grouping!r} yet.")
        return
    metrics = json.loads(path.read_text())
    metric = st.selectbox("Metric", METRICS, key="gt_metric")
    models = metrics.get("models", {})
    st.dataframe([{"model": name, **{k: v for k, v in m.get("mean", {}).items()}} for name, m in models.items()],
                 hide_index=True, width="stretch")
    if "grouped" in models and "mtl" in models:
        st.plotly_chart(gain_bar(metrics, metric=metric), key="gain")
    st.dataframe(results_rows(metrics, metric=metric), hide_index=True, width="stretch")


st.title("Grouped training")
run = common.sidebar()
meta = common.require_run(run)
if meta is not None:
    names = run.grouping_names()
    if not names:
        st.info("This run has no saved grouping yet: make one on **Grouping** and press *Save grouping*.")
    else:
        grouping = st.selectbox("Grouping", names, key="gt_grouping")
        with common.errors():
            launch_form(run, grouping)
            progress_panel(run, grouping)
            results(run, grouping)
