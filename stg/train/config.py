"""How to train: one frozen ``TrainConfig`` passed whole from the CLI, the dashboard and run.json
to the training loop. Imports no torch: ``stg group`` and ``stg export`` read configs without it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from stg.errors import StgError
from stg.runs.rundir import SNAPSHOT_DTYPES  # how RUN/datamap/epoch_NNN.npz may store its statistics
PRECISIONS = ("auto", "bf16", "fp32")
MODEL_NAMES = ("cnn", "resnet18", "resnet18-cifar")  # built by stg.train.models.build_model
# How data maps are stored, not how the model trains: not part of what must match to resume a run.
STORAGE_FIELDS = ("snapshot_dtype", "keep_epochs")


def keep_every(keep_epochs: str) -> int:
    """Which data-map snapshots a run keeps: "all" -> 1, "every:N" -> N (epochs N, 2N, ... and the
    newest), "last" -> 0 (only the newest). StgError for anything else.

    The statistics are cumulative, so the newest snapshot alone holds every epoch's observations
    (mean, variability, correctness); older ones are only needed for per-epoch features
    (``stg group --epochs all``) and replaying training in the dashboard."""
    spec = str(keep_epochs).strip().lower()
    if spec == "all":
        return 1
    if spec == "last":
        return 0
    head, _, n = spec.partition(":")
    if head == "every" and n.strip().isdigit() and int(n) >= 1:
        return int(n)
    raise StgError(f"invalid --keep-epochs {keep_epochs!r}: use last, all or every:N (N >= 1)")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``ddof`` applies to the data map's variability (see ``stg.datamap.recorder``);
    ``snapshot_dtype`` and ``keep_epochs`` say how its snapshots are stored (``STORAGE_FIELDS``)."""

    model: str = "cnn"
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    augment: bool = True
    ddof: int = 0
    precision: str = "auto"
    snapshot_dtype: str = "float32"
    keep_epochs: str = "all"

    @classmethod
    def from_meta(cls, config: Mapping[str, Any] | None) -> "TrainConfig":
        """The config stored in run.json's ``config`` (keys this version does not know are ignored,
        so runs written by a newer stg still open); StgError when a value has the wrong type."""
        if config is not None and not isinstance(config, Mapping):
            raise StgError("run.json has a corrupt config: expected an object")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in (config or {}).items():
            if key not in fields:
                continue
            want = type(getattr(cls(), key))
            ok = isinstance(value, want) or (want is float and isinstance(value, int))
            if not ok or (want is int and isinstance(value, bool)):
                raise StgError(f"run.json has a corrupt config: {key} = {value!r} is not a {want.__name__}")
            values[key] = want(value)
        return cls(**values)

    def to_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, n_train: int) -> None:
        if self.model not in MODEL_NAMES:
            raise StgError(f"unknown model {self.model!r}: choose one of {', '.join(MODEL_NAMES)}")
        if self.epochs < 1:
            raise StgError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise StgError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.batch_size > n_train:
            raise StgError(f"--batch-size {self.batch_size} is larger than the training split ({n_train} images)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise StgError(f"--lr must be a positive number, got {self.lr}")
        if self.ddof not in (0, 1):
            raise StgError(f"--ddof must be 0 or 1, got {self.ddof}")
        if self.precision not in PRECISIONS:
            raise StgError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.snapshot_dtype not in SNAPSHOT_DTYPES:
            raise StgError(f"unknown --snapshot-dtype {self.snapshot_dtype!r}: choose one of {', '.join(SNAPSHOT_DTYPES)}")
        keep_every(self.keep_epochs)
