"""Engine numerics and run-directory behaviour: loss, Welford data maps, resume, cancel, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stg.datamap.recorder import DataMapRecorder
from stg.datamap.run import train_datamap
from stg.train.config import TrainConfig
from stg.train.hooks import Hook, StepContext
from stg.train.loop import Monitor
from stg.errors import StgError
from stg.train.loss import per_task_loop_bce, weighted_bce
from stg.runs.rundir import RunDir
from tiny import CPU_AND_CUDA, out_of_memory_after, tiny_taskset

HERE = Path(__file__).resolve().parent


@CPU_AND_CUDA
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_loss_equals_per_task_loop(seed: int, device: str) -> None:
    g = torch.Generator().manual_seed(seed)
    b, t = 37, 23
    logits = (torch.randn(b, t, generator=g, dtype=torch.float64) * 4).to(device)
    targets = (torch.rand(b, t, generator=g) < 0.3).double().to(device)
    pos_weight = (torch.rand(t, generator=g, dtype=torch.float64) * 20 + 0.1).to(device)
    weights = torch.rand(t, generator=g, dtype=torch.float64).to(device)
    fast = weighted_bce(logits, targets, pos_weight=pos_weight, task_weights=weights)
    slow = per_task_loop_bce(logits, targets, pos_weight=pos_weight, task_weights=weights)
    assert abs(float(fast) - float(slow)) < 1e-6 * max(1.0, abs(float(slow)))
    # and the gradients agree too
    a = logits.clone().requires_grad_(True)
    c = logits.clone().requires_grad_(True)
    weighted_bce(a, targets, pos_weight=pos_weight, task_weights=weights).backward()
    per_task_loop_bce(c, targets, pos_weight=pos_weight, task_weights=weights).backward()
    torch.testing.assert_close(a.grad, c.grad, rtol=1e-5, atol=1e-7)


@CPU_AND_CUDA
@pytest.mark.parametrize("ddof", [0, 1])
def test_recorder_matches_numpy_on_random_batches(ddof: int, device: str) -> None:
    g = torch.Generator().manual_seed(ddof)
    n, t, epochs = 50, 7, 4
    rec = DataMapRecorder(n, t, device=torch.device(device), ddof=ddof)
    targets = (torch.rand(n, t, generator=g) < 0.5).float()
    seen = np.zeros((epochs, t, n), dtype=np.float64)
    for e in range(epochs):
        logits = torch.randn(n, t, generator=g) * 3
        for index in torch.randperm(n, generator=g).split(8):
            rec.update(index.to(device), logits[index].to(device), targets[index].to(device))
        p = torch.sigmoid(logits).double()
        seen[e] = torch.where(targets > 0.5, p, 1 - p).t().numpy()
        snap = rec.snapshot()
        obs = seen[: e + 1]
        np.testing.assert_allclose(snap["confidence"], obs.mean(0), atol=1e-5)
        want_std = obs.std(0, ddof=ddof) if e + 1 > ddof else np.zeros((t, n))
        np.testing.assert_allclose(snap["variability"], want_std, atol=1e-5)
        np.testing.assert_allclose(snap["correctness"], (obs > 0.5).mean(0), atol=1e-6)
        assert all(v.dtype == np.float32 and v.shape == (t, n) for v in snap.values())


class ConfidenceLog(Hook):
    """A hook that keeps every step's confidences, to check the written data maps against."""

    def __init__(self, n: int, t: int):
        self.per_epoch: dict[int, np.ndarray] = {}
        self.n, self.t = n, t

    def after_update(self, ctx: StepContext) -> None:
        store = self.per_epoch.setdefault(ctx.epoch, np.full((self.t, self.n), np.nan))
        c = DataMapRecorder.confidence(ctx.logits, ctx.targets)
        store[:, ctx.index.cpu().numpy()] = c.t().double().cpu().numpy()


