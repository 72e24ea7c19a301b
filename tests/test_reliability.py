"""Nothing lost, nothing crashes (issue 17): the hostile-input campaign as a table-driven test.

Every case runs a CLI subcommand (in-process, through ``stg.cli.main``) on a copy of one tiny run
made once per module, with bad arguments or a hostile file, and asserts: a non-zero exit code, one
line ``error: ...`` on stderr, no traceback, and the run directory byte-for-byte unchanged. Then the
kill windows (a subprocess that ``os._exit``s at a named write), disk full / read-only file
systems (writes monkeypatched to fail with the OS's errno), corrupt run files that resume must
re-create, and the grouping names that must never collide.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from stg.cli import main
from stg.runs.rundir import RunDir, exclusive

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OPENBLAS_NUM_THREADS": "1"}


def cli(*args: object) -> tuple[int, str, str]:
    """(exit code, stderr, stdout) of ``stg ARGS`` run in this process."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main([str(a) for a in args])
    return rc, err.getvalue(), out.getvalue()


def assert_one_line_error(rc: int, err: str, *needles: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert rc != 0, err
    assert "Traceback" not in err and "unexpected" not in err, err
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error:") for line in lines) == 1, err
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


def files(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (but the lock and the feature cache) and its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != ".lock" and "cache" not in p.relative_to(path).parts}


def write_npz(path: Path, n_train: int = 96, n_test: int = 32, n_classes: int = 4, size: int = 16, **override) -> Path:
    """A small user dataset (.npz): brightness in one quadrant encodes the class."""
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % n_classes
        images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
        for c in range(n_classes):
            y0, x0 = (c // 2) * (size // 2), (c % 2) * (size // 2)
            images[labels == c, y0:y0 + size // 2, x0:x0 + size // 2] += 150
        return images, labels

    (tri, trl), (tei, tel) = split(n_train), split(n_test)
    arrays = {"train_images": tri, "train_labels": trl, "test_images": tei, "test_labels": tel, **override}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch run on a user .npz (so `stg datamap --out RUN` can rebuild it), with grouping g2."""
    root = tmp_path_factory.mktemp("rel")
    data = write_npz(root / "data.npz")
    run = root / "run"
    rc, err, _ = cli("datamap", "--dataset", data, "--epochs", 2, "--batch-size", 16, "--device", "cpu",
                     "--precision", "fp32", "--out", run)
    assert rc == 0, err
    rc, err, _ = cli("group", run, "--k", 2, "--name", "g2")
    assert rc == 0, err
    return run


@pytest.fixture
def run(base: Path, tmp_path: Path) -> Path:
    """A private copy of the base run, for a case that may damage it."""
    return Path(shutil.copytree(base, tmp_path / "run"))


# -- hostile files ---------------------------------------------------------------------------------

def edit_json(rel: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def fn(run: Path) -> None:
        obj = json.loads((run / rel).read_text())
        change(obj)
        (run / rel).write_text(json.dumps(obj))
    return fn


def set_key(rel: str, key: str, value: object) -> Callable[[Path], None]:
    return edit_json(rel, lambda o: o.__setitem__(key, value))


def del_key(rel: str, key: str) -> Callable[[Path], None]:
    return edit_json(rel, lambda o: o.pop(key))


def truncate(rel: str, keep: float = 0.5) -> Callable[[Path], None]:
    def fn(run: Path) -> None:
        data = (run / rel).read_bytes()
        (run / rel).write_bytes(data[: int(len(data) * keep)])
    return fn


def replace_bytes(rel: str, data: bytes) -> Callable[[Path], None]:
    return lambda run: (run / rel).write_bytes(data)


def lock_is_a_directory(run: Path) -> None:
    (run / ".lock").unlink(missing_ok=True)
    (run / ".lock").mkdir()


def nothing(run: Path) -> None:
    pass


def symlinked_datamap(run: Path) -> None:
    """RUN/datamap points into another folder (another run's, say)."""
    elsewhere = run.parent / "elsewhere"
    (run / "datamap").rename(elsewhere)
    (run / "datamap").symlink_to(elsewhere)


RUN_JSON = "run.json"
# (case id, damage to the run, arguments with {run} and {tmp}, words the one-line error must hold)
CAMPAIGN: list[tuple[str, Callable[[Path], None], list[str], list[str]]] = [
    # export (issue 17 item 1): never into a run, never a folder, never create folders
    ("export-into-own-run-json", nothing, ["export", "{run}", "--format", "csv", "--out", "{run}/run.json"],
     ["inside the stg run"]),
    ("export-into-datamap", nothing, ["export", "{run}", "--out", "{run}/datamap/epoch_001.npz"], ["inside the stg run"]),
    ("export-new-file-in-run", nothing, ["export", "{run}", "--out", "{run}/groupings/g.json"], ["inside the stg run"]),
    ("export-to-a-folder", nothing, ["export", "{run}", "--out", "{tmp}"], ["is a folder"]),
    ("export-to-run-folder", nothing, ["export", "{run}", "--out", "{run}"], ["is a folder"]),
    ("export-missing-parent", nothing, ["export", "{run}", "--out", "{tmp}/no/such/g.csv"], ["does not exist"]),
    ("export-grouping-k-string", set_key("groupings/g2.json", "k", "three"), ["export", "{run}", "--grouping", "g2"],
     ["g2.json", "k must be"]),
    ("export-grouping-not-json", replace_bytes("groupings/g2.json", b"{"), ["export", "{run}", "--grouping", "g2"],
     ["g2"]),
    # group (items 4, 6, 8, 11)
    ("group-truncated-snapshot", truncate("datamap/epoch_002.npz"), ["group", "{run}", "--k", "2", "--name", "x"],
     ["epoch_002.npz", "corrupt"]),
    ("group-garbage-snapshot", replace_bytes("datamap/epoch_002.npz", b"PK\x03\x04garbage"),
     ["group", "{run}", "--k", "2", "--name", "x"], ["epoch_002.npz"]),
    ("group-existing-name", nothing, ["group", "{run}", "--k", "3", "--name", "g2"], ["already exists", "--overwrite"]),
    ("group-seed-negative", nothing, ["group", "{run}", "--k", "2", "--seed", "-1"], ["--seed"]),
    ("group-seed-huge", nothing, ["group", "{run}", "--k", "2", "--seed", "99999999999"], ["--seed"]),
    ("group-long-name", nothing, ["group", "{run}", "--k", "2", "--name", "n" * 300], ["grouping name"]),
    ("group-task-names-null", set_key(RUN_JSON, "task_names", None), ["group", "{run}", "--k", "2"], ["task_names"]),
    ("group-task-names-string", set_key(RUN_JSON, "task_names", "abcd"), ["group", "{run}", "--k", "2"], ["task_names"]),
    ("group-config-wrong-type", edit_json(RUN_JSON, lambda o: o["config"].__setitem__("epochs", "five")),
     ["group", "{run}", "--k", "2"], ["epochs"]),
    ("group-config-not-object", set_key(RUN_JSON, "config", "x"), ["group", "{run}", "--k", "2"], ["config"]),
    ("group-status-unknown", set_key(RUN_JSON, "status", "weird"), ["group", "{run}", "--k", "2"], ["status"]),
    ("group-history-string", set_key(RUN_JSON, "history", "x"), ["group", "{run}", "--k", "2"], ["history"]),
    ("group-n-train-string", set_key(RUN_JSON, "n_train", "many"), ["group", "{run}", "--k", "2"], ["n_train"]),
    ("group-references-list", set_key(RUN_JSON, "references", [1, 2]), ["group", "{run}", "--k", "2"], ["references"]),
    ("group-run-json-not-json", replace_bytes(RUN_JSON, b"{\"status\": "), ["group", "{run}", "--k", "2"], ["run.json"]),
    ("group-run-json-binary", replace_bytes(RUN_JSON, b"\xff\xfe\x00"), ["group", "{run}", "--k", "2"], ["run.json"]),
    ("group-run-json-list", replace_bytes(RUN_JSON, b"[]"), ["group", "{run}", "--k", "2"], ["run.json"]),
    ("group-k-zero", nothing, ["group", "{run}", "--k", "0"], ["k"]),
    ("group-epochs-bad", nothing, ["group", "{run}", "--k", "2", "--epochs", "7"], ["epoch"]),
    # datamap resume (items 5, 6, 7, 8, 10)
    ("datamap-corrupt-checkpoint", replace_bytes("checkpoint.pt", b"garbage"),
     ["datamap", "--out", "{run}", "--epochs", "5"], ["checkpoint.pt", "cannot be loaded"]),
    ("datamap-truncated-checkpoint", truncate("checkpoint.pt"), ["datamap", "--out", "{run}"], ["checkpoint.pt"]),
    ("datamap-fewer-epochs", nothing, ["datamap", "--out", "{run}", "--epochs", "1"], ["already trained for 2 epochs"]),
    ("datamap-missing-data-block", del_key(RUN_JSON, "data"), ["datamap", "--out", "{run}"], ["data spec"]),
    ("datamap-data-not-object", set_key(RUN_JSON, "data", "x"), ["datamap", "--out", "{run}"], ["data"]),
    ("datamap-data-limit-list", edit_json(RUN_JSON, lambda o: o["data"].__setitem__("limit", [1])),
     ["datamap", "--out", "{run}"], ["data"]),
    ("datamap-data-val-fraction-5", edit_json(RUN_JSON, lambda o: o["data"].__setitem__("val_fraction", 5)),
     ["datamap", "--out", "{run}"], ["val"]),
    ("datamap-data-seed-float", edit_json(RUN_JSON, lambda o: o["data"].__setitem__("split_seed", 1.5)),
     ["datamap", "--out", "{run}"], ["another run"]),
    ("datamap-data-dataset-number", edit_json(RUN_JSON, lambda o: o["data"].__setitem__("dataset", 7)),
     ["datamap", "--out", "{run}"], ["data"]),
    ("datamap-config-unknown-model", edit_json(RUN_JSON, lambda o: o["config"].__setitem__("model", "vgg")),
     ["datamap", "--out", "{run}"], ["model"]),
    ("datamap-config-batch-float", edit_json(RUN_JSON, lambda o: o["config"].__setitem__("batch_size", 1.5)),
     ["datamap", "--out", "{run}"], ["batch_size"]),
    ("datamap-task-kinds-string", set_key(RUN_JSON, "task_kinds", "ovr"), ["datamap", "--out", "{run}"],
     ["task_kinds"]),
    ("datamap-lock-is-a-directory", lock_is_a_directory, ["datamap", "--out", "{run}", "--epochs", "3"], [".lock"]),
    ("datamap-out-is-run-json", nothing, ["datamap", "--dataset", "fashion-sample", "--out", "{run}/run.json"],
     ["not a directory"]),
    ("datamap-out-name-too-long", nothing, ["datamap", "--dataset", "fashion-sample", "--out", "{tmp}/" + "x" * 300],
     ["too long"]),
    ("datamap-other-settings", nothing, ["datamap", "--dataset", "fashion-sample", "--out", "{run}"], ["another run"]),
    ("datamap-symlinked-datamap", symlinked_datamap, ["datamap", "--out", "{run}", "--epochs", "3"],
     ["symbolic link"]),
    # train-groups
    ("train-groups-unknown", nothing, ["train-groups", "{run}", "--grouping", "nope"], ["unknown grouping"]),
    ("train-groups-bad-membership", set_key("groupings/g2.json", "membership", [[1, 0]]),
     ["train-groups", "{run}", "--grouping", "g2", "--epochs", "1"], ["membership"]),
    ("train-groups-task-names-null", set_key(RUN_JSON, "task_names", None),
     ["train-groups", "{run}", "--grouping", "g2"], ["task_names"]),
    # mt2st
    ("mt2st-unknown-target", nothing, ["mt2st", "{run}", "--target", "nope"], ["nope"]),
    # app (issue 17 item 11): refused before a server starts
    ("app-port-out-of-range", nothing, ["app", "--runs", "{tmp}", "--port", "99999", "--headless"], ["--port"]),
    ("app-host-not-a-host", nothing, ["app", "--runs", "{tmp}", "--host", "not a host", "--headless"], ["--host"]),
]


@pytest.mark.parametrize("case, damage, args, needles", CAMPAIGN, ids=[c[0] for c in CAMPAIGN])
def test_campaign_one_line_error_and_nothing_changed(case: str, damage, args: list[str], needles: list[str],
                                                     run: Path, tmp_path: Path) -> None:
    damage(run)
    before = files(run)
    outside = sorted(p.name for p in tmp_path.iterdir())
    rc, err, _ = cli(*(a.format(run=run, tmp=tmp_path) for a in args))
    assert_one_line_error(rc, err, *needles)
    assert files(run) == before, "a refused command must leave the run as it was"
    assert sorted(p.name for p in tmp_path.iterdir()) == outside, "nothing created next to the run"


# -- hostile datasets (item 2) -----------------------------------------------------------------------

@pytest.mark.parametrize("case, make, needles", [
    ("pickled-object-array", lambda p: write_npz(p, class_names=np.array([{"a": 1}], dtype=object)), ["pickled"]),
    ("not-a-zip", lambda p: p.write_bytes(b"hello"), ["data.npz"]),
    ("missing-key", lambda p: write_npz(p, test_labels=None), ["lacks test_labels"]),
    ("float-labels", lambda p: write_npz(p, train_labels=np.linspace(0, 3, 96)), ["train_labels"]),
    ("labels-short", lambda p: write_npz(p, train_labels=np.zeros(5, np.int64)), ["train_labels"]),
    ("negative-label", lambda p: write_npz(p, train_labels=-(np.arange(96) % 4)), ["negative"]),
    ("label-beyond-names", lambda p: write_npz(p, class_names=np.array(["a", "b"])), ["class_names"]),
    ("images-int64", lambda p: write_npz(p, test_images=np.zeros((32, 16, 16), np.int64)), ["uint8"]),
])
def test_hostile_npz_is_one_line(case: str, make, needles: list[str], tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    make(path)
    rc, err, _ = cli("data", path)
    assert_one_line_error(rc, err, *needles)


def test_hostile_label_fails_before_allocating(tmp_path: Path) -> None:
    """One train label of 10**9 must be refused before anything is sized by it: run under a 4 GiB
    address-space limit (without the check, a billion class names need ~60 GiB)."""
    labels = np.arange(96) % 4
    labels[5] = 10**9
    path = write_npz(tmp_path / "hostile.npz", train_labels=labels)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
            "from stg.cli import main; sys.exit(main(['data', sys.argv[1]]))")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=ENV,
                          timeout=300)
    assert_one_line_error(proc.returncode, proc.stderr, "1000000000", "0..K-1")


def test_declared_sizes_are_checked_before_loading(tmp_path: Path) -> None:
    from stg.data.folder import _npz_headers

    path = tmp_path / "bomb.npz"
    write_npz(path)
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**7, 10**6)})
    members["train_images.npy"] = header.getvalue() + b"\x00" * 64
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    assert _npz_headers(path)["train_images"][0] == (10**7, 10**6)
    rc, err, _ = cli("data", path)
    assert_one_line_error(rc, err, "declares", "GiB")


