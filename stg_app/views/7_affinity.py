"""Affinity: TAG's inter-task affinity recorded in the same run as the data maps, its groupings, and
how they compare with STG-MTL's."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from stg.affinity.files import AFFINITY_METHODS, affinity_epochs  # noqa: E402
from stg.affinity.grouping import mean_affinity  # noqa: E402
from stg.grouping.make import make_grouping, summary_lines  # noqa: E402
from stg.grouping.reference import compare_groupings  # noqa: E402
from stg.plots import affinity_heatmap  # noqa: E402

LABELS = {"tag": "TAG lookahead affinity", "cs": "gradient cosine similarity"}


def affinity_cost(meta: dict, method: str) -> float:
    """Seconds the run spent probing ``method``, summed over its epochs' history."""
    return float(sum(h.get(f"{method}_seconds", 0.0) for h in meta.get("history") or []))


st.title("Affinity: which tasks help each other's training")
run = common.sidebar()
meta = common.require_run(run)


def page(run: common.RunDir, meta: dict) -> None:
    methods = [m for m in AFFINITY_METHODS if affinity_epochs(run.path, m)]
    if not methods:
        st.info(f"Run {common.plain(run.path.name)} recorded no affinity. Start a run with **Record affinities** ticked on "
                "**Train & data maps**, or from a shell: `stg datamap --dataset fashion-sample --tasks composite "
                "--affinity tag,cs --out runs/NAME`.")
    else:
        names = list(meta["task_names"])
        c1, c2, c3 = st.columns([1, 1, 2])
        method = c1.radio("Affinity", methods, format_func=lambda m: LABELS[m], key="af_method")
        epochs = affinity_epochs(run.path, method)
        epoch = c2.select_slider("Epoch", options=["all", *epochs], value="all", key="af_epoch",
                                 help="'all': the mean over every epoch (what the grouping uses); a number: "
                                      "that epoch's probes alone")
        order_by = c3.selectbox("Order tasks by", ["grouping: " + g for g in run.grouping_names()] + ["task order"],
                                key="af_order")
        with common.errors():
            a, used = mean_affinity(run.path, method, "all" if epoch == "all" else str(epoch))
            labels = None
            if order_by.startswith("grouping: "):
                g = run.grouping(order_by.removeprefix("grouping: "))
                labels = list(g.labels) if g.task_names == names else None
            st.plotly_chart(affinity_heatmap(a, names, labels=labels,
                                             title=f"{LABELS[method]}: row onto column<br><sup>source task (row), "
                                                   f"target task (column), epochs {used[0]}..{used[-1]}</sup>"),
                            key="af_heatmap")
            st.caption("Z[i -> j] = 1 - L_j(after a step on task i's loss) / L_j(before): positive when training "
                       "on task i lowers task j's loss (it helps), negative when it raises it (interference). "
                       f"Probing cost {affinity_cost(meta, method):.1f} s over the run.")

        st.subheader("Group by affinity (TAG's network selection)")
        k1, k2 = st.columns([1, 3])
        k = int(k1.number_input("k (at most this many groups)", min_value=2, max_value=max(2, len(names)),
                                value=min(3, len(names)), key="af_k"))
        if k2.button(f"Select groups by {method}", key="af_go"):
            with common.errors():
                g = make_grouping(run, k=k, method=method)
                st.session_state["af_made"] = g["name"]
        made = st.session_state.get("af_made")
        if made in run.grouping_names():
            st.code("\n".join(summary_lines(run.read_grouping(made))), language=None)

        st.subheader("TAG vs STG-MTL")
        groupings = run.grouping_names()
        by_aff = [g for g in groupings if run.read_grouping(g).get("method") in AFFINITY_METHODS]
        by_map = [g for g in groupings if g not in by_aff]
        if not by_aff or not by_map:
            st.info("Make one grouping of each kind (above, and on **Grouping**) to compare them.")
        else:
            left, right = st.columns(2)
            a_name = left.selectbox("Affinity grouping", by_aff, key="af_cmp_a")
            m_name = right.selectbox("Data-map grouping (STG-MTL)", by_map, key="af_cmp_m")
            with common.errors():
                ga, gm = run.grouping(a_name), run.grouping(m_name)
                agreement = compare_groupings(ga.labels, gm.labels)
                st.metric("Agreement of the two groupings (ARI of the groups that serve each task)",
                          f"{agreement['ari']:.3f}", help="1 = the same partition, 0 = chance")
                rows = []
                for g, cost in ((ga, affinity_cost(meta, ga.method) + float(ga.raw.get("search_seconds", 0.0))),
                                (gm, float(gm.raw.get("elapsed_s", 0.0)))):
                    row = {"grouping": g.name, "method": g.method, "groups": g.k, "extra seconds": round(cost, 2)}
                    for ref, s in g.scores.items():
                        row[f"ARI vs {ref}"] = s.get("ari")
                    rows.append(row)
                st.dataframe(rows, hide_index=True, width="stretch")
                st.caption("Extra seconds: for the affinity, the probes during training plus the group search; for "
                           "STG-MTL, the clustering (its data maps come free with training).")


if meta is not None:
    with common.errors():
        page(run, meta)
