"""The one training loop (stg.train.loop.train_loop): what hooks see and when they run, schedules
under a (stand-in) CUDA graph, exact resume with stateful hooks and schedules, and runs that draw
no randomness from torch's process-wide generator.

The CUDA-graph checks run on the CPU with ``RecordingCUDA``: tests/test_stepgraph.py's ``FakeCUDA``
with graphs that record what a real capture records (the ATen ops of the step, bound to the very
tensors they read and write) and replay exactly those ops. So a replay sees new contents written
*into* a captured tensor, but not a tensor the loop rebinds after capture, as on a GPU.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import stg.train.stepgraph as stepgraph
from stg.datamap.run import train_datamap
from stg.runs.rundir import RunDir
from stg.specialists.ensembles import build_ensemble, set_dropout, train_ensemble
from stg.train.config import TrainConfig
from stg.train.device import DeviceData, channel_stats, prepare_model
from stg.train.hooks import Hook, StepContext
from stg.train.loop import Monitor, train_loop
from stg.train.loss import per_task_bce
from stg.train.models import build_model
from stg.train.rng import seeded
from stg.train.schedules import Constant, Schedule
from stg.train.stepgraph import WARMUP_STEPS
from test_stepgraph import FakeCUDA, FakeGraph
from tiny import tiny_taskset

HERE = Path(__file__).resolve().parent
CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------------
# A CPU stand-in for CUDA graph capture and replay that records the step's ops
# ------------------------------------------------------------------------------------------------
def _written(func: Any, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors an ATen op writes in place: schema arguments marked ``(a!)``, and the running
    statistics ``native_batch_norm`` updates in training although its schema does not say so."""
    out: list[torch.Tensor] = []
    if func is torch.ops.aten.native_batch_norm.default and args[5]:
        out += [t for t in args[3:5] if isinstance(t, torch.Tensor)]
    for i, arg in enumerate(func._schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            values = value if isinstance(value, (list, tuple)) else [value]
            out += [t for t in values if isinstance(t, torch.Tensor)]
    return out


def _same_generator(a: torch.Generator | None, b: torch.Generator) -> bool:
    """Whether ``a`` and ``b`` are one generator (an op's generator argument is a new Python
    wrapper of it): set ``a`` to a marker state and look at ``b``."""
    if a is None or a.device != b.device:
        return False
    saved = a.get_state()
    marker = torch.Generator(device=a.device).manual_seed(0x5EED).get_state()
    a.set_state(marker)
    same = torch.equal(b.get_state(), marker)
    a.set_state(saved)
    return same


def _returns_alias(func: Any) -> bool:
    """The op returns (views of) its inputs, not new tensors."""
    return any(r.alias_info is not None for r in func._schema.returns)


class _Capture(TorchDispatchMode):
    """Records every ATen op run while active, and what it wrote that existed before the capture
    (to put back: a real capture runs nothing)."""

    def __init__(self, generators: list[torch.Generator]):
        super().__init__()
        self.generators = generators
        self.ops: list[tuple[Any, tuple, dict, Any]] = []
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._saved_ids: set[int] = set()
        self._fresh: set[int] = set()  # storages allocated during the capture

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            raise RuntimeError("operation not permitted when stream is capturing (a host sync)")
        if torch.Tag.nondeterministic_seeded in func.tags:
            gen = kwargs.get("generator")
            if not any(_same_generator(gen, g) for g in self.generators):
                raise RuntimeError(f"{func} draws from a generator the graph does not know: {gen}")
        for t in _written(func, args, kwargs):
            if t.untyped_storage().data_ptr() not in self._fresh and id(t) not in self._saved_ids:
                self._saved_ids.add(id(t))
                self.saved.append((t, t.detach().clone()))
        out = func(*args, **kwargs)
        if not _returns_alias(func):
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self._fresh.add(t.untyped_storage().data_ptr())
        if func.namespace != "profiler":
            self.ops.append((func, args, kwargs, out))
        return out

    def undo(self) -> None:
        with torch.no_grad():
            for t, old in reversed(self.saved):
                t.copy_(old)


class RecordedGraph(FakeGraph):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[Any, tuple, dict, Any]] | None = None
        self.replays = 0

    def replay(self) -> None:
        """Re-run the recorded ops on the recorded tensors: new results go into the captured
        output buffers, in-place ops write where they wrote; random ops draw from the registered
        generators' current state."""
        assert self.ops is not None, "replay before capture"
        self.replays += 1
        with torch._C._AutoDispatchBelowADInplaceOrView():
            for func, args, kwargs, out in self.ops:
                new = func(*args, **kwargs)
                if _returns_alias(func):
                    continue
                for old, value in zip(tree_flatten(out)[0], tree_flatten(new)[0]):
                    if isinstance(old, torch.Tensor):
                        old.copy_(value)


