"""CUDA checks that have no CPU twin to take a device parameter (the loss, the recorder, crop/flip,
the written data maps and the fused ensembles take one in test_engine.py and test_groups.py).
Skipped where no CUDA GPU is visible: tests/conftest.py hides the GPU from the suite, whose exact
checks are CPU checks, unless STG_TEST_CUDA=1 (``benchmarks/gpu.sh`` sets it).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from stg.engine import TrainConfig, train_datamap, use_bf16
from stg.groups import train_groups
from stg.rundir import RunDir
from test_engine import CancelAfter
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


def test_cancel_on_cuda_stops_within_a_step(tmp_path: Path) -> None:
    ts = tiny_taskset()
    cancel = threading.Event()
    probe = CancelAfter(8, cancel)
    meta = train_datamap(ts, TrainConfig(epochs=3, batch_size=16, device="cuda"), tmp_path / "c",
                         cancel=cancel, probes=[probe])
    assert meta["status"] == "cancelled" and meta["epochs_done"] == 1 and probe.seen == 8


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
