"""Multi-label task sets with missing labels (stg.data.multilabel) and CelebA (stg.data.celeba).

Missing labels are NaN in ``Split.labels`` and masked everywhere: the loss, the data map, the task
features, the metrics, pos_weight, the TAG probe. Where no label is missing, the masked code must
give bitwise the numbers of the plain code it replaced (the ``old_*`` references below are the
formulas as they were before masking).

The CelebA fixture is written in the official file formats (``list_attr_celeba.txt``,
``list_eval_partition.txt``, ``img_align_celeba/*.jpg``) with SYNTHETIC pixels and random
attributes: it tests the parsing and the pipeline, not anything about faces.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stg.data.multilabel import MultiLabelData, binary_labels, kleene_or, load_csv_folder, read_labels_csv
from stg.data.taskspec import CELEBA_TAG9, build_taskset, pos_weight_of
from stg.datamap.recorder import DataMapRecorder
from stg.errors import StgError
from stg.grouping.features import impute_unrecorded
from stg.specialists.evaluate import auroc, binary_metrics
from stg.train.loss import per_task_bce, per_task_loop_bce, weighted_bce
from tests.tiny import tiny_taskset

NAN = float("nan")
STG = [sys.executable, "-m", "stg.cli"]


def stg(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*STG, *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"stg {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit code 2 and one error line (a loader's note, e.g. how images were resized, may precede it)."""
    errors = [line for line in proc.stderr.strip().splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def old_per_task_bce(logits: torch.Tensor, targets: torch.Tensor, *, pos_weight: torch.Tensor, **_) -> torch.Tensor:
    """per_task_bce as it was before missing labels (the reference for bitwise equality)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.binary_cross_entropy_with_logits(
        logits, targets.expand_as(logits), pos_weight=pos_weight, reduction="none").mean(-2)


def old_confidence(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits.detach().float())
    return torch.where(targets > 0.5, p, 1.0 - p)


def with_missing(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = labels.clone()
    out[torch.rand(labels.shape, generator=g) < fraction] = NAN
    return out


# ------------------------------------------------------------------------------------ the loss


@pytest.mark.parametrize("masked", [None, False, True])
@pytest.mark.parametrize("shape", [(64, 7), (3, 64, 7)])
def test_loss_without_missing_labels_is_bitwise_the_plain_mean(shape: tuple[int, ...], masked: bool | None) -> None:
    """The plain path is the old code; the masked formula (used where labels can be missing, e.g. a
    validation split without any missing) gives the same bits too."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=g) * 3
    targets = (torch.rand(shape[-2:], generator=g) > 0.6).float()
    pw = torch.rand(shape[-1], generator=g) * 5 + 0.1
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    new, old = per_task_bce(a, targets, pos_weight=pw, masked=masked), old_per_task_bce(b, targets, pos_weight=pw)
    assert torch.equal(new, old)
    w = torch.rand(new.shape, generator=g)
    (new * w).sum().backward()
    (old * w).sum().backward()
    assert torch.equal(a.grad, b.grad)
    # and bf16 logits (autocast) are promoted the same way
    z16 = logits.bfloat16()
    assert torch.equal(per_task_bce(z16, targets, pos_weight=pw, masked=masked),
                       old_per_task_bce(z16, targets, pos_weight=pw))
    if logits.dim() == 2:  # weighted_bce as it was: per-task means @ task weights
        w = torch.rand(shape[-1], generator=g)
        was = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pw, reduction="none").mean(0) @ w
        assert torch.equal(weighted_bce(logits, targets, pos_weight=pw, task_weights=w, masked=masked), was)


