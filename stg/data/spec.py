"""``DataSpec``: everything needed to rebuild a run's task set, as stored in run.json's ``data``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from stg.errors import StgError


SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class HfOptions:
    """How to read a Hugging Face dataset (``hf:NAME`` or a ``save_to_disk`` folder); None: guess.

    config: the dataset's configuration (``load_dataset(NAME, config)``)
    image_column: the column of images
    label_column: a column of class labels (one-vs-rest tasks, like other class datasets)
    label_columns: several binary columns (one task each: multi-label)
    splits: (stg split, dataset split) pairs, e.g. (("train", "train"), ("test", "validation"))
    """

    config: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    label_columns: tuple[str, ...] | None = None
    splits: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def parse_splits(text: str | None) -> tuple[tuple[str, str], ...]:
        """``"train=train,test=validation"`` -> (("train", "train"), ("test", "validation"))."""
        if not text or not text.strip():
            return ()
        out: dict[str, str] = {}
        for part in text.split(","):
            ours, sep, theirs = part.partition("=")
            ours, theirs = ours.strip(), theirs.strip()
            if not sep or ours not in SPLIT_NAMES or not theirs:
                raise StgError(f"--split takes OURS=THEIRS pairs with OURS in {', '.join(SPLIT_NAMES)}, e.g. "
                               f"train=train,test=validation; got {text!r}")
            if ours in out:
                raise StgError(f"--split names the {ours} split twice: {text!r}")
            out[ours] = theirs
        return tuple(out.items())

    @classmethod
    def from_meta(cls, data: Any) -> "HfOptions | None":
        if data is None:
            return None
        if not isinstance(data, Mapping):
            raise StgError("run.json has a corrupt data spec (hf)")
        cols = data.get("label_columns")
        return cls(
            config=None if data.get("config") is None else str(data["config"]),
            image_column=None if data.get("image_column") is None else str(data["image_column"]),
            label_column=None if data.get("label_column") is None else str(data["label_column"]),
            label_columns=None if cols is None else tuple(str(c) for c in cols),
            splits=tuple((str(a), str(b)) for a, b in data.get("splits") or ()),
        )


@dataclass(frozen=True)
class DataSpec:
    """A dataset name or path, the task spec (None: the dataset's default), a training-image
    ``limit`` (stratified; None: all), the validation share and the seed of the train/val split;
    ``image_size`` / ``resize`` (None: images as they are unless their sizes differ; see
    ``stg.data.imagecache``) and ``hf`` (how to read a Hugging Face dataset)."""

    dataset: str
    data_root: str | None = None
    tasks: str | None = None
    limit: int | None = None
    val_fraction: float = 0.1
    split_seed: int = 0
    image_size: int | None = None
    resize: str = "crop"
    hf: HfOptions | None = None

    @classmethod
    def make(cls, dataset: str, *, data_root: str | Path | None = None, tasks: str | None = None,
             limit: int | None = None, val_fraction: float = 0.1, split_seed: int = 0,
             image_size: int | None = None, resize: str = "crop", hf: HfOptions | None = None) -> "DataSpec":
        """A spec with ``data_root`` made absolute (a run must not depend on the working folder)."""
        root = str(Path(data_root).expanduser().resolve()) if data_root else None
        return cls(dataset, root, tasks or None, limit, float(val_fraction), int(split_seed),
                   None if image_size is None else int(image_size), resize, hf)

    def load_options(self) -> dict[str, Any]:
        """The loader keywords beyond the original six, only those not at their defaults (so a loader
        that predates them keeps working on specs that do not use them)."""
        out: dict[str, Any] = {}
        if self.image_size is not None:
            out["image_size"] = self.image_size
        if self.resize != "crop":
            out["resize"] = self.resize
        if self.hf is not None:
            out["hf"] = self.hf
        return out

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
                image_size=None if data.get("image_size") is None else int(data["image_size"]),
                resize=str(data.get("resize", "crop")),
                hf=HfOptions.from_meta(data.get("hf")),
            )
        except (TypeError, ValueError):
            raise StgError("run.json has a corrupt data spec") from None

    def to_meta(self) -> dict[str, Any]:
        """The JSON object; image_size, resize and hf only when set, so the runs made before they
        existed keep their identity (and resume)."""
        out = dataclasses.asdict(self)
        for key, default in (("image_size", None), ("resize", "crop"), ("hf", None)):
            if out[key] == default:
                del out[key]
        if self.hf is not None:
            out["hf"] = {**out["hf"], "label_columns": None if self.hf.label_columns is None else list(self.hf.label_columns),
                         "splits": [list(p) for p in self.hf.splits]}
        return out