# -- groupings are never overwritten silently (item 4) -------------------------------------------------

def test_default_names_never_collide() -> None:
    from stg.grouping.make import default_name

    assert default_name(method="fuzzy-kmeans", k=20, m=1.07) == "fuzzy-kmeans-k20-m1.07"
    names = {default_name(method="fuzzy-kmeans", k=3, m=m) for m in (1.07, 1.0700001, 1.07 + 1e-15, 2.0, 2.5)}
    assert len(names) == 5
    long = [default_name(method="fuzzy-kmeans", k=3, m=1.07, epochs=",".join(map(str, range(1, n)))) for n in (40, 41)]
    assert long[0] != long[1] and all(len(n) <= 64 for n in long)
    other = default_name(method="fcm", k=3, m=1.5, features="conf-only")
    assert other != default_name(method="fcm", k=3, m=1.5) and other != default_name(method="fcm", k=3, m=1.5,
                                                                                        features="var-only")


def test_group_names_overwrite_and_lock(run: Path) -> None:
    rc, err, _ = cli("group", run, "--k", 2, "--fuzziness", "1.07")
    assert rc == 0, err
    rc, err, _ = cli("group", run, "--k", 2, "--fuzziness", "1.0700001")
    assert rc == 0, err
    names = RunDir(run).grouping_names()
    assert "fuzzy-kmeans-k2-m1.07" in names and "fuzzy-kmeans-k2-m1.0700001" in names
    # the same settings again: the same result, kept (a no-op, not an error)
    before = (run / "groupings" / "fuzzy-kmeans-k2-m1.07.json").read_bytes()
    rc, err, _ = cli("group", run, "--k", 2)
    assert rc == 0 and "kept" in err
    assert (run / "groupings" / "fuzzy-kmeans-k2-m1.07.json").read_bytes() == before
    # another result under an existing name: refused, then replaced with --overwrite
    g2 = (run / "groupings" / "g2.json").read_bytes()
    assert_one_line_error(*cli("group", run, "--k", 3, "--name", "g2")[:2], "already exists")
    assert (run / "groupings" / "g2.json").read_bytes() == g2
    # never while a training of that grouping holds its lock, --overwrite or not
    with exclusive(RunDir(run).groups_dir("g2"), "grouped training"):
        assert_one_line_error(*cli("group", run, "--k", 3, "--name", "g2", "--overwrite")[:2], "being trained")
    assert (run / "groupings" / "g2.json").read_bytes() == g2
    rc, err, _ = cli("group", run, "--k", 3, "--name", "g2", "--overwrite")
    assert rc == 0, err
    assert RunDir(run).grouping("g2").k == 3


