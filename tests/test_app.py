"""AppTest smoke tests: every dashboard page renders on a small prepared run, bad input shows st.error."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from stg.affinity.files import AffinityConfig  # noqa: E402
from stg.data.spec import DataSpec  # noqa: E402
from stg.datamap.run import train_datamap  # noqa: E402
from stg.train.config import TrainConfig  # noqa: E402
from stg.runs.jobs import get_manager  # noqa: E402
from stg.runs.rundir import RunDir  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "stg_app"
PAGES = {
    "0_overview.py": "stg: which tasks",
    "1_train.py": "Train & data maps",
    "2_task_map.py": "Task map",
    "3_grouping.py": "Grouping",
    "4_grouped_training.py": "Grouped training",
    "5_export.py": "Export",
    "6_learn.py": "Learn",
    "7_affinity.py": "Affinity",
    "9_explore.py": "Explore samples",
    "10_compare_maps.py": "Compare runs",
}
SPEC = DataSpec("fashion-sample", tasks="composite", limit=400)


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory) -> Path:
    """A finished 2-epoch run on 400 embedded Fashion-MNIST images with the composite task spec,
    recording TAG and gradient-cosine affinities every 3 steps."""
    from stg.data.datasets import load_taskset

    root = tmp_path_factory.mktemp("runs")
    taskset = load_taskset("fashion-sample", tasks="composite", limit=400)
    train_datamap(taskset, TrainConfig(epochs=2, batch_size=64, device="cpu"), root / "demo", data_spec=SPEC,
                  affinity=AffinityConfig.parse("tag,cs", 3))
    return root


@pytest.fixture
def runs(prepared_run: Path, tmp_path: Path, monkeypatch) -> Path:
    """A fresh copy of the prepared runs folder as STG_RUNS, with clean Streamlit caches."""
    import streamlit as st

    root = tmp_path / "runs"
    shutil.copytree(prepared_run, root)
    monkeypatch.setenv("STG_RUNS", str(root))
    monkeypatch.setenv("STG_NO_WEBGL", "1")
    st.cache_data.clear()
    st.cache_resource.clear()
    return root


def page(name: str) -> AppTest:
    return AppTest.from_file(str(APP / "views" / name), default_timeout=60)


def texts(at: AppTest) -> str:
    parts = [e.value for e in at.title] + [e.value for e in at.markdown] + [e.value for e in at.caption]
    parts += [e.value for e in at.subheader] + [e.value for e in at.info] + [e.value for e in at.success]
    return "\n".join(str(p) for p in parts)


def charts(at: AppTest) -> list:
    return at.get("plotly_chart")


@pytest.mark.parametrize("name", sorted(PAGES))
def test_every_page_renders(runs: Path, name: str) -> None:
    at = page(name).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert PAGES[name] in texts(at)
    assert at.sidebar.selectbox[0].value == "demo"
    assert at.query_params["run"] == ["demo"] or at.query_params["run"] == "demo"


def test_home_navigation_runs(runs: Path) -> None:
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    assert "stg: which tasks" in texts(at)


def test_every_page_without_runs(tmp_path: Path, monkeypatch) -> None:
    import streamlit as st

    monkeypatch.setenv("STG_RUNS", str(tmp_path / "empty"))
    st.cache_data.clear()
    for name in PAGES:
        at = page(name).run()
        assert not at.exception, (name, at.exception)
        assert "No runs yet" in texts(at) or name == "1_train.py", name


def test_train_page_shows_grid_and_detail(runs: Path) -> None:
    at = page("1_train.py").run()
    assert len(charts(at)) >= 3  # grid, two detail scatters, training curves
    grid = charts(at)[0].proto.spec
    assert "heatmap" in grid
    assert len(grid) < 200_000  # binned, not raw points


def test_train_page_starts_and_finishes_a_run(runs: Path) -> None:
    at = page("1_train.py").run()
    at.text_input(key="f_name").input("fresh")
    at.text_input(key="f_tasks").input("ovr:sandal,sneaker,bag")
    at.number_input(key="f_epochs").set_value(2)
    at.number_input(key="f_limit").set_value(300)
    at.selectbox(key="f_device").set_value("cpu")
    at.button[0].click().run()  # the form's submit button
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["selected_run"] == "fresh"
    final = get_manager().wait(runs / "fresh", timeout=120)
    assert final is not None and final.status == "done"
    at.run()
    assert not at.exception
    assert RunDir(runs / "fresh").datamap_epochs() == [1, 2]
    assert charts(at)
    assert "2/2 epochs" in texts(at) and "img/s on cpu" in texts(at)


def test_train_page_refuses_bad_input(runs: Path) -> None:
    at = page("1_train.py").run()
    at.text_input(key="f_dataset").input(str(runs / "no-such-folder"))
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert at.error and "no-such-folder" in at.error[0].value
    at = page("1_train.py").run()
    at.text_input(key="f_name").input("demo")
    at.button[0].click().run()
    assert at.error and "already exists" in at.error[0].value


def test_grouping_updates_and_rejects_k_too_large(runs: Path) -> None:
    at = page("3_grouping.py").run()
    spec_k4 = charts(at)[0].proto.spec
    at.number_input(key="g_k").set_value(3).run()
    assert not at.exception
    assert charts(at)[0].proto.spec != spec_k4
    at.number_input(key="g_k").set_value(99).run()
    assert not at.exception, at.exception
    assert at.error and "99" in at.error[0].value
    assert "Traceback" not in at.error[0].value


def test_grouping_save_then_export_and_training_page(runs: Path) -> None:
    at = page("3_grouping.py").run()
    at.text_input(key="g_name").input("mine")
    at.button(key="g_save").click().run()
    assert not at.exception, at.exception
    assert (runs / "demo" / "groupings" / "mine.json").is_file()
    at.button(key="g_save").click().run()  # saving twice under one name is refused, not overwritten
    assert at.error and "already exists" in at.error[0].value
    ex = page("5_export.py").run()
    assert not ex.exception, ex.exception
    assert len(ex.get("download_button")) >= 6
    gt = page("4_grouped_training.py").run()
    assert not gt.exception, gt.exception
    assert gt.selectbox(key="gt_grouping").value == "mine"
    assert "fuzzy c-means" in at.selectbox(key="g_method").help  # each clustering method in one line


def test_grouping_k_scan(runs: Path) -> None:
    at = page("3_grouping.py").run()
    at.button(key="g_scan").click().run()
    assert not at.exception, at.exception
    assert any("silhouette" in c.proto.spec for c in charts(at))


def test_task_map_colourings(runs: Path) -> None:
    at = page("2_task_map.py").run()
    options = at.selectbox(key="tm_color").options
    assert any(o.startswith("reference: ") for o in options)
    at.selectbox(key="tm_color").set_value("none").run()
    assert not at.exception
    at.radio(key="tm_method").set_value("umap").run()
    assert not at.exception, at.exception
    assert charts(at)


def test_query_param_selects_run(runs: Path) -> None:
    shutil.copytree(runs / "demo", runs / "other")
    time.sleep(0.01)
    at = page("2_task_map.py")
    at.query_params["run"] = "demo"
    at.run()
    assert at.sidebar.selectbox[0].value == "demo"
    at.sidebar.selectbox[0].set_value("other").run()
    assert at.session_state["selected_run"] == "other"


def test_learn_page_explains_special_tasks(runs: Path) -> None:
    at = page("6_learn.py").run()
    assert not at.exception, at.exception
    body = texts(at)
    assert "random" in body and "not_footwear" in body


def test_grouped_training_runs_in_background_and_shows_results(runs: Path) -> None:
    from stg.grouping.make import make_grouping

    make_grouping(RunDir(runs / "demo"), k=3, name="g3")
    at = page("4_grouped_training.py").run()
    at.number_input(key="gt_epochs").set_value(1)
    at.multiselect(key="gt_base").set_value(["mtl"])
    at.selectbox(key="gt_device").set_value("cpu")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    final = get_manager().wait(runs / "demo", timeout=240)
    assert final is not None and final.kind == "groups" and final.status == "done", final
    stages = [e.message for e in final.events if e.kind == "epoch"]
    assert stages == ["grouped (stage 1/2)", "mtl (stage 2/2)"], stages  # what the progress line names
    etas = [e.eta_s for e in final.events if e.kind == "epoch"]
    assert etas[0] > 0 and etas[-1] == 0, etas  # the time left counts the stages still to come
    at.run()
    assert not at.exception, at.exception
    assert (runs / "demo" / "groups" / "g3" / "metrics.json").is_file()
    assert any("gain" in c.proto.spec for c in charts(at))
    assert any("grouped_argmax: each task is served by" in c.value for c in at.caption)  # the models explained


def test_affinity_page_shows_the_heatmap_selects_groups_and_compares(runs: Path) -> None:
    from stg.grouping.make import make_grouping
    from stg.runs.rundir import RunDir

    at = page("7_affinity.py").run()
    assert not at.exception, at.exception
    heatmap = charts(at)[0]
    assert "affinity" in str(heatmap.proto.spec)
    assert "Make one grouping of each kind" in texts(at)
    at.button(key="af_go").click().run()  # TAG's selection at the default k = 3
    assert not at.exception and not at.error, [e.value for e in at.error]
    run = RunDir(runs / "demo")
    assert "tag-k3" in run.grouping_names() and run.read_grouping("tag-k3")["method"] == "tag"
    assert any("objective" in c.value for c in at.code)
    make_grouping(run, k=3)  # an STG-MTL grouping to compare with
    at = page("7_affinity.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.metric[0].label.startswith("Agreement of the two groupings")
    rows = at.dataframe[0].value
    assert list(rows["method"]) == ["tag", "fuzzy-kmeans"] and "ARI vs garment-type" in rows.columns


# -- issue 15: the data-map explorer -------------------------------------------------------------------
def chart_event(rows: list[int]) -> dict:
    """What Streamlit stores for a Plotly selection of these sample rows (customdata[0] = row)."""
    return {"selection": {"points": [{"customdata": [r, 0, 1, 1.0], "x": 0.1, "y": 0.5} for r in rows],
                          "point_indices": list(range(len(rows))), "box": [], "lasso": []}}


def explore(runs: Path, **query: str) -> AppTest:
    at = page("9_explore.py")
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


def test_explore_click_a_point_shows_its_image_index_class_and_numbers(runs: Path) -> None:
    import numpy as np

    at = explore(runs)
    assert not at.exception and not at.error, [e.value for e in at.error]
    task = at.selectbox(key="ex_task").value
    key = f"ex_map_{task}_2"
    spec = charts(at)[0].proto.spec
    assert "customdata" in spec and "easy-to-learn" in spec  # points name their samples; regions are drawn
    index = np.load(runs / "demo" / "samples.npz")["index"]
    at.session_state[key] = chart_event([7])
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    rec = at.session_state["ex_last_sample"]
    assert rec["dataset_index"] == int(index[7]) and rec["row"] == 7
    assert {"class", "label", "confidence", "variability", "correctness", "region"} <= set(rec)
    assert any(f"Sample {index[7]}" in m.value for m in at.markdown)
    assert at.get("image")  # the thumbnail


def test_explore_select_many_exports_and_carries_to_another_task(runs: Path) -> None:
    at = explore(runs)
    task = at.selectbox(key="ex_task").value
    at.session_state[f"ex_map_{task}_2"] = chart_event([3, 1, 2, 9, 3])
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("4 samples selected" in m.value for m in at.markdown)
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Indices (CSV)" in labels and "Indices (JSON)" in labels
    at.button(key="ex_carry").click().run()
    assert at.session_state["ex_carried"]["rows"] == [1, 2, 3, 9]
    other = [o for o in at.selectbox(key="ex_task").options if o != task][0]
    at.selectbox(key="ex_task").set_value(other).run()
    assert not at.exception, at.exception
    assert any("Outlined: the 4 samples" in c.value for c in at.caption)
    assert "carried selection (4)" in charts(at)[0].proto.spec


def test_explore_select_by_typed_indices(runs: Path) -> None:
    import numpy as np

    index = np.load(runs / "demo" / "samples.npz")["index"]
    at = explore(runs)
    at.text_input(key="ex_ids").input(f"{index[0]}, {index[5]} 99999999").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("2 samples selected" in m.value for m in at.markdown)
    assert any("1 of those indices" in c.value for c in at.caption)
    at.text_input(key="ex_ids").input("12, x").run()
    assert at.error and "whole numbers" in at.error[0].value


def test_explore_regions_thresholds_and_gallery(runs: Path) -> None:
    at = explore(runs)
    counts = at.dataframe[-1].value
    assert {"task", "easy-to-learn", "ambiguous", "hard-to-learn", "other"} <= set(counts.columns)
    assert len(counts) == 13
    before = counts["ambiguous"].sum()
    at.slider(key="ex_v").set_value(0.05).run()
    assert at.dataframe[-1].value["ambiguous"].sum() > before
    assert at.query_params["v"] in (["0.05"], "0.05")
    at.radio(key="ex_rule").set_value("thirds").run()
    assert not at.exception, at.exception
    assert any("per-task" in c.value for c in at.caption)
    assert len(at.get("image")) >= 1  # the label-noise gallery
    at.radio(key="ex_rank").set_value("ambiguous").run()
    assert not at.exception and any("most ambiguous" in c.value for c in at.caption)


def test_explore_reload_keeps_task_epoch_and_thresholds(runs: Path) -> None:
    at = explore(runs, run="demo", task="footwear", epoch="1", c_high="0.8")
    assert not at.exception, at.exception
    assert at.selectbox(key="ex_task").value == "footwear"
    assert at.select_slider(key="ex_epoch").value == 1
    assert at.slider(key="ex_ch").value == pytest.approx(0.8)
    assert any("Epoch 1" in i.value for i in at.info)  # the flat epoch-1 map says why


def test_compare_page_two_epochs_side_by_side_and_curves(runs: Path) -> None:
    shutil.copytree(runs / "demo", runs / "other")
    at = page("10_compare_maps.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    specs = [c.proto.spec for c in charts(at)]
    assert any("epoch 1" in s for s in specs) and any("epoch 2" in s for s in specs)
    assert any("val balanced accuracy" in s for s in specs)  # the curves
    at.selectbox(key="cm_run_B").set_value("other").run()
    at.multiselect(key="cm_curves").set_value(["demo", "other"]).run()
    assert not at.exception
    assert at.get("json")  # the run's config


def test_overview_starts_a_first_run_with_one_click(runs: Path, monkeypatch) -> None:
    import importlib

    started = {}

    def fake_start(self, out, spec, config, **kw):
        started.update(out=Path(out), spec=spec, config=config)
        raise common_stg_error("stop here")

    from stg.runs.jobs import JobManager

    monkeypatch.setattr(JobManager, "start_datamap", fake_start)
    at = page("0_overview.py").run()
    at.button(key="first_run_button").click().run()
    assert not at.exception, at.exception
    assert started["spec"].dataset == "fashion-sample" and started["spec"].limit is None  # the whole sample
    assert started["out"].parent == runs
    assert at.error and "stop here" in at.error[0].value
    importlib.invalidate_caches()


def common_stg_error(text: str):
    from stg.errors import StgError

    return StgError(text)


def test_new_run_form_defaults_to_the_whole_sample_and_takes_free_text(runs: Path) -> None:
    at = page("1_train.py").run()
    assert at.number_input(key="f_limit").value == 0
    assert at.text_input(key="f_dataset").value == "fashion-sample"
    at.text_input(key="f_dataset").input("hf:someone/no-such-dataset")
    at.text_input(key="f_name").input("hf-run")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert at.error  # the hf: source is passed to the library, which answers in one line
    assert "Traceback" not in at.error[0].value


# -- issue 15 item 6: defects, each failing before its fix --------------------------------------------
import contextlib  # noqa: E402


@contextlib.contextmanager
def fake_job(path: Path, kind: str = "datamap", progress=None):
    """A job the app's manager believes is running on ``path``."""
    from stg.runs.jobs import _Job, run_key

    mgr = get_manager()
    job = _Job(run_key(path), kind, {})
    job.progress = progress
    with mgr._lock:
        mgr._jobs[run_key(path)] = job
    try:
        yield job
    finally:
        job.finish("cancelled")
        with mgr._lock:
            mgr._jobs.pop(run_key(path), None)


