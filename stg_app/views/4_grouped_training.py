"""Grouped training: one specialist per cluster (membership-weighted) plus baselines, then results.
An optional MT2ST schedule weights each specialist's auxiliary tasks (its non-argmax members); its
weight curve is drawn before launching. Single-target MT2ST results of the run (``stg mt2st``)
are listed at the bottom."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from stg.mt2st.plots import weight_curves  # noqa: E402
from stg.mt2st.schedules import DEFAULTS, make_schedule  # noqa: E402
from stg.mt2st.target import load_target_results, results_table  # noqa: E402
from stg.train.device import device_choices  # noqa: E402
from stg.plots import gain_bars, results_rows  # noqa: E402
from stg.runs.export import export_filename, export_metrics  # noqa: E402
from stg.runs.jobs import progress_text  # noqa: E402
from stg.specialists.baselines import BASELINES  # noqa: E402

METRICS = ("balanced_accuracy", "accuracy", "f1", "auroc")
SCHEDULE_CHOICES = ("none", "diminish", "diminish-code", "switch", "mtl", "stl")
PARAM_HELP = {
    "w0": "initial weight w0",
    "eta": "decay rate eta (>= 0)",
    "nu": "curvature nu (> 0)",
    "switch_at": "switch point: a fraction of training in (0, 1), or a whole number of epochs",
}


def schedule_picker(meta: dict, epochs: int):
    """The MT2ST schedule widgets and the weight curve; returns the schedule (None for none)."""
    name = st.selectbox("MT2ST schedule of each specialist's auxiliary tasks", SCHEDULE_CHOICES, key="gt_schedule",
                        help="A specialist's primary tasks are the tasks whose highest membership is that "
                             "specialist; its other tasks are auxiliaries, their weight is membership x a(t).")
    if name == "none":
        return None
    params = DEFAULTS.get(name, {})
    cols = st.columns(max(1, len(params) + (2 if name != "mtl" and name != "stl" else 0)))
    values = {key: cols[i].number_input(PARAM_HELP[key], value=float(default), format="%g",
                                          key=f"gt_{name}_{key}")
              for i, (key, default) in enumerate(params.items())}
    extra: dict = {}
    if name in ("diminish", "diminish-code"):
        extra["eps"] = cols[len(params)].number_input("0 below eps", value=1e-3, format="%g", key=f"gt_{name}_eps")
    if name in ("diminish", "diminish-code", "switch"):
        extra["per_step"] = cols[-1].checkbox("per step", key=f"gt_{name}_per_step")
    schedule = make_schedule(name, **values, **extra)
    spe = max(1, -(-int(meta.get("n_train") or 1) // int((meta.get("config") or {}).get("batch_size", 128))))
    schedule.check(epochs, spe)
    st.caption(schedule.describe())
    st.plotly_chart(weight_curves([schedule], epochs=epochs, steps_per_epoch=spe), key="gt_curves")
    return schedule


def launch_form(run: common.RunDir, grouping: str, meta: dict) -> None:
    c1, c2, c3 = st.columns(3)
    epochs = c1.number_input("Epochs (0 = the run's)", min_value=0, value=0, key="gt_epochs")
    baselines = c2.multiselect("Baselines", list(BASELINES), default=["mtl", "random"], key="gt_base")
    device = c3.selectbox("Device", device_choices(), key="gt_device")
    hard = c1.checkbox("Hard groups (membership 0/1)", key="gt_hard")
    schedule = None
    with common.errors():
        schedule = schedule_picker(meta, int(epochs) or int((meta.get("config") or {}).get("epochs", 5)))
        if schedule is not None and "stl" not in baselines:
            st.caption("Add the **stl** baseline to see the specialists next to single-task models.")
    if st.button("Train specialists", type="primary", key="gt_train"):
        with common.errors():
            if st.session_state.get("gt_schedule", "none") != "none" and schedule is None:
                raise common.StgError("fix the schedule's parameters first")
            common.manager().start_groups(run.path, grouping, epochs=int(epochs) or None,
                                          baselines=tuple(baselines), hard=bool(hard), device=device,
                                          schedule=schedule)
            st.session_state["gt_watching"] = str(run.path)


def progress_panel(run: common.RunDir, grouping: str) -> None:
    mgr = common.manager()
    running = mgr.is_running(run.path)

    @st.fragment(run_every=common.POLL if running else None)
    def panel() -> None:
        snap = mgr.snapshot(run.path)
        if snap is not None and snap.running:
            st.progress(snap.fraction, text=common.plain(f"{snap.kind} job on {run.path.name}: {progress_text(snap)}"))
            st.button("Cancel", key="gt_cancel", on_click=mgr.cancel, args=(run.path,))
        elif snap is not None and snap.kind == "groups" and snap.status == "failed":
            common.show_error(snap.error or "grouped training failed")
        if st.session_state.get("gt_watching") == str(run.path) and not running and not (snap and snap.running):
            del st.session_state["gt_watching"]
            st.rerun()
        if snap is not None and not snap.running and running:
            st.rerun()

    panel()


MODELS_HELP = ("grouped: each task's prediction mixes the specialists by its memberships. "
               "grouped_argmax: each task is served by its highest-membership specialist alone. "
               "mtl: one model for all tasks. random: specialists of a random grouping with the same cluster sizes. "
               "stl: one model per task.")


def results(run: common.RunDir, grouping: str) -> None:
    record = run.metrics(grouping)  # validated: a corrupt metrics.json is a one-line StgError
    if record is None:
        st.info(f"No results for grouping {common.plain(grouping)} yet.")
        return
    metrics = record.raw
    schedule = (metrics.get("config") or {}).get("schedule")
    if schedule:
        with common.errors():
            st.caption(f"Specialists trained with the MT2ST schedule {make_schedule_from(schedule).describe()}")
    metric = st.selectbox("Metric", METRICS, key="gt_metric")
    models = metrics.get("models", {})
    st.dataframe([{"model": name, **{k: v for k, v in m.get("mean", {}).items()}} for name, m in models.items()],
                 hide_index=True, width="stretch")
    st.caption(MODELS_HELP)
    baselines = [b for b in BASELINES if b in models]
    specialists = [name for name in models if name not in BASELINES]
    if baselines and specialists:
        model = st.selectbox("Specialists to compare", specialists, key="gt_model",
                             help="grouped_argmax: each task served by its highest-membership specialist alone")
        st.plotly_chart(gain_bars(metrics, metric=metric, model=model, baselines=baselines), key="gain")
    st.dataframe(results_rows(metrics, metric=metric), hide_index=True, width="stretch")
    c1, c2 = st.columns(2)
    for col, fmt, mime in ((c1, "csv", "text/csv"), (c2, "json", "application/json")):
        col.download_button(f"Results ({fmt.upper()})", export_metrics(metrics, fmt=fmt),
                            file_name=export_filename(run.path.name, f"{grouping}_metrics", fmt), mime=mime,
                            key=f"gt_dl_{fmt}", on_click="ignore")


def make_schedule_from(meta: dict):
    from stg.mt2st.schedules import AuxSchedule

    return AuxSchedule.from_meta(meta)


def target_results(run: common.RunDir) -> None:
    """Single-target MT2ST results of the run (`stg mt2st`), each next to its stl and mtl models."""
    found = load_target_results(run)
    if not found:
        return
    st.subheader("Single target (MT2ST)")
    st.caption("`stg mt2st RUN --target TASK --helpers GROUPING|all --schedule ...`: the target's test metrics, "
               "and the epochs until its validation metric reaches the stl model's final one.")
    for m in found:
        st.markdown(f"**{common.plain(m['target'])}** with {len(m['helpers'])} helper(s) "
                    f"({common.plain(m['helpers_from'])}): {common.plain(', '.join(m['helpers']))}")
        st.dataframe(results_table(m), hide_index=True, width="stretch")


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
            launch_form(run, grouping, meta)
        with common.errors():
            progress_panel(run, grouping)
        with common.errors():
            results(run, grouping)
    with common.errors():
        target_results(run)
