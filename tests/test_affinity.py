"""Inter-task affinity probes: TAG's lookahead affinity and the gradient cosine (stg.affinity.lookahead,
stg.affinity.cosine), and their training hooks (stg.affinity.probe)."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from stg.affinity.cosine import gradient_cosine, naive_gradient_cosine
from stg.affinity.lookahead import lookahead_affinity, naive_lookahead_affinity
from stg.affinity.files import AffinityConfig, affinity_path
from stg.affinity.probe import GradientCosine, TagAffinity, affinity_epochs, load_affinity, probes
from stg.datamap.run import train_datamap
from stg.errors import StgError
from stg.train.config import TrainConfig
from stg.train.hooks import StepContext
from stg.train.loop import Monitor
from stg.train.models import build_model, shared_parameters
from tiny import tiny_taskset
from test_engine import CancelAfter


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one intra-op thread is as fast, and spares the tests OpenMP's
    spin-waits when other processes share the cores (100x slower steps were seen on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mean_affinity(run, method):
    """The run's affinity: the mean of the per-epoch means."""
    return np.mean([load_affinity(run, method, e) for e in affinity_epochs(run, method)], axis=0)


def _cnn(seed: int, n_tasks: int = 5, dtype: torch.dtype = torch.float64, channels_last: bool = False):
    torch.manual_seed(seed)
    model = build_model("cnn", in_channels=1, size=12, n_tasks=n_tasks).to(dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    return model


def _batch(seed: int, n_tasks: int = 5, b: int = 16, dtype: torch.dtype = torch.float64, size: int = 12,
           channels: int = 1):
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(b, channels, size, size, generator=g, dtype=dtype)
    y = (torch.rand(b, n_tasks, generator=g) < 0.4).to(dtype)
    pos_weight = 0.5 + torch.rand(n_tasks, generator=g, dtype=dtype)
    return x, y, pos_weight


def _names(model):
    return [n for n, _ in shared_parameters(model)]


def _snapshot(model):
    """Parameters, buffers and .grad, cloned."""
    return ({n: p.detach().clone() for n, p in model.named_parameters()},
            {n: b.clone() for n, b in model.named_buffers()},
            {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()})


def _same(a, b):
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if x[k] is None or y[k] is None:
                assert x[k] is None and y[k] is None, k
            else:
                assert torch.equal(x[k], y[k]), k


# ------------------------------------------------------------------------------------------------
# Batched == naive
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lookahead_batched_matches_naive(seed):
    model = _cnn(seed)
    x, y, pw = _batch(seed)
    naive = naive_lookahead_affinity(model, x, y, pw, lr=0.05, shared_names=_names(model))
    assert naive.shape == (5, 5) and naive.dtype == torch.float64
    assert naive.diagonal().min() > 0  # a task's own step lowers its loss
    for chunk in (None, 1, 2, 3, 5):  # 2 and 3: chunk < T with a ragged last chunk
        batched = lookahead_affinity(model, x, y, pw, lr=0.05, shared_names=_names(model), chunk=chunk)
        torch.testing.assert_close(batched, naive, rtol=1e-9, atol=1e-12)
    scaled = lookahead_affinity(model, x, y, pw, lr=0.05, shared_names=_names(model), chunk=2, normalize_by_lr=True)
    torch.testing.assert_close(scaled, naive / 0.05, rtol=1e-9, atol=1e-11)


def test_lookahead_float32_channels_last_and_heads_fixed():
    """The training layout (float32, channels_last, stg's BatchNorm2d fast path in the reference),
    and the lookahead moves the given parameters only: with the trunk's first conv alone."""
    model = _cnn(3, dtype=torch.float32, channels_last=True)
    x, y, pw = _batch(3, dtype=torch.float32)
    x = x.to(memory_format=torch.channels_last)
    names = _names(model)
    batched = lookahead_affinity(model, x, y, pw, lr=0.05, shared_names=names, chunk=2)
    naive = naive_lookahead_affinity(model, x, y, pw, lr=0.05, shared_names=names)
    torch.testing.assert_close(batched, naive, rtol=1e-4, atol=2e-6)
    first = ["features.0.weight"]
    torch.testing.assert_close(lookahead_affinity(model, x, y, pw, lr=0.05, shared_names=first, chunk=5),
                               naive_lookahead_affinity(model, x, y, pw, lr=0.05, shared_names=first),
                               rtol=1e-4, atol=2e-6)


def test_lookahead_resnet_matches_naive():
    """A second architecture: torchvision's ResNet-18 (BatchNorm in the shortcuts, bias-free head)."""
    torch.manual_seed(0)
    model = build_model("resnet18-cifar", in_channels=1, size=8, n_tasks=3).double().train()
    x, y, pw = _batch(0, n_tasks=3, b=6, size=8)
    names = _names(model)
    assert "fc.weight" not in names
    batched = lookahead_affinity(model, x, y, pw, lr=0.01, shared_names=names, chunk=2)
    torch.testing.assert_close(batched, naive_lookahead_affinity(model, x, y, pw, lr=0.01, shared_names=names),
                               rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_cosine_batched_matches_naive(seed):
    model = _cnn(seed)
    x, y, pw = _batch(seed)
    naive = naive_gradient_cosine(model, x, y, pw, shared_names=_names(model))
    for chunk in (None, 2, 5):
        batched = gradient_cosine(model, x, y, pw, shared_names=_names(model), chunk=chunk)
        torch.testing.assert_close(batched, naive, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(naive, naive.T)
    torch.testing.assert_close(naive.diagonal(), torch.ones(5, dtype=torch.float64))


def test_cosine_is_one_cosine_of_the_concatenated_kernels():
    """CS as the official notebook: the kernels (ndim > 1) only, concatenated, one cosine."""
    model = _cnn(0)
    x, y, pw = _batch(0)
    names = _names(model)
    kernels = [n for n, p in model.named_parameters() if n in names and p.ndim > 1]
    grads = []
    for i in range(5):
        clone = build_model("cnn", in_channels=1, size=12, n_tasks=5).double()
        clone.load_state_dict(model.state_dict())
        clone.head[1].eval(), clone.head[4].eval()  # dropout off, as the probe
        from stg.train.loss import per_task_bce
        per_task_bce(clone(x), y, pos_weight=pw)[i].backward()
        grads.append(torch.cat([dict(clone.named_parameters())[n].grad.flatten() for n in kernels]))
    g = torch.stack(grads)
    expected = torch.nn.functional.cosine_similarity(g[:, None], g[None], dim=-1)
    torch.testing.assert_close(gradient_cosine(model, x, y, pw, shared_names=names), expected)


# ------------------------------------------------------------------------------------------------
# No side effects
# ------------------------------------------------------------------------------------------------
def test_probes_leave_parameters_buffers_and_grads_untouched():
    model = _cnn(0, dtype=torch.float32)
    x, y, pw = _batch(0, dtype=torch.float32)
    model(x).sum().backward()  # .grad as the training step leaves it
    with torch.no_grad():
        model(x)  # running statistics that differ from their initial values
    calls = []
    model.features[0].register_forward_hook(lambda *_: calls.append(1))  # the model's own hooks stay out
    before = _snapshot(model)
    lookahead_affinity(model, x, y, pw, lr=0.1, shared_names=_names(model), chunk=2)
    lookahead_affinity(model, x, y, pw, lr=0.1, shared_names=_names(model), chunk=1)
    gradient_cosine(model, x, y, pw, shared_names=_names(model))
    naive_lookahead_affinity(model, x, y, pw, lr=0.1, shared_names=_names(model))
    naive_gradient_cosine(model, x, y, pw, shared_names=_names(model))
    _same(before, _snapshot(model))
    assert model.training and all(m.training for m in model.modules())
    assert calls == []


def _ctx(model, x, y, pw, lr=0.01, step=0):
    logits = model(x)
    return StepContext(model=model, index=torch.arange(len(x)), images=x, targets=y, logits=logits.detach(),
                       task_losses=torch.zeros(y.shape[1]), weights=torch.ones(y.shape[1]), pos_weight=pw,
                       shared=shared_parameters(model), lr=lr, precision="auto", epoch=1, step=step)


def test_hooks_leave_grads_untouched_and_write_epoch_means(tmp_path):
    model = _cnn(1, dtype=torch.float32)
    x, y, pw = _batch(1, dtype=torch.float32)
    contexts = [_ctx(model, x, y, pw, lr=lr, step=3 * step) for step, lr in enumerate((0.01, 0.02))]
    model(x).sum().backward()
    before = _snapshot(model)
    tag, cs = TagAffinity(tmp_path, every=3), GradientCosine(tmp_path, every=3)
    tag_lr = TagAffinity(tmp_path / "lr", every=3, normalize_by_lr=True)
    expected = []
    for ctx in contexts:
        for h in (tag, cs, tag_lr):
            h.before_update(ctx)
        expected.append(lookahead_affinity(model, x, y, pw, lr=ctx.lr, shared_names=_names(model)).double())
    _same(before, _snapshot(model))
    fields = tag.end_epoch(1)
    assert fields["tag_probes"] == 2 and fields["tag_seconds"] >= 0
    assert cs.end_epoch(1)["cs_probes"] == 2
    tag_lr.end_epoch(1)
    mean = ((expected[0] + expected[1]) / 2).float().numpy()
    assert load_affinity(tmp_path, "tag").dtype == np.float32
    np.testing.assert_allclose(load_affinity(tmp_path, "tag"), mean, rtol=1e-6)
    np.testing.assert_allclose(load_affinity(tmp_path / "lr", "tag"),
                               ((expected[0] / 0.01 + expected[1] / 0.02) / 2).float().numpy(), rtol=1e-5)
    with np.load(affinity_path(tmp_path, "tag", 1)) as z:
        assert int(z["probes"]) == 2 and z["affinity"].shape == (5, 5)
    assert affinity_epochs(tmp_path, "tag") == [1] and affinity_epochs(tmp_path, "cs") == [1]
    # reset after the epoch; an epoch without probes writes no file
    assert tag.state_dict()["count"] == 0 and float(tag.state_dict()["sum"].abs().sum()) == 0
    assert tag.end_epoch(2) == {"tag_seconds": 0.0, "tag_probes": 0}
    assert affinity_epochs(tmp_path, "tag") == [1]
    with np.load(affinity_path(tmp_path / "lr", "tag", 1)) as z:
        assert bool(z["normalized_by_lr"])
    made = probes(tmp_path, AffinityConfig.parse("cs,tag", every=7))
    assert [type(h) for h in made] == [GradientCosine, TagAffinity] and {h.every for h in made} == {7}


def test_readers_fail_with_one_line(tmp_path):
    for call in (lambda: load_affinity(tmp_path, "tag"), lambda: load_affinity(tmp_path, "cs"),
                 lambda: load_affinity(tmp_path, "hoa")):
        with pytest.raises(StgError) as e:
            call()
        assert "\n" not in str(e.value)
    affinity_path(tmp_path, "tag", 2).parent.mkdir(parents=True)
    np.savez(affinity_path(tmp_path, "tag", 2), affinity=np.eye(3, dtype=np.float32), probes=np.int64(1))
    with pytest.raises(StgError, match="epoch 1"):
        load_affinity(tmp_path, "tag", 1)
    affinity_path(tmp_path, "tag", 3).write_bytes(b"not a zip")
    with pytest.raises(StgError, match="corrupt"):
        load_affinity(tmp_path, "tag")
    with pytest.raises(StgError):
        TagAffinity(tmp_path, every=0)
    with pytest.raises(StgError):
        lookahead_affinity(_cnn(0), *_batch(0), lr=0.0, shared_names=["features.0.weight"])


# ------------------------------------------------------------------------------------------------
# In the data-map run: resume is exact, the probe does not change the training
# ------------------------------------------------------------------------------------------------
def _files(run, method="tag"):
    out = {}
    for e in affinity_epochs(run, method):
        with np.load(affinity_path(run, method, e)) as z:
            out[e] = (z["affinity"].tobytes(), int(z["probes"]))
    return out


def test_resumed_run_writes_the_same_affinities(tmp_path):
    taskset = tiny_taskset()
    config = TrainConfig(epochs=3, batch_size=16, device="cpu")  # 96 images: 6 steps per epoch
    straight = tmp_path / "straight"
    meta = train_datamap(taskset, config, straight, hooks=[TagAffinity(straight, every=2)])
    assert [r["tag_probes"] for r in meta["history"]] == [3, 3, 3]  # global steps 0, 2, 4 | 6, 8, 10 | ...

    cut = tmp_path / "cut"
    cancel = threading.Event()
    meta = train_datamap(taskset, config, cut, monitor=Monitor(cancel=cancel),
                         hooks=[CancelAfter(6, cancel), TagAffinity(cut, every=2)])
    assert meta["status"] == "cancelled" and meta["epochs_done"] == 1
    assert affinity_epochs(cut, "tag") == [1]
    meta = train_datamap(taskset, config, cut, hooks=[TagAffinity(cut, every=2)])
    assert meta["status"] == "done"
    assert _files(cut) == _files(straight) and len(_files(straight)) == 3

    # the probe draws no random numbers and touches no gradient: the same training without it
    plain = tmp_path / "plain"
    train_datamap(taskset, dataclasses.replace(config, epochs=1), plain)
    name = "datamap/epoch_001.npz"
    with np.load(straight / name) as a, np.load(plain / name) as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


# ------------------------------------------------------------------------------------------------
# Semantics: a task of pure random labels has (near) no affinity with the others
# ------------------------------------------------------------------------------------------------
def _with_random_task(taskset, seed):
    g = torch.Generator().manual_seed(seed)

    def add(split):
        noise = (torch.rand(len(split), 1, generator=g) < 0.25).float()
        return dataclasses.replace(split, labels=torch.cat([split.labels, noise], 1))

    train = add(taskset.train)
    pos = train.labels.sum(0)
    return dataclasses.replace(taskset, train=train, val=add(taskset.val), test=add(taskset.test),
                               task_names=taskset.task_names + ("random",), references={}, task_kinds=(),
                               pos_weight=(len(train) - pos) / pos.clamp_min(1))


def test_random_task_has_little_affinity(tmp_path):
    """Measured over 8 seeds of this setup (36 probes): the mean |affinity| between real tasks is
    5-12x (TAG) and 7-24x (CS) the mean onto and from the random task; asserted: 2x."""
    taskset = _with_random_task(tiny_taskset(n_train=384), seed=1)
    train_datamap(taskset, TrainConfig(epochs=3, batch_size=32, device="cpu"), tmp_path,
                  hooks=[TagAffinity(tmp_path, every=1), GradientCosine(tmp_path, every=1)])
    off = ~np.eye(5, dtype=bool)
    real = off.copy()
    real[4, :] = real[:, 4] = False
    noise = off & ~real  # onto and from the random task
    for method in ("tag", "cs"):
        a = np.abs(_mean_affinity(tmp_path, method))
        assert a[noise].mean() * 2 < a[real].mean(), (method, a)


@pytest.mark.parametrize("kind", ["torch", "stg-cpu"])
def test_the_probe_of_a_synchronised_batch_norm_stays_local(kind: str) -> None:
    """On several processes the model's batch norms are synchronised (torch's SyncBatchNorm on
    CUDA, stg.train.distributed.SyncBatchNorm2d on the CPU); the probe, which holds the whole global
    batch on rank 0 alone, must not all-reduce: its skeleton normalises with the plain batch
    statistics, and the affinity equals the one of the same model with ordinary batch norms."""
    from stg.affinity.lookahead import probe_skeleton
    from stg.train.distributed import _convert_cpu

    ts = tiny_taskset(n_train=32)
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, size=16, n_tasks=ts.n_tasks)
    x, y = ts.train.images[:16].float() / 255, ts.train.labels[:16]
    shared = [n for n, _ in shared_parameters(model)]
    pw = ts.pos_weight.float()
    plain = lookahead_affinity(model, x, y, pw, shared_names=shared, lr=0.01)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) if kind == "torch" else _convert_cpu(model)
    skeleton = probe_skeleton(synced)
    norms = [m for m in skeleton.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.forward.__func__ is torch.nn.modules.batchnorm._BatchNorm.forward for m in norms)
    torch.testing.assert_close(lookahead_affinity(synced, x, y, pw, shared_names=shared, lr=0.01), plain)
