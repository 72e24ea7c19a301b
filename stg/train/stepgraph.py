"""A whole training step captured once in a CUDA graph and replayed (docs/architecture.md §3).

Small models on 32x32 images are launch-bound on a GPU: an eager ResNet-18 step at batch 256 keeps
an H100 at a few percent of its peak while the CPU queues hundreds of kernels. The step here is
everything the engine does per batch (gather, augment, forward, loss, backward, Adam, the data-map
update), as one function of a (B,) index tensor. On CUDA it runs eagerly a few times on a side
stream (cuDNN/cuBLAS pick their kernels and workspaces, Adam creates its state), is then captured
once with a static index tensor, and every later full-size batch is one ``copy_`` into that tensor
plus one graph replay. What stays eager: the CPU, a batch of another size (an epoch's last),
``STG_CUDA_GRAPHS=0``, and any step whose capture fails (a warning names why).

What the step must respect (the engine's and the specialists' steps do):
- read only its index argument and tensors that live as long as the graph (parameters, optimizer
  state, the data on the device, recorder buffers), and update them in place;
- draw random numbers only from the default CUDA generator or from ``generators`` (reseed those
  with ``manual_seed`` between replays, never replace them);
- no host sync (``.item()``, ``.tolist()``, data-dependent shapes).

The step's outputs come back as the graph's static tensors: valid until the next call.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any, Callable, Generic, Sequence, TypeVar

import torch

T = TypeVar("T")
WARMUP_STEPS = 3
_CAPTURE_LOCK = threading.Lock()


def graphs_enabled(device: torch.device) -> bool:
    """CUDA graphs are used on CUDA devices unless the environment sets ``STG_CUDA_GRAPHS=0``."""
    return device.type == "cuda" and os.environ.get("STG_CUDA_GRAPHS", "1") != "0"


class StepGraph(Generic[T]):
    """Call with a (B,) int64 index on the device; runs ``step(index)`` (see the module docstring).

    ``step`` must not zero gradients: this class does (to None before eager steps and before the
    capture, so the captured backward owns its gradient buffers; in place after the capture, so
    those buffers stay the ones the graph writes).
    """

    def __init__(self, step: Callable[..., T], *, batch_size: int, device: torch.device,
                 optimizer: torch.optim.Optimizer, generators: Sequence[torch.Generator] = ()):
        self.step = step
        self.batch_size = batch_size
        self.device = device
        self.optimizer = optimizer
        self.generators = tuple(generators)
        self.enabled = graphs_enabled(device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: T | None = None
        self.index: torch.Tensor | None = None
        self.stream: torch.cuda.Stream | None = None
        self.warm = 0
        self.replays = 0
        self.failure: str | None = None  # why capture failed, when it did

    @property
    def mode(self) -> str:
        """How full-size steps run: 'cuda-graph', 'eager', 'eager (capture failed: ...)', or
        'warming up' (no capture yet)."""
        if self.graph is not None:
            return "cuda-graph"
        if self.failure is not None:
            return f"eager (capture failed: {self.failure})"
        return "warming up" if self.enabled else "eager"

    def __call__(self, index: torch.Tensor) -> T:
        if not self.enabled or len(index) != self.batch_size:
            return self.eager(index)
        with torch.cuda.device(self.device):  # streams and the graph belong to the step's GPU
            return self._graphed(index)

    def _graphed(self, index: torch.Tensor) -> T:
        if self.graph is None and self.warm < WARMUP_STEPS:
            self.warm += 1
            return self._warmup(index)
        if self.graph is None and not self._capture():
            return self.eager(index)
        assert self.index is not None and self.graph is not None and self.outputs is not None
        self.index.copy_(index)
        self.graph.replay()
        self.replays += 1
        return self.outputs

    def eager(self, index: torch.Tensor, *args: Any) -> T:
        """An eager step, ``step(index, *args)``: for an epoch's short batch, or a step that does more
        than the captured one (the training loop's periodic hooks)."""
        self.optimizer.zero_grad(set_to_none=self.graph is None)
        return self.step(index, *args)

    def _side_stream(self) -> torch.cuda.Stream:
        """The stream the warm-up steps and the capture run on: one stream, so that the cuBLAS /
        hipBLASLt handles and workspaces the capture needs already exist for it."""
        if self.stream is None:
            self.stream = torch.cuda.Stream(self.device)
        return self.stream

    def _warmup(self, index: torch.Tensor) -> T:
        """An eager step on the side stream, as capture requires of the steps before it."""
        current = torch.cuda.current_stream(self.device)
        side = self._side_stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):
            out = self.eager(index)
        current.wait_stream(side)
        return out

    def _capture(self) -> bool:
        """Record the step (recording runs nothing); False, with a warning, when capture fails."""
        self.index = torch.zeros(self.batch_size, dtype=torch.int64, device=self.device)
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            for g in self.generators:
                graph.register_generator_state(g)
            # one capture at a time in the process; thread_local: another job's thread may use
            # the GPU while this one records
            with _CAPTURE_LOCK, torch.cuda.graph(graph, stream=self._side_stream(),
                                                 capture_error_mode="thread_local"):
                outputs = self.step(self.index)
        except Exception as e:  # anything capture cannot record: fall back to eager steps
            self.enabled = False
            self.failure = f"{type(e).__name__}: {e}".splitlines()[0]
            self.optimizer.zero_grad(set_to_none=True)
            warnings.warn(f"CUDA graph capture failed, training eagerly: {self.failure}", RuntimeWarning)
            return False
        self.graph, self.outputs = graph, outputs
        return True
