"""Hugging Face datasets (stg.data.hf), offline: a DatasetDict built here, saved with save_to_disk,
read back as class labels (one-vs-rest) and as multi-label binary columns with missing values,
through the library and through `stg data`, `stg datamap`, `stg group` and `stg train-groups`.
A Hub name cannot be fetched offline: its code path is checked with load_dataset replaced."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

datasets = pytest.importorskip("datasets")

from stg.data.datasets import clear_cache, load_classdata, load_taskset, load_taskset_from_spec  # noqa: E402
from stg.data.spec import DataSpec, HfOptions  # noqa: E402
from stg.errors import StgError  # noqa: E402

BILINEAR = Image.Resampling.BILINEAR
CLASSES = ("cat", "dog", "bird")


@pytest.fixture(autouse=True)
def _fresh_loader_cache():
    clear_cache()
    yield
    clear_cache()


def _split(rng: np.random.Generator, n: int) -> tuple[dict, list[np.ndarray]]:
    """Columns of one split: images of random sizes whose brightness tells the class, a ClassLabel,
    a 0/1 int column ``smile`` (the class is bird), a bool column ``hat`` with None (missing) in
    every fifth row, and a -1/1 column ``tall``."""
    arrays, labels = [], []
    for i in range(n):
        c = i % 3
        h, w = (int(x) for x in rng.integers(14, 30, 2))
        a = np.clip(rng.integers(0, 60, (h, w, 3)) + 90 * c, 0, 255).astype(np.uint8)
        arrays.append(a)
        labels.append(c)
    cols = {
        "img": [Image.fromarray(a) for a in arrays],
        "label": labels,
        "smile": [int(c == 2) for c in labels],
        "hat": [None if i % 5 == 0 else bool(i % 2) for i in range(n)],
        "tall": [1 if i % 4 < 2 else -1 for i in range(n)],
    }
    return cols, arrays


def _features():
    return datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES)),
                              "smile": datasets.Value("int64"), "hat": datasets.Value("bool"),
                              "tall": datasets.Value("int64")})


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[np.ndarray]], dict[str, dict]]:
    """A DatasetDict (train 48, validation 12, test 15 rows) saved with save_to_disk."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("hf") / "saved"
    parts, arrays, cols = {}, {}, {}
    for split, n in (("train", 48), ("validation", 12), ("test", 15)):
        cols[split], arrays[split] = _split(rng, n)
        parts[split] = datasets.Dataset.from_dict(cols[split], features=_features())
    datasets.DatasetDict(parts).save_to_disk(str(root))
    return root, arrays, cols


def _reference(arrays: list[np.ndarray], size: int) -> np.ndarray:
    """(N, 3, S, S): each original image centre-cropped by plain PIL."""
    return np.stack([np.asarray(ImageOps.fit(Image.fromarray(a), (size, size), BILINEAR)).transpose(2, 0, 1)
                     for a in arrays])


def test_class_labels_from_a_saved_dataset(saved) -> None:
    root, arrays, cols = saved
    data = load_classdata(str(root), image_size=16)  # a plain path to a saved dataset works like hf:PATH
    assert data.name == f"hf:{root}" and data.class_names == CLASSES and data.default_tasks == "ovr:all"
    np.testing.assert_array_equal(data.train_images.numpy(), _reference(arrays["train"], 16))
    np.testing.assert_array_equal(data.test_images.numpy(), _reference(arrays["test"], 16))  # test before validation
    assert data.train_classes.tolist() == cols["train"]["label"]
    assert "classes 'label'" in data.source and "to 16x16 by centre crop" in data.source
    assert len(list((root / ".stg-cache").glob("*.npy"))) == 1
    ts = load_taskset(f"hf:{root}", image_size=16, val_fraction=0.25)
    assert ts.task_names == CLASSES and (len(ts.train), len(ts.val), len(ts.test)) == (36, 12, 15)


