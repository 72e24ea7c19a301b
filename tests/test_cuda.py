"""The CUDA code paths, checked the way the CPU ones are (crop/flip: a device parameter of its CPU
test in test_engine.py). Skipped where no CUDA GPU is visible. tests/conftest.py hides the GPU from
the rest of the suite, whose exact checks are CPU checks; run these with it visible:
``STG_TEST_CUDA=1 python -m pytest tests/test_cuda.py`` (``benchmarks/gpu.sh`` does).

TF32 is switched off inside these tests so that float32 comparisons keep float32 tolerances.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from stg.datamap import DataMapRecorder
from stg.engine import TrainConfig, train_datamap, use_bf16
from stg.groups import train_groups
from stg.loss import per_task_loop_bce, weighted_bce
from stg.rundir import RunDir
from stg.specialists import VmapEnsemble, WideCNN, build_ensemble, ensemble_loss, set_dropout
from test_engine import CancelAfter, ConfidenceLog
from tiny import tiny_taskset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and STG_TEST_CUDA=1")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_bf16_autocast_where_the_gpu_has_native_bf16() -> None:
    assert use_bf16(CUDA) == (torch.cuda.get_device_properties(CUDA).major >= 8 or bool(torch.version.hip))
    assert not use_bf16(CUDA, "fp32") and use_bf16(CUDA, "bf16")


def test_vectorised_loss_on_cuda_equals_per_task_loop() -> None:
    g = torch.Generator().manual_seed(0)
    b, t = 37, 23
    logits = (torch.randn(b, t, generator=g, dtype=torch.float64) * 4).to(CUDA)
    targets = (torch.rand(b, t, generator=g) < 0.3).double().to(CUDA)
    pw = (torch.rand(t, generator=g, dtype=torch.float64) * 20 + 0.1).to(CUDA)
    w = torch.rand(t, generator=g, dtype=torch.float64).to(CUDA)
    a, c = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    fast = weighted_bce(a, targets, pos_weight=pw, task_weights=w)
    slow = per_task_loop_bce(c, targets, pos_weight=pw, task_weights=w)
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-9)
    fast.backward()
    slow.backward()
    torch.testing.assert_close(a.grad, c.grad, rtol=1e-5, atol=1e-7)


def test_recorder_on_cuda_matches_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    n, t, epochs = 50, 7, 3
    rec = DataMapRecorder(n, t, device=CUDA)
    targets = (torch.rand(n, t, generator=g) < 0.5).float()
    seen = np.zeros((epochs, t, n))
    for e in range(epochs):
        logits = torch.randn(n, t, generator=g) * 3
        for index in torch.randperm(n, generator=g).split(8):
            rec.update(index.to(CUDA), logits[index].to(CUDA), targets[index].to(CUDA))
        p = torch.sigmoid(logits).double()
        seen[e] = torch.where(targets > 0.5, p, 1 - p).t().numpy()
    snap = rec.snapshot()
    np.testing.assert_allclose(snap["confidence"], seen.mean(0), atol=1e-5)
    np.testing.assert_allclose(snap["variability"], seen.std(0), atol=1e-5)
    np.testing.assert_allclose(snap["correctness"], (seen > 0.5).mean(0), atol=1e-6)


@pytest.mark.parametrize("model", ["cnn", "resnet18-cifar"])
def test_datamap_run_on_cuda_records_welford_maps_and_resumes(tmp_path: Path, model: str) -> None:
    ts = tiny_taskset()
    log = ConfidenceLog(len(ts.train), ts.n_tasks)
    cfg = TrainConfig(model=model, epochs=2, batch_size=20, device="cuda")
    meta = train_datamap(ts, cfg, tmp_path / "run", probes=[log])
    assert meta["status"] == "done" and meta["device"].startswith("cuda")
    assert all(h["images_per_s"] > 0 and np.isfinite(h["loss"]) for h in meta["history"])
    run = RunDir(tmp_path / "run")
    obs = np.stack([log.per_epoch[1], log.per_epoch[2]])
    dm = run.load_datamap(2)
    np.testing.assert_allclose(dm["confidence"], obs.mean(0), atol=1e-5)
    np.testing.assert_allclose(dm["variability"], obs.std(0), atol=1e-5)
    # more epochs resume from the CUDA checkpoint
    meta = train_datamap(ts, TrainConfig(model=model, epochs=3, batch_size=20, device="cuda"), tmp_path / "run")
    assert meta["status"] == "done" and meta["epochs_done"] == 3 and run.datamap_epochs() == [1, 2, 3]


def test_cancel_on_cuda_stops_within_a_step(tmp_path: Path) -> None:
    ts = tiny_taskset()
    cancel = threading.Event()
    probe = CancelAfter(8, cancel)
    meta = train_datamap(ts, TrainConfig(epochs=3, batch_size=16, device="cuda"), tmp_path / "c",
                         cancel=cancel, probes=[probe])
    assert meta["status"] == "cancelled" and meta["epochs_done"] == 1 and probe.seen == 8


def test_wide_cnn_on_cuda_equals_separate_cnns() -> None:
    seeds, t = [3, 4, 5], 4
    fused = build_ensemble("cnn", seeds=seeds, in_channels=1, size=16, n_tasks=t, mode="wide").double().to(CUDA)
    loop = build_ensemble("cnn", seeds=seeds, in_channels=1, size=16, n_tasks=t, mode="loop").double().to(CUDA)
    assert isinstance(fused, WideCNN)
    set_dropout(fused, 0.0)
    set_dropout(loop, 0.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 16, 16, generator=g, dtype=torch.float64).to(CUDA)
    y = (torch.rand(6, t, generator=g) < 0.4).double().to(CUDA)
    w = torch.rand(t, 3, generator=g, dtype=torch.float64).to(CUDA)
    torch.testing.assert_close(fused(x), loop(x), atol=1e-5, rtol=0)
    for ens in (fused, loop):
        opt = torch.optim.Adam(ens.parameters(), lr=1e-3)
        ensemble_loss(ens(x), y, pos_weight=torch.ones_like(w[:, 0]), weights=w).sum().backward()
        opt.step()
    for a, b in zip(fused.state_dicts(), loop.state_dicts()):
        assert all(float((a[k].double() - b[k].double()).abs().max()) < 1e-5 for k in a)


def test_vmap_resnet_on_cuda_equals_separate_resnets() -> None:
    seeds, t = [3, 4], 3
    fused = build_ensemble("resnet18-cifar", seeds=seeds, in_channels=1, size=8, n_tasks=t, mode="vmap").to(CUDA)
    loop = build_ensemble("resnet18-cifar", seeds=seeds, in_channels=1, size=8, n_tasks=t, mode="loop").to(CUDA)
    assert isinstance(fused, VmapEnsemble)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=g).to(CUDA)
    outs = [ens(x).detach() for ens in (fused, loop)]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=0)


def test_train_groups_on_cuda(tmp_path: Path) -> None:
    ts = tiny_taskset(n_train=48, n_val=16, size=12)
    path = tmp_path / "run"
    train_datamap(ts, TrainConfig(epochs=2, batch_size=16, device="cuda"), path)
    RunDir(path).write_grouping("g2", {"k": 2, "fuzziness": 1.07, "method": "fuzzy-kmeans", "seed": 0,
                                       "task_names": list(ts.task_names),
                                       "membership": [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.05, 0.95]],
                                       "labels": [0, 0, 1, 1]})
    metrics = train_groups(RunDir(path), "g2", device="cuda", taskset=ts, baselines=("mtl", "random", "stl"))
    assert set(metrics["models"]) == {"grouped", "grouped_argmax", "mtl", "random", "stl"}
    for block in metrics["models"].values():
        assert 0.0 <= block["mean"]["balanced_accuracy"] <= 1.0
