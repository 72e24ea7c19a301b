"""The stg dashboard: `stg app` runs `streamlit run stg_app/Home.py` with STG_RUNS = the runs folder."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

st.set_page_config(page_title="stg: which tasks to train together", page_icon=":material/hub:", layout="wide")
import common  # noqa: E402

st.html(common.NARROW_CSS)

VIEWS = Path(__file__).resolve().parent / "views"  # not "pages/": that name would switch on the old multipage mode
nav = st.navigation([
    st.Page(VIEWS / "0_overview.py", title="Overview", icon=":material/home:", url_path="overview", default=True),
    st.Page(VIEWS / "1_train.py", title="Train & data maps", icon=":material/model_training:", url_path="train"),
    st.Page(VIEWS / "9_explore.py", title="Explore samples", icon=":material/image_search:", url_path="explore"),
    st.Page(VIEWS / "10_compare_maps.py", title="Compare runs & epochs", icon=":material/compare:",
            url_path="compare-maps"),
    st.Page(VIEWS / "2_task_map.py", title="Task map", icon=":material/scatter_plot:", url_path="task-map"),
    st.Page(VIEWS / "3_grouping.py", title="Grouping", icon=":material/hub:", url_path="grouping"),
    st.Page(VIEWS / "4_grouped_training.py", title="Grouped training", icon=":material/groups:", url_path="grouped-training"),
    st.Page(VIEWS / "5_export.py", title="Export", icon=":material/download:", url_path="export"),
    st.Page(VIEWS / "7_affinity.py", title="Affinity (TAG)", icon=":material/join_inner:", url_path="affinity"),
    st.Page(VIEWS / "8_compare.py", title="Compare methods", icon=":material/leaderboard:", url_path="compare"),
    st.Page(VIEWS / "6_learn.py", title="Learn: task interference", icon=":material/school:", url_path="learn"),
])
nav.run()
