"""Data-map training on several processes (stg.train.distributed) with the gloo backend on the CPU:
two ranks train the same steps as one process (gradients, batches, random draws), give the same
data maps with the same command line, and a run whose rank 1 is killed mid-epoch resumes.

Each test starts processes through torchrun (``python -m torch.distributed.run``), as a user does;
OMP_NUM_THREADS=1 per rank (the test machine has two cores).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stg.cli import main
from stg.errors import StgError
from stg.runs.rundir import RunDir
from stg.train.distributed import Distributed

HERE = Path(__file__).resolve().parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


# -- the pieces, in one process ---------------------------------------------------------------------
def test_batches_split_into_contiguous_slices_and_shards_cover_every_row() -> None:
    ranks = [Distributed(r, 3, torch.device("cpu"), None) for r in range(3)]
    for b in (3, 7, 8, 128):
        slices = [d.local_slice(b) for d in ranks]
        assert slices[0][0] == 0 and slices[-1][1] == b
        assert all(a[1] == c[0] for a, c in zip(slices, slices[1:]))  # contiguous, in rank order
        assert [hi - lo for lo, hi in slices] == [len(p) for p in torch.arange(b).tensor_split(3)]
    for n in (3, 10, 50_000):
        shards = [d.shard(n) for d in ranks]
        assert shards[0][0] == 0 and shards[-1][1] == n and all(a[1] == c[0] for a, c in zip(shards, shards[1:]))


def test_a_batch_that_leaves_a_rank_without_rows_is_refused() -> None:
    d = Distributed(0, 4, torch.device("cpu"), None)
    d.check_batches(100, 32)  # last batch 4: one row per rank
    with pytest.raises(StgError, match="cannot be split across 4 processes"):
        d.check_batches(100, 3)
    with pytest.raises(StgError, match="batch of 2 images"):
        d.check_batches(98, 32)  # last batch 2


def test_sync_batchnorm_of_one_rank_is_batchnorm(tmp_path: Path) -> None:
    """The CPU SyncBatchNorm2d's formula (forward, backward through the all-reduced sums, running
    statistics) against nn.BatchNorm2d, on a 1-rank gloo group; the conversion keeps the parameter
    and buffer tensors (the optimizer and the checkpoint's keys do not change)."""
    import copy

    import torch.distributed as tdist

    from stg.train.distributed import SyncBatchNorm2d, sync_batchnorm

    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        g = torch.Generator().manual_seed(0)
        ref = torch.nn.BatchNorm2d(5)
        with torch.no_grad():
            ref.weight.copy_(torch.rand(5, generator=g) + 0.5)
            ref.bias.copy_(torch.randn(5, generator=g))
        model = torch.nn.Sequential(copy.deepcopy(ref))
        keys, weight = list(model.state_dict()), model[0].weight
        sync_batchnorm(model, torch.device("cpu"))
        assert isinstance(model[0], SyncBatchNorm2d) and model[0].weight is weight and list(model.state_dict()) == keys
        for _ in range(2):
            x = (torch.randn(6, 5, 4, 4, generator=g) * 3 + 1).to(memory_format=torch.channels_last)
            up = torch.randn(6, 5, 4, 4, generator=g)
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = ref(xa), model(xb)
            (ya * up).sum().backward()
            (yb * up).sum().backward()
            torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
        for name in ("weight", "bias"):
            torch.testing.assert_close(getattr(model[0], name).grad, getattr(ref, name).grad, rtol=1e-4, atol=1e-5)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(model[0], name), getattr(ref, name), rtol=1e-5, atol=1e-6)
    finally:
        tdist.destroy_process_group()


# -- two ranks against one process --------------------------------------------------------------------
def _steps(out: Path, ranks: int) -> dict:
    cmd = [*TORCHRUN[:4], "--nproc-per-node", str(ranks)] if ranks > 1 else [sys.executable]
    subprocess.run([*cmd, str(HERE / "ddp_steps.py"), str(out)], check=True, env=_env(), timeout=300,
                   cwd=HERE)
    return torch.load(out, weights_only=True)


