"""Learn: task interference, shown on the user's own runs (random task, complement pair, unions)."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from stg.data.spec import DataSpec  # noqa: E402
from stg.train.config import TrainConfig  # noqa: E402
from stg.grouping.make import make_grouping  # noqa: E402
from stg.plots import datamap_scatter, task_map  # noqa: E402
from stg.grouping.projection import project_tasks  # noqa: E402

DEMO = "learn-composite"
DEMO_SPEC = DataSpec("fashion-sample", tasks="composite", limit=1500)


def start_demo() -> None:
    out = common.runs_root() / DEMO
    mgr = common.manager()
    st.session_state.pop("learn_error", None)
    try:
        if common.RunDir(out).exists():
            if mgr.status(out) in ("cancelled", "interrupted", "failed"):
                mgr.resume_datamap(out)
        else:
            mgr.start_datamap(out, DEMO_SPEC, TrainConfig(epochs=4, batch_size=64, device="auto"))
    except common.StgError as e:
        st.session_state["learn_error"] = str(e)
        return
    common.select_run(DEMO)


def special_tasks(record: common.RunRecord) -> dict[str, list]:
    """Which tasks of a run illustrate interference, from the task kinds run.json stores: random
    tasks, complement pairs (X, not_X) and the upside-down flag task."""
    return {"random": record.tasks_of_kind("random"), "pairs": [list(p) for p in record.complement_pairs()],
            "flipped": record.tasks_of_kind("flipped")}


def demo_progress() -> None:
    mgr = common.manager()
    out = common.runs_root() / DEMO
    running = mgr.is_running(out)

    @st.fragment(run_every=common.POLL if running else None)
    def panel() -> None:
        snap = mgr.snapshot(out)
        if snap is not None and snap.running:
            p = snap.progress
            st.progress(snap.fraction, text=f"demo run: epoch {p.epoch if p else 0}/{p.epochs if p else '?'}")
        elif running:
            st.rerun()

    panel()


def explain(run: common.RunDir, meta: dict) -> None:
    names = list(meta["task_names"])
    special = special_tasks(run.record())
    highlight = special["random"] + [t for pair in special["pairs"] for t in pair] + special["flipped"]
    if not highlight:
        st.info(f"Run {common.plain(run.path.name)} has no random or complement task. Start the demo above, or train a run "
                "whose tasks spec includes `random` and `not:NAME` (e.g. `composite` or `paper15`).")
        return
    st.subheader(f"Where the special tasks land in {common.plain(run.path.name)}")
    coords = common.task_coords(run)
    k = min(4, len(names) - 1)
    grouping = make_grouping(run, k=k, m=1.07, save=False)
    labels = grouping["labels"]
    xy = project_tasks(coords, method="pca")
    st.plotly_chart(task_map(xy, names, labels, highlight=highlight,
                             title=f"Task map (PCA), coloured by a k={k} grouping; special tasks outlined"),
                    key="learn_map")
    for t in special["random"]:
        mates = [n for n, c in zip(names, labels) if c == labels[names.index(t)] and n != t]
        st.markdown(f"- **{common.plain(t)}** (labels unrelated to the image) lands in cluster "
                    f"{labels[names.index(t)]}" + (f" with {common.plain(', '.join(mates))}" if mates else " **alone**")
                    + ". Its data map has no easy region: the model can only memorise it, so confidence stays "
                      "near the base rate and correctness is low. Sharing a model with it costs capacity and "
                      "adds gradient noise for every other task; STG-MTL keeps it away from them.")
    for a, b in special["pairs"]:
        same = labels[names.index(a)] == labels[names.index(b)]
        st.markdown(f"- **{common.plain(a)}** and **{common.plain(b)}** are complements: the same question with flipped labels. Their data "
                    f"maps are near-identical (a sample hard for one is hard for the other), so they sit on top "
                    f"of each other and are {'grouped together' if same else '**not** grouped together (rare)'}. "
                    "Training them together costs nothing: they are the same task.")
    dm = common.datamap(run, run.datamap_epochs()[-1])
    show = (special["random"] + [special["pairs"][0][0], special["pairs"][0][1]] if special["pairs"] else special["random"])[:3]
    cols = common.figures("learn").columns(len(show))
    for col, t in zip(cols, show):
        i = names.index(t)
        col.plotly_chart(datamap_scatter(dm["confidence"][i], dm["variability"][i], dm["correctness"][i], task=t,
                                         max_points=5000, webgl=common.webgl(), height=360), key=f"learn_dm_{t}")


st.title("Learn: task interference")
run = common.sidebar()
st.markdown(
    "Training tasks together helps when they need the same features and hurts when their gradients pull "
    "the shared layers apart (**negative transfer**). STG-MTL looks at this through **data maps**: for every "
    "training sample, how confident the shared model was in the true label across epochs (y) and how much "
    "that confidence moved (x). Tasks whose maps look alike find the same samples easy and hard, and are "
    "grouped together.\n\n"
    "Three synthetic tasks make this visible: a **random** task (labels are coin flips), a **complement** "
    "(`not_footwear` = the opposite of `footwear`) and a **union** (`footwear` = sandal or sneaker or ankle boot)."
)
c1, c2 = st.columns([1, 3])
c1.button("Run the composite demo", type="primary", on_click=start_demo, key="learn_start",
          help="Fashion-MNIST sample, 13 tasks (10 one-vs-rest + footwear, not_footwear, random), 1,500 images, "
               "4 epochs: about a minute on a laptop CPU")
c2.caption("Tasks spec `composite` = `ovr:all;union:footwear=sandal,sneaker,ankle_boot;not:footwear;random`.")
if "learn_error" in st.session_state:
    common.show_error(st.session_state["learn_error"])
demo_progress()
target = run
def has_random_task(run: common.RunDir) -> bool:
    try:
        return bool(special_tasks(run.record())["random"])
    except common.StgError:  # a corrupt run: require_run below says what is wrong
        return False


if target is not None and not has_random_task(target):
    demo = common.runs_root() / DEMO
    if common.RunDir(demo).exists():
        target = common.RunDir(demo)
meta = common.require_run(target)
if meta is not None:
    with common.errors():
        explain(target, meta)