def test_progress_label_says_the_epoch_in_progress_not_one_more(runs: Path) -> None:
    from stg.train.loop import Progress

    with fake_job(runs / "demo", progress=Progress("step", 3, 3, 25, 30, loss=0.5)):
        at = page("1_train.py").run()
        assert not at.exception, at.exception
        bars = [e.proto.text for e in at.get("progress")]
        assert bars and "epoch 3/3" in bars[0] and "4/3" not in bars[0]
        sidebar = " ".join(c.value for c in at.sidebar.caption)
        assert "83%" in sidebar and "epoch 3/3" in sidebar


def test_detail_epoch_slider_follows_new_epochs(runs: Path) -> None:
    at = page("1_train.py").run()
    assert at.select_slider(key="detail_epoch").value == 2
    shutil.copy(runs / "demo" / "datamap" / "epoch_002.npz", runs / "demo" / "datamap" / "epoch_003.npz")
    at.run()
    assert not at.exception, at.exception
    assert at.select_slider(key="detail_epoch").value == 3  # it was on the newest: it moves on
    at.select_slider(key="detail_epoch").set_value(1).run()
    shutil.copy(runs / "demo" / "datamap" / "epoch_002.npz", runs / "demo" / "datamap" / "epoch_004.npz")
    at.run()
    assert at.select_slider(key="detail_epoch").value == 1  # the user's choice stays


