"""Export: groupings as JSON/CSV/YAML, data maps as npz/CSV, figures as standalone HTML."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from stg.runs.export import FORMATS, datamap_csv, datamap_npz, export_filename, export_grouping, export_metrics  # noqa: E402
from stg.plots import membership_heatmap, task_map  # noqa: E402
from stg.grouping.projection import project_tasks  # noqa: E402

MIME = {"json": "application/json", "csv": "text/csv", "yaml": "application/x-yaml"}


def grouping_downloads(run: common.RunDir, meta: dict) -> None:
    st.subheader("Groupings")
    names = run.grouping_names()
    if not names:
        st.info("No saved grouping yet: save one on **Grouping**.")
        return
    name = st.selectbox("Grouping", names, key="ex_grouping")
    with common.errors():
        grouping = run.read_grouping(name)
        cols = st.columns(len(FORMATS))
        for col, fmt in zip(cols, FORMATS):
            text = export_grouping(grouping, meta.get("references") or {}, fmt=fmt)
            col.download_button(f"{fmt.upper()}", text, file_name=export_filename(run.path.name, name, fmt),
                                mime=MIME[fmt], key=f"ex_grouping_{fmt}", on_click="ignore")
        fig = membership_heatmap(grouping["membership"], grouping["task_names"], title=f"{name}",
                                 coords=common.task_coords(run) if grouping["task_names"] == meta["task_names"] else None)
        st.download_button("Membership heatmap (HTML)", lambda: fig.to_html(include_plotlyjs=True),
                           file_name=export_filename(run.path.name, f"{name}_membership", "html"), mime="text/html",
                           key="ex_fig_membership", on_click="ignore")
    with common.errors():
        record = run.metrics(name)
        if record is None:
            st.caption(f"No grouped-training results for {common.plain(name)} yet (train it on **Grouped training**).")
        else:
            c1, c2 = st.columns(2)
            for col, fmt in ((c1, "csv"), (c2, "json")):
                col.download_button(f"Grouped-training results ({fmt.upper()})", export_metrics(record.raw, fmt=fmt),
                                    file_name=export_filename(run.path.name, f"{name}_metrics", fmt), mime=MIME[fmt],
                                    key=f"ex_metrics_{fmt}", on_click="ignore")


def datamap_downloads(run: common.RunDir, meta: dict) -> None:
    st.subheader("Data maps")
    epochs = run.datamap_epochs()
    epoch = st.selectbox("Epoch", epochs[::-1], key="ex_epoch")
    names = list(meta["task_names"])

    def npz() -> bytes:
        samples = common.run_samples(run, images=False)
        return datamap_npz(common.datamap(run, epoch), names, samples.dataset_index, epoch=epoch,
                           classes=samples.classes)

    st.download_button("npz (confidence, variability, correctness: float32 tasks x samples; task_names, "
                       "sample_index, classes, epoch)", npz,
                       file_name=export_filename(run.path.name, "datamap", "npz", epoch=epoch),
                       mime="application/octet-stream", key="ex_npz", on_click="ignore")
    tasks = st.multiselect("Tasks for CSV", names, default=names[: min(3, len(names))], key="ex_tasks")
    if tasks:
        st.download_button(f"CSV ({len(tasks)} tasks, one row per task and sample)",
                           lambda: datamap_csv(common.datamap(run, epoch), names, tasks, common.sample_index(run)),
                           file_name=export_filename(run.path.name, "datamap", "csv", epoch=epoch), mime="text/csv",
                           key="ex_csv", on_click="ignore")
    else:
        st.caption("Pick at least one task in **Tasks for CSV** to download the CSV (the npz above holds every task).")
    st.download_button("Data-map grid figure (HTML)",
                       lambda: common.datamap_grid_figure(run, epoch).to_html(include_plotlyjs=True),
                       file_name=export_filename(run.path.name, "grid", "html", epoch=epoch), mime="text/html",
                       key="ex_fig_grid", on_click="ignore")
    ref = next(iter(meta.get("references") or {}), None)

    def task_map_html() -> str:
        of = {t: g for g, ms in meta["references"][ref].items() for t in ms} if ref else {}
        xy = project_tasks(common.task_coords(run), method="pca")
        return task_map(xy, names, [of.get(t, "-") for t in names], color_title="group").to_html(include_plotlyjs=True)

    st.download_button("Task map figure (HTML)", task_map_html, file_name=export_filename(run.path.name, "task_map", "html"),
                       mime="text/html", key="ex_fig_map", on_click="ignore")


st.title("Export")
run = common.sidebar()
meta = common.require_run(run)
if meta is not None:
    with common.errors():
        grouping_downloads(run, meta)
    with common.errors():
        datamap_downloads(run, meta)
