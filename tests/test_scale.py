"""Many tasks (issue 18, item 3): synthetic-hierarchy sized by options, float16 snapshots, which
epochs a run keeps, task features streamed one snapshot at a time, and a 1,000-task run end to end."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from stg.data.datasets import load_taskset, load_taskset_from_spec
from stg.data.spec import DataSpec
from stg.data.synthetic import make_synthetic_hierarchy, parse_name
from stg.errors import StgError
from stg.grouping.features import _load_features, task_features
from stg.runs.rundir import DATAMAP_KEYS, RunDir
from stg.train.config import TrainConfig, keep_every


# -------------------------------------------------------------------------- synthetic options
def test_synthetic_name_options() -> None:
    assert parse_name("cifar100") is None
    default = parse_name("synthetic-hierarchy")
    assert default == {"n_super": 20, "n_per_super": 5, "train_per_class": 120, "test_per_class": 30,
                       "size": 32, "seed": 0}
    assert parse_name("synthetic-hierarchy:classes=100,super=20") == default
    ts = load_taskset("synthetic-hierarchy:classes=12,super=3,train=5,test=2,size=16,seed=4")
    assert ts.n_tasks == 12 and ts.image_shape == (3, 16, 16)
    assert len(ts.train) + len(ts.val) == 60 and len(ts.test) == 24
    planted = ts.references["planted"]
    assert list(planted) == ["super_00", "super_01", "super_02"]
    assert planted["super_01"] == ["class_004", "class_005", "class_006", "class_007"]
    # the options are the dataset name, so a run's data spec rebuilds the same images
    spec = DataSpec.make("synthetic-hierarchy:classes=12,super=3,train=5,test=2,size=16,seed=4")
    again = load_taskset_from_spec(DataSpec.from_meta(spec.to_meta()))
    assert np.array_equal(again.train.images.numpy(), ts.train.images.numpy())
    direct = make_synthetic_hierarchy(n_super=3, n_per_super=4, train_per_class=5, test_per_class=2, size=16, seed=4)
    assert direct.class_names == ts.class_names
    # wide hierarchies name classes and superclasses with enough digits to sort
    wide = make_synthetic_hierarchy(n_super=100, n_per_super=10, train_per_class=1, test_per_class=0, size=8)
    assert wide.class_names[-1] == "class_999" and list(wide.class_references["planted"])[-1] == "super_99"


@pytest.mark.parametrize("name, message", [
    ("synthetic-hierarchy:classes=10,super=3", "multiple of super"),
    ("synthetic-hierarchy:clases=10", "invalid synthetic-hierarchy option 'clases=10'"),
    ("synthetic-hierarchy:classes=ten", "classes must be an integer"),
    ("synthetic-hierarchy:size=4", "size must be 8..256"),
    ("synthetic-hierarchy:classes=100000,super=100,train=1000", "GiB to generate"),
])
def test_synthetic_name_errors(name: str, message: str) -> None:
    with pytest.raises(StgError, match=message):
        load_taskset(name)


# -------------------------------------------------------------------------- float16 snapshots
def _maps(n_tasks: int, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    conf = rng.random((n_tasks, n), dtype=np.float32)
    conf[0, :4] = [0.0, 1.0, 0.5, 1e-6]  # edges and a float16 subnormal
    var = (0.5 * rng.random((n_tasks, n))).astype(np.float32)
    corr = (rng.integers(0, 8, (n_tasks, n)) / 7).astype(np.float32)  # k / epochs
    return {"confidence": conf, "variability": var, "correctness": corr}


def test_float16_snapshot_error_bound(tmp_path: Path) -> None:
    """float16 storage equals the plain cast x.astype(float16), is read back as float32, and errs by
    at most 2^-12 on statistics in [0, 1]; float32 storage is exact."""
    maps = _maps(7, 5000, 0)
    r32, r16 = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    r32.write_datamap(1, maps)
    r16.write_datamap(1, maps, dtype="float16")
    got32, got16 = r32.load_datamap(1), r16.load_datamap(1)
    for k in DATAMAP_KEYS:
        assert got16[k].dtype == np.float32 and np.array_equal(got32[k], maps[k])
        assert np.array_equal(got16[k], maps[k].astype(np.float16).astype(np.float32))
        assert np.abs(got16[k] - maps[k]).max() <= 2.0**-12
    size32, size16 = r32.datamap_path(1).stat().st_size, r16.datamap_path(1).stat().st_size
    assert size16 < 0.55 * size32
    with np.load(r16.datamap_path(1)) as z:
        assert z["confidence"].dtype == np.float16
    with pytest.raises(StgError, match="unknown snapshot dtype"):
        r32.write_datamap(2, maps, dtype="int8")


# -------------------------------------------------------------------------- kept epochs
def test_keep_epochs(tmp_path: Path) -> None:
    assert (keep_every("all"), keep_every("last"), keep_every("every:3"), keep_every(" Every:2 ")) == (1, 0, 3, 2)
    for bad in ("every:0", "every:", "first", "every:x"):
        with pytest.raises(StgError, match="invalid --keep-epochs"):
            keep_every(bad)
    with pytest.raises(StgError, match="--keep-epochs"):
        TrainConfig(keep_epochs="most").validate(1000)
    with pytest.raises(StgError, match="--snapshot-dtype"):
        TrainConfig(snapshot_dtype="bfloat16").validate(1000)
    maps = _maps(2, 10, 1)
    kept = {}
    for spec in ("all", "last", "every:3"):
        run = RunDir(tmp_path / spec.replace(":", "_"))
        for e in range(1, 8):
            run.write_datamap(e, maps, keep_every=keep_every(spec))
            assert run.datamap_epochs()[-1] == e  # the newest is always there
        kept[spec] = run.datamap_epochs()
    assert kept == {"all": [1, 2, 3, 4, 5, 6, 7], "last": [7], "every:3": [3, 6, 7]}
    RunDir(tmp_path / "every_3").write_datamap(8, maps, keep_every=3)
    assert RunDir(tmp_path / "every_3").datamap_epochs() == [3, 6, 8]


# -------------------------------------------------------------------------- streamed features
def _all_at_once(run: RunDir, epochs: list[int], stats: tuple[str, ...]) -> np.ndarray:
    """The plain form: load every snapshot whole, then concatenate the [epoch][stat] blocks."""
    maps = [run.load_datamap(e) for e in epochs]
    return np.concatenate([dm[s] for dm in maps for s in stats], axis=1)


def _run_with_maps(path: Path, n_tasks: int, n: int, epochs: int, dtype: str = "float32") -> RunDir:
    run = RunDir(path)
    path.mkdir(parents=True)
    names = [f"t{i}" for i in range(n_tasks)]
    run.write({"kind": "datamap", "status": "done", "config": {}, "task_names": names, "references": {}})
    for e in range(1, epochs + 1):
        run.write_datamap(e, _maps(n_tasks, n, e), dtype=dtype)
    return run


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_streamed_features_equal_all_at_once(tmp_path: Path, dtype: str) -> None:
    run = _run_with_maps(tmp_path / "r", 6, 300, 4, dtype)
    for epochs in ([4], [1, 3], [1, 2, 3, 4]):
        for stats in (("confidence",), ("confidence", "variability"), ("variability", "correctness", "confidence")):
            got = _load_features(run, epochs, stats, 6)
            assert got.dtype == np.float32
            assert np.array_equal(got, _all_at_once(run, epochs, stats)), (epochs, stats)
    assert np.array_equal(task_features(run, epochs="all"), _all_at_once(run, [1, 2, 3, 4], ("confidence", "variability")))
    # a transform (a feature variant's block) is applied per block, as before
    doubled = _load_features(run, [2, 4], ("confidence",), 6, transform=lambda a: 2.0 * a.astype(np.float64))
    assert doubled.dtype == np.float64 and np.array_equal(doubled, 2.0 * _all_at_once(run, [2, 4], ("confidence",)))


def test_streamed_features_hold_one_snapshot(tmp_path: Path) -> None:
    """Peak memory: the (T, D) result plus about one snapshot's blocks, not every snapshot plus a copy."""
    n_tasks, n, epochs, stats = 8, 20000, 5, ("confidence", "variability")
    run = _run_with_maps(tmp_path / "r", n_tasks, n, epochs)
    block = n_tasks * n * 4
    result = block * epochs * len(stats)
    tracemalloc.start()
    x = _load_features(run, list(range(1, epochs + 1)), stats, n_tasks)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert x.nbytes == result
    assert peak < result + 2.5 * block, (peak / block, result / block)


