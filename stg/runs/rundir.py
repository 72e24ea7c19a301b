"""The run directory: the hand-off between steps (docs/architecture.md §2). All writes are atomic.

RUN/run.json              config, dataset, task_names, references, status, epochs_done, timings
RUN/datamap/epoch_NNN.npz confidence, variability, correctness: float32 (T, N_train), cumulative
RUN/checkpoint.pt         model + optimizer + recorder state (torch.load weights_only=True); the RNG streams
                          are re-derived from (seed, epoch), so they need no saving
RUN/groupings/G.json      one grouping
RUN/groups/G/...          grouped training of grouping G
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, runs are not guarded against a second writer
    fcntl = None  # type: ignore[assignment]

import numpy as np

from stg.errors import StgError

if TYPE_CHECKING:  # records import the config and data spec; rundir stays import-light
    from stg.runs.records import GroupingRecord, MetricsRecord, RunRecord

STATUSES = ("running", "done", "failed", "cancelled")
DATAMAP_KEYS = ("confidence", "variability", "correctness")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_EPOCH_FILE = re.compile(r"^epoch_(\d{3,})\.npz$")


def check_name(name: str, what: str = "name") -> str:
    """Validate a grouping/run-part name: letters, digits, '.', '_', '-'; no path traversal."""
    if not _NAME.match(name) or ".." in name:
        raise StgError(f"invalid {what} {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    atomic_save(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_save(path: Path, save_fn: Callable[[BinaryIO], object]) -> None:
    """Atomic write for writers that take a file object (``np.savez``, ``torch.save``): a temporary
    file in the same folder, fsync, then rename over ``path``; nothing is left behind on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            save_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


LOCK_NAME = ".lock"


@contextlib.contextmanager
def exclusive(folder: Path, what: str) -> Iterator[None]:
    """Hold ``folder/.lock`` while writing a run, so a second writer (another process, or another
    thread of this one) gets a clear error instead of interleaving files. The OS drops the lock when
    the holder dies, so a killed run never leaves a stale lock behind."""
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StgError(f"{folder} is being written by another {what} right now: wait for it or stop it") from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise StgError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StgError(f"{what} is corrupt ({path}): {e.msg if hasattr(e, 'msg') else e}") from None
    if not isinstance(obj, dict):
        raise StgError(f"{what} is corrupt ({path}): expected a JSON object")
    return obj


class RunDir:
    """A run directory on disk. Cheap to construct; every accessor reads the files afresh."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    # -- layout -------------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def datamap_dir(self) -> Path:
        return self.path / "datamap"

    def datamap_path(self, epoch: int) -> Path:
        return self.datamap_dir / f"epoch_{epoch:03d}.npz"

    def grouping_path(self, name: str) -> Path:
        return self.path / "groupings" / f"{check_name(name, 'grouping name')}.json"

    def groups_dir(self, name: str) -> Path:
        return self.path / "groups" / check_name(name, "grouping name")

    # -- run.json -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.run_json.is_file()

    def read(self) -> dict[str, Any]:
        """run.json as a dict; a clear StgError for a missing, corrupt or foreign directory."""
        if not self.path.is_dir():
            raise StgError(f"run directory not found: {self.path}")
        if not self.run_json.is_file():
            raise StgError(f"not an stg run directory (no run.json): {self.path}")
        meta = read_json(self.run_json, "run.json")
        from stg.runs.records import RunRecord

        RunRecord.from_json(meta, self.run_json)  # validated once, here
        return meta

    def record(self) -> "RunRecord":
        """run.json as a typed, validated ``stg.runs.records.RunRecord``."""
        from stg.runs.records import RunRecord

        return RunRecord.from_json(self.read(), self.run_json)

    def write(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.run_json, meta)

    def update(self, **changes: Any) -> dict[str, Any]:
        meta = self.read()
        meta.update(changes)
        self.write(meta)
        return meta

    # -- data maps ----------------------------------------------------------------------------
    def datamap_epochs(self) -> list[int]:
        """1-based epochs with a data-map snapshot on disk, ascending."""
        if not self.datamap_dir.is_dir():
            return []
        found = (_EPOCH_FILE.match(p.name) for p in self.datamap_dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def write_datamap(self, epoch: int, arrays: dict[str, np.ndarray]) -> None:
        """arrays: confidence, variability, correctness, each float32 (T, N_train)."""
        clean = {k: np.ascontiguousarray(arrays[k], dtype=np.float32) for k in DATAMAP_KEYS}
        atomic_save(self.datamap_path(epoch), lambda f: np.savez(f, **clean))

    def load_datamap(self, epoch: int | None = None) -> dict[str, np.ndarray]:
        """One snapshot (the last one if ``epoch`` is None): {key: float32 (T, N_train)}."""
        epochs = self.datamap_epochs()
        if not epochs:
            raise StgError(f"run {self.path} has no data map yet: run `stg datamap --out {self.path}` first")
        epoch = epochs[-1] if epoch is None else epoch
        if epoch not in epochs:
            raise StgError(f"run {self.path} has no data map for epoch {epoch} (has {epochs[0]}..{epochs[-1]})")
        path = self.datamap_path(epoch)
        try:
            with np.load(path, allow_pickle=False) as z:
                out = {k: np.asarray(z[k], dtype=np.float32) for k in DATAMAP_KEYS}
        except (OSError, ValueError, KeyError) as e:
            raise StgError(f"data map {path} is corrupt: {e}") from None
        shapes = {v.shape for v in out.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise StgError(f"data map {path} is corrupt: arrays must share one (T, N) shape, got {shapes}")
        return out

    # -- groupings ----------------------------------------------------------------------------
    def grouping_names(self) -> list[str]:
        folder = self.path / "groupings"
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []

    def read_grouping(self, name: str) -> dict[str, Any]:
        path = self.grouping_path(name)
        if not path.is_file():
            have = ", ".join(self.grouping_names()) or "none"
            raise StgError(f"unknown grouping {name!r} in {self.path} (have: {have}); run `stg group` first")
        obj = read_json(path, f"grouping {name!r}")
        from stg.runs.records import GroupingRecord

        GroupingRecord.from_json(obj, path, name)  # validated once, here
        return obj

    def grouping(self, name: str) -> "GroupingRecord":
        """groupings/NAME.json as a typed, validated ``stg.runs.records.GroupingRecord``."""
        from stg.runs.records import GroupingRecord

        return GroupingRecord.from_json(self.read_grouping(name), self.grouping_path(name), name)

    def metrics_path(self, grouping: str) -> Path:
        return self.groups_dir(grouping) / "metrics.json"

    def metrics(self, grouping: str) -> "MetricsRecord | None":
        """groups/GROUPING/metrics.json as a typed ``stg.runs.records.MetricsRecord``; None before
        the grouping's specialists were trained."""
        from stg.runs.records import MetricsRecord

        path = self.metrics_path(grouping)
        if not path.is_file():
            return None
        return MetricsRecord.from_json(read_json(path, f"metrics of grouping {grouping!r}"), path)

    def write_grouping(self, name: str, grouping: dict[str, Any]) -> None:
        atomic_write_json(self.grouping_path(name), grouping)


def list_runs(root: str | os.PathLike[str]) -> list[Path]:
    """Run directories directly under ``root`` (those with a run.json), newest first."""
    base = Path(root)
    if not base.is_dir():
        return []
    runs = [p for p in base.iterdir() if (p / "run.json").is_file()]
    return sorted(runs, key=lambda p: (p / "run.json").stat().st_mtime, reverse=True)
