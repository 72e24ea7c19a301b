"""Compare data maps side by side (two runs, two epochs or two tasks, on the same axes and the same
region thresholds), the training curves of several runs overlaid, and each run's configuration."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from stg.datamap import regions as R  # noqa: E402
from stg.plots import curves_overlay, explorer_scatter, subsample_indices  # noqa: E402

MAX_POINTS = 4000


def usable_runs() -> list[str]:
    """Runs whose run.json reads and that have at least one data map."""
    return [n for n in common.run_names()
            if common.run_problem(n) is None and common.RunDir(common.runs_root() / n).datamap_epochs()]


def side(col, label: str, runs: list[str], default_run: str, default_epoch: int | None, default_task: int,
         thresholds: R.Thresholds) -> None:
    """One side of the comparison: pickers for run, epoch and task, then the map and its counts."""
    with col:
        st.markdown(f"**{label}**")
        name = st.selectbox("Run", runs, index=runs.index(default_run), key=f"cm_run_{label}")
        run = common.RunDir(common.runs_root() / name)
        meta = common.meta_of(run)
        epochs = run.datamap_epochs()
        names = list(meta["task_names"])
        e_default = default_epoch if default_epoch in epochs else epochs[-1]
        epoch = st.select_slider("Epoch", options=epochs, value=e_default, key=f"cm_epoch_{label}") \
            if len(epochs) > 1 else epochs[-1]
        task = st.selectbox("Task", names, index=min(default_task, len(names) - 1), key=f"cm_task_{label}")
        t = names.index(task)
        dm = common.datamap(run, epoch)
        thr = thresholds if thresholds.how == "fixed" else R.Thresholds.quantiles(dm["confidence"][t:t + 1],
                                                                                   dm["variability"][t:t + 1])
        codes = R.classify(dm["confidence"][t], dm["variability"][t], thr)[0]
        samples = common.run_samples(run, images=False)
        ok = np.flatnonzero(np.isfinite(dm["confidence"][t]))
        rows = ok[subsample_indices(len(ok), MAX_POINTS)]
        c_high, c_low, v = (float(a[0]) for a in thr.per_task(1))
        n = dm["confidence"].shape[1]
        fig = explorer_scatter(dm["confidence"][t], dm["variability"][t], dm["correctness"][t], codes, rows=rows,
                               dataset_index=samples.dataset_index, class_text=[""] * n,
                               labels=samples.labels[:, t], thresholds=(c_high, c_low, v), webgl=common.webgl(),
                               title=f"{name} · {task} · epoch {epoch}", height=440)
        st.plotly_chart(fig, key=f"cm_map_{label}", config={"displaylogo": False})
        note = R.epoch_note(epoch, dm["variability"][t])
        if note:
            st.caption(note)
        counts = R.region_counts(codes[None])[0]
        st.caption(", ".join(f"{R.REGION_LABELS[r]} {c:,}" for r, c in zip(R.REGIONS, counts)))


st.title("Compare runs & epochs")
common.sidebar()
runs = usable_runs()
if not runs:
    st.info("No run with a data map yet: start one on **Overview** or **Train & data maps**.")
else:
    with common.errors():
        current = st.session_state.get("selected_run")
        first = current if current in runs else runs[0]
        epochs = common.RunDir(common.runs_root() / first).datamap_epochs()
        fixed = st.toggle("Fixed region thresholds (off: per-task thirds)", value=True, key="cm_fixed")
        thresholds = R.Thresholds.fixed() if fixed else R.Thresholds.quantiles(np.zeros((1, 1)), np.zeros((1, 1)))
        st.caption("Both maps share the axes (variability 0-0.5, confidence 0-1) and the region rule: "
                   + common.plain(R.Thresholds.fixed().describe() if fixed else "each map's own thirds")
                   + ". Pick two runs, two epochs of one run, or two tasks.")
        left, right = common.figures("compare").columns(2)
        side(left, "A", runs, first, epochs[0] if len(epochs) > 1 else None, 0, thresholds)
        side(right, "B", runs, first, epochs[-1], 0, thresholds)

    st.subheader("Training curves")
    with common.errors():
        chosen = st.multiselect("Runs", runs, default=runs[: min(3, len(runs))], key="cm_curves")
        histories = {n: common.meta_of(common.RunDir(common.runs_root() / n)).get("history") or [] for n in chosen}
        if histories:
            st.plotly_chart(curves_overlay(histories), key="cm_curves_fig")
        for n in chosen:
            meta = common.meta_of(common.RunDir(common.runs_root() / n))
            with st.expander(f"Configuration of {common.plain(n)}"):
                st.json({"config": meta.get("config"), "data": meta.get("data"), "dataset": meta.get("dataset"),
                         "tasks": len(meta.get("task_names") or []), "n_train": meta.get("n_train"),
                         "status": meta.get("status"), "epochs_done": meta.get("epochs_done")}, expanded=False)
