"""The TaskSet: the one object every step takes (images, label matrix, task names, references).

``ClassData`` is a labelled image dataset before any task is defined (what a loader returns);
``build_taskset`` in ``stg.data.taskspec`` turns it into a ``TaskSet`` with a task-spec string.
Multi-label data (several binary labels per image, some possibly missing) is a ``MultiLabelData``
(``stg.data.multilabel``); ``build_taskset`` takes either.

Missing labels: ``Split.labels`` holds NaN where a sample has no label for a task. Every consumer
masks them: the loss (``stg.train.loss``: a task's loss is the mean over its labelled samples), the
data map (``stg.datamap.recorder``: the pair is not recorded, NaN in the snapshot), the task
features (``stg.grouping.features``), the metrics (``stg.specialists.evaluate``), pos_weight
(negatives / positives among the labelled training samples). One-vs-rest task sets have no NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

Reference = dict[str, list[str]]  # group name -> member names


@dataclass(frozen=True)
class ClassData:
    """A labelled image dataset, as a loader returns it.

    train_images: (N, C, H, W) uint8;  train_classes: (N,) int64 in [0, len(class_names))
    test_images:  (M, C, H, W) uint8;  test_classes:  (M,) int64
    class_references: reference name -> {group name: [class names]}
    """

    name: str
    class_names: tuple[str, ...]
    train_images: torch.Tensor
    train_classes: torch.Tensor
    test_images: torch.Tensor
    test_classes: torch.Tensor
    class_references: dict[str, Reference] = field(default_factory=dict)
    default_tasks: str = "ovr:all"
    source: str = ""


@dataclass(frozen=True)
class Split:
    """One split of a task set.

    images:  (N, C, H, W) uint8
    labels:  (N, T) float32 with values in {0, 1}, or NaN where the label is missing (multi-label data)
    classes: (N,) int64 original class of each image (-1 for multi-label data: no class)
    index:   (N,) int64 row of each image in the loader's train (or test) arrays
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class TaskSet:
    """T binary tasks over one image dataset, split into train / val / test.

    pos_weight: (T,) float32, the BCE positive-class weight of each task: negatives / positives among
        the training samples labelled for it
    references: reference name -> {group name: [task names]} (every task in exactly one group)
    task_kinds: per task, how it was made: {"kind": "ovr" | "attr" | "union" | "random" | "flipped"}, or
        {"kind": "not", "of": NAME} for the complement of task NAME (empty when unknown)
    """

    dataset: str
    task_names: tuple[str, ...]
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    pos_weight: torch.Tensor
    references: dict[str, Reference]
    tasks_spec: str
    seed: int
    source: str = ""
    task_kinds: tuple[dict[str, str], ...] = ()
    attribute_names: tuple[str, ...] = ()  # multi-label data: its label columns (class_names is then empty)

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    @property
    def has_missing_labels(self) -> bool:
        """True when some (sample, task) pair of some split has no label (NaN)."""
        return any(bool(torch.isnan(s.labels).any()) for s in (self.train, self.val, self.test))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    def describe(self) -> dict[str, Any]:
        """The JSON object printed by ``stg data NAME --json`` (docs/architecture.md §2)."""
        labels = self.train.labels
        positives = labels.nansum(0)
        missing = torch.isnan(labels).sum(0)
        return {
            "dataset": self.dataset,
            "tasks_spec": self.tasks_spec,
            "seed": self.seed,
            "n_train": len(self.train),
            "n_val": len(self.val),
            "n_test": len(self.test),
            "image_shape": list(self.image_shape),
            "n_tasks": self.n_tasks,
            "task_names": list(self.task_names),
            "task_kinds": [dict(k) for k in self.task_kinds],
            "class_names": list(self.class_names),
            **({"attribute_names": list(self.attribute_names)} if self.attribute_names else {}),
            "train_positives": [int(p) for p in positives.tolist()],
            "train_missing": [int(m) for m in missing.tolist()],
            "pos_weight": [round(float(p), 4) for p in self.pos_weight.tolist()],
            "references": {name: {g: list(m) for g, m in ref.items()} for name, ref in self.references.items()},
            "source": self.source,
        }

    def reference_labels(self, name: str) -> list[int]:
        """(T,) group index of every task under reference ``name`` (groups in insertion order)."""
        ref = self.references[name]
        of_task = {t: i for i, members in enumerate(ref.values()) for t in members}
        return [of_task[t] for t in self.task_names]
