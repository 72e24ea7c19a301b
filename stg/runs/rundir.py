"""The run directory: the hand-off between steps (docs/architecture.md §2). All writes are atomic.

RUN/run.json              config, dataset, task_names, references, status, epochs_done, timings
RUN/datamap/epoch_NNN.npz confidence, variability, correctness: float32 or float16 (T, N_train), cumulative
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
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator, Sequence

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
SNAPSHOT_DTYPES = ("float32", "float16")  # how RUN/datamap/epoch_NNN.npz stores its statistics
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


class WriteError(StgError, OSError):
    """A write the OS refused (disk full, read-only file system, permissions, over-long name): a
    one-line StgError naming the file, that is also an OSError (``errno`` is the OS's), so callers
    that tolerate a failed optional write (``except OSError``) keep doing so."""


def os_error(e: OSError, action: str, path: Path | str) -> WriteError:
    """``e`` as a one-line WriteError: '<action> <path>: <the OS's reason>'."""
    reason = e.strerror or str(e) or type(e).__name__
    err = WriteError(f"cannot {action} {path}: {reason}")
    err.errno = e.errno
    return err


class _Recording:
    """A write-only file wrapper that remembers the OSError of a failed ``write``: torch.save turns
    it into a RuntimeError from its C++ writer (``inline_container.cc``), which loses the errno."""

    def __init__(self, f: BinaryIO):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def atomic_save(path: Path, save_fn: Callable[[BinaryIO], object]) -> None:
    """Atomic write for writers that take a file object (``np.savez``, ``torch.save``): a temporary
    file in the same folder, fsync, then rename over ``path``; nothing is left behind on error.
    An OS error (disk full, read-only, permissions, name too long) is a one-line ``WriteError``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise os_error(e, "write", path) from None
    rec = None
    try:
        with os.fdopen(fd, "wb") as f:
            rec = _Recording(f)
            save_fn(rec)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        cause = e if isinstance(e, OSError) and not isinstance(e, StgError) else getattr(rec, "error", None)
        if cause is not None:
            raise os_error(cause, "write", path) from None
        raise


LOCK_NAME = ".lock"


@contextlib.contextmanager
def exclusive(folder: Path, what: str) -> Iterator[None]:
    """Hold ``folder/.lock`` while writing a run, so a second writer (another process, or another
    thread of this one) gets a clear error instead of interleaving files. The OS drops the lock when
    the holder dies, so a killed run never leaves a stale lock behind."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(e, "create", folder) from None
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise os_error(e, "lock", folder / LOCK_NAME) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StgError(f"{folder} is being written by another {what} right now: wait for it or stop it") from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def held_elsewhere(folder: Path) -> bool:
    """Whether another process (or another open descriptor of this one) holds ``folder/.lock``
    right now; False when there is no lock file. Takes the lock for an instant, so call it only
    where ``exclusive`` would be taken next anyway."""
    lock = folder / LOCK_NAME
    if fcntl is None or not lock.is_file():
        return False
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def check_output_file(out: str | os.PathLike[str]) -> Path:
    """Where a user asked an export to go: a file path whose folder exists, that is not a folder,
    and that lies in no stg run directory (an export must never overwrite a run's own files: the
    check resolves symlinks and walks up to the file system root). StgError otherwise; writes
    nothing and creates no folder."""
    path = Path(out).expanduser()
    if str(out).endswith(("/", os.sep)) or path.is_dir():
        raise StgError(f"--out {out} is a folder: give a file name, e.g. {Path(out) / 'grouping.csv'}")
    parent = path.parent.resolve()
    if not parent.is_dir():
        raise StgError(f"--out {out}: folder {path.parent} does not exist (create it first)")
    target = parent / path.name
    if target.is_symlink() or target.exists():
        target = target.resolve()
    for folder in (target.parent, *target.parent.parents):
        if (folder / "run.json").is_file():
            raise StgError(f"--out {out} is inside the stg run {folder}: exports must not overwrite a run's "
                           "files; write it elsewhere")
    return path


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise StgError(f"{what} not found: {path}") from None
    except OSError as e:  # a directory in its place, permissions
        raise StgError(f"cannot read {what} {path}: {e.strerror or e}") from None
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

    def write_datamap(self, epoch: int, arrays: dict[str, np.ndarray], *, dtype: str = "float32",
                      keep_every: int = 1) -> None:
        """arrays: confidence, variability, correctness, each (T, N_train), stored as ``dtype``.

        float16 halves the file; these statistics lie in [0, 1], where rounding to float16 errs by
        at most 2^-12 (half a float16 ulp below 1), and loaders upcast to float32. Once this
        snapshot is on disk, older ones that ``keep_every`` (``stg.train.config.keep_every``) does
        not keep are deleted: 1 keeps all, N keeps epochs N, 2N, ..., 0 keeps only the newest. A
        crash in between leaves an extra snapshot, never none; a crash after the deletion but
        before this epoch's checkpoint leaves the checkpointed epoch without its snapshot, which
        resume re-creates from the recorder state in the checkpoint (``stg.datamap.run.verify_resume``).
        """
        if dtype not in SNAPSHOT_DTYPES:
            raise StgError(f"unknown snapshot dtype {dtype!r}: choose one of {', '.join(SNAPSHOT_DTYPES)}")
        clean = {k: np.ascontiguousarray(arrays[k], dtype=dtype) for k in DATAMAP_KEYS}
        atomic_save(self.datamap_path(epoch), lambda f: np.savez(f, **clean))
        if keep_every != 1:
            for old in self.datamap_epochs():
                if old < epoch and (keep_every <= 0 or old % keep_every):
                    self.datamap_path(old).unlink(missing_ok=True)

    def load_datamap(self, epoch: int | None = None, keys: Sequence[str] = DATAMAP_KEYS) -> dict[str, np.ndarray]:
        """One snapshot (the last one if ``epoch`` is None): {key: float32 (T, N_train)} for ``keys``
        (all three by default; fewer read less). float16 snapshots are upcast to float32."""
        epochs = self.datamap_epochs()
        if not epochs:
            raise StgError(f"run {self.path} has no data map yet: run `stg datamap --out {self.path}` first")
        epoch = epochs[-1] if epoch is None else epoch
        if epoch not in epochs:
            raise StgError(f"run {self.path} has no data map for epoch {epoch} (has {epochs[0]}..{epochs[-1]})")
        path = self.datamap_path(epoch)
        try:
            with np.load(path, allow_pickle=False) as z:
                out = {k: np.asarray(z[k], dtype=np.float32) for k in keys}
        except Exception as e:  # BadZipFile, EOFError, zlib.error, OSError, ValueError, KeyError, MemoryError
            raise StgError(f"data map {path} is corrupt ({type(e).__name__}: {' '.join(str(e).split())[:200]}): "
                           f"re-run `stg datamap --out {self.path}` to rewrite it") from None
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

    def check_grouping_writable(self, name: str) -> None:
        """StgError while grouped training of grouping ``name`` holds RUN/groups/NAME/.lock: its
        metrics would no longer match the grouping."""
        if held_elsewhere(self.groups_dir(name)):
            raise StgError(f"grouping {name!r} of {self.path} is being trained right now (train-groups holds "
                           f"{self.groups_dir(name) / LOCK_NAME}): wait for it or stop it, or choose another --name")

    def write_grouping(self, name: str, grouping: dict[str, Any], *, overwrite: bool = True) -> bool:
        """Write groupings/NAME.json, never while its grouped training runs (StgError). With
        ``overwrite`` False an existing grouping is kept: the same result (method, k, tasks,
        membership, labels) is a no-op (returns False), a different one a StgError."""
        path = self.grouping_path(name)
        self.check_grouping_writable(name)
        if path.exists() and not overwrite:
            try:
                old = read_json(path, f"grouping {name!r}")
            except StgError:
                old = {}
            same = all(old.get(key) == grouping.get(key) for key in
                       ("method", "k", "fuzziness", "seed", "task_names", "membership", "labels"))
            if same:
                return False
            raise StgError(f"grouping {name!r} already exists in {self.path} with another result: pass "
                           "--overwrite to replace it, or choose another --name")
        folder = self.groups_dir(name)
        guard = exclusive(folder, "grouped training") if folder.is_dir() else contextlib.nullcontext()
        with guard:  # no grouped training of this grouping can start while it is rewritten
            atomic_write_json(path, grouping)
        return True


def list_runs(root: str | os.PathLike[str]) -> list[Path]:
    """Run directories directly under ``root`` (those with a run.json), newest first."""
    base = Path(root)
    if not base.is_dir():
        return []
    runs = [p for p in base.iterdir() if (p / "run.json").is_file()]
    return sorted(runs, key=lambda p: (p / "run.json").stat().st_mtime, reverse=True)
