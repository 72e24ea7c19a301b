"""Host memory settings: CPU training steps stop faulting their activations back in."""

import subprocess
import sys

import pytest

from stg.train.hostmem import retain_freed_memory

# Page faults per steady-state CPU training step of the paper CNN, in a fresh process.
STEP_FAULTS = """
import resource, sys, torch
import stg.train.device as device
from stg.train.loss import weighted_bce
from stg.train.models import build_model
if sys.argv[1] == "default":
    device.retain_freed_memory = lambda: False
model = device.prepare_model(build_model("cnn", in_channels=3, size=32, n_tasks=10), torch.device("cpu"))
opt = torch.optim.Adam(model.parameters())
x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
y = torch.zeros(128, 10)
ones = torch.ones(10)
def step():
    loss = weighted_bce(model(x), y, pos_weight=ones, task_weights=ones)
    opt.zero_grad()
    loss.backward()
    opt.step()
for _ in range(6):  # the heap settles within a few steps
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(12):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 12)
"""


def _faults_per_step(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", STEP_FAULTS, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_cpu_training_keeps_its_activation_memory():
    assert retain_freed_memory() and retain_freed_memory()  # applied, and idempotent
    default, retained = _faults_per_step("default"), _faults_per_step("retained")
    # glibc's defaults return each step's multi-MiB buffers to the OS and fault them in again
    assert retained < default / 4, (retained, default)
