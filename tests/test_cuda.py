"""CUDA checks that have no CPU twin to take a device parameter (the loss, the recorder, crop/flip,
the written data maps and the fused ensembles take one in test_engine.py and test_groups.py).
Skipped where no CUDA GPU is visible: tests/conftest.py hides the GPU from the suite, whose exact
checks are CPU checks, unless STG_TEST_CUDA=1 (``benchmarks/gpu.sh`` sets it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stg.datamap.run import train_datamap
from stg.train.config import TrainConfig
from stg.train.device import DeviceData, adam, channel_stats, use_bf16
from stg.train.loop import Monitor
from stg.specialists.grouped import train_groups
from stg.runs.rundir import RunDir
from stg.specialists.ensembles import build_ensemble, to_device, train_ensemble
from stg.train.stepgraph import StepGraph
from tiny import tiny_taskset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and STG_TEST_CUDA=1")
CUDA = torch.device("cuda")


def test_bf16_autocast_where_the_gpu_has_native_bf16() -> None:
    assert use_bf16(CUDA) == (torch.cuda.get_device_properties(CUDA).major >= 8 or bool(torch.version.hip))
    assert not use_bf16(CUDA, "fp32") and use_bf16(CUDA, "bf16")


@pytest.mark.parametrize("model", ["cnn", "resnet18-cifar"])
def test_datamap_run_on_cuda_resumes_from_its_checkpoint(tmp_path: Path, model: str) -> None:
    ts = tiny_taskset()
    meta = train_datamap(ts, TrainConfig(model=model, epochs=2, batch_size=20, device="cuda"), tmp_path / "run")
    assert meta["status"] == "done" and meta["device"].startswith("cuda")
    assert all(h["images_per_s"] > 0 and np.isfinite(h["loss"]) for h in meta["history"])
    meta = train_datamap(ts, TrainConfig(model=model, epochs=3, batch_size=20, device="cuda"), tmp_path / "run")
    assert meta["status"] == "done" and meta["epochs_done"] == 3
    assert RunDir(tmp_path / "run").datamap_epochs() == [1, 2, 3]


class CancelAfterChecks(Monitor):
    """Cancels at the loop's check before step ``steps`` + 1."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps, self.steps_allowed = steps, 0

    def cancelled(self) -> bool:
        if self.steps_allowed == self.steps:
            self.cancel.set()
        else:
            self.steps_allowed += 1
        return self.cancel.is_set()


def test_cancel_on_cuda_stops_within_a_step(tmp_path: Path) -> None:
    ts = tiny_taskset()
    monitor = CancelAfterChecks(8)  # graph replays run no Python hook: count the loop's cancel checks
    meta = train_datamap(ts, TrainConfig(epochs=3, batch_size=16, device="cuda"), tmp_path / "c", monitor=monitor)
    assert meta["status"] == "cancelled" and meta["epochs_done"] == 1 and monitor.steps_allowed == 8


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


def _graph_and_eager(monkeypatch: pytest.MonkeyPatch, run) -> dict[bool, object]:
    """run() once with CUDA graphs and once with STG_CUDA_GRAPHS=0: {True: graphed, False: eager}."""
    out = {}
    for graphs in (True, False):
        monkeypatch.setenv("STG_CUDA_GRAPHS", "1" if graphs else "0")
        out[graphs] = run()
    return out