@CPU_AND_CUDA
@pytest.mark.parametrize("ddof", [0, 1])
def test_written_datamaps_are_welford_of_step_confidences(tmp_path: Path, ddof: int, device: str) -> None:
    ts = tiny_taskset()
    log = ConfidenceLog(len(ts.train), ts.n_tasks)
    train_datamap(ts, TrainConfig(epochs=3, batch_size=20, ddof=ddof, device=device), tmp_path / "run", hooks=[log])
    run = RunDir(tmp_path / "run")
    assert run.datamap_epochs() == [1, 2, 3]
    for epoch in (1, 2, 3):
        obs = np.stack([log.per_epoch[e] for e in range(1, epoch + 1)])
        assert not np.isnan(obs).any(), "every sample is seen exactly once per epoch"
        dm = run.load_datamap(epoch)
        np.testing.assert_allclose(dm["confidence"], obs.mean(0), atol=1e-5)
        want = obs.std(0, ddof=ddof) if epoch > ddof else np.zeros_like(obs[0])
        np.testing.assert_allclose(dm["variability"], want, atol=1e-5)
        np.testing.assert_allclose(dm["correctness"], (obs > 0.5).mean(0), atol=1e-6)
    meta = run.read()
    assert meta["status"] == "done" and meta["epochs_done"] == 3 and len(meta["history"]) == 3


def _datamaps(path: Path) -> dict[int, dict[str, np.ndarray]]:
    run = RunDir(path)
    return {e: run.load_datamap(e) for e in run.datamap_epochs()}


def _assert_same_run(a: Path, b: Path) -> None:
    da, db = _datamaps(a), _datamaps(b)
    assert sorted(da) == sorted(db)
    for e in da:
        for key in da[e]:
            np.testing.assert_array_equal(da[e][key], db[e][key])
    ca = torch.load(a / "checkpoint.pt", weights_only=True)["model"]
    cb = torch.load(b / "checkpoint.pt", weights_only=True)["model"]
    for key in ca:
        torch.testing.assert_close(ca[key], cb[key], rtol=0, atol=0)


def test_resume_after_kill_equals_uninterrupted_run(tmp_path: Path) -> None:
    script = HERE / "slow_run.py"
    full, killed = tmp_path / "full", tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([sys.executable, str(script), str(full), "0"], check=True, env=env, timeout=300)
    proc = subprocess.Popen([sys.executable, str(script), str(killed), "0.01"], env=env)
    deadline = time.monotonic() + 240
    while not RunDir(killed).datamap_path(2).exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    meta = RunDir(killed).read()
    assert meta["status"] == "running" and 1 <= meta["epochs_done"] < 5, "killed mid-run"
    subprocess.run([sys.executable, str(script), str(killed), "0"], check=True, env=env, timeout=300)
    assert RunDir(killed).read()["status"] == "done"
    _assert_same_run(full, killed)


class CancelAfter(Hook):
    def __init__(self, steps: int, event: threading.Event):
        self.steps, self.event, self.seen = steps, event, 0

    def after_update(self, ctx: StepContext) -> None:
        self.seen += 1
        if self.seen == self.steps:
            self.event.set()


def test_cancel_stops_within_a_step_and_resume_completes(tmp_path: Path) -> None:
    ts = tiny_taskset()
    cfg = TrainConfig(epochs=3, batch_size=16)  # 6 steps per epoch
    cancel = threading.Event()
    probe = CancelAfter(8, cancel)
    meta = train_datamap(ts, cfg, tmp_path / "c", monitor=Monitor(cancel=cancel), hooks=[probe])
    assert meta["status"] == "cancelled" and meta["epochs_done"] == 1
    assert probe.seen == 8, "no step runs after cancel is set"
    run = RunDir(tmp_path / "c")
    assert run.read()["status"] == "cancelled" and run.datamap_epochs() == [1]
    train_datamap(ts, cfg, tmp_path / "c")
    train_datamap(ts, cfg, tmp_path / "u")
    _assert_same_run(tmp_path / "u", tmp_path / "c")


def test_more_epochs_extend_a_finished_run(tmp_path: Path) -> None:
    ts = tiny_taskset()
    train_datamap(ts, TrainConfig(epochs=2, batch_size=16), tmp_path / "a")
    train_datamap(ts, TrainConfig(epochs=3, batch_size=16), tmp_path / "a")
    train_datamap(ts, TrainConfig(epochs=3, batch_size=16), tmp_path / "b")
    _assert_same_run(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"batch_size": 10_000}, "larger than the training split"),
        ({"model": "vgg"}, "unknown model 'vgg'"),
        ({"lr": -1.0}, "--lr must be a positive number"),
    ],
)
def test_bad_config_is_a_one_line_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(StgError, match=message) as info:
        train_datamap(tiny_taskset(), TrainConfig(**{"batch_size": 16, **kwargs}), tmp_path / "r")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "r").exists(), "nothing is written for bad input"