class RecordingCUDA(FakeCUDA):
    """FakeCUDA whose graphs record and replay the step (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.graphs: list[RecordedGraph] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().install(monkeypatch)
        fake = self

        @contextlib.contextmanager
        def graph(g: RecordedGraph, stream: object = None, capture_error_mode: str = "global") -> Iterator[None]:
            assert capture_error_mode == "thread_local"
            assert stream is not None and fake.streams == [stream]  # the warm-up steps' stream
            fake.captures += 1
            fake.graphs.append(g)
            states = [gen.get_state() for gen in g.generators]
            capture = _Capture(g.generators)
            try:
                with capture:
                    yield
            finally:
                capture.undo()  # recording runs nothing
                for gen, state in zip(g.generators, states):
                    gen.set_state(state)
            g.ops = capture.ops

        monkeypatch.setattr(torch.cuda, "CUDAGraph", RecordedGraph)
        monkeypatch.setattr(torch.cuda, "graph", graph)


def test_recording_graph_replays_captured_tensors_not_rebound_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in behaves as a CUDA graph would where the loop's schedule depends on it: a replay
    reads the current contents of the tensor it captured; rebinding the Python name is invisible."""
    fake = RecordingCUDA()
    fake.install(monkeypatch)
    lin = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(lin.parameters(), lr=0.1, fused=True)
    data = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    scale = {"w": torch.ones(())}

    def step(index: torch.Tensor) -> torch.Tensor:
        loss = lin(data[index]).square().mean() * scale["w"]
        loss.backward()
        opt.step()
        return loss.detach()

    runner = stepgraph.StepGraph(step, batch_size=4, device=CPU, optimizer=opt)
    index = torch.arange(4)
    for _ in range(WARMUP_STEPS):
        runner(index)
    before = [p.detach().clone() for p in lin.parameters()]
    first = runner(index).clone()  # capture (runs nothing) + the first replay
    assert runner.mode == "cuda-graph" and fake.captures == 1
    assert not all(torch.equal(a, b) for a, b in zip(before, lin.parameters())), "the replay trained"
    scale["w"].fill_(0.0)  # written in place: the graph sees it
    assert float(runner(index)) == 0.0
    scale["w"] = torch.full((), 2.0)  # rebound: the graph still reads the zeroed tensor
    assert float(runner(index)) == 0.0 and float(first) > 0