def test_multilabel_columns_with_missing_labels_and_a_val_split(saved) -> None:
    root, arrays, cols = saved
    opts = HfOptions(label_columns=("smile", "hat", "tall"), splits=(("val", "validation"),))
    data = load_classdata(f"hf:{root}", hf=opts, image_size=16, resize="pad")
    assert data.attribute_names == ("smile", "hat", "tall")
    train = data.train_labels.numpy()
    hat = np.array([np.nan if v is None else float(v) for v in cols["train"]["hat"]], np.float32)
    np.testing.assert_array_equal(train[:, 1], hat)  # None -> NaN (missing)
    np.testing.assert_array_equal(train[:, 2], np.array([1.0 if v == 1 else 0.0 for v in cols["train"]["tall"]]))
    assert data.val_images.shape == (12, 3, 16, 16)
    ref = np.stack([np.asarray(ImageOps.pad(Image.fromarray(a), (16, 16), BILINEAR, color=0)).transpose(2, 0, 1)
                    for a in arrays["validation"]])
    np.testing.assert_array_equal(data.val_images.numpy(), ref)
    ts = load_taskset(f"hf:{root}", hf=opts, image_size=16, resize="pad")
    assert ts.task_names == ("smile", "hat", "tall") and len(ts.val) == 12  # the official val split
    assert ts.has_missing_labels


def test_data_spec_records_the_options_and_rebuilds_the_same_task_set(saved) -> None:
    root, _, _ = saved
    opts = HfOptions(image_column="img", label_columns=("smile", "hat"), splits=(("train", "train"), ("test", "test")))
    spec = DataSpec.make(f"hf:{root}", image_size=12, resize="pad", hf=opts)
    meta = json.loads(json.dumps(spec.to_meta()))
    assert meta["hf"]["label_columns"] == ["smile", "hat"] and meta["image_size"] == 12 and meta["resize"] == "pad"
    assert DataSpec.from_meta(meta) == spec
    a = load_taskset_from_spec(meta)
    clear_cache()
    b = load_taskset_from_spec(DataSpec.from_meta(meta))
    assert a.task_names == b.task_names and a.image_shape == (3, 12, 12)
    assert np.array_equal(a.train.images.numpy(), b.train.images.numpy())
    assert np.array_equal(a.train.labels.numpy(), b.train.labels.numpy(), equal_nan=True)
    # specs without the new options keep the old JSON (old runs keep their identity and resume)
    assert set(DataSpec.make("fashion-sample").to_meta()) == {"dataset", "data_root", "tasks", "limit",
                                                              "val_fraction", "split_seed"}


def test_missing_extra_is_one_line(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _, _ = saved
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    with pytest.raises(StgError) as err:
        load_classdata(f"hf:{root}")
    assert "\n" not in str(err.value) and "pip install 'stg[hf]'" in str(err.value)


def test_hub_names_go_to_load_dataset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, saved) -> None:
    root, _, _ = saved
    calls = []

    def fake_load_dataset(name, config=None, cache_dir=None):
        calls.append((name, config, cache_dir))
        if name == "someone/missing":
            raise FileNotFoundError("Couldn't find 'someone/missing' on the Hugging Face Hub\neither")
        return datasets.load_from_disk(str(root))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(StgError) as err:
        load_classdata("hf:someone/missing", hf=HfOptions(config="small"))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("cannot load Hugging Face dataset 'someone/missing' (config 'small')")
    assert calls == [("someone/missing", "small", None)]
    data = load_classdata("hf:someone/there", data_root=tmp_path, image_size=8)
    assert calls[-1] == ("someone/there", None, str(tmp_path / "huggingface"))
    assert data.class_names == CLASSES and len(list((tmp_path / ".stg-cache").glob("*.npy"))) == 1


