"""Overview: what stg does, the runs in the runs folder, and where to go next."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

run = common.sidebar()
st.title("stg: which tasks should be trained together?")
st.markdown(
    "**STG-MTL** in four steps: **1.** train one multi-task model on all tasks and record each task's "
    "*data map* (per training sample: mean confidence in the true label across epochs, its variability, "
    "correctness); **2.** turn every task's data map into a feature vector and look at the **task map**; "
    "**3.** cluster the tasks softly (**grouping**: k clusters, fuzziness m); **4.** train one specialist "
    "per cluster and compare with one model for all tasks (**grouped training**)."
)
rows = []
mgr = common.manager()
for name in common.run_names():
    path = common.runs_root() / name
    try:
        meta = common.read_meta(str(path), common.mtime(common.RunDir(path).run_json))
    except Exception:  # a corrupt run folder is listed, not fatal
        rows.append({"run": name, "status": "failed"})
        continue
    last = (meta.get("history") or [{}])[-1]
    rows.append({
        "run": name, "status": mgr.status(path), "dataset": meta.get("dataset"),
        "tasks": len(meta.get("task_names", [])), "samples": meta.get("n_train"),
        "epochs": f"{meta.get('epochs_done', 0)}/{meta.get('config', {}).get('epochs', '?')}",
        "val bal. acc.": last.get("val_balanced_accuracy"),
        "groupings": len(common.RunDir(path).grouping_names()), "created": meta.get("created"),
    })
if rows:
    st.subheader("Runs")
    st.dataframe(rows, hide_index=True, width="stretch")
else:
    st.info("No runs yet. Open **Train & data maps** and start one on the embedded Fashion-MNIST sample "
            "(it runs on a laptop CPU in about a minute).")
st.markdown("Next: **Train & data maps** → **Task map** → **Grouping** → **Grouped training** → **Export**. "
            "New to task interference? See **Learn**.")