# ------------------------------------------------------------------------------------------------
# Helpers: a tiny problem trained through train_loop directly
# ------------------------------------------------------------------------------------------------
def _problem(n_train: int = 100, seed: int = 0, dropout: bool = True):
    ts = tiny_taskset(n_train=n_train)
    mean, std = channel_stats(ts.train.images)
    data = DeviceData(ts.train, CPU, mean, std)
    c, h, _ = ts.image_shape
    model = seeded(seed, lambda: build_model("cnn", in_channels=c, size=h, n_tasks=ts.n_tasks))
    if not dropout:
        set_dropout(model, 0.0)
    return prepare_model(model, CPU), data, ts.pos_weight.float()


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------------------------
# 1. What a hook sees
# ------------------------------------------------------------------------------------------------
class Recording(Hook):
    """Copies what the hook sees before and after every update."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def before_update(self, ctx: StepContext) -> None:
        self.steps.append({
            "step": ctx.step, "epoch": ctx.epoch,
            "params": {n: p.detach().clone() for n, p in ctx.model.named_parameters()},
            "shared_names": [n for n, _ in ctx.shared],
            "shared_are_params": all(p is dict(ctx.model.named_parameters())[n] for n, p in ctx.shared),
            "grads": {n: p.grad.detach().clone() for n, p in ctx.shared},
            "task_losses": ctx.task_losses.clone(), "weights": ctx.weights.clone(),
            "images": ctx.images.clone(), "targets": ctx.targets.clone(), "index": ctx.index.clone(),
            "logits": ctx.logits.clone(),
        })

    def after_update(self, ctx: StepContext) -> None:
        self.steps[-1]["after"] = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}


def test_hooks_see_pre_update_parameters_gradients_and_the_steps_own_losses() -> None:
    model, data, pos_weight = _problem(dropout=False)  # no dropout: the forward can be redone
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    hook = Recording()
    config = TrainConfig(epochs=2, batch_size=16, precision="fp32", device="cpu")  # augment on: ctx.images is the augmented batch
    weights = torch.tensor([1.0, 0.5, 2.0, 0.25])
    train_loop(model, data, pos_weight, config, schedule=Constant(weights), hooks=[hook])

    steps_per_epoch = math.ceil(len(data) / 16)
    assert [s["step"] for s in hook.steps] == list(range(2 * steps_per_epoch))
    names = [n for n, _ in model.named_parameters()]
    heads = [n for n in names if n.startswith("head.5.")]
    assert heads == ["head.5.weight", "head.5.bias"]
    for s in hook.steps:
        # ctx.shared: the trunk, the model's own parameter objects, without the task heads
        assert s["shared_names"] == [n for n in names if n not in heads] and s["shared_are_params"]
        assert "head.2.weight" in s["shared_names"]
        assert torch.equal(s["weights"], weights)
        assert torch.equal(s["targets"], data.labels[s["index"]])
    previous = initial
    for s in hook.steps:
        # before_update: the parameters the previous update left; after_update: changed by this one
        _assert_same(s["params"], previous)
        assert any(not torch.equal(s["params"][n], s["after"][n]) for n in names)
        assert all(not torch.equal(s["params"][n], s["after"][n]) for n in heads)
        previous = s["after"]
    _assert_same(previous, {n: p.detach() for n, p in model.named_parameters()})

    # ctx.task_losses (and logits, gradients) are this batch's, computed with the pre-update parameters
    for s in hook.steps:
        params = {n: p.clone().requires_grad_(True) for n, p in s["params"].items()}
        state = {**params, **{n: b.clone() for n, b in buffers.items()}}  # train mode: BN uses batch statistics
        logits = torch.func.functional_call(model, state, (s["images"],))
        losses = per_task_bce(logits, s["targets"], pos_weight=pos_weight)
        torch.testing.assert_close(s["task_losses"], losses.detach(), rtol=0, atol=1e-6)
        torch.testing.assert_close(s["logits"], logits.detach(), rtol=0, atol=1e-6)
        grads = torch.autograd.grad((losses * weights).sum(), [params[n] for n in s["shared_names"]])
        for n, g in zip(s["shared_names"], grads):
            torch.testing.assert_close(s["grads"][n], g, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# 2. Periodic hooks
# ------------------------------------------------------------------------------------------------
class Every(Hook):
    def __init__(self, every: int) -> None:
        self.every = every
        self.seen: list[tuple[int, int]] = []

    def before_update(self, ctx: StepContext) -> None:
        self.seen.append((ctx.epoch, ctx.step))


@pytest.mark.parametrize("graphs", [False, True])
def test_a_periodic_hook_runs_exactly_at_global_steps_0_F_2F(graphs: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = RecordingCUDA()
    if graphs:
        fake.install(monkeypatch)
    model, data, pos_weight = _problem(n_train=100)  # 7 steps an epoch (the last one short): 3 does not divide it
    every3, every1 = Every(3), Every(1)
    hooks = [every3] if graphs else [every3, every1]  # an every-step hook is not Python in a replay
    result = train_loop(model, data, pos_weight, TrainConfig(epochs=3, batch_size=16, device="cpu"),
                        schedule=Constant(torch.ones(4)), hooks=hooks)
    total = 3 * 7
    assert every3.seen == [(s // 7 + 1, s) for s in range(0, total, 3)]
    if graphs:
        assert fake.captures == 1 and result.history[-1]["step"] == "cuda-graph"
        assert fake.graphs[0].replays > 0
    else:
        assert every1.seen == [(s // 7 + 1, s) for s in range(total)]


# ------------------------------------------------------------------------------------------------
# 3. Schedules under CUDA graphs
# ------------------------------------------------------------------------------------------------
class EpochWeights(Schedule):
    """Other (T,) weights every epoch."""

    def weights(self, epoch: int, step: int) -> torch.Tensor:
        return torch.tensor([1.0, 0.2, 0.6, 1.4]).roll(epoch) * epoch


class StepWeights(Schedule):
    """Other (T,) weights every step."""

    per_step = True

    def weights(self, epoch: int, step: int) -> torch.Tensor:
        return torch.tensor([1.0, 0.2, 0.6, 1.4]).roll(step) * (1 + step % 5)


class Frozen(Schedule):
    """``inner``'s first weights at every step: what a graph that kept reading the weights it was
    captured with would train with."""

    def __init__(self, inner: Schedule):
        self.first = inner.weights(1, 0)

    def weights(self, epoch: int, step: int) -> torch.Tensor:
        return self.first


class WeightLog(Hook):
    def __init__(self) -> None:
        self.seen: list[tuple[int, int, torch.Tensor]] = []

    def before_update(self, ctx: StepContext) -> None:
        self.seen.append((ctx.epoch, ctx.step, ctx.weights.clone()))


def _train_scheduled(schedule: Schedule, graphs: bool, monkeypatch: pytest.MonkeyPatch, hooks=()):
    with monkeypatch.context() as m:
        fake = RecordingCUDA()
        if graphs:
            fake.install(m)
        model, data, pos_weight = _problem(n_train=100)  # dropout and augmentation on: the generators matter
        result = train_loop(model, data, pos_weight, TrainConfig(epochs=3, batch_size=16, device="cpu"),
                            schedule=schedule, hooks=hooks)
    return _params(model), result, fake, model


@pytest.mark.parametrize("schedule", [EpochWeights(), StepWeights()], ids=["per-epoch", "per-step"])
def test_schedules_change_the_weights_a_captured_graph_reads(schedule: Schedule, monkeypatch: pytest.MonkeyPatch) -> None:
    graphed, result, fake, model = _train_scheduled(schedule, True, monkeypatch)
    log = WeightLog()  # eager, so the hook sees every step (it changes nothing in the training)
    eager, eager_result, _, _ = _train_scheduled(schedule, False, monkeypatch, hooks=[log])
    # every step's loss used the schedule's weights for that step (per step or per epoch)
    assert [(e, s) for e, s, _ in log.seen] == [(s // 7 + 1, s) for s in range(3 * 7)]
    for epoch, step, w in log.seen:
        want = schedule.weights(epoch, step if schedule.per_step else (epoch - 1) * 7)
        assert torch.equal(w, want), (epoch, step)
    # the graph ran: one capture in epoch 1, replays in every epoch (the short last batch is eager)
    assert fake.captures == 1 and [r["step"] for r in result.history] == ["cuda-graph"] * 3
    assert fake.graphs[0].replays == 3 * 6 - WARMUP_STEPS
    drops = [mod.generator for mod in model.modules() if hasattr(mod, "generator")]
    assert drops and all(any(g is d for g in fake.graphs[0].generators) for d in drops)
    assert len(fake.graphs[0].generators) == 2  # the data (shuffle, crop/flip) and dropout streams
    assert eager_result.history[-1]["step"] == "eager"
    _assert_same(graphed, eager)
    assert [r["loss"] for r in result.history] == [r["loss"] for r in eager_result.history]
    # control: the schedule matters, so a graph that kept its capture-time weights would differ
    frozen, _, _, _ = _train_scheduled(Frozen(schedule), False, monkeypatch)
    assert any(not torch.equal(graphed[k], frozen[k]) for k in graphed)


# ------------------------------------------------------------------------------------------------
# 4. Exact resume with hooks and schedules
# ------------------------------------------------------------------------------------------------
def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_resume_after_kill_with_stateful_hooks_equals_uninterrupted_run(tmp_path: Path) -> None:
    script = HERE / "slow_loop_run.py"
    full, killed = tmp_path / "full", tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    reference = subprocess.Popen([sys.executable, str(script), str(full), "0"], env=env)
    proc = subprocess.Popen([sys.executable, str(script), str(killed), "0.02"], env=env)
    try:
        _wait_for(RunDir(killed).datamap_path(2), proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        meta = RunDir(killed).read()
        assert meta["status"] == "running" and 1 <= meta["epochs_done"] < 5, "killed mid-run"
        subprocess.run([sys.executable, str(script), str(killed), "0"], check=True, env=env, timeout=300)
        assert reference.wait(timeout=300) == 0
    finally:
        for p in (proc, reference):
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
    a, b = RunDir(full), RunDir(killed)
    assert a.read()["status"] == b.read()["status"] == "done"
    assert a.datamap_epochs() == b.datamap_epochs() == [1, 2, 3, 4, 5]
    for e in range(1, 6):
        da, db = a.load_datamap(e), b.load_datamap(e)
        for key in da:
            np.testing.assert_array_equal(da[key], db[key])
    ca = torch.load(full / "checkpoint.pt", weights_only=True)
    cb = torch.load(killed / "checkpoint.pt", weights_only=True)
    _assert_same(ca["model"], cb["model"])
    assert set(ca["hooks"]) == set(cb["hooks"]) >= {"RunningSum", "GradNorm"}
    for key in ("RunningSum", "GradNorm"):
        assert ca["hooks"][key].keys() == cb["hooks"][key].keys()
        for name, value in ca["hooks"][key].items():
            other = cb["hooks"][key][name]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, (key, name)
    for e in range(1, 6):
        for name in ("running_sum", "grad_norm"):
            fa = torch.load(full / "hooks" / f"{name}_{e:03d}.pt", weights_only=True)
            fb = torch.load(killed / "hooks" / f"{name}_{e:03d}.pt", weights_only=True)
            assert fa.keys() == fb.keys()
            for k in fa:
                assert torch.equal(torch.as_tensor(fa[k]), torch.as_tensor(fb[k])), (e, name, k)
    # the hooks' state really accumulated across epochs (a resume that lost it would show)
    last = torch.load(full / "hooks" / "grad_norm_005.pt", weights_only=True)
    assert last["calls"] == len(range(0, 5 * 10, 3))


class DriftingWeights(Schedule):
    """(k, T) weights that move by one more step every new epoch and wobble every step. The number
    of moves so far is the schedule's own state: a resumed run that lost it would restart the drift."""

    per_step = True

    def __init__(self, k: int, t: int) -> None:
        self.base = torch.ones(k, t)
        self.epoch = 0

    def weights(self, epoch: int, step: int) -> torch.Tensor:
        if epoch != self.epoch:
            self.base = self.base.roll(1, dims=-1) * torch.linspace(0.5, 1.5, self.base.shape[-1])
            self.epoch = epoch
        return self.base * (1.0 + 0.1 * (step % 3))

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.clone(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base, self.epoch = state["base"].clone(), int(state["epoch"])


class CancelAfterSteps(Monitor):
    """Cancels once ``steps`` steps have started (the loop asks before each step)."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps, self.asked = steps, 0

    def cancelled(self) -> bool:
        self.asked += 1
        return self.asked > self.steps


def _ensemble_training(checkpoint: Path, monitor: Monitor | None = None):
    ts = tiny_taskset(n_train=100)
    mean, std = channel_stats(ts.train.images)
    data = DeviceData(ts.train, CPU, mean, std)
    ensemble = build_ensemble("cnn", seeds=[3, 4], in_channels=1, size=16, n_tasks=ts.n_tasks, mode="loop")
    ensemble = prepare_model(ensemble, CPU)
    schedule = DriftingWeights(2, ts.n_tasks)
    result = train_ensemble(ensemble, schedule, data, ts.pos_weight.float(), TrainConfig(epochs=4, batch_size=16),
                            checkpoint=checkpoint, identity={"test": "drift"}, monitor=monitor)
    return result, ensemble, schedule


def test_grouped_training_with_a_stateful_schedule_resumes_exactly_after_cancel(tmp_path: Path) -> None:
    full, ens_full, sched_full = _ensemble_training(tmp_path / "full.pt")
    first, _, _ = _ensemble_training(tmp_path / "cut.pt", CancelAfterSteps(7 + 7 + 3))  # mid epoch 3
    assert first.status == "cancelled" and first.epochs_done == 2
    resumed, ens_cut, sched_cut = _ensemble_training(tmp_path / "cut.pt")  # fresh models and schedule, as a new process
    assert full.status == resumed.status == "done"
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    _assert_same(_params(ens_full), _params(ens_cut))
    assert sched_cut.epoch == sched_full.epoch == 4 and torch.equal(sched_cut.base, sched_full.base)
    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "cut.pt", weights_only=True)
    _assert_same(a["model"], b["model"])
    assert torch.equal(a["schedule"]["base"], b["schedule"]["base"]) and a["schedule"]["epoch"] == 4


# ------------------------------------------------------------------------------------------------
# 5. No process-wide randomness
# ------------------------------------------------------------------------------------------------
class Lockstep(Hook):
    """Makes two runs in two threads take their steps in turns (a barrier after every update),
    and records when each step ran."""

    def __init__(self, barrier: threading.Barrier | None) -> None:
        self.barrier = barrier
        self.times: list[float] = []

    def after_update(self, ctx: StepContext) -> None:
        self.times.append(time.monotonic())
        if self.barrier is not None:
            self.barrier.wait()


def test_runs_in_two_threads_draw_nothing_from_the_global_generator(tmp_path: Path) -> None:
    ts = tiny_taskset()
    configs = {seed: TrainConfig(epochs=3, batch_size=16, seed=seed, device="cpu") for seed in (1, 2)}
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    for seed, cfg in configs.items():  # one at a time
        train_datamap(ts, cfg, tmp_path / f"alone{seed}", hooks=[Lockstep(None)])
        assert torch.equal(torch.get_rng_state(), rng), "a run moved the global generator"

    barrier = threading.Barrier(2, timeout=120)
    hooks = {seed: Lockstep(barrier) for seed in configs}
    errors: list[BaseException] = []

    def run(seed: int) -> None:
        try:
            train_datamap(ts, configs[seed], tmp_path / f"thread{seed}", hooks=[hooks[seed]])
        except BaseException as e:  # reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(seed,)) for seed in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and not any(t.is_alive() for t in threads)
    assert torch.equal(torch.get_rng_state(), rng)
    t1, t2 = hooks[1].times, hooks[2].times
    assert len(t1) == len(t2) == 18 and t1[0] < t2[-1] and t2[0] < t1[-1], "the runs overlapped"

    maps = {}
    for name in ("alone1", "alone2", "thread1", "thread2"):
        run_dir = RunDir(tmp_path / name)
        assert run_dir.read()["status"] == "done"
        maps[name] = {e: run_dir.load_datamap(e) for e in (1, 2, 3)}
    for seed in (1, 2):
        for e in (1, 2, 3):
            for key in maps[f"alone{seed}"][e]:
                np.testing.assert_array_equal(maps[f"alone{seed}"][e][key], maps[f"thread{seed}"][e][key])
        ma = torch.load(tmp_path / f"alone{seed}" / "checkpoint.pt", weights_only=True)["model"]
        mt = torch.load(tmp_path / f"thread{seed}" / "checkpoint.pt", weights_only=True)["model"]
        _assert_same(ma, mt)
    assert not np.array_equal(maps["alone1"][3]["confidence"], maps["alone2"][3]["confidence"]), "the seeds differ"