def test_masked_loss_is_the_mean_over_labelled_samples() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 5, generator=g, dtype=torch.float64)
    targets = with_missing((torch.rand(40, 5, generator=g) > 0.5).double(), 0.3, 2)
    targets[:, 4] = NAN  # a task with no label in the batch: loss 0, no gradient
    pw = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0], dtype=torch.float64)
    z = logits.clone().requires_grad_()
    losses = per_task_bce(z, targets, pos_weight=pw)
    for t in range(5):
        keep = ~torch.isnan(targets[:, t])
        want = (F.binary_cross_entropy_with_logits(logits[keep, t], targets[keep, t], pos_weight=pw[t])
                if keep.any() else torch.zeros((), dtype=torch.float64))
        assert torch.allclose(losses[t], want, rtol=1e-12, atol=0)
    losses.sum().backward()
    assert torch.isfinite(z.grad).all()
    assert (z.grad[torch.isnan(targets)] == 0).all()
    w = torch.rand(5, generator=g, dtype=torch.float64)
    fast = weighted_bce(logits, targets, pos_weight=pw, task_weights=w)
    slow = per_task_loop_bce(logits, targets, pos_weight=pw, task_weights=w)
    assert torch.allclose(fast.double(), slow.double(), rtol=1e-6)
    # an ensemble's (k, B, T) logits share the targets' mask
    zk = torch.randn(3, 40, 5, generator=g, dtype=torch.float64)
    assert torch.allclose(per_task_bce(zk, targets, pos_weight=pw),
                          torch.stack([per_task_bce(zk[c], targets, pos_weight=pw) for c in range(3)]))


# -------------------------------------------------------------------------------- the data map


def test_recorder_leaves_missing_pairs_out() -> None:
    g = torch.Generator().manual_seed(3)
    n, t, epochs = 12, 4, 3
    labels = with_missing((torch.rand(n, t, generator=g) > 0.5).float(), 0.25, 4)
    rec = DataMapRecorder(n, t, device=torch.device("cpu"), ddof=1)
    seen = []
    for _ in range(epochs):
        for rows in torch.randperm(n, generator=g).split(5):
            z = torch.randn(len(rows), t, generator=g)
            rec.update(rows, z, labels[rows])
            seen.append((rows, z))
    snap = rec.snapshot()
    missing = torch.isnan(labels).numpy().T
    for key in ("confidence", "variability", "correctness"):
        assert np.isnan(snap[key][missing]).all() and np.isfinite(snap[key][~missing]).all()
    # recorded pairs: as a naive per-pair computation over the epochs
    obs: dict[tuple[int, int], list[float]] = {}
    for rows, z in seen:
        p = torch.sigmoid(z)
        for i, r in enumerate(rows.tolist()):
            for j in range(t):
                y = labels[r, j].item()
                if y == y:
                    obs.setdefault((r, j), []).append(p[i, j].item() if y == 1 else 1 - p[i, j].item())
    for (r, j), values in obs.items():
        assert snap["confidence"][j, r] == pytest.approx(np.mean(values), abs=1e-6)
        assert snap["variability"][j, r] == pytest.approx(np.std(values, ddof=1), abs=1e-5)
        assert snap["correctness"][j, r] == pytest.approx(np.mean(np.array(values) > 0.5), abs=1e-6)


def test_recorder_confidence_without_missing_labels_is_unchanged() -> None:
    g = torch.Generator().manual_seed(5)
    z, y = torch.randn(64, 9, generator=g), (torch.rand(64, 9, generator=g) > 0.5).float()
    assert torch.equal(DataMapRecorder.confidence(z, y), old_confidence(z, y))


def test_training_without_missing_labels_is_bitwise_as_before(tmp_path: Path, monkeypatch) -> None:
    """A whole data-map run on one-vs-rest data: the masked loss and recorder against the old ones."""
    import stg.train.loop
    from stg.datamap.run import train_datamap
    from stg.runs.rundir import RunDir
    from stg.train.config import TrainConfig

    ts = tiny_taskset(n_train=64, n_val=16, n_tasks=4, size=16)
    config = TrainConfig(epochs=2, batch_size=16, device="cpu", precision="fp32", seed=3)
    train_datamap(ts, config, tmp_path / "new")
    monkeypatch.setattr(stg.train.loop, "per_task_bce", old_per_task_bce)
    monkeypatch.setattr(DataMapRecorder, "confidence", staticmethod(old_confidence))
    train_datamap(ts, config, tmp_path / "old")
    new, old = RunDir(tmp_path / "new"), RunDir(tmp_path / "old")
    for e in (1, 2):
        a, b = new.load_datamap(e), old.load_datamap(e)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    sa = torch.load(new.checkpoint, weights_only=True)["model"]
    sb = torch.load(old.checkpoint, weights_only=True)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert new.read()["history"][-1]["loss"] == old.read()["history"][-1]["loss"]


