"""``DataSpec``: everything needed to rebuild a run's task set, as stored in run.json's ``data``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from stg.errors import StgError


@dataclass(frozen=True)
class DataSpec:
    """A dataset name or path, the task spec (None: the dataset's default), a training-image
    ``limit`` (stratified; None: all), the validation share and the seed of the train/val split."""

    dataset: str
    data_root: str | None = None
    tasks: str | None = None
    limit: int | None = None
    val_fraction: float = 0.1
    split_seed: int = 0

    @classmethod
    def make(cls, dataset: str, *, data_root: str | Path | None = None, tasks: str | None = None,
             limit: int | None = None, val_fraction: float = 0.1, split_seed: int = 0) -> "DataSpec":
        """A spec with ``data_root`` made absolute (a run must not depend on the working folder)."""
        root = str(Path(data_root).expanduser().resolve()) if data_root else None
        return cls(dataset, root, tasks or None, limit, float(val_fraction), int(split_seed))

    @classmethod
    def from_meta(cls, data: Mapping[str, Any] | None) -> "DataSpec":
        """run.json's ``data`` object; StgError when it is missing or malformed."""
        if not isinstance(data, Mapping) or not isinstance(data.get("dataset"), str):
            raise StgError("run.json has no data spec to rebuild the task set from")
        try:
            limit = data.get("limit")
            return cls(
                dataset=data["dataset"],
                data_root=None if data.get("data_root") is None else str(data["data_root"]),
                tasks=None if data.get("tasks") is None else str(data["tasks"]),
                limit=None if limit is None else int(limit),
                val_fraction=float(data.get("val_fraction", 0.1)),
                split_seed=int(data.get("split_seed", 0)),
            )
        except (TypeError, ValueError):
            raise StgError("run.json has a corrupt data spec") from None

    def to_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