# -- corrupt run files are noticed and re-created on resume (items 6, 10) ---------------------------

def _datamaps(path: Path) -> dict[int, dict[str, np.ndarray]]:
    run = RunDir(path)
    return {e: run.load_datamap(e) for e in run.datamap_epochs()}


def test_resume_re_creates_a_truncated_snapshot_and_samples(run: Path, base: Path) -> None:
    truncate("datamap/epoch_002.npz")(run)
    (run / "samples.npz").unlink()
    assert_one_line_error(*cli("group", run, "--k", 2, "--name", "x")[:2], "epoch_002.npz")
    rc, err, _ = cli("datamap", "--out", run)
    assert rc == 0, err
    assert "re-created the data map of epoch 2" in err and "re-created samples.npz" in err
    want, got = _datamaps(base), _datamaps(run)
    assert sorted(got) == [1, 2]
    for key in want[2]:
        np.testing.assert_array_equal(got[2][key], want[2][key])
    assert (run / "samples.npz").read_bytes() == (base / "samples.npz").read_bytes()
    meta = RunDir(run).read()
    assert meta["status"] == "done" and [h["epoch"] for h in meta["history"]] == [1, 2]
    assert cli("group", run, "--k", 2, "--name", "x")[0] == 0


def test_resume_moves_an_older_corrupt_snapshot_aside(run: Path) -> None:
    truncate("datamap/epoch_001.npz")(run)
    rc, err, _ = cli("datamap", "--out", run, "--epochs", 3)
    assert rc == 0, err
    assert RunDir(run).datamap_epochs() == [2, 3] and (run / "datamap" / "epoch_001.npz.corrupt").is_file()
    assert "epoch 1 was corrupt" in RunDir(run).read()["repairs"][0]