# ------------------------------------------------------------------------- features, metrics


def test_features_impute_missing_entries_with_the_task_mean() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((5, 30)).astype(np.float32)
    assert impute_unrecorded(a) is a  # nothing missing: the very same array
    b = a.copy()
    b[rng.random(b.shape) < 0.3] = np.nan
    got = impute_unrecorded(b)
    for t in range(5):  # the plain form, one entry at a time
        recorded = [v for v in b[t] if not np.isnan(v)]
        for n in range(30):
            want = b[t, n] if not np.isnan(b[t, n]) else np.float32(np.mean(np.array(recorded, dtype=np.float64)))
            assert got[t, n] == pytest.approx(want, rel=1e-6)
    b[2] = np.nan
    with pytest.raises(StgError, match="no recorded sample"):
        impute_unrecorded(b)
    b[2] = np.inf
    with pytest.raises(StgError, match="inf"):
        impute_unrecorded(b)


def test_metrics_count_labelled_samples_only() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=(50, 4))
    y = (rng.random((50, 4)) > 0.5).astype(np.float64)
    plain = binary_metrics(z, y)
    ym = y.copy()
    ym[rng.random(y.shape) < 0.3] = np.nan
    masked = binary_metrics(z, ym)
    for t in range(4):
        keep = ~np.isnan(ym[:, t])
        ref = binary_metrics(z[keep, t:t + 1], y[keep, t:t + 1])
        for m in ("accuracy", "balanced_accuracy", "f1", "auroc"):
            assert masked[m][t] == pytest.approx(ref[m][0], abs=1e-12)
    nothing_missing = binary_metrics(z, y.copy())
    for m in plain:
        assert np.array_equal(plain[m], nothing_missing[m], equal_nan=True)
    assert np.isnan(auroc(z[:, :1], np.full((50, 1), np.nan)))[0]


