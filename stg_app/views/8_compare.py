"""Compare methods: every grouping method and feature variant of the run, the controls (mtl, stl,
random) and the reference groupings, each trained under one budget for several seeds
(``stg compare``); the report updates live while it trains."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from stg.compare.plan import CONTROLS  # noqa: E402
from stg.compare.report import agreement_figure, cost_figure, gain_figure, table_rows  # noqa: E402
from stg.compare.run import compare_dir, comparisons, read_report, start_compare_job  # noqa: E402
from stg.train.device import device_choices  # noqa: E402


def launch_form(run: common.RunDir, meta: dict) -> None:
    n_tasks = len(meta["task_names"])
    c1, c2, c3, c4 = st.columns(4)
    k = c1.number_input("k (groups)", min_value=2, max_value=max(2, n_tasks), value=min(3, n_tasks), key="cmp_k")
    seeds = c2.number_input("Seeds", min_value=1, max_value=20, value=3, key="cmp_seeds")
    epochs = c3.number_input("Epochs (0 = the run's)", min_value=0, value=0, key="cmp_epochs")
    device = c4.selectbox("Device", device_choices(), key="cmp_device")
    controls = st.multiselect("Controls", list(CONTROLS), default=list(CONTROLS), key="cmp_controls",
                              help="mtl is required: every gain is measured against it")
    st.caption("Every method and feature variant the run allows, the controls and each reference grouping are "
               "trained with the same architecture, epochs, optimizer and data, for every seed. Re-running resumes.")
    if st.button("Compare", type="primary", key="cmp_go"):
        with common.errors():
            start_compare_job(common.manager(), run, int(k), seeds=int(seeds), epochs=int(epochs) or None,
                              controls=tuple(controls), device=device)
            st.session_state["cmp_show"] = int(k)


def show_report(run: common.RunDir, k: int) -> None:
    mgr = common.manager()
    key = compare_dir(run, k)
    running = mgr.is_running(key)

    @st.fragment(run_every=common.POLL if running else None)
    def panel() -> None:
        snap = mgr.snapshot(key)
        if snap is not None and snap.running:
            p = snap.progress
            st.progress(snap.fraction, text=f"comparing at k={k}" + (f": {p.message}" if p and p.message else ""))
            st.button("Cancel", key="cmp_cancel", on_click=mgr.cancel, args=(key,))
        elif snap is not None and snap.status == "failed":
            common.show_error(snap.error or "the comparison failed")
        report = read_report(run, k)
        if report is None:
            st.info("No results yet.")
        else:
            st.caption(f"Status {report['status']}: {report['trainings']['done']} of {report['trainings']['total']} "
                       f"trainings; seeds {report['seeds']}; test balanced accuracy, gain = method - mtl of the same "
                       "seed, 95% t-intervals across seeds.")
            st.dataframe(table_rows(report), hide_index=True, width="stretch")
            st.plotly_chart(gain_figure(report), key="cmp_gain")
            c1, c2 = st.columns(2)
            c1.plotly_chart(agreement_figure(report), key="cmp_ari")
            c2.plotly_chart(cost_figure(report), key="cmp_cost")
            with st.expander("Groupings"):
                for name, cand in report["candidates"].items():
                    st.text(f"{name}: " + " | ".join(", ".join(g) for g in cand["groups"]))
            st.text(f"Report files: {key / 'report.html'} (self-contained), report.json, report.md")
        if snap is not None and not snap.running and running:
            st.rerun()

    panel()


st.title("Compare methods")
run = common.sidebar()
meta = common.require_run(run)
if meta is not None:
    with common.errors():
        launch_form(run, meta)
        done = comparisons(run)
        active = st.session_state.get("cmp_show")
        ks = sorted(set(done) | ({int(active)} if active else set()))
        if ks:
            k = st.selectbox("Comparison", ks, index=ks.index(int(active)) if active in ks else len(ks) - 1,
                             format_func=lambda v: f"k = {v}", key="cmp_pick")
            show_report(run, int(k))
        else:
            st.info("No comparison on this run yet: choose k and press **Compare** "
                    "(or from a shell: `stg compare RUN --k K`).")