def test_a_failed_resume_leaves_the_run_as_it_was(run: Path) -> None:
    (run / "checkpoint.pt").write_bytes(b"garbage")
    before = files(run)
    assert_one_line_error(*cli("datamap", "--out", run, "--epochs", 5)[:2], "cannot be loaded")
    assert files(run) == before
    meta = RunDir(run).read()
    assert meta["status"] == "done" and meta["config"]["epochs"] == 2


# -- OS errors (item 7) --------------------------------------------------------------------------------

def _failing_writes(monkeypatch: pytest.MonkeyPatch, code: int, only: str | None = None) -> None:
    """Every write to a file whose name contains ``only`` (all files when None) fails with ``code``."""
    real = os.fdopen

    class Failing:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def write(self, data) -> int:
            raise OSError(code, os.strerror(code))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __exit__(self, *exc):
            self.f.close()

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        return Failing(f) if "w" in (args[0] if args else kwargs.get("mode", "r")) and (only is None or only in name) else f

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize("only", ["checkpoint.pt", "epoch_003.npz", None])
def test_disk_full_is_one_line_and_the_run_resumes(run: Path, monkeypatch: pytest.MonkeyPatch, only) -> None:
    _failing_writes(monkeypatch, errno.ENOSPC, only)
    line = assert_one_line_error(*cli("datamap", "--out", run, "--epochs", 3)[:2], "No space left on device")
    assert "inline_container" not in line
    meta = RunDir(run).read()
    assert meta["epochs_done"] == 2 and [h["epoch"] for h in meta["history"]] == [1, 2]
    if only is not None:  # run.json could be written: the failure is recorded
        assert meta["status"] == "failed" and "No space left" in meta["error"]
    monkeypatch.undo()  # space freed: the same command resumes
    rc, err, _ = cli("datamap", "--out", run, "--epochs", 3)
    assert rc == 0, err
    meta = RunDir(run).read()
    assert meta["status"] == "done" and [h["epoch"] for h in meta["history"]] == [1, 2, 3]
    assert RunDir(run).datamap_epochs() == [1, 2, 3]
    assert not [p for p in run.rglob("*.tmp")], "no temp files left"


