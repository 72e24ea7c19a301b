"""The explorer's numerics against plain reference forms: cartography regions and their counts,
rankings, Plotly selections -> sample rows, exported records, thumbnails and sprites, data-map and
metrics exports, and the progress label of a job."""

from __future__ import annotations

import base64
import csv
import io
import json

import numpy as np
import pytest

from stg.datamap import regions as R
from stg.datamap import thumbnails as TH
from stg.errors import StgError
from stg.runs import export as EX
from stg.runs.jobs import progress_label
from stg.train.loop import Progress


def random_map(seed: int, t: int = 5, n: int = 400, missing: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    conf = rng.random((t, n)).astype(np.float32)
    var = (rng.random((t, n)) * 0.5).astype(np.float32)
    hole = rng.random((t, n)) < missing
    conf[hole] = np.nan
    var[hole] = np.nan
    return conf, var


def reference_region(c: float, v: float, c_high: float, c_low: float, v_thr: float) -> int:
    """The rule of stg.datamap.regions, one sample at a time."""
    if not (np.isfinite(c) and np.isfinite(v)):
        return R.MISSING
    if v >= v_thr:
        return R.AMBIGUOUS
    if c >= c_high:
        return R.EASY
    if c <= c_low:
        return R.HARD
    return R.OTHER


@pytest.mark.parametrize("seed", range(4))
def test_classify_and_counts_match_the_per_sample_rule(seed: int) -> None:
    conf, var = random_map(seed)
    thr = R.Thresholds.fixed(0.7, 0.3, 0.2)
    codes = R.classify(conf, var, thr)
    ref = np.array([[reference_region(c, v, 0.7, 0.3, 0.2) for c, v in zip(cr, vr)] for cr, vr in zip(conf, var)])
    assert codes.dtype == np.int8 and np.array_equal(codes, ref)
    counts = R.region_counts(codes)
    for t in range(conf.shape[0]):
        assert counts[t].tolist() == [int((ref[t] == k).sum()) for k in range(4)]
        assert counts[t].sum() == np.isfinite(conf[t]).sum()  # missing labels are not counted


@pytest.mark.parametrize("seed", range(3))
def test_quantile_thresholds_are_the_papers_thirds_per_task(seed: int) -> None:
    conf, var = random_map(seed, missing=0.2)
    thr = R.Thresholds.quantiles(conf, var)
    c_high, c_low, v = thr.per_task(conf.shape[0])
    for t in range(conf.shape[0]):
        c = conf[t][np.isfinite(conf[t])].astype(np.float64)
        w = var[t][np.isfinite(var[t])].astype(np.float64)
        assert c_high[t] == pytest.approx(np.quantile(c, 2 / 3), rel=1e-6)
        assert c_low[t] == pytest.approx(np.quantile(c, 1 / 3), rel=1e-6)
        assert v[t] == pytest.approx(np.quantile(w, 2 / 3), rel=1e-6)
    codes = R.classify(conf, var, thr)
    for t in range(conf.shape[0]):  # about a third of each task is ambiguous
        share = (codes[t] == R.AMBIGUOUS).sum() / np.isfinite(conf[t]).sum()
        assert 0.3 < share < 0.37
        ref = [reference_region(c, w, c_high[t], c_low[t], v[t]) for c, w in zip(conf[t], var[t])]
        assert codes[t].tolist() == ref


def test_thresholds_are_checked_and_described() -> None:
    with pytest.raises(StgError, match="must not exceed"):
        R.Thresholds.fixed(0.2, 0.6, 0.1)
    with pytest.raises(StgError, match="between 0 and 0.5"):
        R.Thresholds.fixed(0.7, 0.3, 0.9)
    text = R.Thresholds.fixed(0.8, 0.2, 0.15).describe()
    assert "variability >= 0.150" in text and "confidence >= 0.800" in text and "confidence <= 0.200" in text


def test_counts_table_rows() -> None:
    codes = np.array([[0, 0, 1, 2, 3, -1], [1, 1, 1, 1, -1, -1]], dtype=np.int8)
    rows = R.counts_table(codes, ["a", "b"])
    assert rows[0]["easy-to-learn"] == 2 and rows[0]["labelled"] == 5 and rows[0]["% easy-to-learn"] == 40.0
    assert rows[1]["ambiguous"] == 4 and rows[1]["hard-to-learn"] == 0 and rows[1]["labelled"] == 4


@pytest.mark.parametrize("kind", ["hard", "ambiguous", "easy"])
def test_ranked_matches_a_sort_of_tuples(kind: str) -> None:
    conf, var = random_map(7, t=1, n=300)
    conf = np.round(conf, 1)  # many ties, so the tie-break is exercised
    top = R.ranked(conf[0], var[0], kind, 25)
    key = {"hard": lambda i: (conf[0, i], var[0, i]),
           "ambiguous": lambda i: (-var[0, i], abs(conf[0, i] - 0.5)),
           "easy": lambda i: (-conf[0, i], var[0, i])}[kind]
    finite = [i for i in range(conf.shape[1]) if np.isfinite(conf[0, i])]
    ref = sorted(finite, key=lambda i: (*key(i), i))[:25]
    assert top.tolist() == ref


def test_selected_rows_from_plotly_points() -> None:
    points = [{"customdata": [5, 105, 1, 0.5]}, {"customdata": [2, 102, 0, 0.2]}, {"customdata": [5, 105, 1, 0.5]},
              {"x": 0.1, "y": 0.2}, {"customdata": 7.0}]
    assert R.selected_rows(points, 10).tolist() == [2, 5, 7]
    assert R.selected_rows([], 10).tolist() == []
    with pytest.raises(StgError, match="outside"):
        R.selected_rows([{"customdata": [12]}], 10)
    # what Streamlit hands over from a real browser click (seen in Chromium): the array as an object
    browser = [{"curve_number": 0, "point_index": 5, "customdata": {"0": 3, "1": 2238, "2": 1, "3": 1}}]
    assert R.selected_rows(browser, 10).tolist() == [3]


def test_sample_table_and_exports_handle_missing_labels() -> None:
    conf = np.array([[0.9, np.nan, 0.1]], dtype=np.float32)
    dm = {"confidence": conf, "variability": np.array([[0.05, np.nan, 0.3]], dtype=np.float32),
          "correctness": np.array([[1.0, np.nan, 0.0]], dtype=np.float32)}
    codes = R.classify(dm["confidence"], dm["variability"], R.Thresholds.fixed())
    labels = np.array([[1.0], [np.nan], [0.0]], dtype=np.float32)
    recs = R.sample_table(np.array([0, 1, 2]), task=0, dataset_index=np.array([10, 11, 12]),
                          classes=np.array([0, 1, 1]), class_names=["=cmd", "cat"], labels=labels, datamap=dm,
                          codes=codes)
    assert [r["dataset_index"] for r in recs] == [10, 11, 12]
    assert recs[0]["region"] == "easy-to-learn" and recs[2]["region"] == "ambiguous"
    assert recs[1]["label"] is None and recs[1]["confidence"] is None and recs[1]["region"] == "no label"
    text = R.records_text(recs, "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["dataset_index"] for r in rows] == ["10", "11", "12"]
    assert rows[0]["class"] == "'=cmd"  # a spreadsheet does not run it as a formula
    doc = json.loads(R.records_text(recs, "json", meta={"task": "t"}))
    assert doc["dataset_index"] == [10, 11, 12] and doc["meta"]["task"] == "t"


def test_epoch_note_explains_flat_maps() -> None:
    assert "Epoch 1" in R.epoch_note(1, np.zeros((2, 5)))
    assert R.epoch_note(3, np.full((2, 5), 0.1)) is None
    assert R.epoch_note(1, np.array([[0.0, np.nan]])) is not None


def reference_resize(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    out = np.zeros((size, size) + image.shape[2:], dtype=image.dtype)
    for i in range(size):
        for j in range(size):
            out[i, j] = image[(i * h) // size, (j * w) // size]
    return out


@pytest.mark.parametrize("shape,size", [((1, 28, 28), 48), ((3, 32, 32), 20), ((3, 17, 40), 33)])
def test_thumbnails_are_nearest_neighbour_pngs(shape: tuple, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    hwc = image[0] if shape[0] == 1 else image.transpose(1, 2, 0)
    expected = reference_resize(hwc, size)
    assert np.array_equal(TH.thumbnail(image, size), expected)
    png = TH.thumbnail_png(image, size)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)
    uri = TH.data_uri(png)
    assert uri.startswith("data:image/png;base64,") and base64.b64decode(uri.split(",", 1)[1]) == png


def test_sprite_places_thumbnail_k_at_its_offset() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (9, 1, 28, 28), dtype=np.uint8)
    rows = np.array([8, 0, 3, 5, 1])
    sheet = TH.sprite(images, rows, size=16, cols=3)
    assert sheet.shape == (32, 48)
    for k, r in enumerate(rows):
        x, y = TH.sprite_position(k, size=16, cols=3)
        assert np.array_equal(sheet[y:y + 16, x:x + 16], reference_resize(images[r, 0], 16))
    assert not sheet[16:, 32:].any()  # the unused cell stays black
    with pytest.raises(StgError):
        TH.thumbnails(images, np.array([9]))


def test_datamap_npz_export_is_self_describing() -> None:
    conf, var = random_map(3, t=2, n=6)
    dm = {"confidence": conf, "variability": var, "correctness": np.ones_like(conf)}
    data = EX.datamap_npz(dm, ["a", "b"], np.arange(100, 106), epoch=4, classes=np.arange(6) % 2)
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        assert z["task_names"].tolist() == ["a", "b"]
        assert z["sample_index"].tolist() == list(range(100, 106))
        assert int(z["epoch"]) == 4 and z["classes"].tolist() == [0, 1, 0, 1, 0, 1]
        assert np.array_equal(z["confidence"], conf, equal_nan=True)
    with pytest.raises(StgError):
        EX.datamap_npz(dm, ["a"], np.arange(6), epoch=1)
    text = EX.datamap_csv(dm, ["a", "b"], ["b"], np.arange(100, 106))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["task", "sample", "confidence", "variability", "correctness"] and len(rows) == 7
    for row, c in zip(rows[1:], conf[1]):
        assert row[2] == ("" if not np.isfinite(c) else f"{c:.6f}")


def test_export_file_names_agree_between_formats() -> None:
    npz = EX.export_filename("demo", "datamap", "npz", epoch=5)
    assert npz == "demo_datamap_epoch_005.npz"
    assert EX.export_filename("demo", "datamap", "csv", epoch=5) == "demo_datamap_epoch_005.csv"


def test_metrics_export() -> None:
    metrics = {"models": {"grouped": {"per_task": {"a": {"accuracy": 0.9, "f1": 0.8}}, "mean": {"accuracy": 0.9}},
                          "mtl": {"per_task": {"a": {"accuracy": 0.7, "f1": None}}, "mean": {"accuracy": 0.7}}}}
    rows = list(csv.DictReader(io.StringIO(EX.export_metrics(metrics, fmt="csv"))))
    assert rows == [{"model": "grouped", "task": "a", "accuracy": "0.9", "f1": "0.8"},
                    {"model": "mtl", "task": "a", "accuracy": "0.7", "f1": ""}]
    assert json.loads(EX.export_metrics(metrics, fmt="json")) == metrics


def test_progress_label_never_passes_the_last_epoch_nor_goes_back() -> None:
    """The events of a 3-epoch run as the loop emits them: step events carry the epoch in
    progress, epoch events the epoch just finished (the label used to say "epoch 4/3")."""
    events = [Progress("start", 0, 3, 0, 30)]
    for e in range(1, 4):
        events += [Progress("step", e, 3, (e - 1) * 10 + s, 30) for s in (3, 7)]
        events.append(Progress("epoch", e, 3, e * 10, 30))
    events.append(Progress("done", 3, 3, 30, 30))
    labels = [progress_label(p) for p in events]
    assert "epoch 4/3" not in " ".join(labels)
    epochs = [int(lbl.split()[1].split("/")[0]) for lbl in labels if lbl.startswith("epoch")]
    assert epochs == sorted(epochs) and max(epochs) == 3
    assert labels[1] == "epoch 1/3" and labels[3] == "epoch 1/3 done" and labels[-1] == "done, 3/3 epochs"


def test_membership_heatmap_shows_values_while_legible() -> None:
    from stg.plots import membership_heatmap

    small = np.random.default_rng(0).dirichlet(np.ones(3), size=13)
    fig = membership_heatmap(small, [f"t{i}" for i in range(13)])
    assert fig.data[0].texttemplate == "%{z:.2f}"
    big = np.random.default_rng(0).dirichlet(np.ones(20), size=100)
    assert membership_heatmap(big, [f"t{i}" for i in range(100)]).data[0].texttemplate is None