@pytest.mark.slow
def test_two_ranks_take_the_same_steps_as_one_process(tmp_path: Path) -> None:
    """The paper CNN (batch norm, dropout) with crop/flip: every step's global batch, augmented
    images, logits and per-task losses, and the all-reduced gradients equal one process's, the
    epoch's short last batch (5 rows: 3 + 2) and missing labels included (ddp_steps.py)."""
    one, two = _steps(tmp_path / "one.pt", 1), _steps(tmp_path / "two.pt", 2)
    assert len(one["steps"]) == len(two["steps"]) == 6  # 2 epochs of 21 rows in batches of 8, 8, 5
    for a, b in zip(one["steps"], two["steps"]):
        assert torch.equal(a["index"], b["index"])  # the same global permutation
        assert torch.equal(a["images"], b["images"])  # the same crops and flips
        torch.testing.assert_close(b["targets"], a["targets"], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(b["logits"], a["logits"], rtol=1e-5, atol=1e-5)  # same dropout masks too
        torch.testing.assert_close(b["losses"], a["losses"], rtol=1e-5, atol=1e-6)
        for name, grad in a["grads"].items():
            # conv biases before batch norm have a zero gradient: there both are rounding (~1e-8)
            torch.testing.assert_close(b["grads"][name], grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)


def _tiny_npz(path: Path, n_train: int = 240, n_test: int = 40) -> Path:
    """Four classes of 8x8 grey images whose brightness in one quadrant encodes the class."""
    g = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        classes = g.integers(0, 4, n)
        x = g.integers(0, 60, (n, 8, 8))
        for c in range(4):
            x[classes == c, (c // 2) * 4:(c // 2) * 4 + 4, (c % 2) * 4:(c % 2) * 4 + 4] += 150
        return x.clip(0, 255).astype(np.uint8), classes

    (a, b), (c, d) = split(n_train), split(n_test)
    np.savez(path, train_images=a, train_labels=b, test_images=c, test_labels=d)
    return path


def _datamap_args(data: Path, out: Path, epochs: int) -> list[str]:
    return ["datamap", "--dataset", str(data), "--epochs", str(epochs), "--batch-size", "32", "--precision", "fp32",
            "--device", "cpu", "--out", str(out)]


def _epochs_done(run: Path) -> int:
    try:
        return int(RunDir(run).read()["epochs_done"])
    except StgError:  # not written yet
        return 0


def _wait_for_first_epoch(proc: subprocess.Popen, run: Path, before: str, timeout: float = 240) -> None:
    """Until ``run`` has finished an epoch; fails if torchrun ``proc`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while _epochs_done(run) < 1:
        assert proc.poll() is None, f"the run ended before {before}: " + proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _workers(parent: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes."""
    out = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if f"PPid:\t{parent}\n" not in status.read_text():
                continue
            env = (status.parent / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"RANK="):
                out[int(item[5:])] = int(status.parent.name)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's workers through /proc")
def test_two_ranks_equal_one_process_and_resume_after_a_rank_is_killed(tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2 -m stg datamap ...`` with the command line of a 1-process run
    (the default model: batch norm, dropout, crop/flip), its rank 1 killed mid-run (torchrun then
    stops rank 0) and the same command run again: it resumes, and every epoch's data map equals the
    1-process run's to float rounding (measured: 2e-7 at most). Then one more epoch of each in one
    process: a run started on two ranks resumes on one.

    Every process computes with one thread: CPU kernels round differently with another thread
    count, and training amplifies rounding (on this data a 1-process run with 2 threads differs
    from one with 1 thread by 2.5e-3 after 3 epochs, as much as from the 2 ranks)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank (OMP_NUM_THREADS=1): see the docstring
    try:
        _two_ranks_then_one(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _two_ranks_then_one(tmp_path: Path) -> None:
    data = _tiny_npz(tmp_path / "tiny.npz")
    epochs = 3
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_datamap_args(data, one, epochs)) == 0

    cmd = [*TORCHRUN, "-m", "stg", *_datamap_args(data, two, epochs)]
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_first_epoch(proc, two, "it could be killed")
        workers = _workers(proc.pid)
        os.kill(workers[1], signal.SIGKILL)
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    meta = RunDir(two).read()
    assert meta["status"] in ("running", "failed") and 1 <= meta["epochs_done"] < epochs, "killed mid-run"

    resumed = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr
    meta = RunDir(two).read()
    assert meta["status"] == "done" and meta["epochs_done"] == epochs and meta["processes"] == 2
    assert RunDir(two).datamap_epochs() == RunDir(one).datamap_epochs() == list(range(1, epochs + 1))
    worst = 0.0
    for e in range(1, epochs + 1):
        a, b = RunDir(one).load_datamap(e), RunDir(two).load_datamap(e)
        for key in a:
            assert a[key].shape == b[key].shape
            worst = max(worst, float(np.abs(a[key] - b[key]).max()))
            assert np.allclose(a[key], b[key], rtol=0, atol=1e-5), (e, key, float(np.abs(a[key] - b[key]).max()))
    print(f"largest difference between the data maps of 1 process and 2 ranks: {worst:.2g}")

    # the checkpoint holds the whole state: the 2-rank run goes on in one process like the 1-process run
    more = ["datamap", "--epochs", str(epochs + 1), "--out"]
    assert main([*more, str(two)]) == 0 and main([*more, str(one)]) == 0
    assert "processes" not in RunDir(two).read()
    a, b = RunDir(one).load_datamap(epochs + 1), RunDir(two).load_datamap(epochs + 1)
    for key in a:
        assert np.allclose(a[key], b[key], rtol=0, atol=1e-5), (key, float(np.abs(a[key] - b[key]).max()))


@pytest.mark.slow
def test_affinity_on_two_ranks_equals_one_process(tmp_path: Path) -> None:
    """``--affinity tag,cs`` under torchrun: rank 0 probes the global batch, so every epoch's TAG
    and gradient-cosine matrices equal a 1-process run's to float rounding, and so do the data maps
    (the probes change nothing in the training)."""
    from stg.affinity.files import affinity_path

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank (OMP_NUM_THREADS=1): see the test above
    try:
        data = _tiny_npz(tmp_path / "tiny.npz")
        one, two = tmp_path / "one", tmp_path / "two"
        probe = ["--affinity", "tag,cs", "--affinity-every", "2"]
        assert main([*_datamap_args(data, one, 2), *probe]) == 0
        cmd = [*TORCHRUN, "-m", "stg", *_datamap_args(data, two, 2), *probe]
        proc = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    finally:
        torch.set_num_threads(threads)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert RunDir(two).read()["processes"] == 2
    for method in ("tag", "cs"):
        for epoch in (1, 2):
            a = dict(np.load(affinity_path(one, method, epoch)))
            b = dict(np.load(affinity_path(two, method, epoch)))
            # 7 steps an epoch (216 / 32), global steps 0, 2, 4, ... probed: 4 in epoch 1, 3 in epoch 2
            assert int(a["probes"]) == int(b["probes"]) == {1: 4, 2: 3}[epoch]
            scale = float(np.abs(a["affinity"]).max())
            assert scale > 0
            np.testing.assert_allclose(b["affinity"], a["affinity"], rtol=0, atol=1e-4 * scale)
            print(f"{method} epoch {epoch}: largest difference {np.abs(a['affinity'] - b['affinity']).max():.2g}"
                  f" of values up to {scale:.2g}")
    for e in (1, 2):
        a, b = RunDir(one).load_datamap(e), RunDir(two).load_datamap(e)
        for key in a:
            assert np.allclose(a[key], b[key], rtol=0, atol=1e-5), (e, key)


@pytest.mark.slow
def test_ctrl_c_under_torchrun_cancels_every_rank_and_the_same_command_resumes(tmp_path: Path) -> None:
    """Ctrl-C in a terminal sends SIGINT to torchrun and its ranks (one process group): the ranks
    agree to stop at the same step, rank 0 records the run as cancelled with its finished epochs,
    and the same command line resumes it to the end."""
    data = _tiny_npz(tmp_path / "tiny.npz", n_train=1000)
    out = tmp_path / "two"
    cmd = [*TORCHRUN, "-m", "stg", *_datamap_args(data, out, 3)]
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # its own process group, as a terminal's foreground job
    try:
        _wait_for_first_epoch(proc, out, "Ctrl-C")
        os.killpg(proc.pid, signal.SIGINT)
        err = proc.communicate(timeout=120)[1].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    meta = RunDir(out).read()
    assert meta["status"] == "cancelled" and 1 <= meta["epochs_done"] < 3, (meta["status"], meta["epochs_done"], err[-800:])
    assert "to resume" in err and "KeyboardInterrupt" not in err  # no rank hard-stopped on the second SIGINT
    resumed = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr
    meta = RunDir(out).read()
    assert meta["status"] == "done" and meta["epochs_done"] == 3 and RunDir(out).datamap_epochs() == [1, 2, 3]


def test_under_torchrun_a_second_sigint_cancels_instead_of_hard_stopping(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun forwards Ctrl-C to its ranks, which the terminal already sent them: a rank that took
    the second SIGINT as a hard stop would die mid-step. One process keeps the hard stop."""
    from stg.cli import _ctrl_c_cancels

    monkeypatch.setenv("WORLD_SIZE", "2")
    with _ctrl_c_cancels() as cancel:
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs between the two
        assert cancel.is_set()
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(KeyboardInterrupt):
        with _ctrl_c_cancels() as cancel:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert cancel.is_set()
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