def test_read_only_file_system_is_one_line(run: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _failing_writes(monkeypatch, errno.EROFS)
    before = files(run)
    assert_one_line_error(*cli("group", run, "--k", 2, "--name", "ro")[:2], "Read-only file system")
    assert_one_line_error(*cli("export", run, "--out", tmp_path / "g.csv")[:2], "Read-only file system")
    assert files(run) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_directory_is_one_line(run: Path) -> None:
    (run / "groupings").chmod(0o555)
    try:
        assert_one_line_error(*cli("group", run, "--k", 2, "--name", "ro")[:2], "Permission denied")
    finally:
        (run / "groupings").chmod(0o755)


# -- kill windows (item 5) -------------------------------------------------------------------------------

def _kill_run(out: Path, point: str) -> int:
    return subprocess.run([sys.executable, str(HERE / "kill_at.py"), str(out), point, "3"], env=ENV,
                          timeout=300).returncode


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kill") / "full"
    assert _kill_run(out, "none") == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("point", ["samples-tmp", "after-snapshot:2", "after-checkpoint:2"])
def test_kill_at_a_write_loses_nothing(point: str, tmp_path: Path, uninterrupted: Path) -> None:
    out = tmp_path / "run"
    assert _kill_run(out, point) == 9, "killed at the named point"
    assert _kill_run(out, "none") == 0, "the same command resumes"
    run = RunDir(out)
    meta = run.read()
    assert meta["status"] == "done" and [h["epoch"] for h in meta["history"]] == [1, 2, 3]
    assert (out / "samples.npz").read_bytes() == (uninterrupted / "samples.npz").read_bytes()
    want, got = _datamaps(uninterrupted), _datamaps(out)
    assert sorted(got) == [1, 2, 3]
    for e in want:
        for key in want[e]:
            np.testing.assert_array_equal(got[e][key], want[e][key])
    assert not [p for p in out.rglob("*.tmp")]


# -- smaller holes (item 11) -----------------------------------------------------------------------------

def test_a_diverging_run_stops_with_one_line_and_no_nan_in_run_json(base: Path, tmp_path: Path) -> None:
    data = base.parent / "data.npz"
    out = tmp_path / "lr"
    rc, err, _ = cli("datamap", "--dataset", data, "--epochs", 2, "--batch-size", 16, "--device", "cpu",
                     "--lr", "1e300", "--out", out)
    assert_one_line_error(rc, err, "diverged", "--lr")

    def no_constants(name: str):
        raise AssertionError(f"run.json holds a bare {name}")

    meta = json.loads((out / "run.json").read_text(), parse_constant=no_constants)
    assert meta["status"] == "failed" and meta["epochs_done"] == 0 and meta["history"] == []
    assert RunDir(out).datamap_epochs() == [] and not (out / "checkpoint.pt").exists()


@pytest.mark.slow
def test_sigterm_records_the_run_as_cancelled(base: Path, tmp_path: Path) -> None:
    import signal
    import time

    out = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "-m", "stg.cli", "datamap", "--dataset", str(base.parent / "data.npz"),
                             "--epochs", "200", "--batch-size", "16", "--device", "cpu", "--out", str(out)],
                            env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not RunDir(out).datamap_path(1).exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    meta = RunDir(out).read()
    assert meta["status"] == "cancelled" and meta["epochs_done"] >= 1
    assert "stg datamap --out" in err
