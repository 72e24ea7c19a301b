"""AppTest smoke tests: every dashboard page renders on a small prepared run, bad input shows st.error."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

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
    at.text_input(key="f_path").input(str(runs / "no-such-folder"))
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
    at.run()
    assert not at.exception, at.exception
    assert (runs / "demo" / "groups" / "g3" / "metrics.json").is_file()
    assert any("gain" in c.proto.spec for c in charts(at))


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
