"""MT2ST: schedules against their formulas, auxiliary gradients that really flow (and stop), the
auxiliary heads' work skipped with the same result as zero weights, schedules under a (stand-in)
CUDA graph, grouped training and `stg mt2st` end to end, bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call

from stg.cli import main
from stg.data.spec import DataSpec
from stg.datamap.run import train_datamap
from stg.errors import StgError
from stg.mt2st.plots import weight_curves
from stg.mt2st.schedules import SCHEDULES, AuxSchedule, aux_weights, factors, make_schedule, primary_of_membership
from stg.mt2st.target import compare, plan_target, train_target, train_target_run
from stg.mt2st.train import restrict_model, train_scheduled
from stg.runs.rundir import RunDir
from stg.specialists.ensembles import build_ensemble, set_dropout, train_ensemble
from stg.specialists.grouped import plan_groups, train_groups
from stg.train.config import TrainConfig
from stg.train.device import DeviceData, channel_stats, prepare_model
from stg.train.hooks import Hook, StepContext
from stg.train.loop import Monitor, train_loop
from stg.train.loss import per_task_bce
from stg.train.models import build_model
from stg.train.rng import seeded
from tiny import tiny_taskset

CPU = torch.device("cpu")
STG = [sys.executable, "-m", "stg.cli"]


# ------------------------------------------------------------------------------------------------
# 1. Schedules against their formulas
# ------------------------------------------------------------------------------------------------
def test_schedules_follow_their_formulas() -> None:
    e = 25
    assert factors(make_schedule("mtl"), e) == [1.0] * e
    assert factors(make_schedule("stl"), e) == [0.0] * e
    paper = make_schedule("diminish", w0=0.8, eta=0.3, nu=1.5)
    for epoch, a in enumerate(factors(paper, e), start=1):
        want = 0.8 * math.exp(-0.3 * (epoch - 1) ** 1.5)
        assert a == (pytest.approx(want, rel=1e-12) if want >= 1e-3 else 0.0)
    code = make_schedule("diminish-code")  # the released code: 0.95, squared after every epoch
    alpha, want = 0.95, []
    for _ in range(e):
        want.append(alpha if alpha >= 1e-3 else 0.0)
        alpha = alpha * alpha
    assert factors(code, e) == pytest.approx(want, rel=1e-12)
    assert factors(code, e)[:8] == pytest.approx([0.95, 0.9025, 0.81450625, 0.66342043, 0.44012667, 0.19371148,
                                                  0.03752414, 0.00140806], rel=1e-6)
    assert code.multitask_epochs(e, 1) == 8  # gone (< 1e-3) from the 9th epoch on
    switch = make_schedule("switch")  # the code's 15 multi-task epochs of 25
    assert factors(switch, e) == [1.0] * 15 + [0.0] * 10 and switch.multitask_epochs(e, 1) == 15
    assert factors(make_schedule("switch", switch_at=4), 6) == [1, 1, 1, 1, 0, 0]
    # per step: t = step / steps_per_epoch, a switch at a fraction of all steps
    step = make_schedule("diminish", eta=1.0, per_step=True)
    assert step.factor_at(2, 7, epochs=3, steps_per_epoch=4) == pytest.approx(math.exp(-7 / 4))
    sw = make_schedule("switch", switch_at=0.3, per_step=True)  # round(0.3 * 12) = step 4 of 12
    assert [sw.factor_at(s // 4 + 1, s, epochs=3, steps_per_epoch=4) for s in range(12)] == [1.0] * 4 + [0.0] * 8
    assert sw.multitask_epochs(3, 4) == 1
    assert make_schedule("diminish", eps=0.5).multitask_epochs(10, 1) == 2  # exp(-0.5) >= 0.5 > exp(-1)
    # records: identity-ready JSON with the parameters that apply, and back
    for name in SCHEDULES:
        s = make_schedule(name)
        assert AuxSchedule.from_meta(json.loads(json.dumps(s.to_meta()))) == s
    assert make_schedule("switch").to_meta() == {"name": "switch", "switch_at": 0.6, "per_step": False}
    assert [make_schedule(n).slug() for n in SCHEDULES] == ["mtl", "stl", "diminish-w1-eta0.5-nu1",
                                                            "diminish-code-w0.95", "switch-0.6"]
    fig = weight_curves([code, switch, step], epochs=e, steps_per_epoch=2)
    assert len(fig.data) == 4 and list(fig.data[2].y[:16]) == [1.0] * 15 + [0.0]


def test_schedule_weights_scale_only_the_auxiliary_tasks() -> None:
    w = np.array([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])  # (T, k)
    primary = primary_of_membership(w)
    assert primary.tolist() == [[True, True, False], [False, False, True]]
    sched = aux_weights(w.T, primary, make_schedule("switch", switch_at=1), epochs=2, steps_per_epoch=1)
    torch.testing.assert_close(sched.weights(1, 0), torch.as_tensor(w.T))
    after = sched.weights(2, 1)
    assert after.tolist() == [[0.7, 0.6, 0.0], [0.0, 0.0, 0.8]]  # primary keep their membership, exact zeros


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "cosine"}, "unknown schedule 'cosine': choose one of mtl, stl, diminish, diminish-code, switch"),
    ({"name": "diminish", "eta": -0.1}, "--eta must be >= 0"),
    ({"name": "diminish", "nu": 0}, "--nu must be > 0"),
    ({"name": "diminish-code", "w0": 1.5}, "--w0 of diminish-code must be in (0, 1)"),
    ({"name": "switch", "switch_at": -1}, "--switch-at must be a fraction"),
    ({"name": "switch", "switch_at": 2.5}, "--switch-at must be a fraction"),
    ({"name": "switch", "eta": 1.0}, "--eta applies to the diminish schedule only"),
    ({"name": "mtl", "eps": 0.1}, "--eps applies to the diminish schedules only"),
    ({"name": "diminish", "eps": 1.0}, "--eps must be in [0, 1)"),
])
def test_bad_schedule_is_one_line(kwargs: dict, message: str) -> None:
    name = kwargs.pop("name")
    with pytest.raises(StgError) as e:
        make_schedule(name, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_switch_outside_training_is_refused() -> None:
    make_schedule("switch", switch_at=4).check(5)
    for at, epochs in ((5, 5), (9, 5), (0.05, 5), (0.95, 5), (0.6, 1)):
        with pytest.raises(StgError, match="outside training"):
            make_schedule("switch", switch_at=at).check(epochs)
    make_schedule("switch", switch_at=0.6, per_step=True).check(1, 10)  # a per-step switch fits in one epoch


# ------------------------------------------------------------------------------------------------
# 2. Auxiliary gradients flow while their weight is > 0, and are exactly zero after the switch
# ------------------------------------------------------------------------------------------------
class AuxGradients(Hook):
    """Before every update: the gradient on the shared parameters of the weighted auxiliary losses
    alone and of the primary loss alone, recomputed from the step's own batch (dropout off; the
    batch-norm running statistics of the recomputation go to copies)."""

    def __init__(self, aux: torch.Tensor):
        self.aux = aux
        self.records: list[dict] = []

    def before_update(self, ctx: StepContext) -> None:
        state = {**dict(ctx.model.named_parameters()), **{n: b.clone() for n, b in ctx.model.named_buffers()}}
        z = functional_call(ctx.model, state, (ctx.images,))
        losses = per_task_bce(z, ctx.targets, pos_weight=ctx.pos_weight) * ctx.weights
        shared = [p for _, p in ctx.shared]
        g_aux = torch.autograd.grad(losses[self.aux].sum(), shared, retain_graph=True)
        g_primary = torch.autograd.grad(losses[~self.aux].sum(), shared)
        self.records.append({
            "epoch": ctx.epoch, "aux_weight": float(ctx.weights[self.aux].max()),
            "aux_norm": float(torch.sqrt(sum((g.double() ** 2).sum() for g in g_aux))),
            "aux_exactly_zero": all(bool((g == 0).all()) for g in g_aux),
            # the recomputation is the loop's own step: the loop's gradient is the sum of the two
            "matches_loop": all(torch.allclose(p.grad, a + b, atol=1e-6, rtol=1e-5)
                                for p, a, b in zip(shared, g_aux, g_primary)),
        })


def test_auxiliary_losses_move_the_shared_parameters_until_the_switch_and_not_after() -> None:
    ts = tiny_taskset(n_train=64, size=12)
    mean, std = channel_stats(ts.train.images)
    data = DeviceData(ts.train, CPU, mean, std)
    model = prepare_model(seeded(0, lambda: build_model("cnn", in_channels=1, size=12, n_tasks=4)), CPU)
    set_dropout(model, 0.0)
    aux = torch.tensor([False, True, True, True])
    hook = AuxGradients(aux)
    schedule = aux_weights(torch.ones(4), ~aux, make_schedule("switch", switch_at=2), epochs=3, steps_per_epoch=4)
    train_loop(model, data, ts.pos_weight.float(), TrainConfig(epochs=3, batch_size=16, precision="fp32"),
               schedule=schedule, hooks=[hook])
    before = [r for r in hook.records if r["epoch"] <= 2]
    after = [r for r in hook.records if r["epoch"] == 3]
    assert len(before) == 8 and len(after) == 4
    assert all(r["matches_loop"] for r in hook.records)
    assert all(r["aux_weight"] == 1.0 and r["aux_norm"] > 1e-4 and not r["aux_exactly_zero"] for r in before)
    assert all(r["aux_weight"] == 0.0 and r["aux_exactly_zero"] for r in after)


# ------------------------------------------------------------------------------------------------
# 3. Skipping the auxiliary heads == training with zero auxiliary weights
# ------------------------------------------------------------------------------------------------
class DoubleData(DeviceData):
    """float64 batches: the comparison is not swamped by float32 rounding."""

    def batch(self, index, *, augment, generator):
        x, y = super().batch(index, augment=augment, generator=generator)
        return x.double(), y.double()


def _double_problem(seed: int = 0):
    ts = tiny_taskset(n_train=32, size=12)
    mean, std = channel_stats(ts.train.images)
    data = DoubleData(ts.train, CPU, mean, std)
    model = seeded(seed, lambda: build_model("cnn", in_channels=1, size=12, n_tasks=4)).double()
    return model, data, ts.pos_weight.double()


def test_skipping_the_auxiliary_heads_equals_zero_auxiliary_weights(tmp_path: Path) -> None:
    """Dropout stays on (the masks have the same shapes with and without the auxiliary rows)."""
    config = TrainConfig(epochs=3, batch_size=16, precision="fp32", seed=3)
    schedule = make_schedule("switch", switch_at=1)
    primary = [1, 3]
    out = {}
    for skip in (True, False):
        model, data, pw = _double_problem()
        r = train_scheduled(model, data, pw, config, primary=primary, schedule=schedule, skip=skip,
                            checkpoint=tmp_path / f"m{skip}")
        out[skip] = (r, {k: v.detach().clone() for k, v in model.state_dict().items()})
    (fast, a), (slow, b) = out[True], out[False]
    assert fast.skipped and not slow.skipped and fast.multitask_epochs == 1 and slow.multitask_epochs == 3
    assert [r["phase"] for r in fast.history] == [1, 2, 2]
    assert (tmp_path / "mTrue.pt").is_file() and (tmp_path / "mTrue.primary.pt").is_file()
    for key in a:
        if key.startswith("head.5."):
            torch.testing.assert_close(a[key][primary], b[key][primary], atol=1e-10, rtol=0)
        else:
            torch.testing.assert_close(a[key].double(), b[key].double(), atol=1e-10, rtol=0)
    # the loss of a primary-only epoch is the zero-weighted loss of the full model
    np.testing.assert_allclose([r["loss"] for r in fast.history], [r["loss"] for r in slow.history], atol=1e-12)
    # only the auxiliary rows differ: frozen at the switch when skipped, moved by Adam's momentum at weight 0
    assert not torch.allclose(a["head.5.weight"][[0, 2]], b["head.5.weight"][[0, 2]])


def test_restricted_model_keeps_the_primary_rows() -> None:
    model = seeded(0, lambda: build_model("resnet18-cifar", in_channels=1, size=8, n_tasks=5)).eval()
    sub = restrict_model(model, [4, 1]).eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(sub(x), model(x)[:, [4, 1]])
    assert sub.fc.out_features == 2 and model.fc.out_features == 5


@pytest.mark.parametrize("cut_at", [1, 3], ids=["in-multitask-phase", "in-primary-phase"])
def test_a_cancelled_scheduled_training_resumes_exactly(tmp_path: Path, cut_at: int) -> None:
    config = TrainConfig(epochs=4, batch_size=16, seed=1)
    schedule = make_schedule("diminish-code", w0=0.5, eps=0.05)  # 0.5, 0.25, 0.0625, then 0: 3 + 1 epochs

    def run(stem: Path, monitor: Monitor | None = None):
        ts = tiny_taskset(n_train=64, size=12)
        mean, std = channel_stats(ts.train.images)
        model = prepare_model(seeded(0, lambda: build_model("cnn", in_channels=1, size=12, n_tasks=4)), CPU)
        r = train_scheduled(model, DeviceData(ts.train, CPU, mean, std), ts.pos_weight.float(), config, primary=[0],
                            schedule=schedule, checkpoint=stem, monitor=monitor)
        return r, model.state_dict()

    full, a = run(tmp_path / "full")
    cancel = threading.Event()
    stop = Monitor(lambda p: cancel.set() if p.kind == "epoch" and p.epoch == cut_at else None, cancel)
    first, _ = run(tmp_path / "cut", stop)
    assert first.status == "cancelled" and first.epochs_done == cut_at and full.multitask_epochs == 3
    resumed, b = run(tmp_path / "cut")
    assert resumed.status == "done" and [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------
# 4. Changing schedules under a (stand-in) CUDA graph == eager
# ------------------------------------------------------------------------------------------------
def _under_graphs(monkeypatch: pytest.MonkeyPatch, graphs: bool, fn):
    """``fn()`` with torch's CUDA graphs replaced by test_loop's recording stand-in (when
    ``graphs``). Each training loop has its own step graph and side stream; the stand-in's check
    that a capture runs on the warm-up steps' stream is kept, per step graph."""
    from test_loop import RecordingCUDA

    with monkeypatch.context() as m:
        fake = RecordingCUDA()
        if graphs:
            fake.install(m)
            base = torch.cuda.Stream

            class Stream(base):  # type: ignore[misc,valid-type]
                def __init__(self, *args: object) -> None:
                    fake.streams.clear()  # a new step graph's side stream
                    super().__init__(*args)

            m.setattr(torch.cuda, "Stream", Stream)
        return fn(), fake


