"""The data layer end to end: real CIFAR pieces, Fashion-MNIST, the embedded sample, synthetic, user data."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from stg.data.cifar import load_cifar10, load_cifar100
from stg.data.datasets import DATASET_NAMES, load_classdata, load_taskset
from stg.errors import StgError
from stg.data.fashion import SAMPLE_PATH, SYSTEM_DIR, read_idx
from stg.data.taskspec import PRESETS, build_taskset, stratified_subset
from fixtures import CIFAR100_SUPERCLASSES, TEST_DATA, write_cifar10, write_cifar100

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def raises(match: str):
    """pytest.raises(StgError) whose message must contain ``match`` and be one line."""
    return _OneLine(match)


class _OneLine:
    def __init__(self, match: str) -> None:
        self.match = match

    def __enter__(self) -> "_OneLine":
        return self

    def __exit__(self, typ, exc, tb) -> bool:
        assert typ is StgError, f"expected StgError, got {typ}"
        msg = str(exc)
        assert "\n" not in msg, msg
        assert self.match in msg, msg
        self.message = msg
        return True


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root)
    write_cifar100(root)
    return root


# --------------------------------------------------------------------------------- CIFAR-100


def test_cifar100_real_pieces(cifar_root: Path) -> None:
    data = load_classdata("cifar100", data_root=cifar_root)
    assert data.train_images.shape == (100, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (20, 3, 32, 32)
    assert len(data.class_names) == 100 and data.class_names[19] == "cattle"
    raw = np.load(TEST_DATA / "cifar100_train_first100.npz")
    assert torch.equal(data.train_images, torch.from_numpy(raw["images"]).permute(0, 3, 1, 2))
    assert data.train_classes[:3].tolist() == [19, 29, 0]  # cattle, dinosaur, apple
    ref = data.class_references["superclass"]
    group_of = {c: g for g, members in ref.items() for c in members}
    assert group_of["cattle"] == "large_omnivores_and_herbivores"
    assert group_of["dinosaur"] == "reptiles" and group_of["apple"] == "fruit_and_vegetables"
    present = {data.class_names[i] for i in data.train_classes.tolist()}
    assert set(group_of) == present
    for g, members in ref.items():  # groups of (at most) 5, as in the standard lists
        assert len(members) <= 5 and set(members) <= set(CIFAR100_SUPERCLASSES[g])


def test_cifar100_taskset_references(cifar_root: Path) -> None:
    ts = load_taskset("cifar100", data_root=cifar_root, tasks="ovr:cattle,dinosaur,apple,crocodile", val_fraction=0)
    assert ts.task_names == ("cattle", "dinosaur", "apple", "crocodile")
    assert len(ts.train) == 100 and len(ts.val) == 0 and len(ts.test) == 20
    assert ts.train.labels[0].tolist() == [1, 0, 0, 0]
    ref = ts.references["superclass"]
    assert ref["reptiles"] == ["dinosaur", "crocodile"]
    assert ref["large_omnivores_and_herbivores"] == ["cattle"]
    assert sorted(t for m in ref.values() for t in m) == sorted(ts.task_names)


def test_cifar100_default_spec_reports_empty_task(cifar_root: Path) -> None:
    with raises("is empty: no positive image in the train split"):
        load_taskset("cifar100", data_root=cifar_root)


# ---------------------------------------------------------------------------------- CIFAR-10


def test_cifar10_paper10(cifar_root: Path) -> None:
    ts = load_taskset("cifar10", data_root=cifar_root)
    assert ts.tasks_spec == "paper10" and ts.task_names == CIFAR10
    assert len(ts.train) + len(ts.val) == 300 and len(ts.val) == 30 and len(ts.test) == 100
    assert ts.train.images.shape[1:] == (3, 32, 32) and ts.train.labels.dtype == torch.float32
    assert torch.equal(ts.train.labels.argmax(1), ts.train.classes)
    assert torch.equal(ts.train.labels.sum(1), torch.ones(len(ts.train)))
    raw = np.load(TEST_DATA / "cifar10_train_first400.npz")
    assert torch.equal(ts.test.classes, torch.from_numpy(raw["labels"][300:].astype(np.int64)))
    ref = ts.references["vehicles-animals"]
    assert ref == {"vehicles": ["airplane", "automobile", "ship", "truck"],
                   "animals": ["bird", "cat", "deer", "dog", "frog", "horse"]}
    pos = ts.train.labels.sum(0)
    assert torch.allclose(ts.pos_weight, (len(ts.train) - pos) / pos)
    assert ts.pos_weight.dtype == torch.float32


def test_cifar10_paper15(cifar_root: Path) -> None:
    data = load_classdata("cifar10", data_root=cifar_root)
    ts = build_taskset(data, "paper15", seed=3)
    assert ts.task_names == CIFAR10 + ("living", "odd", "upside_down", "not_living", "random")
    lab, cls = ts.train.labels, ts.train.classes
    col = {n: lab[:, i] for i, n in enumerate(ts.task_names)}
    assert torch.equal(col["living"], ((cls >= 2) & (cls <= 7)).float())
    assert torch.equal(col["odd"], (cls % 2 == 1).float())
    assert torch.equal(col["not_living"], 1 - col["living"])
    flags = []
    for split in (ts.train, ts.val, ts.test):  # flagged images are really upside down
        source = data.train_images if split is not ts.test else data.test_images
        flag = split.labels[:, ts.task_names.index("upside_down")].bool()
        original = source[split.index]
        assert 0 < flag.sum() < len(flag)  # both kinds in every split (val is only 30 rows here)
        assert torch.equal(split.images[flag], original[flag].flip(-2))
        assert torch.equal(split.images[~flag], original[~flag])
        flags.append(flag)
    assert 0.4 < torch.cat(flags).float().mean() < 0.6  # Bernoulli(0.5) over all 400 images
    ref = ts.references["vehicles-animals"]
    assert ref["animals"][-1] == "living"
    for singleton in ("odd", "upside_down", "not_living", "random"):
        assert ref[singleton] == [singleton]


def test_random_task_deterministic_and_independent(cifar_root: Path) -> None:
    data = load_classdata("cifar10", data_root=cifar_root)
    a = build_taskset(data, "ovr:cat;random", seed=5)
    b = build_taskset(data, "ovr:cat;random", seed=5)
    c = build_taskset(data, "ovr:cat;random", seed=6)
    ra, rb, rc = (t.train.labels[:, 1] for t in (a, b, c))
    assert torch.equal(ra, rb)
    assert not torch.equal(a.train.index, c.train.index) or not torch.equal(ra, rc)
    assert 0.45 < ra.mean() < 0.55
    n = min(len(a.train), len(a.test))
    assert not torch.equal(a.train.labels[:n, 1], a.test.labels[:n, 1])
    # same loader row -> same label whatever the split fraction (fixed per image)
    d = build_taskset(data, "ovr:cat;random", seed=5, val_fraction=0)
    lab = dict(zip(d.train.index.tolist(), d.train.labels[:, 1].tolist()))
    assert all(lab[i] == v for i, v in zip(a.train.index.tolist(), ra.tolist()))


def test_split_determinism(cifar_root: Path) -> None:
    data = load_classdata("cifar10", data_root=cifar_root)
    a, b = build_taskset(data, seed=1), build_taskset(data, seed=1)
    c = build_taskset(data, seed=2)
    assert torch.equal(a.train.index, b.train.index) and torch.equal(a.val.index, b.val.index)

    def definition(seed: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        """stg.data.taskspec.split_rows: val = the first round(fraction * N) rows of a permutation
        seeded by ``seed``, train = the rest, each sorted."""
        perm = torch.randperm(300, generator=torch.Generator().manual_seed(seed))
        n_val = round(fraction * 300)
        return perm[n_val:].sort().values, perm[:n_val].sort().values

    d = build_taskset(data, seed=1, val_fraction=0.25)
    for ts, seed, fraction in ((a, 1, 0.1), (c, 2, 0.1), (d, 1, 0.25)):
        train_rows, val_rows = definition(seed, fraction)
        assert torch.equal(ts.train.index, train_rows) and torch.equal(ts.val.index, val_rows)
        for split in (ts.train, ts.val):  # each split holds the images and classes of its rows
            assert torch.equal(split.images, data.train_images[split.index])
            assert torch.equal(split.classes, data.train_classes[split.index].long())
    assert not torch.equal(a.val.index, c.val.index)  # the seed matters
    rows = torch.cat([a.train.index, a.val.index]).sort().values
    assert torch.equal(rows, torch.arange(300))
    z = build_taskset(data, seed=1, val_fraction=0.0)
    assert len(z.val) == 0 and len(z.train) == 300 and z.val.labels.shape == (0, 10)
    assert d.val.images.shape[0] == 75


def test_limit_is_stratified(cifar_root: Path) -> None:
    data = load_classdata("cifar10", data_root=cifar_root)
    ts = build_taskset(data, seed=0, limit=200, val_fraction=0.1)
    assert len(ts.train) + len(ts.val) == 200 and len(ts.val) == 20
    assert len(ts.test) == 50
    counts = torch.bincount(torch.cat([ts.train.classes, ts.val.classes]), minlength=10)
    expected = torch.bincount(data.train_classes, minlength=10).float() * 200 / 300
    assert (counts.float() - expected).abs().max() <= 1.0
    again = build_taskset(data, seed=0, limit=200)
    assert torch.equal(ts.train.index, again.train.index)
    rows = stratified_subset(torch.tensor([0] * 90 + [1] * 10), 10, seed=0)
    assert torch.bincount(torch.tensor([0] * 90 + [1] * 10)[rows]).tolist() == [9, 1]


# ------------------------------------------------------------------------------ spec language


@pytest.fixture(scope="module")
def sample():
    return load_classdata("fashion-sample")


def test_spec_terms(sample) -> None:
    ts = build_taskset(sample, "ovr:sandal,bag; union:shoes=sandal,sneaker,ankle_boot ;not:shoes;not:bag;random;flipped")
    assert ts.task_names == ("sandal", "bag", "shoes", "not_shoes", "not_bag", "random", "upside_down")
    col = {n: ts.train.labels[:, i] for i, n in enumerate(ts.task_names)}
    cls = ts.train.classes
    assert torch.equal(col["sandal"], (cls == 5).float())
    assert torch.equal(col["shoes"], torch.isin(cls, torch.tensor([5, 7, 9])).float())
    assert torch.equal(col["not_shoes"], 1 - col["shoes"])
    assert torch.equal(col["not_bag"], 1 - col["bag"])
    assert set(ts.train.labels.unique().tolist()) == {0.0, 1.0}
    ref = ts.references["garment-type"]
    assert ref["footwear"] == ["sandal", "shoes"] and ref["accessories"] == ["bag"]
    assert ref["not_shoes"] == ["not_shoes"] and ref["upside_down"] == ["upside_down"]
    assert "tops" not in ref  # empty groups dropped
    mixed = build_taskset(sample, "union:mix=sandal,bag").references["garment-type"]
    assert mixed == {"mix": ["mix"]}


def test_presets(sample) -> None:
    assert set(PRESETS) >= {"paper10", "paper15", "composite"}
    ts = build_taskset(sample, "composite")
    assert ts.task_names[-3:] == ("footwear", "not_footwear", "random") and ts.n_tasks == 13
    with raises("preset 'paper15' is for cifar10"):
        build_taskset(sample, "paper15")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("ovr:apple", "unknown class 'apple' in task spec term 'ovr:apple'; valid classes: tshirt_top, trouser"),
        ("ovr:bag;union:bag=bag,dress", "duplicate task name 'bag'"),
        ("ovr:all;ovr:bag", "duplicate task name 'bag'"),
        ("union:all=tshirt_top,trouser,pullover,dress,coat,sandal,shirt,sneaker,bag,ankle_boot", "task 'all' is constant"),
        ("frobnicate", "malformed task spec term 'frobnicate': spec = terms separated by ';'"),
        ("ovr:", "malformed task spec term 'ovr:'"),
        ("union:x", "malformed task spec term 'union:x' (expected union:NAME=C1,C2)"),
        ("union:x=", "malformed task spec term 'union:x='"),
        ("union:a b=bag", "bad task name 'a b'"),
        ("not:bag", "complements unknown task 'bag'"),
        (" ; ", "empty task spec"),
        ("ovr:bag,bag", "class listed twice"),
    ],
)
def test_bad_specs(sample, spec: str, message: str) -> None:
    with raises(message):
        build_taskset(sample, spec)


def test_empty_task_named(cifar_root: Path) -> None:
    data = load_classdata("cifar100", data_root=cifar_root)
    absent = next(c for i, c in enumerate(data.class_names) if i not in set(data.train_classes.tolist()))
    with raises(f"task {absent!r} is empty"):
        build_taskset(data, f"ovr:cattle,{absent}")


# ---------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_sample(sample) -> None:
    ts = load_taskset("fashion-sample")
    assert (len(ts.train), len(ts.val), len(ts.test)) == (3600, 400, 1000)
    assert ts.image_shape == (1, 28, 28) and ts.n_tasks == 10
    assert torch.bincount(sample.train_classes).tolist() == [400] * 10
    assert torch.bincount(sample.test_classes).tolist() == [100] * 10
    assert "MIT" in sample.source
    ref = ts.references["garment-type"]
    assert ref == {"footwear": ["sandal", "sneaker", "ankle_boot"], "tops": ["tshirt_top", "pullover", "coat", "shirt"],
                   "bottoms_and_dresses": ["trouser", "dress"], "accessories": ["bag"]}
    assert torch.allclose(ts.pos_weight, torch.full((10,), 9.0), atol=0.3)


@pytest.mark.skipif(not SYSTEM_DIR.is_dir(), reason=f"{SYSTEM_DIR} missing (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample) -> None:
    monkeypatch.setenv("STG_DATA_ROOT", str(tmp_path / "empty"))  # falls back to the Debian folder
    ts = load_taskset("fashion-mnist", seed=0)
    assert (len(ts.train), len(ts.val), len(ts.test)) == (54000, 6000, 10000)
    assert ts.train.images.shape[1:] == (1, 28, 28) and ts.train.images.dtype == torch.uint8
    data = load_classdata("fashion-mnist")
    assert data.train_classes[:4].tolist() == [9, 0, 0, 3]  # ankle boot, T-shirt, T-shirt, dress
    z = np.load(SAMPLE_PATH)
    assert torch.equal(data.train_images[torch.from_numpy(z["train_indices"])][:, 0], torch.from_numpy(z["train_images"]))
    assert set(ts.references["garment-type"]) == {"footwear", "tops", "bottoms_and_dresses", "accessories"}
    with raises("Fashion-MNIST not found in"):
        load_classdata("fashion-mnist", data_root=tmp_path / "nothing")


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(head + array.tobytes()) if path.suffix == ".gz" else head + array.tobytes())


def test_fashion_idx_layouts_and_corruption(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 10)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8), 0x803)
        _write_idx(raw / f"{split}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10, 0x801)
    data = load_classdata("fashion-mnist", data_root=tmp_path)
    assert data.train_images.shape == (30, 1, 28, 28) and data.test_classes.tolist() == list(range(10))
    _write_idx(tmp_path / "bad", np.zeros((2, 28, 28), np.uint8), 0x801)
    with raises("magic number"):
        read_idx(tmp_path / "bad", 3)
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x03" + b"".join(d.to_bytes(4, "big") for d in (5, 28, 28)) + b"xx")
    with raises("bytes, header says"):
        read_idx(tmp_path / "short", 3)


# -------------------------------------------------------------------------------- synthetic


def test_synthetic_hierarchy() -> None:
    from stg.data.synthetic import make_synthetic_hierarchy

    ts = load_taskset("synthetic-hierarchy")
    assert ts.n_tasks == 100 and ts.image_shape == (3, 32, 32)
    assert len(ts.train) + len(ts.val) == 12000 and len(ts.test) == 3000
    ref = ts.references["planted"]
    assert len(ref) == 20 and all(len(m) == 5 for m in ref.values())
    assert ref["super_00"] == ["class_000", "class_001", "class_002", "class_003", "class_004"]
    small = make_synthetic_hierarchy(n_super=3, n_per_super=2, train_per_class=4, test_per_class=2, seed=7)
    again = make_synthetic_hierarchy(n_super=3, n_per_super=2, train_per_class=4, test_per_class=2, seed=7)
    other = make_synthetic_hierarchy(n_super=3, n_per_super=2, train_per_class=4, test_per_class=2, seed=8)
    assert torch.equal(small.train_images, again.train_images)
    assert not torch.equal(small.train_images, other.train_images)
    assert small.train_images.shape == (24, 3, 32, 32) and small.train_images.dtype == torch.uint8
    # siblings share structure: class means are closer within a superclass than across
    data = load_classdata("synthetic-hierarchy")
    means = torch.stack([data.train_images[data.train_classes == k].float().mean(0).flatten() for k in range(100)])
    dist = torch.cdist(means, means)
    same = torch.arange(100)[:, None] // 5 == torch.arange(100)[None, :] // 5
    off = ~torch.eye(100, dtype=torch.bool)
    assert dist[same & off].mean() < 0.7 * dist[~same].mean()


# -------------------------------------------------------------------------------- user data


def test_user_npz_and_references(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, train_images=rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8), train_labels=np.arange(40) % 4,
             test_images=rng.integers(0, 255, (8, 8, 8, 3), dtype=np.uint8), test_labels=np.arange(8) % 4,
             class_names=np.array(["cat", "dog", "car", "bus"]))
    (tmp_path / "references.json").write_text(json.dumps({"kind": {"animal": ["cat", "dog"], "vehicle": ["car", "bus"]}}))
    ts = load_taskset(str(path), tasks="ovr:all;union:pets=cat,dog")
    assert ts.image_shape == (3, 8, 8) and ts.task_names == ("cat", "dog", "car", "bus", "pets")
    assert ts.references["kind"] == {"animal": ["cat", "dog", "pets"], "vehicle": ["car", "bus"]}
    assert load_taskset(f"folder:{path}").n_tasks == 4
    (tmp_path / "references.json").write_text(json.dumps({"kind": {"animal": ["cat", "wolf"]}}))
    with raises("unknown class 'wolf'"):
        load_classdata(f"folder:{path}", data_root=tmp_path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_images=np.zeros((4, 5), np.uint8), train_labels=np.zeros(4, int),
             test_images=np.zeros((4, 5), np.uint8), test_labels=np.zeros(4, int))
    with raises("train_images must be (N,H,W)"):
        load_classdata(str(bad))


def test_user_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 2)):
        for cls in ("circle", "square"):
            d = tmp_path / "imgs" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (12, 10), dtype=np.uint8)).save(d / f"{i}.png")
    ts = load_taskset(str(tmp_path / "imgs"), val_fraction=0)
    assert ts.image_shape == (1, 12, 10) and ts.task_names == ("circle", "square")
    assert len(ts.train) == 10 and len(ts.test) == 4
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(tmp_path / "imgs" / "train" / "circle" / "odd.png")
    mixed = load_classdata(f"folder:{tmp_path / 'imgs'}")  # several sizes: resized (tests/test_images.py)
    assert mixed.train_images.shape[1:] == (3, 7, 7) and "by centre crop" in mixed.source


# ----------------------------------------------------------------------------------- errors


def test_unknown_dataset() -> None:
    with raises("unknown dataset 'cifar1000': choose one of " + ", ".join(DATASET_NAMES)):
        load_classdata("cifar1000")


def test_missing_root_messages(tmp_path: Path) -> None:
    with raises(f"CIFAR-100 not found in {tmp_path}: pass --download or put cifar-100-python/ there"):
        load_cifar100(tmp_path, download=False)
    with raises(f"CIFAR-10 not found in {tmp_path}: pass --download or put cifar-10-batches-py/ there"):
        load_classdata("cifar10", data_root=tmp_path)


def test_corrupt_pickles(tmp_path: Path, cifar_root: Path) -> None:
    import shutil

    root = tmp_path / "c"
    shutil.copytree(cifar_root / "cifar-10-batches-py", root / "cifar-10-batches-py")
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(b"this is not a pickle")
    with raises(f"corrupt CIFAR file {batch}"):
        load_cifar10(root)
    with open(batch, "wb") as f:
        pickle.dump({b"data": np.zeros((7, 100), np.uint8), b"labels": [0] * 7}, f, protocol=4)
    with raises("'data' must be a uint8 array of shape (N, 3072)"):
        load_cifar10(root)
    with open(batch, "wb") as f:
        pickle.dump({b"data": np.zeros((7, 3072), np.uint8), b"labels": [0] * 6 + [10]}, f, protocol=4)
    with raises("labels outside 0..9"):
        load_cifar10(root)
    marker = tmp_path / "pwned"
    with open(batch, "wb") as f:  # a malicious pickle: must be refused, not executed
        f.write(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with raises("forbidden global os.system"):
        load_cifar10(root)
    assert not marker.exists()


def test_python2_style_pickle(tmp_path: Path, cifar_root: Path) -> None:
    """The official files are Python 2 pickles naming numpy.core.multiarray; protocol 2 bytes use _codecs."""
    import shutil

    root = tmp_path / "c"
    shutil.copytree(cifar_root / "cifar-10-batches-py", root / "cifar-10-batches-py")
    batch = root / "cifar-10-batches-py" / "test_batch"
    with open(batch, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    blob = pickle.dumps(d, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in blob
    batch.write_bytes(blob)
    data = load_cifar10(root)
    assert torch.equal(data.test_images, torch.from_numpy(d[b"data"]).reshape(-1, 3, 32, 32))
    (root / "cifar-10-batches-py" / "data_batch_5").unlink()
    with raises("put cifar-10-batches-py/ there (cifar-10-batches-py/ lacks data_batch_5)"):
        load_cifar10(root)


def test_cifar100_coarse_consistency(tmp_path: Path, cifar_root: Path) -> None:
    import shutil

    root = tmp_path / "c"
    shutil.copytree(cifar_root / "cifar-100-python", root / "cifar-100-python")
    path = root / "cifar-100-python" / "test"
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    d[b"coarse_labels"][0] = (d[b"coarse_labels"][0] + 1) % 20
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=4)
    with raises("appears under two superclasses"):
        load_cifar100(root)


def test_bad_options(sample) -> None:
    with raises("val_fraction must be in [0, 1)"):
        build_taskset(sample, seed=0, val_fraction=1.0)