def test_resume_to_a_target_at_or_below_the_epochs_done_is_an_error(runs: Path) -> None:
    before = (runs / "demo" / "run.json").read_text()
    at = page("1_train.py").run()
    at.number_input(key="resume_epochs").set_value(2)
    at.button(key="resume").click().run()
    assert not at.exception, at.exception
    assert at.error and "already trained 2 epochs" in at.error[0].value
    assert get_manager().snapshot(runs / "demo") is None or not get_manager().snapshot(runs / "demo").running
    assert (runs / "demo" / "run.json").read_text() == before


def test_error_text_is_shown_as_plain_text_not_markdown(runs: Path) -> None:
    at = page("1_train.py").run()
    at.text_input(key="f_dataset").input(str(runs / "my*data*" / "train_x.npz"))
    at.button[0].click().run()
    assert at.error
    body = at.error[0].value
    assert r"my\*data\*" in body and r"train\_x" in body  # escaped: Markdown shows the characters


def test_a_three_byte_npz_is_not_an_npz_file(runs: Path) -> None:
    bad = runs.parent / "bad.npz"
    bad.write_text("abc")
    at = page("1_train.py").run()
    at.text_input(key="f_dataset").input(str(bad))
    at.button[0].click().run()
    assert at.error and "not an npz file" in at.error[0].value


