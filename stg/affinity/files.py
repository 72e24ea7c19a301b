"""Where a run keeps its affinities, and which to record (numpy only: readers load no torch).

RUN/affinity/{tag,cs}/epoch_NNN.npz: key ``affinity``, (T, T) float32, source x target
(``affinity[i, j]`` = the effect of a step on task i's loss on task j), the mean of that epoch's
probes; key ``probes``, how many probes it averages. Written by ``stg.affinity.probe``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from stg.errors import StgError

AFFINITY_METHODS = ("tag", "cs")
_EPOCH_FILE = re.compile(r"^epoch_(\d{3,})\.npz$")


@dataclass(frozen=True)
class AffinityConfig:
    """Which affinities a data-map run records (``stg datamap --affinity tag,cs --affinity-every F``):
    ``methods`` a subset of ("tag", "cs"), probed every ``every`` training steps."""

    methods: tuple[str, ...] = ()
    every: int = 10

    @classmethod
    def parse(cls, methods: str | Sequence[str] | None, every: int = 10) -> "AffinityConfig":
        """From "tag,cs" (the CLI's spelling) or a list; StgError on an unknown method or a bad F."""
        if isinstance(methods, str):
            methods = [m.strip() for m in methods.split(",") if m.strip()]
        chosen = tuple(dict.fromkeys(methods or ()))
        bad = [m for m in chosen if m not in AFFINITY_METHODS]
        if bad:
            raise StgError(f"unknown affinity {bad[0]!r}: choose from {', '.join(AFFINITY_METHODS)}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise StgError(f"--affinity-every must be a positive number of steps, got {every!r}")
        return cls(chosen, every)

    @classmethod
    def from_meta(cls, obj: Mapping[str, Any] | None) -> "AffinityConfig":
        if not obj:
            return cls()
        try:
            return cls.parse(list(obj["methods"]), int(obj["every"]))
        except (KeyError, TypeError, ValueError):
            raise StgError("run.json has a corrupt affinity setting") from None

    def to_meta(self) -> dict[str, Any]:
        return {"methods": list(self.methods), "every": self.every}


def affinity_dir(run_path: str | Path, method: str) -> Path:
    return Path(run_path) / "affinity" / method


def affinity_path(run_path: str | Path, method: str, epoch: int) -> Path:
    return affinity_dir(run_path, method) / f"epoch_{epoch:03d}.npz"


def affinity_epochs(run_path: str | Path, method: str) -> list[int]:
    """1-based epochs with a recorded ``method`` affinity, ascending."""
    folder = affinity_dir(run_path, method)
    if not folder.is_dir():
        return []
    found = (_EPOCH_FILE.match(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def load_affinity_epoch(run_path: str | Path, method: str, epoch: int) -> np.ndarray:
    """One epoch's (T, T) float64 affinity, source x target; StgError when missing or corrupt."""
    path = affinity_path(run_path, method, epoch)
    try:
        with np.load(path, allow_pickle=False) as z:
            a = np.asarray(z["affinity"], dtype=np.float64)
    except FileNotFoundError:
        raise StgError(f"run {run_path} has no {method} affinity for epoch {epoch}") from None
    except (OSError, ValueError, KeyError) as e:
        raise StgError(f"affinity file {path} is corrupt: {e}") from None
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise StgError(f"affinity file {path} is corrupt: expected a square matrix, got {a.shape}")
    return a