@pytest.mark.parametrize("name,opts,message", [
    ("hf:{root}", HfOptions(image_column="photo"), "has no column 'photo'"),
    ("hf:{root}", HfOptions(label_column="smile", label_columns=("hat",)), "not both"),
    ("hf:{root}", HfOptions(splits=(("test", "holdout"),)), "has no split 'holdout' for test"),
    ("hf:{root}", HfOptions(label_column="label", splits=(("val", "validation"),)), "--split val=... needs --label-columns"),
    ("hf:{root}", HfOptions(label_columns=("label",)), "ClassLabel with 3 classes, not a binary label"),
    ("hf:{root}", HfOptions(label_column="hat"), "has no label in column 'hat'"),
    ("hf:{root}/nothing", None, "does not exist"),
    ("{root}", HfOptions(config="x"), "--hf-config applies to Hub datasets"),
])
def test_bad_input_is_one_line(saved, name: str, opts: HfOptions | None, message: str) -> None:
    root, _, _ = saved
    with pytest.raises(StgError) as err:
        load_classdata(name.format(root=root), hf=opts)
    assert "\n" not in str(err.value) and message in str(err.value), str(err.value)


def test_non_binary_column_and_undecodable_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    cols, _ = _split(rng, 9)
    cols["tall"][3] = 2  # not binary
    part = datasets.Dataset.from_dict(cols, features=_features())
    datasets.DatasetDict({"train": part, "test": part}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(StgError, match="column 'tall' is not binary: value 2"):
        load_classdata(f"hf:{tmp_path / 'bad'}", hf=HfOptions(label_columns=("tall",)))
    # an image whose bytes cannot be decoded is named by split and row
    rows = [{"bytes": b"\x89PNG\r\n\x1a\n broken" if i == 4 else _png(rng), "path": None} for i in range(6)]
    broken = datasets.Dataset.from_dict({"img": rows, "label": [0, 1] * 3},
                                        features=datasets.Features({"img": datasets.Image(),
                                                                    "label": datasets.ClassLabel(names=["x", "y"])}))
    datasets.DatasetDict({"train": broken, "test": broken}).save_to_disk(str(tmp_path / "broken"))
    with pytest.raises(StgError) as err:
        load_classdata(f"hf:{tmp_path / 'broken'}")
    assert "\n" not in str(err.value) and "split train row 4 (column 'img')" in str(err.value), str(err.value)


def _png(rng: np.random.Generator) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _stg(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """`stg ARGS` in this process (the subprocess path is tests/test_cli.py's): its stdout."""
    from stg.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    assert rc == 0, f"stg {' '.join(args)} failed ({rc}):\n{err[-2000:]}"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("labels", [["--label-column", "label"],
                                    ["--label-columns", "smile,hat,tall", "--split", "val=validation"]])
def test_cli_data_datamap_group_train_groups(saved, tmp_path: Path, labels: list[str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    root, _, _ = saved
    common = [*labels, "--image-size", "16"]
    info = json.loads(_stg(capsys, "data", f"hf:{root}", *common, "--json"))
    multi = "--label-columns" in labels
    assert info["task_names"] == (["smile", "hat", "tall"] if multi else list(CLASSES))
    assert info["image_shape"] == [3, 16, 16]
    run = tmp_path / "run"
    _stg(capsys, "datamap", "--dataset", f"hf:{root}", *common, "--epochs", "1", "--batch-size", "12", "--device", "cpu",
         "--out", str(run))
    meta = json.loads((run / "run.json").read_text())
    assert meta["data"]["dataset"] == f"hf:{root}" and meta["data"]["image_size"] == 16
    assert (meta["data"]["hf"]["label_columns"] == ["smile", "hat", "tall"]) if multi else (
        meta["data"]["hf"]["label_column"] == "label")
    # resume by --out alone rebuilds the same task set from run.json's data spec
    _stg(capsys, "datamap", "--out", str(run), "--epochs", "2")
    assert json.loads((run / "run.json").read_text())["epochs_done"] == 2
    _stg(capsys, "group", str(run), "--k", "2", "--name", "g2")
    out = _stg(capsys, "train-groups", str(run), "--grouping", "g2", "--epochs", "1", "--baselines", "mtl", "--device", "cpu")
    metrics = json.loads((run / "groups" / "g2" / "metrics.json").read_text())
    assert sorted(metrics["models"]["grouped"]["per_task"]) == sorted(info["task_names"]), out