@pytest.mark.parametrize("k", [0, -3])
def test_k_out_of_range_names_the_k_in_the_box(runs: Path, k: int) -> None:
    at = page("3_grouping.py").run()
    at.number_input(key="g_k").set_value(k).run()
    assert not at.exception, at.exception
    assert at.error and f"k = {k}" in at.error[0].value and "k 1" not in at.error[0].value


@pytest.mark.parametrize("field,value,word", [("f_epochs", 0, "Epochs"), ("f_batch", 0, "Batch size"),
                                              ("f_lr", 0.0, "Learning rate")])
def test_zero_epochs_batch_or_lr_get_a_message(runs: Path, field: str, value, word: str) -> None:
    at = page("1_train.py").run()
    at.text_input(key="f_name").input("zero")
    at.number_input(key=field).set_value(value)
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert at.error and word in at.error[0].value
    assert not (runs / "zero").exists()


def test_reload_keeps_run_and_parameters(runs: Path) -> None:
    shutil.copytree(runs / "demo", runs / "other")
    (runs / "other" / "run.json").touch()  # the newest: a fresh session would pick it by default
    at = page("3_grouping.py")
    at.query_params["run"] = "demo"
    at.query_params["k"] = "3"
    at.run()
    assert at.sidebar.selectbox[0].value == "demo"
    assert at.number_input(key="g_k").value == 3
    assert "k=3" in str(charts(at)[0].proto.spec) or any("k=3" in str(c.proto.spec) for c in charts(at))


