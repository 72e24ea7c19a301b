"""Specialists (fused == separate), metrics vs scikit-learn, train_groups end to end, resume, bad input."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from stg.datamap.run import train_datamap
from stg.train.config import TrainConfig
from stg.train.device import DeviceData, channel_stats
from stg.train.loop import Monitor
from stg.errors import StgError
from stg.specialists.evaluate import auroc, binary_metrics, ensemble_logits, ensemble_weights
from stg.specialists.grouped import evaluate_plan, plan_groups, random_hard_grouping, summary_table, train_groups
from stg.train.loss import weighted_bce
from stg.train.models import PaperCNN
from stg.runs.rundir import RunDir, atomic_write_json
from stg.specialists.ensembles import (
    LoopEnsemble,
    VmapEnsemble,
    WideCNN,
    build_ensemble,
    ensemble_loss,
    set_dropout,
    train_ensemble,
)
from tiny import CPU_AND_CUDA, out_of_memory_after, tiny_taskset


class DoubleData(DeviceData):
    """float64 batches, so fused-vs-separate comparisons are not swamped by float32 rounding."""

    def batch(self, index, *, augment, generator):
        x, y = super().batch(index, augment=augment, generator=generator)
        return x.double(), y.double()


def _data(taskset, cls=DoubleData):
    mean, std = channel_stats(taskset.train.images)
    return cls(taskset.train, torch.device("cpu"), mean, std)


def _max_diff(a: list[dict], b: list[dict]) -> float:
    assert [set(s) for s in a] == [set(s) for s in b]
    return max(float((x[key].double() - y[key].double()).abs().max()) for x, y in zip(a, b) for key in x)


# ------------------------------------------------------------------------------------------------
# fused ensembles == separate models
# ------------------------------------------------------------------------------------------------
@CPU_AND_CUDA
def test_wide_cnn_equals_separate_cnns(device: str) -> None:
    seeds, t = [3, 4, 5], 4
    fused = build_ensemble("cnn", seeds=seeds, in_channels=1, size=16, n_tasks=t, mode="wide").double().to(device)
    loop = build_ensemble("cnn", seeds=seeds, in_channels=1, size=16, n_tasks=t, mode="loop").double().to(device)
    assert isinstance(fused, WideCNN)
    set_dropout(fused, 0.0)
    set_dropout(loop, 0.0)
    assert _max_diff(fused.state_dicts(), loop.state_dicts()) == 0.0  # same init as standalone models
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 16, 16, generator=g, dtype=torch.float64).to(device)
    y = (torch.rand(6, t, generator=g) < 0.4).double().to(device)
    pos_weight = (torch.rand(t, generator=g, dtype=torch.float64) + 0.5).to(device)
    w = torch.rand(t, 3, generator=g, dtype=torch.float64).to(device)
    torch.testing.assert_close(fused(x), loop(x), atol=1e-5, rtol=0)
    for ens in (fused, loop):  # one Adam step on the summed per-model losses
        opt = torch.optim.Adam(ens.parameters(), lr=1e-3)
        ensemble_loss(ens(x), y, pos_weight=pos_weight, weights=w).sum().backward()
        opt.step()
    assert _max_diff(fused.state_dicts(), loop.state_dicts()) < 1e-5  # weights and BN running stats
    fused.eval()
    loop.eval()
    torch.testing.assert_close(fused(x), loop(x), atol=1e-5, rtol=0)


@CPU_AND_CUDA
def test_vmap_resnet_equals_separate_resnets(device: str) -> None:
    """float32 (float64 convs are slow on CPU): outputs, gradients, BN running stats, an SGD step.
    (Adam's first step is lr * sign(g), which turns float32 noise in near-zero gradients into
    lr-sized differences, hence SGD here; the CNN test above checks Adam in float64.)"""
    seeds, t = [3, 4], 3
    fused = build_ensemble("resnet18-cifar", seeds=seeds, in_channels=1, size=8, n_tasks=t, mode="vmap").to(device)
    loop = build_ensemble("resnet18-cifar", seeds=seeds, in_channels=1, size=8, n_tasks=t, mode="loop").to(device)
    assert isinstance(fused, VmapEnsemble)
    assert _max_diff(fused.state_dicts(), loop.state_dicts()) == 0.0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=g).to(device)
    y = (torch.rand(4, t, generator=g) < 0.4).float().to(device)
    w = torch.rand(t, 2, generator=g).to(device)
    outs = []
    for ens in (fused, loop):
        opt = torch.optim.SGD(ens.parameters(), lr=0.01)
        out = ens(x)
        outs.append(out.detach())
        ensemble_loss(out, y, pos_weight=torch.ones(t, device=device), weights=w).sum().backward()
        opt.step()
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)
    assert _max_diff(fused.state_dicts(), loop.state_dicts()) < 1e-5
    fused.eval()
    loop.eval()
    torch.testing.assert_close(fused(x), loop(x), atol=1e-4, rtol=0)


def test_auto_mode_fuses_on_cuda_and_loops_on_cpu() -> None:
    kw = dict(seeds=[0, 1], in_channels=1, size=12, n_tasks=3)
    assert isinstance(build_ensemble("cnn", device=torch.device("cuda"), **kw), WideCNN)
    assert isinstance(build_ensemble("resnet18-cifar", device=torch.device("cuda"), **kw), VmapEnsemble)
    assert isinstance(build_ensemble("cnn", device=torch.device("cpu"), **kw), LoopEnsemble)


def test_wide_cnn_state_dicts_load_into_paper_cnn() -> None:
    wide = build_ensemble("cnn", seeds=[0, 1], in_channels=3, size=12, n_tasks=5, mode="wide").eval()
    x = torch.randn(4, 3, 12, 12)
    out = wide(x)
    for c, state in enumerate(wide.state_dicts()):
        net = PaperCNN(3, 12, 5).eval()
        net.load_state_dict(state)
        torch.testing.assert_close(net(x), out[c], atol=1e-5, rtol=0)


def test_ensemble_loss_is_weighted_bce_per_model() -> None:
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(3, 9, 5, generator=g), (torch.rand(9, 5, generator=g) < 0.5).float()
    pw, w = torch.rand(5, generator=g) + 0.5, torch.rand(5, 3, generator=g)
    ref = torch.stack([weighted_bce(z[c], y, pos_weight=pw, task_weights=w[:, c]) for c in range(3)])
    torch.testing.assert_close(ensemble_loss(z, y, pos_weight=pw, weights=w), ref)


def test_concurrent_training_equals_sequential() -> None:
    ts = tiny_taskset(n_train=32, size=12)
    data = _data(ts)
    pw = ts.pos_weight.double()
    w = torch.rand(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    config = TrainConfig(epochs=2, batch_size=16, lr=1e-3, seed=7, augment=True)
    fused = build_ensemble("cnn", seeds=[10, 11, 12], in_channels=1, size=12, n_tasks=4, mode="wide").double()
    set_dropout(fused, 0.0)
    train_ensemble(fused, w, data, pw, config)
    seq = []
    for c in range(3):  # one standalone model after another, same batch stream
        one = build_ensemble("cnn", seeds=[10 + c], in_channels=1, size=12, n_tasks=4, mode="loop").double()
        set_dropout(one, 0.0)
        train_ensemble(one, w[:, c:c + 1], data, pw, config)
        seq += one.state_dicts()
    assert _max_diff(fused.state_dicts(), seq) < 1e-4


def test_one_hot_specialist_equals_model_of_its_cluster() -> None:
    """Weights one-hot on a cluster == a model with only the cluster's heads (same init, same stream;
    dropout stays on: its masks have the same shapes in both). Other heads get zero gradient and
    Adam leaves them untouched."""
    ts = tiny_taskset(n_train=48, size=12)
    data = _data(ts)
    pw = ts.pos_weight.double()
    cluster = [1, 3]
    full = build_ensemble("cnn", seeds=[5], in_channels=1, size=12, n_tasks=4, mode="wide").double()
    init = full.state_dicts()[0]
    sub = WideCNN(1, in_channels=1, size=12, n_tasks=len(cluster)).double()
    sub_state = dict(init, **{"head.5.weight": init["head.5.weight"][cluster], "head.5.bias": init["head.5.bias"][cluster]})
    sub.load_state_dicts([sub_state])
    onehot = torch.zeros(4, 1, dtype=torch.float64)
    onehot[cluster] = 1.0
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-3, seed=3, augment=True)
    train_ensemble(full, onehot, data, pw, config)

    class SubData(DoubleData):
        def batch(self, index, *, augment, generator):
            x, y = super().batch(index, augment=augment, generator=generator)
            return x, y[:, cluster]

    train_ensemble(sub, torch.ones(len(cluster), 1, dtype=torch.float64), _data(ts, SubData), pw[cluster], config)
    full.eval()
    sub.eval()
    x, _ = data.batch(torch.arange(len(data)), augment=False, generator=None)
    torch.testing.assert_close(full(x)[0][:, cluster], sub(x)[0], atol=1e-6, rtol=0)
    after = full.state_dicts()[0]
    others = [t for t in range(4) if t not in cluster]
    assert torch.equal(after["head.5.weight"][others], init["head.5.weight"][others])


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------
def test_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    n, t = 300, 6
    labels = (rng.random((n, t)) < 0.3).astype(np.float64)
    logits = np.round(rng.normal(size=(n, t)) + labels * 1.2 - 0.8, 1)  # rounding makes ties
    logits[:, 4] = -np.abs(logits[:, 4]) - 0.1  # no positive prediction: F1 = 0
    m = binary_metrics(torch.from_numpy(logits), labels)
    for j in range(t):
        pred = (1 / (1 + np.exp(-logits[:, j])) > 0.5).astype(int)
        assert m["accuracy"][j] == pytest.approx(accuracy_score(labels[:, j], pred))
        assert m["balanced_accuracy"][j] == pytest.approx(balanced_accuracy_score(labels[:, j], pred))
        assert m["f1"][j] == pytest.approx(f1_score(labels[:, j], pred, zero_division=0))
        assert m["auroc"][j] == pytest.approx(roc_auc_score(labels[:, j], logits[:, j]))
    assert list(m["no_positive_prediction"]) == [j == 4 for j in range(t)]
    one_class = labels.copy()
    one_class[:, 2] = 0
    assert np.isnan(auroc(logits, one_class)[2]) and not np.isnan(auroc(logits, one_class)[1])


def test_ensembles() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=(3, 10, 4))
    w = rng.dirichlet(np.ones(3), size=4)  # (T, k)
    out = ensemble_logits(z, ensemble_weights(w, "membership"))
    ref = np.stack([sum(w[t, c] * z[c, :, t] for c in range(3)) for t in range(4)], axis=1)
    np.testing.assert_allclose(out, ref)
    best = ensemble_logits(z, ensemble_weights(w, "argmax"))
    np.testing.assert_allclose(best, np.stack([z[w[t].argmax(), :, t] for t in range(4)], axis=1))
    labels = np.array([0, 0, 1, 1, 1, 2])
    shuffled = random_hard_grouping(labels, seed=3)
    assert sorted(shuffled) == sorted(labels)
    # a seeded shuffle of the tasks: tasks labelled by their own index come out permuted, not in place
    order = random_hard_grouping(np.arange(6), seed=3)
    assert sorted(order) == list(range(6)) and not np.array_equal(order, np.arange(6))
    for seed in (0, 3, 7):
        out = random_hard_grouping(labels, seed=seed)
        assert np.array_equal(np.bincount(out, minlength=3), np.bincount(labels))  # the cluster sizes are kept
        assert np.array_equal(out, random_hard_grouping(labels, seed=seed))  # deterministic by seed
        assert np.array_equal(out, labels[random_hard_grouping(np.arange(6), seed=seed)])  # one permutation of the tasks
    assert not np.array_equal(random_hard_grouping(labels, seed=0), labels)  # not the grouping it was given
    assert len({tuple(random_hard_grouping(labels, seed=s)) for s in range(20)}) > 5  # the seed matters


# ------------------------------------------------------------------------------------------------
# train_groups end to end
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, object]:
    ts = tiny_taskset(n_train=48, n_val=16, size=12)
    path = tmp_path_factory.mktemp("groups") / "run"
    # fp32: a Ray worker runs on fewer threads, and bf16 would magnify the rounding differences
    train_datamap(ts, TrainConfig(epochs=2, batch_size=16, device="cpu", precision="fp32"), path)
    membership = [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.05, 0.95]]
    RunDir(path).write_grouping("g2", {"k": 2, "fuzziness": 1.07, "method": "fuzzy-kmeans", "seed": 0,
                                       "task_names": list(ts.task_names), "membership": membership,
                                       "labels": [0, 0, 1, 1]})
    return path, ts


def _copy_run(src: Path, dst: Path) -> RunDir:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("groups"))
    return RunDir(dst)


def test_train_groups_writes_metrics_and_resumes(tiny_run, tmp_path: Path) -> None:
    src, ts = tiny_run
    full = _copy_run(src, tmp_path / "full")
    metrics = train_groups(full, "g2", device="cpu", taskset=ts)
    saved = json.loads((full.groups_dir("g2") / "metrics.json").read_text())
    assert set(saved["models"]) == {"grouped", "grouped_argmax", "mtl", "random"}
    for block in saved["models"].values():
        assert set(block["per_task"]) == set(ts.task_names)
        for per in [*block["per_task"].values(), block["mean"]]:
            assert set(per) == {"accuracy", "balanced_accuracy", "f1", "auroc"}
    assert set(saved["gain_vs_mtl"]) == set(ts.task_names)
    assert set(saved["gain_vs_mtl"]["class_0"]) == {"balanced_accuracy", "f1"}
    assert isinstance(saved["losers"], list) and saved["config"]["epochs"] == 2
    # gain = grouped - mtl per task (None where either is undefined); losers: the tasks whose
    # balanced accuracy drops against mtl, in task order
    grouped, mtl = saved["models"]["grouped"]["per_task"], saved["models"]["mtl"]["per_task"]
    for t in ts.task_names:
        for key in ("balanced_accuracy", "f1"):
            got, g, m = saved["gain_vs_mtl"][t][key], grouped[t][key], mtl[t][key]
            if g is None or m is None:
                assert got is None, (t, key)
            else:
                assert got == pytest.approx(g - m, abs=1e-6), (t, key)
    ba = "balanced_accuracy"
    assert saved["losers"] == [t for t in ts.task_names if grouped[t][ba] is not None and mtl[t][ba] is not None
                               and grouped[t][ba] < mtl[t][ba]]
    assert metrics["gain_vs_mtl"] == saved["gain_vs_mtl"] and metrics["losers"] == saved["losers"]
    # the tiny run's gains may all be 0: the same evaluation on test logits where the specialists
    # win tasks 0-1 and lose tasks 2-3 against mtl
    plan = plan_groups(full, "g2", device="cpu", taskset=ts)
    y = torch.as_tensor(ts.test.labels).numpy()
    right, wrong = 4 * (2 * y - 1), np.where(np.arange(len(y))[:, None] % 2 == 0, 3.0, -3.0) * np.ones_like(y)
    good_on_01 = np.concatenate([right[:, :2], wrong[:, 2:]], axis=1)
    good_on_23 = np.concatenate([wrong[:, :2], right[:, 2:]], axis=1)
    logits = {"grouped": np.stack([good_on_01, good_on_01]), "mtl": good_on_23[None],
              "random": np.stack([wrong, wrong])}
    made = evaluate_plan(plan, {f.name: {"test_logits": logits[f.name], "seconds": 0.0, "history": []}
                                for f in plan.families}, 0.0)
    g2, m2 = made["models"]["grouped"]["per_task"], made["models"]["mtl"]["per_task"]
    for t in ts.task_names:
        for key in ("balanced_accuracy", "f1"):
            assert made["gain_vs_mtl"][t][key] == pytest.approx(g2[t][key] - m2[t][key], abs=1e-6), (t, key)
    assert [made["gain_vs_mtl"][t][ba] > 0 for t in ts.task_names] == [True, True, False, False]
    assert made["losers"] == list(ts.task_names[2:])
    assert json.loads((full.groups_dir("g2") / "status.json").read_text())["status"] == "done"
    assert any("grouped" in line for line in summary_table(metrics))

    # interrupted during the mtl family's second epoch, then resumed
    part = _copy_run(src, tmp_path / "part")
    cancel = threading.Event()

    def on_event(p) -> None:
        if p.kind == "epoch" and p.message.startswith("mtl (stage") and p.epoch == 1:
            cancel.set()

    first = train_groups(part, "g2", device="cpu", taskset=ts, monitor=Monitor(on_event, cancel))
    assert first["status"] == "cancelled"
    assert not (part.groups_dir("g2") / "metrics.json").exists()
    status = json.loads((part.groups_dir("g2") / "status.json").read_text())
    assert status["families"]["grouped"]["epochs_done"] == 2 and status["families"]["mtl"]["epochs_done"] == 1
    resumed = train_groups(part, "g2", device="cpu", taskset=ts)
    assert resumed["models"] == metrics["models"]
    for fam in ("grouped", "mtl", "random"):
        a = torch.load(full.groups_dir("g2") / f"{fam}.pt", weights_only=True)["model"]
        b = torch.load(part.groups_dir("g2") / f"{fam}.pt", weights_only=True)["model"]
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_bad_input(tiny_run, tmp_path: Path) -> None:
    src, ts = tiny_run
    run = _copy_run(src, tmp_path / "bad")
    with pytest.raises(StgError, match=r"unknown grouping 'nope'.*have: g2"):
        train_groups(run, "nope", taskset=ts)
    foreign = dict(run.read_grouping("g2"), task_names=["a", "b", "c", "d"])
    atomic_write_json(run.grouping_path("other"), foreign)
    with pytest.raises(StgError, match="other tasks"):
        train_groups(run, "other", taskset=ts)
    with pytest.raises(StgError, match="at least 1"):
        train_groups(run, "g2", epochs=0, taskset=ts)
    with pytest.raises(StgError, match="unknown baseline 'stlx'"):
        train_groups(run, "g2", baselines=("mtl", "stlx"), taskset=ts)
    with pytest.raises(StgError, match="unknown executor"):
        train_groups(run, "g2", executor="dask", taskset=ts)
    with pytest.raises(StgError, match="--executor ray takes --device auto, cpu or cuda, not 'cuda:1'"):
        train_groups(run, "g2", executor="ray", device="cuda:1", taskset=ts)
    assert not (run.path / "groups").exists()  # nothing written


def test_running_out_of_memory_in_grouped_training_is_one_line(tiny_run, tmp_path: Path, monkeypatch) -> None:
    import stg.train.loop

    src, ts = tiny_run
    run = _copy_run(src, tmp_path / "oom")
    monkeypatch.setattr(stg.train.loop, "per_task_bce", out_of_memory_after(4, stg.train.loop.per_task_bce))
    with pytest.raises(StgError, match=r"^out of memory on cpu \(tried to allocate 2\.00 gib\) while training "
                                       r"cnn specialists at batch size 16: .*resumes$"):
        train_groups(run, "g2", device="cpu", taskset=ts)
    status = json.loads((run.groups_dir("g2") / "status.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith("out of memory on cpu")


def test_ray_gpu_share() -> None:
    from stg.specialists.executors import ray_gpu_share

    assert ray_gpu_share("cpu", 8, 3) == 0 and ray_gpu_share("auto", 0, 3) == 0
    assert ray_gpu_share("cuda", 8, 3) == 1.0 and ray_gpu_share("auto", 3, 3) == 1.0  # a GPU each
    assert ray_gpu_share("cuda", 2, 3) == 0.5  # all three at once: two share a GPU
    assert ray_gpu_share("cuda", 1, 21) == 1 / 21
    with pytest.raises(StgError, match="the Ray cluster has no GPU"):
        ray_gpu_share("cuda", 0, 3)


@pytest.mark.slow
def test_ray_executor_matches_local(tiny_run, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    src, ts = tiny_run
    local = train_groups(_copy_run(src, tmp_path / "local"), "g2", epochs=1, baselines=("mtl",), device="cpu",
                         taskset=ts)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = train_groups(_copy_run(src, tmp_path / "ray"), "g2", epochs=1, baselines=("mtl",), device="cpu",
                              executor="ray", taskset=ts)
    finally:
        ray.shutdown()
    for name in ("grouped", "mtl"):
        for t in ts.task_names:
            for key, v in local["models"][name]["per_task"][t].items():
                assert remote["models"][name]["per_task"][t][key] == pytest.approx(v, abs=0.05, nan_ok=True)


def test_a_second_grouped_training_of_one_grouping_is_refused(tiny_run, tmp_path: Path) -> None:
    from stg.runs.rundir import exclusive

    src, ts = tiny_run
    run = _copy_run(src, tmp_path / "run")
    with exclusive(run.groups_dir("g2"), "grouped training of this grouping"):
        with pytest.raises(StgError, match="being written by another grouped training"):
            train_groups(run, "g2", epochs=1, baselines=(), device="cpu", taskset=ts)
    assert not (run.groups_dir("g2") / "metrics.json").exists()