def test_a_changing_schedule_under_cuda_graphs_trains_like_eager_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A per-step diminish in phase 1 (the weights change between replays of one graph), then the
    primary-only phase (a second graph); and a grouped ensemble with per-step auxiliary weights."""
    ts = tiny_taskset(n_train=80)
    mean, std = channel_stats(ts.train.images)
    data = DeviceData(ts.train, CPU, mean, std)
    config = TrainConfig(epochs=3, batch_size=16, seed=2)
    schedule = make_schedule("diminish-code", w0=0.5, eps=0.2, per_step=True)  # 0 from t = 1.22: 2 + 1 epochs

    def single():
        model = prepare_model(seeded(0, lambda: build_model("cnn", in_channels=1, size=16, n_tasks=4)), CPU)
        r = train_scheduled(model, data, ts.pos_weight.float(), config, primary=[2], schedule=schedule)
        return r, {k: v.clone() for k, v in model.state_dict().items()}

    (g, ga), fake = _under_graphs(monkeypatch, True, single)
    (e, ea), _ = _under_graphs(monkeypatch, False, single)
    assert g.multitask_epochs == 2 and g.skipped
    assert fake.captures == 2 and all(r["step"] == "cuda-graph" for r in g.history)
    assert all(r["step"] == "eager" for r in e.history)
    assert [r["loss"] for r in g.history] == [r["loss"] for r in e.history]
    assert all(torch.equal(ga[k], ea[k]) for k in ga)

    w = np.array([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    sched = lambda: aux_weights(w.T, primary_of_membership(w), make_schedule("diminish", eta=2.0, per_step=True),  # noqa: E731
                                epochs=2, steps_per_epoch=5)

    def grouped():
        ens = prepare_model(build_ensemble("cnn", seeds=[1, 2], in_channels=1, size=16, n_tasks=4, mode="wide"), CPU)
        r = train_ensemble(ens, sched(), data, ts.pos_weight.float(), TrainConfig(epochs=2, batch_size=16))
        return r, ens.state_dicts()

    (g, ga), fake = _under_graphs(monkeypatch, True, grouped)
    (e, ea), _ = _under_graphs(monkeypatch, False, grouped)
    assert fake.captures == 1 and g.history[-1]["step"] == "cuda-graph"
    assert [r["loss"] for r in g.history] == [r["loss"] for r in e.history]
    assert all(torch.equal(x[k], y[k]) for x, y in zip(ga, ea) for k in x)


# ------------------------------------------------------------------------------------------------
# 5. Grouped training and a single target on a run
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, object]:
    ts = tiny_taskset(n_train=48, n_val=16, size=12)
    path = tmp_path_factory.mktemp("mt2st") / "run"
    train_datamap(ts, TrainConfig(epochs=2, batch_size=16, device="cpu"), path)
    RunDir(path).write_grouping("g2", {"k": 2, "fuzziness": 1.07, "method": "fuzzy-kmeans", "seed": 0,
                                       "task_names": list(ts.task_names),
                                       "membership": [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.05, 0.95]],
                                       "labels": [0, 0, 1, 1]})
    return path, ts


def test_grouped_training_with_a_schedule(tiny_run) -> None:
    path, ts = tiny_run
    run = RunDir(path)
    metrics = train_groups(run, "g2", epochs=2, baselines=(), device="cpu", taskset=ts,
                           schedule=make_schedule("switch", switch_at=1))
    out = run.groups_dir("g2")
    assert metrics["config"]["schedule"] == {"name": "switch", "switch_at": 1.0, "per_step": False}
    assert (out / "grouped-switch-1.pt").is_file() and not (out / "grouped.pt").exists()
    ident = json.loads(torch.load(out / "grouped-switch-1.pt", weights_only=True)["identity"])
    assert ident["schedule"] == metrics["config"]["schedule"]
    # another schedule is another family checkpoint; the first one stays
    plan = plan_groups(run, "g2", epochs=2, baselines=(), device="cpu", taskset=ts,
                       schedule=make_schedule("diminish-code"))
    assert plan.families[0].checkpoint(out).name == "grouped-diminish-code-w0.95.pt"
    with pytest.raises(StgError, match="--schedule needs soft memberships"):
        plan_groups(run, "g2", hard=True, taskset=ts, schedule=make_schedule("stl"))
    with pytest.raises(StgError, match="outside training"):
        plan_groups(run, "g2", epochs=2, taskset=ts, schedule=make_schedule("switch", switch_at=2))


def test_single_target_against_stl_and_mtl(tiny_run) -> None:
    path, ts = tiny_run
    run = RunDir(path)
    metrics = train_target_run(run, "class_2", helpers="g2", schedule=make_schedule("switch", switch_at=1),
                               epochs=2, device="cpu", taskset=ts)
    out = run.path / "mt2st" / "class_2" / "g2"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["helpers"] == ["class_3"] and list(metrics["schedules"]) == ["stl", "mtl", "switch-1"]
    for slug, e in metrics["schedules"].items():
        assert set(e["test"]) == {"accuracy", "balanced_accuracy", "f1", "auroc"}
        assert len(e["val"]) == 2 and len(e["epoch_seconds"]) == 2
    assert [metrics["schedules"][s]["multitask_epochs"] for s in ("stl", "mtl", "switch-1")] == [0, 2, 1]
    assert metrics["schedules"]["stl"]["epochs_to_stl"] is not None  # stl reaches its own final value
    # a second call with another schedule keeps the first one's results and reuses stl and mtl
    again = train_target_run(run, "class_2", helpers="g2", schedule="stl", epochs=2, device="cpu", taskset=ts)
    assert list(again["schedules"]) == ["switch-1", "stl", "mtl"]
    assert again["schedules"]["stl"]["test"] == metrics["schedules"]["stl"]["test"]


def test_epochs_to_the_stl_quality() -> None:
    entries = {"stl": {"val": [0.5, 0.7, 0.8], "epoch_seconds": [1, 1, 1]},
               "switch": {"val": [0.6, 0.85, 0.7], "epoch_seconds": [2, 2, 1]},
               "mtl": {"val": [0.1, 0.2, 0.3], "epoch_seconds": [1, 1, 1]}}
    assert compare(entries, "balanced_accuracy") == 0.8
    assert [(e["epochs_to_stl"], e["seconds_to_stl"]) for e in entries.values()] == [(3, 3), (2, 4), (None, None)]


def test_bad_target_input_writes_nothing(tiny_run, tmp_path: Path) -> None:
    import shutil

    path, ts = tiny_run
    run = RunDir(shutil.copytree(path, tmp_path / "run", ignore=shutil.ignore_patterns("groups", "mt2st")))
    with pytest.raises(StgError, match=r"unknown target 'dog': run .* has the tasks class_0, class_1"):
        plan_target(run, "dog", taskset=ts)
    with pytest.raises(StgError, match="unknown grouping 'nope'"):
        plan_target(run, "class_0", helpers="nope", taskset=ts)
    with pytest.raises(StgError, match="outside training"):
        plan_target(run, "class_0", schedule=make_schedule("switch", switch_at=3), epochs=3, taskset=ts)
    with pytest.raises(StgError, match="unknown schedule"):
        plan_target(run, "class_0", schedule="cosine", taskset=ts)
    with pytest.raises(StgError, match="unknown metric"):
        plan_target(run, "class_0", metric="f2", taskset=ts)
    alone = {**run.read_grouping("g2"), "membership": [[1, 0], [1, 0], [1, 0], [0, 1]]}
    run.write_grouping("alone", alone)
    with pytest.raises(StgError, match="alone in its group"):
        plan_target(run, "class_3", helpers="alone", taskset=ts)
    assert not (run.path / "mt2st").exists()


# ------------------------------------------------------------------------------------------------
# 6. The command line
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory) -> Path:
    """A 1-epoch run on 200 embedded Fashion-MNIST images (composite tasks), grouped with k = 3."""
    from stg.data.datasets import load_taskset

    spec = DataSpec("fashion-sample", tasks="composite", limit=200)
    path = tmp_path_factory.mktemp("cli") / "run"
    ts = load_taskset("fashion-sample", tasks="composite", limit=200)
    train_datamap(ts, TrainConfig(epochs=1, batch_size=64, device="cpu"), path, data_spec=spec)
    assert main(["group", str(path), "--k", "3", "--name", "g3"]) == 0
    return path


def _stg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STG, *args], capture_output=True, text=True, timeout=300)


def test_cli_train_groups_with_a_schedule(fashion_run: Path) -> None:
    proc = _stg("train-groups", str(fashion_run), "--grouping", "g3", "--epochs", "2", "--baselines", "",
                "--device", "cpu", "--schedule", "diminish", "--eta", "2", "--nu", "1.5")
    assert proc.returncode == 0, proc.stderr
    assert "grouped_argmax" in proc.stdout
    metrics = json.loads((RunDir(fashion_run).groups_dir("g3") / "metrics.json").read_text())
    assert metrics["config"]["schedule"] == {"name": "diminish", "w0": 1.0, "eta": 2.0, "nu": 1.5, "eps": 0.001,
                                             "per_step": False}
    assert (RunDir(fashion_run).groups_dir("g3") / "grouped-diminish-w1-eta2-nu1.5.pt").is_file()


def test_cli_mt2st_end_to_end(fashion_run: Path) -> None:
    proc = _stg("mt2st", str(fashion_run), "--target", "shirt", "--helpers", "g3", "--epochs", "2",
                "--schedule", "diminish-code", "--w0", "0.02", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "target shirt with" in proc.stdout
    for slug in ("stl", "mtl", "diminish-code-w0.02"):
        assert any(line.startswith(slug) for line in proc.stdout.splitlines()), proc.stdout
    g3 = RunDir(fashion_run).read_grouping("g3")
    names, labels = g3["task_names"], g3["labels"]
    helpers = [t for t, g in zip(names, labels) if g == labels[names.index("shirt")] and t != "shirt"]
    metrics = json.loads((fashion_run / "mt2st" / "shirt" / "g3" / "metrics.json").read_text())
    assert metrics["helpers"] == helpers and metrics["schedules"]["diminish-code-w0.02"]["multitask_epochs"] == 1


@pytest.mark.parametrize("args, needle", [
    (["mt2st", "{run}", "--target", "unicorn"], "unknown target 'unicorn'"),
    (["mt2st", "{run}", "--target", "shirt", "--schedule", "cosine"], "unknown schedule 'cosine'"),
    (["mt2st", "{run}", "--target", "shirt", "--schedule", "diminish", "--eta", "-1"], "--eta must be >= 0"),
    (["mt2st", "{run}", "--target", "shirt", "--schedule", "switch", "--switch-at", "7", "--epochs", "3"],
     "outside training"),
    (["mt2st", "{run}", "--target", "shirt", "--helpers", "nope"], "unknown grouping 'nope'"),
    (["train-groups", "{run}", "--grouping", "g3", "--schedule", "sometimes"], "unknown schedule 'sometimes'"),
    (["train-groups", "{run}", "--grouping", "g3", "--schedule", "diminish", "--eta", "-0.5"], "--eta must be >= 0"),
    (["train-groups", "{run}", "--grouping", "g3", "--epochs", "2", "--schedule", "switch", "--switch-at", "2"],
     "outside training"),
    (["train-groups", "{run}", "--grouping", "g3", "--eta", "1"], "--eta needs --schedule"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, fashion_run: Path, args: list[str],
                                                      needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    run = Path(shutil.copytree(fashion_run, tmp_path / "run", ignore=shutil.ignore_patterns("groups", "mt2st")))
    assert main([a.replace("{run}", str(run)) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (run / "mt2st").exists() and not (run / "groups").exists()


def test_target_training_returns_the_schedule_entry() -> None:
    ts = tiny_taskset(n_train=32, n_val=16, size=12)
    e = train_target(ts, "class_1", ["class_0"], make_schedule("stl"), TrainConfig(epochs=1, batch_size=16))
    assert e["status"] == "done" and e["skipped"] and e["multitask_epochs"] == 0 and e["factors"] == [0.0]


# ------------------------------------------------------------------------------------------------
# 7. The dashboard's grouped-training page
# ------------------------------------------------------------------------------------------------
def test_dashboard_draws_the_schedule_refuses_a_bad_one_and_launches_it(fashion_run: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    pytest.importorskip("streamlit")
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    root = tmp_path / "runs"
    shutil.copytree(fashion_run, root / "demo")
    monkeypatch.setenv("STG_RUNS", str(root))
    st.cache_data.clear()
    st.cache_resource.clear()
    page = Path(__file__).resolve().parents[1] / "stg_app" / "views" / "4_grouped_training.py"
    at = AppTest.from_file(str(page), default_timeout=60).run()
    assert not at.exception and not at.error
    at.number_input(key="gt_epochs").set_value(5).run()
    at.selectbox(key="gt_schedule").set_value("switch").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.get("plotly_chart") and any("switch: auxiliary tasks weigh 1" in c.value for c in at.caption)
    if (fashion_run / "mt2st").is_dir():  # the CLI tests above trained a target: listed with stl and mtl
        assert any("Single target (MT2ST)" in h.value for h in at.subheader) and at.dataframe
    at.number_input(key="gt_switch_switch_at").set_value(7.0).run()  # of 5 epochs
    assert any("outside training" in e.value for e in at.error)
    # launched from the page: the schedule reaches the grouped training
    from stg.runs.jobs import get_manager

    at.number_input(key="gt_epochs").set_value(1)
    at.multiselect(key="gt_base").set_value([])
    at.selectbox(key="gt_device").set_value("cpu")
    at.selectbox(key="gt_schedule").set_value("diminish-code").run()
    at.number_input(key="gt_diminish-code_w0").set_value(0.5)
    at.button(key="gt_train").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    final = get_manager().wait(root / "demo", timeout=240)
    assert final is not None and final.status == "done", final
    metrics = json.loads((root / "demo" / "groups" / "g3" / "metrics.json").read_text())
    assert metrics["config"]["schedule"]["name"] == "diminish-code" and metrics["config"]["schedule"]["w0"] == 0.5
    at.run()
    assert not at.exception and any("MT2ST schedule diminish-code" in c.value for c in at.caption)