def test_pos_weight_counts_labelled_samples() -> None:
    labels = torch.tensor([[1, 0], [0, NAN], [0, 1], [NAN, 1], [1, 0]])
    assert torch.allclose(pos_weight_of(labels), torch.tensor([2 / 2, 2 / 2]))
    plain = (torch.rand(30, 3, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    pos = plain.sum(0)
    assert torch.equal(pos_weight_of(plain), ((len(plain) - pos) / pos).float())


def test_quick_metrics_and_tag_probe_mask_missing_labels() -> None:
    from stg.affinity.lookahead import lookahead_affinity, naive_lookahead_affinity
    from stg.datamap.run import quick_metrics
    from stg.train.models import build_model, shared_parameters

    g = torch.Generator().manual_seed(2)
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, size=16, n_tasks=3).double()
    x = torch.randn(24, 1, 16, 16, generator=g, dtype=torch.float64)
    y = with_missing((torch.rand(24, 3, generator=g) > 0.5).double(), 0.3, 6)
    y[:, 2] = NAN  # no label at all in this batch for task 2
    pw = torch.ones(3, dtype=torch.float64)
    names = [n for n, _ in shared_parameters(model)]
    fast = lookahead_affinity(model, x, y, pw, lr=0.01, shared_names=names, chunk=1)
    slow = naive_lookahead_affinity(model, x, y, pw, lr=0.01, shared_names=names)
    assert torch.isfinite(fast).all() and torch.allclose(fast, slow, atol=1e-9)
    assert (fast[:, 2] == 0).all()  # an unlabelled target: affinity 0 by definition
    assert fast[2].abs().max() < 1e-12  # an unlabelled source has no gradient: the step moves nothing
    q = quick_metrics(torch.randn(24, 3, generator=g), y.float(), torch.ones(3))
    assert np.isfinite(q["val_loss"]) and 0 <= q["val_balanced_accuracy"] <= 1


# ---------------------------------------------------------------------------- the task spec


def ml_data(n: int = 40, seed: int = 0, missing: float = 0.2) -> MultiLabelData:
    g = torch.Generator().manual_seed(seed)
    lab = with_missing((torch.rand(n, 3, generator=g) > 0.5).float(), missing, seed)
    lab[:2] = torch.tensor([[1.0, 0, 1], [0, 1, 0]])  # every attribute has a positive and a negative
    test = (torch.rand(12, 3, generator=g) > 0.5).float()
    return MultiLabelData("ml", ("a", "b", "c"), torch.randint(0, 255, (n, 1, 8, 8), dtype=torch.uint8), lab,
                          torch.zeros(12, 1, 8, 8, dtype=torch.uint8), test,
                          references={"r": {"ab": ["a", "b"], "c": ["c"]}})


def test_union_is_a_three_valued_or_and_not_keeps_missing() -> None:
    cols = torch.tensor([[1, NAN], [0, 0], [0, NAN], [NAN, NAN], [NAN, 1], [0, 1]])
    assert torch.equal(torch.isnan(kleene_or(cols)), torch.tensor([False, False, True, True, False, False]))
    assert kleene_or(cols).nan_to_num(-1).tolist() == [1, 0, -1, -1, 1, 1]
    data = ml_data()
    ts = build_taskset(data, "attr:all;union:ab=a,b;not:ab;random", seed=1, val_fraction=0.25)
    assert ts.task_names == ("a", "b", "c", "ab", "not_ab", "random")
    assert [k["kind"] for k in ts.task_kinds] == ["attr", "attr", "attr", "union", "not", "random"]
    lab = ts.train.labels
    a, b = data.train_labels[ts.train.index, 0], data.train_labels[ts.train.index, 1]
    assert torch.equal(lab[:, 0].nan_to_num(-1), a.nan_to_num(-1))
    assert torch.equal(lab[:, 3].nan_to_num(-1), kleene_or(torch.stack([a, b], 1)).nan_to_num(-1))
    assert torch.equal(torch.isnan(lab[:, 4]), torch.isnan(lab[:, 3]))
    assert torch.equal((1 - lab[:, 3]).nan_to_num(-1), lab[:, 4].nan_to_num(-1))
    assert not torch.isnan(lab[:, 5]).any()
    # a union inside one reference group joins it; other tasks are singletons
    assert ts.references["r"] == {"ab": ["a", "b", "ab"], "c": ["c"], "not_ab": ["not_ab"], "random": ["random"]}
    info = ts.describe()
    assert info["train_missing"][:3] == torch.isnan(lab[:, :3]).sum(0).tolist()
    assert info["train_positives"][0] == int(lab[:, 0].nansum())
    assert info["attribute_names"] == ["a", "b", "c"] and info["class_names"] == []
    assert (ts.train.classes == -1).all()  # multi-label images have no class
    assert ts.has_missing_labels and not tiny_taskset().has_missing_labels


def test_spec_errors_on_multilabel_data() -> None:
    data = ml_data()
    with pytest.raises(StgError, match="one-vs-rest needs class labels.*attr:all"):
        build_taskset(data, "ovr:all")
    with pytest.raises(StgError, match="unknown attribute 'zz'.*valid attributes: a, b, c"):
        build_taskset(data, "attr:a,zz")
    with pytest.raises(StgError, match="preset 'tag9' is for celeba"):
        build_taskset(data, "tag9")
    lab = data.train_labels.clone()
    lab[:, 2] = torch.where(torch.isnan(lab[:, 2]), lab[:, 2], torch.zeros(()))
    empty = MultiLabelData("ml", ("a", "b", "c"), data.train_images, lab, data.test_images, data.test_labels)
    with pytest.raises(StgError, match="task 'c' is empty: no positive image in the train split"):
        build_taskset(empty, "attr:all")


def test_official_val_split_and_limit() -> None:
    d = ml_data(n=60)
    official = MultiLabelData("ml", d.attribute_names, d.train_images, d.train_labels, d.test_images,
                              d.test_labels, val_images=d.train_images[:10], val_labels=d.train_labels[:10])
    ts = build_taskset(official, None, seed=0, val_fraction=0.5)
    assert (len(ts.train), len(ts.val), len(ts.test)) == (60, 10, 12)  # val_fraction not used
    small = build_taskset(official, None, seed=0, limit=20)
    assert (len(small.train), len(small.val), len(small.test)) == (20, 5, 5)
    carved = build_taskset(d, None, seed=0, val_fraction=0.25)
    assert (len(carved.train), len(carved.val)) == (45, 15)


# ---------------------------------------------------------------------------------- formats


def write_csv_folder(root: Path, n: int = 48, *, missing: float = 0.2, seed: int = 0) -> Path:
    """A labels.csv folder: n small RGB PNGs of mixed sizes, 3 attributes (0/1, -1/1 and a
    union-friendly one), some cells empty, a split column."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        bright = i % 2
        size = (20, 16) if i % 3 else (16, 16)
        a = rng.integers(0, 80, (size[1], size[0], 3), dtype=np.uint8) + np.uint8(150 * bright)
        Image.fromarray(a).save(root / "img" / f"{i:03d}.png")
        labels = [bright, 1 - 2 * (i % 3 == 0), int(rng.random() < 0.4)]  # bright: 0/1; third: -1/1
        cells = ["" if (rng.random() < missing and i >= 6) else str(v) for v in labels]
        split = "test" if i % 6 == 5 else ("val" if i % 6 == 4 else "train")
        rows.append([f"img/{i:03d}.png", *cells, split])
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "bright", "third", "coin", "split"])
        w.writerows(rows)
    (root / "references.json").write_text(json.dumps({"pairs": {"light": ["bright"], "other": ["third", "coin"]}}))
    return root


def test_labels_csv_folder_loads_with_missing_labels(tmp_path: Path) -> None:
    root = write_csv_folder(tmp_path / "ml")
    names, files, labels, splits = read_labels_csv(root / "labels.csv")
    assert names == ["bright", "third", "coin"] and len(files) == 48 and splits is not None
    assert np.isnan(labels).any() and set(np.unique(labels[~np.isnan(labels)])) == {0.0, 1.0}
    data = load_csv_folder(root, image_size=16)
    assert data.train_images.shape[1:] == (3, 16, 16) and data.val_images is not None
    assert (len(data.train_labels), len(data.val_labels), len(data.test_labels)) == (32, 8, 8)
    assert data.references == {"pairs": {"light": ["bright"], "other": ["third", "coin"]}}


@pytest.mark.parametrize("header, row, needle", [
    (["file", "a"], ["x.png", "1"], "no 'path' column"),
    (["path", "a"], ["x.png", "2"], "column 'a' is not binary: value '2'"),
    (["path", "a"], ["x.png", "yes"], "column 'a' holds 'yes', not a label"),
    (["path", "a", "a"], ["x.png", "1", "0"], "column 'a' appears twice"),
    (["path", "a", "split"], ["x.png", "1", "dev"], "split 'dev' is not train, val or test"),
    (["path"], ["x.png"], "no label columns"),
])
def test_labels_csv_errors_are_one_line(tmp_path: Path, header: list[str], row: list[str], needle: str) -> None:
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "x.png")
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, row])
    with pytest.raises(StgError, match=needle.replace("(", r"\(")) as e:
        load_csv_folder(tmp_path)
    assert "\n" not in str(e.value)


def test_binary_labels_per_column_conventions() -> None:
    out = binary_labels(np.array([[0, -1, np.nan], [1, 1, 1]]), ["a", "b", "c"], "x")
    assert out.tolist()[1] == [1, 1, 1] and out[0, :2].tolist() == [0, 0] and np.isnan(out[0, 2])
    with pytest.raises(StgError, match="column 'a' mixes 0 and -1"):
        binary_labels(np.array([[0.0], [-1.0]]), ["a"], "x")


def test_multilabel_npz(tmp_path: Path) -> None:
    from stg.data.datasets import load_taskset

    rng = np.random.default_rng(0)
    y = (rng.random((30, 2)) > 0.5).astype(np.float32)
    y[:2] = [[1, 0], [0, 1]]
    y[5, 1] = np.nan
    path = tmp_path / "ml.npz"
    np.savez(path, train_images=rng.integers(0, 255, (30, 8, 8), dtype=np.uint8), train_labels=y,
             test_images=rng.integers(0, 255, (6, 8, 8), dtype=np.uint8),
             test_labels=np.where(rng.random((6, 2)) > 0.5, 1, -1), task_names=np.array(["smile", "hat"]))
    ts = load_taskset(str(path), tasks="attr:all;union:any=smile,hat")
    assert ts.task_names == ("smile", "hat", "any") and ts.has_missing_labels
    assert set(torch.unique(ts.test.labels[:, :2]).tolist()) <= {0.0, 1.0}


# ----------------------------------------------------------------------------------- CelebA


def write_celeba(root: Path, n_train: int = 18, n_val: int = 6, n_test: int = 6, seed: int = 0) -> Path:
    """root/celeba/ in the official formats, with SYNTHETIC 178x218 JPEGs and random attributes."""
    from PIL import Image

    from stg.data.celeba import celeba_references  # noqa: F401 (the asset must be readable)

    names = json.loads((Path(__file__).resolve().parents[1] / "stg/data/assets/celeba_references.json")
                       .read_text())["face-region"]
    attrs = sorted(a for members in names.values() for a in members)
    rng = np.random.default_rng(seed)
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    n = n_train + n_val + n_test
    values = np.where(rng.random((n, 40)) < 0.4, 1, -1)
    values[0], values[1] = 1, -1  # both values of every attribute in train
    files = [f"{i + 1:06d}.jpg" for i in range(n)]
    for i, f in enumerate(files):
        pixels = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "img_align_celeba" / f, quality=85)
    lines = [str(n), " ".join(attrs) + " "]
    lines += [f + "".join(f" {v:2d}" for v in row) for f, row in zip(files, values)]
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    part = [0] * n_train + [1] * n_val + [2] * n_test
    (folder / "list_eval_partition.txt").write_text("".join(f"{f} {p}\n" for f, p in zip(files, part)))
    return root


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_celeba(tmp_path_factory.mktemp("celeba"))


def test_celeba_parses_the_official_files(celeba_root: Path) -> None:
    from stg.data.celeba import load_celeba, parse_attributes

    names, files, values = parse_attributes(celeba_root / "celeba" / "list_attr_celeba.txt")
    assert len(names) == 40 and files[0] == "000001.jpg" and set(np.unique(values)) == {-1, 1}
    data = load_celeba(celeba_root, image_size=24)
    assert data.train_images.shape == (18, 3, 24, 24) and data.val_images.shape[0] == 6
    assert data.test_images.shape[0] == 6 and set(data.attribute_names) >= set(CELEBA_TAG9)
    assert torch.equal(data.train_labels, torch.from_numpy((values[:18] > 0).astype(np.float32)))
    ts = build_taskset(data, "tag9")
    assert ts.task_names == CELEBA_TAG9 and not ts.has_missing_labels
    assert sorted(t for g in ts.references["face-region"].values() for t in g) == sorted(CELEBA_TAG9)
    assert ts.references["face-region"]["hair"] == ["Black_Hair", "Blond_Hair", "Brown_Hair"]


def test_celeba_bad_files_are_one_line(tmp_path: Path, celeba_root: Path) -> None:
    import shutil

    from stg.data.celeba import load_celeba

    with pytest.raises(StgError, match="CelebA not found in .*pass --download"):
        load_celeba(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(celeba_root, bad)
    attr = bad / "celeba" / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    attr.write_text("\n".join([lines[0], lines[1], lines[2].replace(" 1", " 0", 1), *lines[3:]]) + "\n")
    with pytest.raises(StgError, match="line 3 has the value '0'"):
        load_celeba(bad)
    attr.write_text("\n".join(["99", *lines[1:]]) + "\n")
    with pytest.raises(StgError, match="line 1 says 99 images"):
        load_celeba(bad)


@pytest.mark.slow
def test_celeba_cli_describes_tag9_and_trains_a_datamap(celeba_root: Path, tmp_path: Path) -> None:
    info = json.loads(stg("data", "celeba", "--data-root", str(celeba_root), "--tasks", "tag9", "--json").stdout)
    assert info["task_names"] == list(CELEBA_TAG9) and info["n_tasks"] == 9
    assert (info["n_train"], info["n_val"], info["n_test"]) == (18, 6, 6)  # the fixture's official partition
    assert info["image_shape"] == [3, 64, 64] and "face-region" in info["references"]
    one_line_error(stg("data", "celeba", "--data-root", str(tmp_path), check=False), "CelebA not found")
    one_line_error(stg("data", "celeba", "--data-root", str(celeba_root), "--tasks", "ovr:all", check=False),
                   "multi-label")
    out = tmp_path / "run"
    stg("datamap", "--dataset", "celeba", "--data-root", str(celeba_root), "--tasks", "tag9", "--image-size", "24",
        "--epochs", "1", "--batch-size", "6", "--device", "cpu", "--out", str(out))
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "done" and meta["task_names"] == list(CELEBA_TAG9) and meta["n_val"] == 6


@pytest.mark.slow
def test_csv_folder_with_missing_labels_runs_datamap_group_and_train_groups(tmp_path: Path) -> None:
    from stg.runs.rundir import RunDir

    root = write_csv_folder(tmp_path / "ml", n=60)
    tasks = "attr:all;union:either=bright,third;random"
    out = tmp_path / "run"
    stg("datamap", "--dataset", str(root), "--tasks", tasks, "--image-size", "16", "--epochs", "2",
        "--batch-size", "8", "--device", "cpu", "--out", str(out))
    run = RunDir(out)
    meta = run.read()
    assert meta["status"] == "done" and meta["task_kinds"][0] == {"kind": "attr"}
    dm = run.load_datamap()
    with np.load(out / "samples.npz") as z:
        missing = z["labels"].T == 255  # samples.npz marks a missing label 255
    assert missing.any() and np.isnan(dm["confidence"][missing]).all()
    assert np.isfinite(dm["confidence"][~missing]).all()
    assert all(np.isfinite(r["val_loss"]) for r in meta["history"])
    stg("group", str(out), "--k", "2", "--name", "g2")
    g = run.read_grouping("g2")
    assert np.isfinite(np.array(g["membership"])).all() and "pairs" in g["scores"]
    stg("train-groups", str(out), "--grouping", "g2", "--epochs", "1", "--baselines", "mtl", "--device", "cpu")
    metrics = json.loads((run.groups_dir("g2") / "metrics.json").read_text())
    for model in ("grouped", "mtl"):
        per_task = metrics["models"][model]["per_task"]
        assert sorted(per_task) == sorted(meta["task_names"])
        assert all(v["accuracy"] is not None for v in per_task.values())


@pytest.mark.slow
def test_bad_labels_csv_is_one_line_from_the_cli(tmp_path: Path) -> None:
    root = write_csv_folder(tmp_path / "ml", n=12, missing=0.0)
    header, *rows = [r.split(",") for r in (root / "labels.csv").read_text().splitlines()]

    def write(head: list[str], body: list[list[str]]) -> None:
        (root / "labels.csv").write_text("\n".join(",".join(r) for r in [head, *body]) + "\n")

    notes = [r[:3] + (["maybe"] if i == 1 else r[3:4]) + r[4:] for i, r in enumerate(rows)]
    write(header[:3] + ["notes"] + header[4:], notes)  # a column that is not a label column
    one_line_error(stg("data", str(root), check=False), "column 'notes' holds 'maybe', not a label")
    write(header, [r[:3] + ["0"] + r[4:] for r in rows])  # a label column with no positive
    one_line_error(stg("data", str(root), check=False), "task 'coin' is empty: no positive image")
    one_line_error(stg("data", str(root), "--tasks", "attr:bright,hat", check=False), "unknown attribute 'hat'")


def test_celeba_download_goes_through_torchvision(tmp_path: Path, monkeypatch, celeba_root: Path) -> None:
    """--download calls torchvision's CelebA(root, download=True) (a stand-in here that writes the
    fixture, as the real one would write the official files), then parses what it wrote."""
    import shutil

    import torchvision.datasets

    from stg.data.celeba import load_celeba

    calls = []

    def fake_celeba(root: str, split: str, target_type: str, download: bool) -> None:
        calls.append((root, split, target_type, download))
        shutil.copytree(celeba_root / "celeba", Path(root) / "celeba")

    monkeypatch.setattr(torchvision.datasets, "CelebA", fake_celeba)
    data = load_celeba(tmp_path, download=True, image_size=16)
    assert calls == [(str(tmp_path), "all", "attr", True)] and data.train_images.shape[0] == 18
    load_celeba(tmp_path, download=True, image_size=16)
    assert len(calls) == 1  # present: nothing downloaded again

    def failing(*args, **kwargs):
        raise RuntimeError("To download files from GDrive, 'gdown' is required.")

    monkeypatch.setattr(torchvision.datasets, "CelebA", failing)
    with pytest.raises(StgError, match="downloading CelebA into .* failed .*gdown"):
        load_celeba(tmp_path / "other", download=True)