def test_gui_errors_name_the_checkbox_not_the_cli_flag(runs: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty-root"
    empty.mkdir()
    at = page("1_train.py").run()
    at.text_input(key="f_dataset").input("cifar10")
    at.text_input(key="f_root").input(str(empty))
    at.button[0].click().run()
    assert at.error
    body = at.error[0].value
    assert "--download" not in body and "Download if missing" in body


def test_second_datamap_run_is_refused_while_one_trains(runs: Path) -> None:
    with fake_job(runs / "demo"):
        at = page("1_train.py").run()
        at.text_input(key="f_name").input("second")
        at.number_input(key="f_limit").set_value(200)
        at.button[0].click().run()
        assert not at.exception, at.exception
        assert at.error and "is training in this app" in at.error[0].value
    assert not (runs / "second").exists()


def test_export_page_names_metrics_and_empty_csv_choice(runs: Path) -> None:
    import json

    from stg.grouping.make import make_grouping

    run = RunDir(runs / "demo")
    make_grouping(run, k=3, name="g3")
    names = run.read()["task_names"]
    per = {t: {"accuracy": 0.5, "balanced_accuracy": 0.5, "f1": 0.5, "auroc": 0.5} for t in names}
    (runs / "demo" / "groups" / "g3").mkdir(parents=True)
    (runs / "demo" / "groups" / "g3" / "metrics.json").write_text(json.dumps(
        {"grouping": "g3", "task_names": names, "models": {"grouped": {"per_task": per, "mean": per[names[0]]}}}))
    at = page("5_export.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Grouped-training results (CSV)" in labels and "Grouped-training results (JSON)" in labels
    assert any("task_names" in lbl and "sample_index" in lbl for lbl in labels)
    at.multiselect(key="ex_tasks").set_value([]).run()
    assert any("Pick at least one task" in c.value for c in at.caption)


# -- issue 17 item 3: one corrupt file never breaks a page ------------------------------------------
def corrupt_copy(runs: Path, name: str) -> Path:
    shutil.copytree(runs / "demo", runs / name)
    return runs / name


def assert_error_box(at: AppTest, *words: str) -> None:
    assert not at.exception, at.exception
    assert at.error, "expected an error box"
    body = " ".join(e.value for e in at.error).replace("\\", "")  # as shown: without Markdown escapes
    assert "Traceback" not in body
    for w in words:
        assert w in body, body


def test_a_run_with_null_task_names_is_listed_as_bad_and_breaks_nothing(runs: Path) -> None:
    import json

    bad = corrupt_copy(runs, "broken")
    meta = json.loads((bad / "run.json").read_text())
    meta["task_names"] = None
    (bad / "run.json").write_text(json.dumps(meta))
    at = page("0_overview.py")
    at.query_params["run"] = "demo"
    at.run()
    assert not at.exception, at.exception
    rows = at.dataframe[0].value
    row = rows[rows["run"] == "broken"].iloc[0]
    assert row["status"] == "bad" and "task_names" in row["reason"]
    assert rows[rows["run"] == "demo"].iloc[0]["status"] == "done"
    for name in PAGES:
        at = page(name)
        at.query_params["run"] = "broken"
        at.run()
        assert not at.exception, (name, at.exception)


@pytest.mark.parametrize("name", ["1_train.py", "2_task_map.py", "3_grouping.py", "9_explore.py", "5_export.py"])
def test_a_truncated_datamap_shows_an_error_box(runs: Path, name: str) -> None:
    path = runs / "demo" / "datamap" / "epoch_002.npz"
    path.write_bytes(path.read_bytes()[:100])
    at = page(name).run()
    if name == "5_export.py":  # downloads are built on click; the page itself needs no data map
        assert not at.exception, at.exception
        return
    assert_error_box(at, "epoch_002.npz")


def test_a_corrupt_metrics_json_shows_an_error_box(runs: Path) -> None:
    from stg.grouping.make import make_grouping

    make_grouping(RunDir(runs / "demo"), k=3, name="g3")
    (runs / "demo" / "groups" / "g3").mkdir(parents=True)
    (runs / "demo" / "groups" / "g3" / "metrics.json").write_text("{not json")
    at = page("4_grouped_training.py").run()
    assert_error_box(at, "metrics")


def test_a_grouping_with_k_three_shows_an_error_box_on_export(runs: Path) -> None:
    import json

    from stg.grouping.make import make_grouping

    make_grouping(RunDir(runs / "demo"), k=3, name="g3")
    path = runs / "demo" / "groupings" / "g3.json"
    doc = json.loads(path.read_text())
    doc["k"] = "three"
    path.write_text(json.dumps(doc))
    at = page("5_export.py").run()
    assert_error_box(at, "k must be")


def test_k_scan_of_a_three_task_run(runs: Path) -> None:
    import json

    import numpy as np

    run = runs / "three"
    shutil.copytree(runs / "demo", run)
    meta = json.loads((run / "run.json").read_text())
    for key in ("task_names", "task_kinds", "pos_weight"):
        meta[key] = meta[key][:3]
    meta["references"] = {}
    (run / "run.json").write_text(json.dumps(meta))
    for f in (run / "datamap").glob("epoch_*.npz"):
        with np.load(f) as z:
            arrays = {k: z[k][:3] for k in z.files}
        np.savez(f, **arrays)
    with np.load(run / "samples.npz") as z:
        samples = {k: z[k] for k in z.files}
    samples["labels"] = samples["labels"][:, :3]
    np.savez(run / "samples.npz", **samples)
    for p in run.glob("*.cache*"):
        p.unlink()
    at = page("3_grouping.py")
    at.query_params["run"] = "three"
    at.run()
    assert not at.exception, at.exception
    at.button(key="g_scan").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


# -- issue 15 item 7: readability ---------------------------------------------------------------------
def test_grouped_training_progress_names_stage_loss_and_time_left(runs: Path) -> None:
    from stg.grouping.make import make_grouping
    from stg.train.loop import Progress

    make_grouping(RunDir(runs / "demo"), k=3, name="g3")
    step = Progress("step", 2, 4, 30, 90, loss=0.3456, eta_s=125.0, message="random (stage 2/3)")
    with fake_job(runs / "demo", kind="groups", progress=step):
        at = page("4_grouped_training.py").run()
        assert not at.exception, at.exception
        bars = [e.proto.text for e in at.get("progress")]
        assert bars and all(w in bars[0] for w in ("random (stage 2/3)", "epoch 2/4", "loss 0.3456",
                                                   "about 2 min 05 s left")), bars


def test_grouped_training_results_against_mtl_random_and_stl(runs: Path) -> None:
    import json

    from stg.grouping.make import make_grouping

    grouping = make_grouping(RunDir(runs / "demo"), k=3, name="g3")
    tasks = grouping["task_names"]
    rng = np.random.default_rng(0)
    models = {}
    for name in ("grouped", "grouped_argmax", "mtl", "random", "stl"):
        per = {t: {"balanced_accuracy": float(v), "accuracy": float(v)} for t, v in zip(tasks, rng.random(len(tasks)))}
        models[name] = {"per_task": per, "mean": {"balanced_accuracy": float(np.mean([p["balanced_accuracy"]
                                                                                     for p in per.values()]))}}
    out = runs / "demo" / "groups" / "g3"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({"grouping": "g3", "task_names": tasks, "models": models}))
    at = page("4_grouped_training.py").run()
    assert not at.exception, at.exception
    spec = json.loads(next(c for c in charts(at) if "against each baseline" in c.proto.spec).proto.spec)
    assert [t["name"] for t in spec["data"]] == ["vs mtl", "vs random", "vs stl"]
    assert "grouped: mean" not in spec["layout"]["title"]["text"]
    assert any(a["text"].startswith("grouped - stl: mean") for a in spec["layout"]["annotations"])
    assert at.selectbox(key="gt_model").options == ["grouped", "grouped_argmax"]
    at.selectbox(key="gt_model").set_value("grouped_argmax").run()
    spec = json.loads(next(c for c in charts(at) if "against each baseline" in c.proto.spec).proto.spec)
    assert any(a["text"].startswith("grouped_argmax - random: mean") for a in spec["layout"]["annotations"])


def test_grouping_page_orders_the_heatmap_by_similarity(runs: Path) -> None:
    import json

    from stg.grouping.features import task_coordinates
    from stg.grouping.make import make_grouping
    from stg.grouping.order import similarity_order

    at = page("3_grouping.py").run()
    assert not at.exception, at.exception
    spec = json.loads(next(c for c in charts(at) if "Membership" in c.proto.spec).proto.spec)
    run = RunDir(runs / "demo")
    grouping = make_grouping(run, k=4, save=False)  # the page's defaults: k = 4, fuzzy-kmeans, m = 1.07, seed 0
    order = similarity_order(task_coordinates(run), np.asarray(grouping["labels"]))
    assert spec["data"][0]["y"] == [grouping["task_names"][i] for i in order]
    assert any("dendrogram order" in c.value for c in at.caption)
