"""Task map: every task as a point (its data map's features in 2-D), coloured by cluster or reference."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from stg.plots import task_map  # noqa: E402
from stg.grouping.projection import project_tasks  # noqa: E402


def color_options(run: common.RunDir, meta: dict) -> list[str]:
    refs = [f"reference: {r}" for r in (meta.get("references") or {})]
    saved = [f"grouping: {g}" for g in run.grouping_names()]
    return refs + saved + ["none"]


def group_labels(run: common.RunDir, meta: dict, choice: str) -> tuple[list, str]:
    """Per-task colour key and legend title for the chosen colouring."""
    names = list(meta["task_names"])
    if choice.startswith("reference: "):
        ref = meta["references"][choice.removeprefix("reference: ")]
        of = {t: g for g, members in ref.items() for t in members}
        return [of.get(t, "(none)") for t in names], "group"
    if choice.startswith("grouping: "):
        g = run.read_grouping(choice.removeprefix("grouping: "))
        if list(g["task_names"]) != names:
            return ["?"] * len(names), "cluster"
        return [int(c) for c in g["labels"]], "cluster"
    return ["all"] * len(names), "tasks"


st.title("Task map")
run = common.sidebar()
meta = common.require_run(run)
if meta is not None:
    c1, c2 = st.columns([1, 2])
    method = c1.radio("Projection", ["pca", "umap"], horizontal=True, key="tm_method",
                      help="PCA is exact and instant; UMAP (on request) keeps neighbourhoods, takes a few seconds")
    choice = c2.selectbox("Colour by", color_options(run, meta), key="tm_color")
    with common.errors():
        coords = common.task_coords(run)
        with st.spinner("projecting" if method == "pca" else "running UMAP"):
            xy = project_tasks(coords, method=method)
        groups, title = group_labels(run, meta, choice)
        st.plotly_chart(task_map(xy, meta["task_names"], groups, color_title=title,
                                 title=f"{len(meta['task_names'])} tasks, {method.upper()} of their data-map features"),
                        key="task_map")
        st.caption("Tasks close together have similar data maps: the model finds the same samples easy or hard "
                   "for them, which is the signal STG-MTL groups by.")
