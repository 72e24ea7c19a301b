"""Grouping: cluster the tasks (k, fuzziness, method), compare with the reference grouping, save."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from stg.errors import StgError  # noqa: E402
from stg.grouping.fuzzy import METHODS  # noqa: E402
from stg.grouping.features import available_variants  # noqa: E402
from stg.grouping.make import default_name, make_grouping, quality_caption  # noqa: E402
from stg.plots import contingency_heatmap, k_scan_figure, membership_heatmap  # noqa: E402
from stg.grouping.reference import contingency, split_merge  # noqa: E402


@st.cache_data(max_entries=16, show_spinner="scanning k")
def cached_scan(path: str, mtime: float, ks: tuple[int, ...], m: float, method: str, seed: int) -> list[dict]:
    from stg.grouping.quality import scan_k

    return scan_k(common.task_coords(common.RunDir(path)), ks=ks, m=m, method=method, seed=seed)


METHOD_HELP = ("**fuzzy-kmeans** (the paper's): k-means, then each task's membership from its distances to the "
               "centroids with fuzziness m.  \n**fcm**: Bezdek's fuzzy c-means, centroids and memberships fitted "
               "together.  \n**kmeans**: hard k-means, membership 1 in one cluster.")


def controls(n_tasks: int) -> tuple[int, float, str, int]:
    c1, c2, c3, c4 = st.columns([1, 2, 1.3, 1])
    common.url_state("g_k", min(4, max(2, n_tasks - 1)), param="k", cast=int)
    k = int(c1.number_input("k (clusters)", step=1, key="g_k", help=f"2 .. {n_tasks} for this run's {n_tasks} tasks"))
    common.remember("g_k", param="k")
    m = float(c2.slider("Fuzziness m", min_value=1.01, max_value=3.0, value=1.07, step=0.01, key="g_m",
                        help="1 = crisp; larger = softer memberships (the paper uses values near 1)"))
    method = c3.selectbox("Method", list(METHODS), key="g_method", help=METHOD_HELP)
    seed = int(c4.number_input("Seed", min_value=0, value=0, step=1, key="g_seed"))
    return k, m, method, seed


def comparison(grouping: dict, references: dict) -> None:
    st.subheader("Comparison with the reference groupings")
    if not references:
        st.caption("This run's dataset has no reference grouping.")
        return
    st.dataframe([{"reference": ref, "ARI": s["ari"], "NMI": s["nmi"], "purity": s["purity"],
                   "tasks scored": s.get("n_tasks")} for ref, s in grouping["scores"].items()],
                 hide_index=True, width="stretch")
    names, labels = grouping["task_names"], grouping["labels"]
    for ref, groups in references.items():
        with st.expander(f"{common.plain(ref)}: contingency, splits and merges", expanded=len(references) == 1):
            with common.errors():
                table = contingency(labels, groups, names, k=grouping["k"])
                st.plotly_chart(contingency_heatmap(table, title=f"{ref} groups x clusters"), key=f"cont_{ref}")
                for d in split_merge(labels, groups, names):
                    if d["kind"] == "split":
                        parts = "; ".join(f"cluster {c}: {', '.join(ts)}" for c, ts in d["clusters"].items())
                        st.markdown(f"- **{common.plain(d['group'])}** is split: {common.plain(parts)}")
                    else:
                        parts = "; ".join(f"{g}: {', '.join(ts)}" for g, ts in d["groups"].items())
                        st.markdown(f"- **cluster {d['cluster']}** merges {common.plain(parts)}")


def save_controls(run: common.RunDir, k: int, m: float, method: str, seed: int) -> None:
    c1, c2 = st.columns([3, 1])
    features = st.session_state.get("g_features", "raw")
    name = c1.text_input("Save as", value=default_name(method=method, k=k, m=m, seed=seed)
                         + ("" if features == "raw" else f"-{features}"), key="g_name")
    if c2.button("Save grouping", type="primary", key="g_save"):
        with common.errors():
            if name in run.grouping_names():
                raise StgError(f"grouping {name!r} already exists in this run: choose another name")
            make_grouping(run, k=k, m=m, method=method, seed=seed, name=name, save=True, features=features)
            st.success(f"saved {common.plain(run.grouping_path(name))}; train it on **Grouped training**")


def k_scan(run: common.RunDir, n_tasks: int, m: float, method: str, seed: int) -> None:
    with st.expander("How many clusters? (k scan)"):
        if n_tasks < 3:
            st.caption("Needs at least 3 tasks.")
            return
        highest = min(n_tasks - 1, 30)
        if highest > 2:
            top = st.slider("Scan k up to", min_value=2, max_value=highest, value=min(highest, 10), key="g_scan_top")
        else:
            top = 2
            st.caption(f"With {n_tasks} tasks the scan has one value: k = 2.")
        if st.button("Scan k", key="g_scan") or st.session_state.get("g_scanned") == str(run.path):
            st.session_state["g_scanned"] = str(run.path)
            from stg.grouping.quality import recommend_k

            with common.errors():
                last = run.datamap_epochs()[-1]
                scan = cached_scan(str(run.path), common.mtime(run.datamap_path(last)), tuple(range(2, top + 1)),
                                   m, method, seed)
                best = recommend_k(scan)
                st.plotly_chart(k_scan_figure(scan, recommended=best), key="kscan")
                st.caption(f"Highest silhouette at k = {best}.")


st.title("Grouping")
run = common.sidebar()
meta = common.require_run(run)
if meta is not None:
    names = list(meta["task_names"])
    k, m, method, seed = controls(len(names))
    with common.errors():
        if not 2 <= k <= len(names):
            raise common.StgError(f"k = {k} is out of range: choose k between 2 and {len(names)} "
                                  f"(the number of tasks)")
        common.task_coords(run)  # warm the feature cache once per data-map snapshot
        t0 = time.perf_counter()
        features = st.selectbox("Task features", available_variants(run), key="g_features",
                                help="raw: the paper's; centred / rank: without each task's difficulty level; "
                                     "tag-rows / cs-rows: rows of the recorded affinity (stg/grouping/features.py)")
        grouping = make_grouping(run, k=k, m=m, method=method, seed=seed, save=False, features=features)
        elapsed = time.perf_counter() - t0
        st.caption(f"{len(names)} tasks clustered in {elapsed * 1000:.0f} ms "
                   f"(features: epoch {grouping['features']['epochs'][-1]} confidence + variability)")
        st.text(quality_caption(grouping))
        left, right = common.figures("grouping").columns([1, 1])
        with left:
            st.plotly_chart(membership_heatmap(grouping["membership"], names, coords=common.task_coords(run),
                                               title=f"Membership ({common.grouping_label(grouping)})"),
                            key="membership")
            st.caption("Each cluster's tasks form a block; clusters and the tasks inside each are in dendrogram "
                       "order of their data maps, so similar tasks sit next to each other.")
        with right:
            comparison(grouping, meta.get("references") or {})
        save_controls(run, k, m, method, seed)
    with common.errors():
        k_scan(run, len(names), m, method, seed)