# -------------------------------------------------------------------------- 1,000 tasks end to end
@pytest.mark.slow
def test_thousand_task_run_records_and_groups(tmp_path: Path) -> None:
    """A 1,000-task synthetic run at a tiny image count: datamap with float16 snapshots, keeping only
    the last; resume one more epoch; then `stg group --k 100` scores the planted superclasses."""
    from stg.cli import main

    out = tmp_path / "t1000"
    dataset = "synthetic-hierarchy:classes=1000,super=100,train=2,test=1,size=16"
    assert main(["datamap", "--dataset", dataset, "--val-fraction", "0", "--device", "cpu", "--epochs", "1",
                 "--batch-size", "256",
                 "--snapshot-dtype", "float16", "--keep-epochs", "last", "--out", str(out)]) == 0
    run = RunDir(out)
    meta = run.read()
    assert len(meta["task_names"]) == 1000 and meta["data"]["dataset"] == dataset
    assert meta["config"]["snapshot_dtype"] == "float16" and meta["config"]["keep_epochs"] == "last"
    assert main(["datamap", "--out", str(out), "--epochs", "2"]) == 0  # resume rebuilds the 1,000 classes
    assert run.datamap_epochs() == [2] and run.read()["epochs_done"] == 2
    with np.load(run.datamap_path(2)) as z:
        assert z["confidence"].dtype == np.float16 and z["confidence"].shape == (1000, meta["n_train"])
    assert main(["group", str(out), "--k", "100", "--name", "k100", "--n-init", "1"]) == 0
    g = run.read_grouping("k100")
    assert g["k"] == 100 and len(g["labels"]) == 1000 and len(set(g["labels"])) > 50
    assert np.asarray(g["membership"]).shape == (1000, 100)
    # scored on all 1,000 tasks; at 2 images a class the planted structure is not in the maps, so the
    # ARI is noise around 0 of either sign (measured -0.001 and 0.010; the README's 1,000-task section)
    score = g["scores"]["planted"]
    assert score["n_tasks"] == 1000 and -1.0 <= score["ari"] <= 1.0
