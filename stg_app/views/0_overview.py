"""Overview: what stg does, a one-click first run on the embedded sample, the runs in the runs folder
(a run that cannot be read is listed as bad with its reason), and where to go next."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from stg.data.spec import DataSpec  # noqa: E402
from stg.train.config import TrainConfig  # noqa: E402

FIRST_SPEC = DataSpec("fashion-sample", tasks="composite")  # every embedded training image, 13 tasks
FIRST_CONFIG = TrainConfig(epochs=5, batch_size=128, device="auto")


def start_first_run() -> None:
    """Button callback: a run on the whole embedded sample; errors go to session state."""
    st.session_state.pop("first_error", None)
    name = common.new_run_name("fashion-sample")
    try:
        common.manager().start_datamap(common.runs_root() / name, FIRST_SPEC, FIRST_CONFIG)
    except Exception as e:  # noqa: BLE001: shown in an error box
        st.session_state["first_error"] = str(e) if isinstance(e, common.StgError) else f"{type(e).__name__}: {e}"
        return
    st.session_state["first_run"] = name
    common.select_run(name)


def run_rows() -> list[dict]:
    rows = []
    mgr = common.manager()
    for name in common.run_names():
        path = common.runs_root() / name
        problem = common.run_problem(name)
        if problem:
            rows.append({"run": name, "status": "bad", "reason": problem})
            continue
        meta = common.read_meta(str(path), common.mtime(common.RunDir(path).run_json))
        last = (meta.get("history") or [{}])[-1]
        rows.append({
            "run": name, "status": mgr.status(path), "reason": None, "dataset": meta.get("dataset"),
            "tasks": len(meta.get("task_names") or []), "samples": meta.get("n_train"),
            "epochs": f"{meta.get('epochs_done', 0)}/{(meta.get('config') or {}).get('epochs', '?')}",
            "val bal. acc.": last.get("val_balanced_accuracy"),
            "groupings": len(common.RunDir(path).grouping_names()), "created": meta.get("created"),
        })
    return rows


def first_run_panel() -> None:
    mgr = common.manager()
    name = st.session_state.get("first_run")
    running = bool(name) and mgr.is_running(common.runs_root() / name)

    @st.fragment(run_every=common.POLL if running else None)
    def panel() -> None:
        snap = mgr.snapshot(common.runs_root() / name) if name else None
        if snap is not None and snap.running:
            st.progress(snap.fraction, text=f"First run {common.plain(name)}: {snap.label}")
        elif snap is not None and snap.status == "done":
            st.success(f"Run {common.plain(name)} is done: open **Explore samples** to see the images behind "
                       "each task's data map, or **Grouping** to cluster the tasks.")
        elif snap is not None and snap.error:
            common.show_error(snap.error)
        if running and not (snap is not None and snap.running):
            st.rerun()

    panel()


st.title("stg: which tasks should be trained together?")
run = common.sidebar()
st.markdown(
    "**STG-MTL** in four steps: **1.** train one multi-task model on all tasks and record each task's "
    "*data map* (per training sample: mean confidence in the true label across epochs, its variability, "
    "correctness); **2.** turn every task's data map into a feature vector and look at the **task map**; "
    "**3.** cluster the tasks softly (**grouping**: k clusters, fuzziness m); **4.** train one specialist "
    "per cluster and compare with one model for all tasks (**grouped training**)."
)
c1, c2 = st.columns([1, 2])
c1.button("Train on the embedded sample", type="primary", key="first_run_button", on_click=start_first_run,
          disabled=bool(common.manager().running()),
          help="Fashion-MNIST sample shipped with stg: all 3,600 training images, 13 tasks (composite: 10 "
               "one-vs-rest + footwear, not_footwear, random), 5 epochs. About a minute on a laptop CPU.")
c2.caption("One click: a data-map run on every image of the embedded Fashion-MNIST sample (13 tasks, 5 epochs). "
           "Other data and settings: **Train & data maps**.")
if "first_error" in st.session_state:
    common.show_error(st.session_state["first_error"])
first_run_panel()
with common.errors():
    rows = run_rows()
    if rows:
        st.subheader("Runs")
        st.dataframe(rows, hide_index=True, width="stretch", key="overview_runs")
        bad = [r for r in rows if r["status"] == "bad"]
        if bad:
            st.caption(f"{len(bad)} run(s) cannot be read; the reason is in the table. Other runs are not affected.")
    else:
        st.info("No runs yet. Press **Train on the embedded sample** above (it runs on a laptop CPU in about a "
                "minute), or open **Train & data maps** for other data.")
st.markdown("Next: **Explore samples** → **Task map** → **Grouping** → **Grouped training** → **Export**. "
            "New to task interference? See **Learn**.")
