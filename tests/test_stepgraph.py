"""StepGraph's control flow on the CPU, with stand-ins for torch's CUDA graph objects: warm-up steps,
one capture, replays through the static index, the eager short batch, gradient handling, and the
eager fallback when capture fails. (That real capture records what eager steps compute is checked
on a GPU: tests/test_cuda.py.)"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import pytest
import torch

import stg.train.stepgraph as stepgraph
from stg.train.stepgraph import WARMUP_STEPS, StepGraph


class FakeCUDA:
    """Stand-ins for torch.cuda.CUDAGraph / graph / Stream / stream / current_stream. Capture
    'records' a step by keeping a closure over the static index, which ``replay`` runs."""

    def __init__(self, fail_capture: bool = False):
        self.recording: FakeGraph | None = None
        self.fail_capture = fail_capture
        self.captures = 0
        self.streams: list[object] = []  # side streams made

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fake = self

        class Stream:
            def __init__(self, *args: object) -> None:
                fake.streams.append(self)

            def wait_stream(self, other: object) -> None: ...

        @contextlib.contextmanager
        def graph(g: FakeGraph, stream: object = None, capture_error_mode: str = "global") -> Iterator[None]:
            assert capture_error_mode == "thread_local"
            assert stream is not None and fake.streams == [stream]  # the warm-up steps' stream
            fake.captures += 1
            fake.recording = g
            try:
                if fake.fail_capture:
                    raise RuntimeError("operation not permitted when stream is capturing")
                yield
            finally:
                fake.recording = None

        current = Stream()
        fake.streams.clear()  # the current stream is not a side stream
        monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current)
        monkeypatch.setattr(stepgraph, "graphs_enabled", lambda device: True)


class FakeGraph:
    def __init__(self) -> None:
        self.body: Callable[[], None] | None = None
        self.generators: list[torch.Generator] = []

    def register_generator_state(self, g: torch.Generator) -> None:
        self.generators.append(g)

    def replay(self) -> None:
        assert self.body is not None
        self.body()


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(5, 2)
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    data = torch.randn(43, 5, generator=torch.Generator().manual_seed(1))
    return lin, opt, data


def _plain_training(epochs: int, batch: int, losses: list[float] | None = None) -> tuple[list[list[int]], list[torch.Tensor]]:
    """The reference: an ordinary eager loop (each step's loss appended to ``losses`` when given)."""
    lin, opt, data = _problem()
    seen = []
    for _ in range(epochs):
        for index in torch.arange(len(data)).split(batch):
            seen.append(index.tolist())
            opt.zero_grad(set_to_none=True)
            loss = lin(data[index]).square().mean()
            loss.backward()
            opt.step()
            if losses is not None:
                losses.append(float(loss.detach()))
    return seen, [p.detach().clone() for p in lin.parameters()]


def _graphed_training(fake: FakeCUDA, epochs: int, batch: int):
    lin, opt, data = _problem()
    seen: list[list[int]] = []
    g = torch.Generator()

    def real_step(index: torch.Tensor) -> torch.Tensor:
        seen.append(index.tolist())
        loss = lin(data[index]).square().mean()
        loss.backward()
        opt.step()
        return loss.detach()

    def step(index: torch.Tensor) -> torch.Tensor:
        if fake.recording is None:
            return real_step(index)
        out = torch.zeros(())  # the graph's static output

        def replay() -> None:  # a captured backward writes its gradient buffers; it does not add to them
            for p in lin.parameters():
                if p.grad is not None:
                    p.grad.zero_()
            out.copy_(real_step(index))

        fake.recording.body = replay
        return out

    runner = StepGraph(step, batch_size=batch, device=torch.device("cpu"), optimizer=opt, generators=[g])
    modes, losses = [], []
    for _ in range(epochs):
        for index in torch.arange(len(data)).split(batch):
            losses.append(float(runner(index)))
            modes.append(runner.mode)
    return runner, seen, [p.detach().clone() for p in lin.parameters()], modes, losses, g


def test_warm_up_then_one_capture_then_replays_train_exactly_like_eager_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCUDA()
    fake.install(monkeypatch)
    runner, seen, params, modes, losses, g = _graphed_training(fake, epochs=2, batch=8)  # 5 x 8 + 3 rows
    ref_losses: list[float] = []
    ref_seen, ref_params = _plain_training(epochs=2, batch=8, losses=ref_losses)
    assert seen == ref_seen  # every replay read the batch it was given, through the static index
    for a, b in zip(params, ref_params):
        assert torch.equal(a, b)  # the eager short batches zeroed the gradients they added to
    assert fake.captures == 1 and runner.replays == 2 * 5 - WARMUP_STEPS
    assert modes[:WARMUP_STEPS] == ["warming up"] * WARMUP_STEPS and set(modes[WARMUP_STEPS:]) == {"cuda-graph"}
    assert runner.graph is not None and runner.graph.generators == [g]
    # every step (warm-up, replay through the graph's static output, eager short batch) returned its
    # own loss, the one the eager loop computes at that step
    assert losses == ref_losses and len(set(losses)) == len(losses)


def test_a_failed_capture_warns_and_trains_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCUDA(fail_capture=True)
    fake.install(monkeypatch)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed, training eagerly: RuntimeError"):
        runner, seen, params, modes, _, _ = _graphed_training(fake, epochs=2, batch=8)
    ref_seen, ref_params = _plain_training(epochs=2, batch=8)
    assert seen == ref_seen and all(torch.equal(a, b) for a, b in zip(params, ref_params))
    assert fake.captures == 1 and runner.replays == 0
    assert modes[-1].startswith("eager (capture failed: RuntimeError: operation not permitted")


def test_graphs_only_on_cuda_and_not_when_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not stepgraph.graphs_enabled(torch.device("cpu"))
    assert stepgraph.graphs_enabled(torch.device("cuda"))
    monkeypatch.setenv("STG_CUDA_GRAPHS", "0")
    assert not stepgraph.graphs_enabled(torch.device("cuda"))
