"""Explore samples: one task's data map with the images behind its points, cartography regions
with movable thresholds, box / lasso selections exported as dataset indices and carried to other
tasks, and a gallery of the hardest / most ambiguous samples (a label-noise hunt).

Numbers come from ``stg.datamap.regions`` (regions, counts, rankings, selections) and
``stg.datamap.thumbnails`` (the images); this page only arranges them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from stg.datamap import regions as R  # noqa: E402
from stg.datamap.thumbnails import thumbnail_png  # noqa: E402
from stg.plots import explorer_scatter, subsample_indices  # noqa: E402

RULES = {"fixed": "fixed thresholds", "thirds": "per-task thirds (the paper's 33%)"}
RANKS = {"hard": "hardest (lowest confidence)", "ambiguous": "most ambiguous (highest variability)",
         "easy": "easiest (highest confidence)"}
GALLERY = 24
SELECTION_SHOWN = 40


@st.cache_data(max_entries=8, show_spinner=False)
def region_codes(path: str, epoch: int, mtime: float, rule: str, c_high: float, c_low: float,
                 v: float) -> tuple[np.ndarray, tuple, str]:
    """Region codes (T, N) int8 of one snapshot, the thresholds used ((T,) c_high, c_low, v lists) and
    the rule in words."""
    dm = common.datamap(common.RunDir(path), epoch)
    if rule == "thirds":
        thr = R.Thresholds.quantiles(dm["confidence"], dm["variability"])
    else:
        thr = R.Thresholds.fixed(c_high, c_low, v)
    codes = R.classify(dm["confidence"], dm["variability"], thr)
    return codes, tuple(a.tolist() for a in thr.per_task(codes.shape[0])), thr.describe()


def controls(names: list[str], epochs: list[int]) -> tuple[str, int, str, float, float, float, int]:
    common.url_state("ex_task", names[0], param="task", options=names)
    common.url_state("ex_epoch", epochs[-1], param="epoch", cast=int, options=epochs)
    common.follow_latest("ex_epoch", epochs)
    common.url_state("ex_rule", "fixed", param="rule", options=list(RULES))
    common.url_state("ex_ch", R.DEFAULT_CONFIDENCE_HIGH, param="c_high", cast=float)
    common.url_state("ex_cl", R.DEFAULT_CONFIDENCE_LOW, param="c_low", cast=float)
    common.url_state("ex_v", R.DEFAULT_VARIABILITY, param="v", cast=float)
    c1, c2, c3 = st.columns([2, 3, 1])
    task = c1.selectbox("Task", names, key="ex_task")
    if len(epochs) > 1:
        epoch = c2.select_slider("Epoch", options=epochs, key="ex_epoch")
    else:
        epoch = epochs[-1]
        c2.caption(f"Epoch {epoch} (the only snapshot so far)")
    max_points = int(c3.number_input("Points shown", min_value=500, max_value=50_000, value=5_000, step=500,
                                     key="ex_points", help="a uniform subsample; counts use every sample"))
    r1, r2, r3, r4 = st.columns([2, 1, 1, 1])
    rule = r1.radio("Regions", list(RULES), format_func=RULES.get, key="ex_rule", horizontal=True,
                    help="Swayamdipta et al. 2020: easy-to-learn = high confidence, low variability; ambiguous = "
                         "high variability; hard-to-learn = low confidence, low variability. The paper keeps the "
                         "top / bottom third of each ranking; fixed thresholds compare tasks on one scale.")
    fixed = rule == "fixed"
    c_high = r2.slider("easy: confidence ≥", 0.0, 1.0, step=0.01, key="ex_ch", disabled=not fixed)
    c_low = r3.slider("hard: confidence ≤", 0.0, 1.0, step=0.01, key="ex_cl", disabled=not fixed)
    v = r4.slider("ambiguous: variability ≥", 0.0, 0.5, step=0.01, key="ex_v", disabled=not fixed)
    for key, param in (("ex_task", "task"), ("ex_epoch", "epoch"), ("ex_rule", "rule"), ("ex_ch", "c_high"),
                       ("ex_cl", "c_low"), ("ex_v", "v")):
        common.remember(key, param=param)
    return task, int(epoch), rule, float(c_high), float(c_low), float(v), max_points


def class_text(samples, n: int) -> list[str]:
    names = samples.class_names
    return [names[c] if 0 <= c < len(names) else f"class {c}" for c in samples.classes.tolist()][:n]


def records(rows: np.ndarray, t: int, samples, dm: dict, codes: np.ndarray) -> list[dict]:
    return R.sample_table(rows, task=t, dataset_index=samples.dataset_index, classes=samples.classes,
                          class_names=samples.class_names, labels=samples.labels, datamap=dm, codes=codes)


def gallery(rows: np.ndarray, t: int, samples, dm: dict, codes: np.ndarray, *, width: int = 64) -> None:
    """Thumbnails of ``rows`` with a caption each (dataset index, class, label, confidence)."""
    if samples.images is None:
        st.caption(f"No images: {common.plain(samples.why)}")
        return
    recs = records(rows, t, samples, dm, codes)
    pngs = [thumbnail_png(samples.images[int(r)].numpy()) for r in rows]
    caps = [common.plain(f"#{r['dataset_index']} {r['class']} y={r['label']} "
                         + ("c=?" if r["confidence"] is None else f"c={r['confidence']:.3f}")) for r in recs]
    st.image(pngs, caption=caps, width=width)


def one_sample(row: int, t: int, task: str, samples, dm: dict, codes: np.ndarray) -> None:
    rec = records(np.asarray([row]), t, samples, dm, codes)[0]
    left, right = st.columns([1, 2])
    if samples.images is not None:
        left.image(thumbnail_png(samples.images[row].numpy(), size=112), width=112)
    else:
        left.caption(f"No image: {common.plain(samples.why)}")
    right.markdown(f"**Sample {rec['dataset_index']}**: class {common.plain(rec['class'])}")
    right.dataframe([{"field": k, "value": "missing" if v is None else str(v)} for k, v in rec.items()
                     if k not in ("row",)], hide_index=True, width="stretch")
    st.session_state["ex_last_sample"] = rec
    st.caption(f"Task {common.plain(task)}: label {rec['label']} (1 = positive). Row {row} of the data map.")


def selection_panel(rows: np.ndarray, t: int, task: str, samples, dm: dict, codes: np.ndarray, run, epoch: int) -> None:
    if len(rows) == 0:
        st.caption("Click a point to see its image and numbers; drag a lasso or a box (toolbar) to select many.")
        return
    if len(rows) == 1:
        one_sample(int(rows[0]), t, task, samples, dm, codes)
    else:
        counts = R.region_counts(codes[t:t + 1, rows])[0]
        st.markdown(f"**{len(rows):,} samples selected** on {common.plain(task)}: "
                    + ", ".join(f"{c:,} {R.REGION_LABELS[r]}" for r, c in zip(R.REGIONS, counts)))
        gallery(rows[:SELECTION_SHOWN], t, samples, dm, codes, width=56)
        if len(rows) > SELECTION_SHOWN:
            st.caption(f"Showing the first {SELECTION_SHOWN} of {len(rows):,}; the downloads hold them all.")
    recs = records(rows, t, samples, dm, codes)
    meta = {"run": run.path.name, "task": task, "epoch": epoch, "n": len(recs)}
    c1, c2, c3 = st.columns(3)
    c1.download_button("Indices (CSV)", R.records_text(recs, "csv"),
                       file_name=f"{run.path.name}_selection_{task}_epoch_{epoch:03d}.csv", mime="text/csv",
                       key="ex_dl_csv", on_click="ignore")
    c2.download_button("Indices (JSON)", R.records_text(recs, "json", meta=meta),
                       file_name=f"{run.path.name}_selection_{task}_epoch_{epoch:03d}.json",
                       mime="application/json", key="ex_dl_json", on_click="ignore")
    if c3.button("Carry to other tasks", key="ex_carry", help="outline these samples on every task's map"):
        st.session_state["ex_carried"] = {"run": str(run.path), "task": task, "rows": rows.tolist()}


def by_index_box(samples) -> np.ndarray:
    """Rows of the dataset indices typed into the box (a way to select without the mouse)."""
    text = st.text_input("…or select by dataset index", key="ex_ids", placeholder="e.g. 12, 345, 678",
                         help="training-set indices as in the CSV / JSON exports, separated by commas or spaces")
    if not text.strip():
        return np.zeros(0, dtype=np.int64)
    try:
        wanted = {int(x) for x in text.replace(",", " ").split()}
    except ValueError:
        raise common.StgError(f"dataset indices must be whole numbers separated by commas: {text!r}") from None
    rows = np.flatnonzero(np.isin(samples.dataset_index, list(wanted)))
    missing = len(wanted) - len(rows)
    if missing:
        st.caption(f"{missing} of those indices are not training samples of this run.")
    return rows.astype(np.int64)


def explorer(run, meta: dict) -> None:
    names = list(meta["task_names"])
    epochs = run.datamap_epochs()
    task, epoch, rule, c_high, c_low, v, max_points = controls(names, epochs)
    t = names.index(task)
    dm = common.datamap(run, epoch)
    codes, per_task, rule_text = region_codes(str(run.path), epoch, common.mtime(run.datamap_path(epoch)), rule,
                                              c_high, c_low, v)
    thr = (per_task[0][t], per_task[1][t], per_task[2][t])
    st.caption(f"Regions: {rule_text}" + (f"; for {common.plain(task)}: easy ≥ {thr[0]:.3f}, "
               f"hard ≤ {thr[1]:.3f}, ambiguous ≥ {thr[2]:.3f}" if rule == "thirds" else ""))
    note = R.epoch_note(epoch, dm["variability"][t])
    if note:
        st.info(note)
    samples = common.run_samples(run)
    n = dm["confidence"].shape[1]
    carried = st.session_state.get("ex_carried")
    highlight = None
    if carried and carried.get("run") == str(run.path):
        highlight = np.asarray(carried["rows"], dtype=np.int64)
        highlight = highlight[(highlight >= 0) & (highlight < n)]
    ok = np.flatnonzero(np.isfinite(dm["confidence"][t]) & np.isfinite(dm["variability"][t]))
    rows = ok[subsample_indices(len(ok), max_points)]
    shown = f"{len(rows):,} of {len(ok):,}" if len(rows) < len(ok) else f"{len(ok):,}"
    missing = n - len(ok)
    fig = explorer_scatter(dm["confidence"][t], dm["variability"][t], dm["correctness"][t], codes[t], rows=rows,
                           dataset_index=samples.dataset_index, class_text=class_text(samples, n),
                           labels=samples.labels[:, t], thresholds=thr, highlight=highlight, webgl=common.webgl(),
                           title=f"{task}, epoch {epoch}: {shown} samples"
                                 + (f" ({missing:,} without a label)" if missing else ""))
    left, right = common.figures("explore").columns([3, 2])
    with left:
        event = st.plotly_chart(fig, key=f"ex_map_{task}_{epoch}", on_select="rerun",
                                selection_mode=("points", "box", "lasso"), config={"displaylogo": False})
        if highlight is not None and len(highlight):
            c1, c2 = st.columns([3, 1])
            land = R.region_counts(codes[t:t + 1, highlight])[0]
            c1.caption(f"Outlined: the {len(highlight):,} samples selected on {common.plain(carried['task'])}. "
                       "Here they are " + ", ".join(f"{c:,} {R.REGION_LABELS[r]}" for r, c in zip(R.REGIONS, land)))
            if c2.button("Clear", key="ex_clear_carried"):
                st.session_state.pop("ex_carried", None)
                st.rerun()
    with right:
        picked = R.selected_rows((event or {}).get("selection", {}).get("points", []), n) if event else \
            np.zeros(0, dtype=np.int64)
        typed = by_index_box(samples)
        chosen = picked if len(picked) else typed
        selection_panel(chosen, t, task, samples, dm, codes, run, epoch)

    st.subheader("Samples per region")
    here = R.region_counts(codes[t:t + 1])[0]
    st.caption(f"{common.plain(task)} at epoch {epoch}: " + ", ".join(f"{R.REGION_LABELS[r]} {c:,}"
                                                                    for r, c in zip(R.REGIONS, here))
               + ". Every task below, with the share of its labelled samples in each region:")
    st.dataframe(R.counts_table(codes, names), hide_index=True, width="stretch", key="ex_counts")

    st.subheader("Label-noise hunt")
    g1, g2 = st.columns([2, 1])
    kind = g1.radio("Show", list(RANKS), format_func=RANKS.get, key="ex_rank", horizontal=True)
    count = int(g2.number_input("How many", min_value=1, max_value=200, value=GALLERY, key="ex_rank_n"))
    top = R.ranked(dm["confidence"][t], dm["variability"][t], kind, count)
    st.caption(f"The {len(top)} {RANKS[kind]} samples of {common.plain(task)} at epoch {epoch}: low-confidence, "
               "low-variability samples are often mislabelled (Swayamdipta et al. 2020, as cleanlab users hunt them).")
    gallery(top, t, samples, dm, codes)


st.title("Explore samples")
run = common.sidebar()
meta = common.require_run(run)
if meta is not None:
    with common.errors():
        explorer(run, meta)