def test_cuda_without_gpu_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on GPU machines
    with pytest.raises(StgError, match="no CUDA GPU"):
        train_datamap(tiny_taskset(), TrainConfig(device="cuda", batch_size=16), tmp_path / "r")


def test_device_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from stg.train.device import device_choices, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:", "cuda:x", "cuda1"):
        with pytest.raises(StgError, match=f"unknown device '{bad}'"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # two GPUs, as far as stg can tell
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1") and resolve_device("auto") == torch.device("cuda")
    with pytest.raises(StgError, match=r"--device cuda:2: there is no such GPU \(2 visible"):
        resolve_device("cuda:2")
    assert device_choices() == ["auto", "cpu", "cuda", "cuda:0", "cuda:1"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device_choices() == ["auto", "cpu", "cuda"]


def test_other_run_in_out_is_refused_and_kept(tmp_path: Path) -> None:
    ts = tiny_taskset()
    train_datamap(ts, TrainConfig(epochs=1, batch_size=16), tmp_path / "r")
    before = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    with pytest.raises(StgError, match="holds another run"):
        train_datamap(ts, TrainConfig(epochs=1, batch_size=32), tmp_path / "r")
    after = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    assert before == after


def test_unwritable_or_foreign_out(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StgError, match="cannot write to|not a directory"):
        train_datamap(tiny_taskset(), TrainConfig(epochs=1, batch_size=16), blocker / "run")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(StgError, match="holds no stg run"):
        train_datamap(tiny_taskset(), TrainConfig(epochs=1, batch_size=16), foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_corrupt_checkpoint_is_reported_not_overwritten(tmp_path: Path) -> None:
    ts = tiny_taskset()
    train_datamap(ts, TrainConfig(epochs=1, batch_size=16), tmp_path / "r")
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(StgError, match="cannot be loaded"):
        train_datamap(ts, TrainConfig(epochs=2, batch_size=16), tmp_path / "r")
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == b"garbage"


def test_running_out_of_memory_is_one_line_and_keeps_finished_epochs(tmp_path: Path, monkeypatch) -> None:
    import stg.train.loop
    from stg.train.loss import per_task_bce

    ts = tiny_taskset()  # 6 steps an epoch at batch 16: fail in epoch 2
    monkeypatch.setattr(stg.train.loop, "per_task_bce", out_of_memory_after(8, per_task_bce))
    config = TrainConfig(epochs=3, batch_size=16)
    with pytest.raises(StgError) as info:
        train_datamap(ts, config, tmp_path / "r")
    message = str(info.value)
    assert "\n" not in message and "(tried to allocate 2.00 gib)" in message and "smaller --batch-size" in message
    meta = RunDir(tmp_path / "r").read()
    assert meta["status"] == "failed" and meta["error"] == message and meta["epochs_done"] == 1
    monkeypatch.setattr(stg.train.loop, "per_task_bce", per_task_bce)
    assert train_datamap(ts, config, tmp_path / "r")["status"] == "done"  # the same command resumes
    assert RunDir(tmp_path / "r").datamap_epochs() == [1, 2, 3]


@CPU_AND_CUDA
@pytest.mark.parametrize("pad", [1, 4])
def test_crop_flip_matches_a_per_image_reference(pad: int, device: str) -> None:
    from stg.train.augment import crop_flip

    b, h, w, c = 32, 9, 7, 3
    images = torch.randint(0, 256, (b, h, w, c), dtype=torch.uint8, generator=torch.Generator().manual_seed(pad))
    images = images.to(device)
    out = crop_flip(images, pad=pad, generator=torch.Generator(device).manual_seed(1))
    g = torch.Generator(device).manual_seed(1)  # the same draws, in the same order
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g, device=device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g, device=device)
    mirror = torch.rand((b,), generator=g, device=device) < 0.5
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2), (pad, pad, pad, pad))
    for i in range(b):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        if mirror[i]:
            crop = crop.flip(-1)
        assert torch.equal(out[i], crop.permute(1, 2, 0))
    assert 0 < int(mirror.sum()) < b, "both branches exercised"


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_stale_lock(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, str(HERE / "slow_run.py"), str(out), "0.01"], env=env)
    try:
        deadline = time.monotonic() + 240
        while not RunDir(out).datamap_path(1).exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        cfg = TrainConfig(epochs=5, batch_size=16)
        with pytest.raises(StgError, match="being written by another data-map run"):
            train_datamap(tiny_taskset(n_train=160), cfg, out)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    meta = train_datamap(tiny_taskset(n_train=160), TrainConfig(epochs=5, batch_size=16), out)
    assert meta["status"] == "done" and meta["epochs_done"] == 5


