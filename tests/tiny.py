"""A tiny, fast TaskSet built directly (no loader) for engine tests, the devices tests run on, and an
injected out-of-memory error."""

from __future__ import annotations

import pytest
import torch

from stg.data.taskset import Split, TaskSet


# A device parameter: CUDA runs where a GPU is visible (STG_TEST_CUDA=1, see conftest.py).
CPU_AND_CUDA = pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU and STG_TEST_CUDA=1"))])


def tiny_taskset(n_train: int = 96, n_val: int = 32, n_tasks: int = 4, size: int = 16, channels: int = 1,
                 seed: int = 0) -> TaskSet:
    """Images whose brightness in one quadrant encodes the class; T one-vs-rest tasks."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int, offset: int) -> Split:
        classes = torch.randint(0, n_tasks, (n,), generator=g)
        images = torch.randint(0, 60, (n, channels, size, size), generator=g, dtype=torch.int64)
        for c in range(n_tasks):
            rows = classes == c
            y0, x0 = (c // 2) * (size // 2), (c % 2) * (size // 2)
            images[rows, :, y0:y0 + size // 2, x0:x0 + size // 2] += 150
        labels = torch.nn.functional.one_hot(classes, n_tasks).float()
        return Split(images.clamp(0, 255).to(torch.uint8), labels, classes, torch.arange(offset, offset + n))

    train, val, test = split(n_train, 0), split(n_val, n_train), split(n_val, 0)
    pos = train.labels.sum(0)
    names = tuple(f"class_{c}" for c in range(n_tasks))
    return TaskSet(
        dataset="tiny", task_names=names, class_names=names, train=train, val=val, test=test,
        pos_weight=(len(train) - pos) / pos.clamp_min(1), references={"halves": {
            "top": list(names[: n_tasks // 2]), "bottom": list(names[n_tasks // 2:])}},
        tasks_spec="ovr:all", seed=seed,
    )


def out_of_memory_after(calls: int, real):
    """``real`` that raises torch's CUDA out-of-memory error from call ``calls + 1`` on."""
    count = [0]

    def fn(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                         "capacity of 79.19 GiB of which 1.06 GiB is free.\nmore lines")
        return real(*args, **kwargs)

    return fn