def test_step_graph_replays_equal_eager_steps_across_reseeds_and_a_short_last_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A step drawing from its own generator (as crop/flip does) and from the default one (as dropout
    does): replays draw exactly what eager steps draw after the same re-seeding, and train the same."""

    def run():
        torch.manual_seed(0)
        lin = torch.nn.Linear(8, 3).to(CUDA)
        opt = adam(lin.parameters(), 1e-2, CUDA)
        g = torch.Generator(device=CUDA)
        data = torch.randn(72, 8, device=CUDA, generator=torch.Generator(device=CUDA).manual_seed(1))

        def step(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            noise = torch.randn(len(index), 8, device=CUDA, generator=g)
            loss = lin(F.dropout(data[index] + noise, 0.5)).square().mean()
            loss.backward()
            opt.step()
            return loss.detach(), noise

        graph = StepGraph(step, batch_size=16, device=CUDA, optimizer=opt, generators=[g])
        losses, noises = [], []
        for epoch in (1, 2):
            torch.manual_seed(100 + epoch)
            g.manual_seed(200 + epoch)
            for index in torch.arange(72, device=CUDA).split(16):  # 4 full batches and one of 8
                loss, noise = graph(index)
                losses.append(loss.clone())
                noises.append(noise.clone())
        return graph, torch.stack(losses), noises, [p.detach().clone() for p in lin.parameters()]

    out = _graph_and_eager(monkeypatch, run)
    graphed, eager = out[True], out[False]
    assert graphed[0].mode == "cuda-graph" and graphed[0].replays == 5  # 3 warm-up steps, then replays
    assert eager[0].mode == "eager" and eager[0].replays == 0
    assert all(torch.equal(a, b) for a, b in zip(graphed[2], eager[2]))
    torch.testing.assert_close(graphed[1], eager[1], atol=1e-6, rtol=1e-6)
    for a, b in zip(graphed[3], eager[3]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model", ["cnn", "resnet18-cifar"])
def test_datamap_run_with_cuda_graphs_equals_the_eager_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             model: str) -> None:
    ts = tiny_taskset()  # 96 training images: 4 batches of 20 and one of 16 per epoch
    config = TrainConfig(model=model, epochs=3, batch_size=20, device="cuda", precision="fp32")
    runs = iter(("graphed", "eager"))
    out = _graph_and_eager(monkeypatch, lambda: train_datamap(ts, config, tmp_path / next(runs)))
    assert out[True]["history"][-1]["step"] == "cuda-graph"
    assert out[False]["history"][-1]["step"] == "eager"
    graphed, eager = RunDir(tmp_path / "graphed").load_datamap(3), RunDir(tmp_path / "eager").load_datamap(3)
    for key in ("confidence", "variability"):
        np.testing.assert_allclose(graphed[key], eager[key], atol=2e-3)
    np.testing.assert_allclose([h["loss"] for h in out[True]["history"]],
                               [h["loss"] for h in out[False]["history"]], rtol=1e-3)


@pytest.mark.parametrize("model", ["cnn", "resnet18-cifar"])
def test_specialists_with_cuda_graphs_equal_eager_training(monkeypatch: pytest.MonkeyPatch, model: str) -> None:
    ts = tiny_taskset(n_train=56, size=12)
    mean, std = channel_stats(ts.train.images)
    data = DeviceData(ts.train, CUDA, mean, std)
    pw = ts.pos_weight.to(CUDA)
    w = torch.rand(4, 3, generator=torch.Generator().manual_seed(2))

    def run():
        ens = to_device(build_ensemble(model, seeds=[1, 2, 3], in_channels=1, size=12, n_tasks=4, device=CUDA), CUDA)
        result = train_ensemble(ens, w, data, pw, TrainConfig(epochs=3, batch_size=16, lr=1e-3, seed=4, precision="fp32"))
        return result, ens.state_dicts()

    out = _graph_and_eager(monkeypatch, run)
    assert out[True][0].history[-1]["step"] == "cuda-graph" and out[False][0].history[-1]["step"] == "eager"
    for a, b in zip(out[True][1], out[False][1]):
        for key in a:
            torch.testing.assert_close(a[key].float(), b[key].float(), atol=1e-3, rtol=1e-3)


def test_mt2st_schedule_with_cuda_graphs_equals_eager_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """A per-step MT2ST schedule whose weights change between replays of one graph, then the
    primary-only phase (a second graph): graphed == eager within float tolerance."""
    from stg.mt2st.schedules import make_schedule
    from stg.mt2st.train import train_scheduled
    from stg.train.device import prepare_model
    from stg.train.models import build_model
    from stg.train.rng import seeded

    ts = tiny_taskset(n_train=80, size=12)
    mean, std = channel_stats(ts.train.images)
    data = DeviceData(ts.train, CUDA, mean, std)
    schedule = make_schedule("diminish-code", w0=0.5, eps=0.2, per_step=True)  # 2 multi-task + 1 primary epoch

    def run():
        model = prepare_model(seeded(0, lambda: build_model("cnn", in_channels=1, size=12, n_tasks=4)), CUDA)
        r = train_scheduled(model, data, ts.pos_weight.to(CUDA), TrainConfig(epochs=3, batch_size=16, seed=2,
                                                                              precision="fp32"),
                            primary=[1], schedule=schedule)
        return r, {k: v.detach().float().cpu() for k, v in model.state_dict().items()}

    out = _graph_and_eager(monkeypatch, run)
    (g, ga), (e, ea) = out[True], out[False]
    assert g.multitask_epochs == 2 and g.skipped
    assert all(r["step"] == "cuda-graph" for r in g.history) and all(r["step"] == "eager" for r in e.history)
    np.testing.assert_allclose([r["loss"] for r in g.history], [r["loss"] for r in e.history], rtol=1e-3)
    for key in ga:
        torch.testing.assert_close(ga[key], ea[key], atol=1e-3, rtol=1e-3)
