"""The stg dashboard: `stg app` runs `streamlit run app/Home.py` with STG_RUNS = the runs folder."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

st.set_page_config(page_title="stg: which tasks to train together", page_icon="🧩", layout="wide")

PAGES = Path(__file__).resolve().parent / "pages"
nav = st.navigation([
    st.Page(PAGES / "0_overview.py", title="Overview", icon="🏠", url_path="overview", default=True),
    st.Page(PAGES / "1_train.py", title="Train & data maps", icon="🏋️", url_path="train"),
    st.Page(PAGES / "2_task_map.py", title="Task map", icon="🗺️", url_path="task-map"),
    st.Page(PAGES / "3_grouping.py", title="Grouping", icon="🧩", url_path="grouping"),
    st.Page(PAGES / "4_grouped_training.py", title="Grouped training", icon="🤝", url_path="grouped-training"),
    st.Page(PAGES / "5_export.py", title="Export", icon="📦", url_path="export"),
    st.Page(PAGES / "6_learn.py", title="Learn: task interference", icon="🎓", url_path="learn"),
])
nav.run()