@pytest.mark.parametrize("bf16", [False, True])
def test_paper_cnn_pooling_before_relu_equals_the_papers_order(bf16: bool) -> None:
    """PaperCNN runs max-pool then ReLU; the paper's ReLU then max-pool gives bitwise the same
    logits and parameter gradients (ties included: bf16 activations and integer images have many)."""
    import copy

    from stg.train.models import PaperCNN

    torch.manual_seed(0)
    model = PaperCNN(3, 16, 5).to(memory_format=torch.channels_last)
    ref = copy.deepcopy(model)
    f = ref.features
    assert [type(f[i]).__name__ for i in (2, 3, 9, 10)] == ["MaxPool2d", "ReLU", "MaxPool2d", "ReLU"]
    ref.features = torch.nn.Sequential(f[0], f[1], f[3], f[2], *f[4:9], f[10], f[9])  # the paper's order
    x = torch.randint(-3, 4, (64, 3, 16, 16)).float().contiguous(memory_format=torch.channels_last)
    results = []
    for net in (model, ref):
        torch.manual_seed(1)  # the same dropout masks
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            z = net(x)
        z.float().sin().sum().backward()
        results.append((z, [p.grad for p in net.parameters()]))
    (z, grads), (z_ref, grads_ref) = results
    assert torch.equal(z, z_ref)
    assert all(torch.equal(g, r) for g, r in zip(grads, grads_ref))
    assert any(bool((g != 0).any()) for g in grads[:2]), "gradients reach the first conv"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_matches_torch_dropout_in_distribution(dtype: torch.dtype) -> None:
    from stg.train.models import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.2)
    x = (torch.rand(1000, 1000) + 0.5).to(dtype).requires_grad_()
    out = drop(x)
    kept = out != 0
    assert out.dtype == dtype
    assert abs(1 - float(kept.float().mean()) - 0.2) < 0.002  # 5 sigma for 10^6 draws
    assert torch.equal(out[kept], (x[kept] * 1.25).detach())  # 1 / (1 - p), exact in both dtypes
    out.sum().backward()
    assert torch.equal(x.grad, kept.to(dtype) * 1.25)
    drop.eval()
    assert drop(x) is x


@pytest.mark.parametrize("bf16", [False, True])
def test_batchnorm_as_a_matrix_equals_torch_batchnorm(bf16: bool) -> None:
    """stg's BatchNorm2d (channels_last batches normalised as (B*H*W, C) matrices on CPU) against
    torch's: outputs, input and parameter gradients, running statistics, in training and eval."""
    from stg.train.models import BatchNorm2d

    torch.manual_seed(0)
    ours, ref = BatchNorm2d(6), torch.nn.BatchNorm2d(6)
    with torch.no_grad():
        for m in (ours, ref):
            m.weight.copy_(torch.linspace(0.5, 2.0, 6))
            m.bias.copy_(torch.linspace(-1.0, 1.0, 6))
    x = (torch.randn(8, 6, 5, 7) * 3 + 1).contiguous(memory_format=torch.channels_last)
    g = torch.randn(8, 6, 5, 7)
    tol = dict(atol=2e-2, rtol=2e-2) if bf16 else dict(atol=1e-5, rtol=1e-5)
    outs = []
    for m in (ours, ref):
        xi = x.clone().requires_grad_(True)
        for _ in range(2):  # running statistics move twice
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = m(xi)
        (y.float() * g).sum().backward()
        outs.append((y, xi.grad, m.weight.grad, m.bias.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a.float(), b.float(), **tol)
    assert outs[0][0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.running_var, ref.running_var, atol=1e-5, rtol=1e-5)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 2
    ours.eval()
    ref.eval()
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="4D"):
        ours(torch.zeros(2, 6, 3))
