"""A wheel works: a plain (not editable) install gives a working `stg app` and the embedded `fashion-sample`.

The test builds a wheel from a copy of the working tree, installs it with ``--no-deps`` into a
throwaway venv and runs everything from an empty folder, so nothing can resolve through the
checkout. The heavy dependencies (torch, streamlit, ...) are borrowed from the running venv through a
``.pth`` path line: a path line does not run that venv's own ``.pth`` files, so its editable ``stg``
finder stays off and ``stg`` / ``stg_app`` can only come from the wheel (asserted).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Top-level folders of a working tree that are not sources (see .gitignore); copied trees skip them.
NOT_SOURCES = {".git", ".venv", "build", "dist", "runs", "data", ".cache", "test-artifacts", ".pytest_cache"}
# What a wheel without network errors looks like when pip cannot fetch build requirements.
OFFLINE_HINTS = ("No matching distribution found", "Could not find a version", "NewConnectionError",
                 "Temporary failure in name resolution", "Network is unreachable")


def run(cmd: list, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def ignore_non_sources(folder: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    if Path(folder).resolve() == ROOT:
        skip |= NOT_SOURCES & set(names)
    return skip


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    return {**env, "PYTHONNOUSERSITE": "1", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """stg-*.whl built from a copy of the working tree (build/ and egg-info stay out of the checkout)."""
    if importlib.util.find_spec("pip") is None:
        pytest.skip(f"pip is not installed in {sys.prefix}")
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist = tmp / "src", tmp / "dist"
    shutil.copytree(ROOT, src, ignore=ignore_non_sources)
    # Offline with the venv's own setuptools when it has one; else pip fetches it (CI has an index).
    isolated = importlib.util.find_spec("setuptools") is None
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, src]
    if not isolated:
        cmd.insert(5, "--no-build-isolation")
    r = run(cmd, cwd=tmp, env=clean_env())
    out = r.stdout + r.stderr
    if r.returncode and isolated and any(h in out for h in OFFLINE_HINTS):
        pytest.skip(f"no setuptools in {sys.prefix} and no package index reachable to build the wheel:\n{out[-2000:]}")
    assert r.returncode == 0, out[-4000:]
    (whl,) = dist.glob("stg-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory) -> Path:
    """A throwaway venv with the wheel installed and the running venv's site-packages as a fallback."""
    pip_version = tuple(int(p) for p in run([sys.executable, "-m", "pip", "--version"], Path.cwd(), clean_env())
                        .stdout.split()[1].split(".")[:2])
    if pip_version < (22, 3):
        pytest.skip(f"pip {pip_version} has no --python option (need 22.3+) to install into a venv without pip")
    tmp = tmp_path_factory.mktemp("venv")
    env_dir = tmp / "venv"
    r = run([sys.executable, "-m", "venv", "--without-pip", env_dir], cwd=tmp, env=clean_env())
    assert r.returncode == 0, r.stderr
    py = env_dir / "bin" / "python"
    # Install first, while the venv sees nothing else: pip must not take the editable stg for installed.
    r = run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "--no-cache-dir",
             wheel], cwd=tmp, env=clean_env())
    assert r.returncode == 0, r.stdout + r.stderr
    purelib = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, clean_env()).stdout
    borrowed = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib.strip()) / "zz_borrowed_deps.pth").write_text("".join(f"{p}\n" for p in borrowed))
    return env_dir


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty folder outside the checkout to run from."""
    work = tmp_path / "work"
    work.mkdir()
    return work


def test_wheel_contents(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    views = sorted(p.name for p in (ROOT / "stg_app" / "views").glob("*.py"))
    assert views
    expected = {"stg/py.typed", "stg/cli.py", "stg/data/assets/fashion_sample.npz", "stg/data/assets/FASHION_SAMPLE.md",
                "stg_app/__init__.py", "stg_app/Home.py", "stg_app/common.py", *(f"stg_app/views/{v}" for v in views)}
    assert expected <= names, sorted(expected - names)
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "assets/", "benchmarks/"))]


def test_installed_from_wheel(venv: Path, workdir: Path) -> None:
    code = ("import json, sys, stg, stg.cli, stg.data.fashion as f, stg_app; "
            "print(json.dumps({'stg': stg.__file__, 'app': stg_app.__file__, 'sample': str(f.SAMPLE_PATH), "
            "'sample_exists': f.SAMPLE_PATH.is_file(), 'streamlit': 'streamlit' in sys.modules}))")
    r = run([venv / "bin" / "python", "-c", code], workdir, clean_env())
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    for key in ("stg", "app", "sample"):
        assert Path(info[key]).resolve().is_relative_to(venv.resolve()), info
    assert info["sample_exists"], info
    assert not info["streamlit"], "importing stg (cli, data) must not import streamlit"


def test_fashion_sample_from_wheel(venv: Path, workdir: Path) -> None:
    r = run([venv / "bin" / "stg", "data", "fashion-sample", "--json"], workdir, clean_env())
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["dataset"] == "fashion-sample" and info["n_train"] > 0 and info["n_tasks"] == 10


def test_app_from_wheel(venv: Path, workdir: Path) -> None:
    """`stg app` serves the installed dashboard; its Home.py (from the wheel) renders without an exception."""
    runs = workdir / "runs"
    runs.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(venv / "bin" / "stg"), "app", "--runs", str(runs), "--port", str(port),
                                 "--host", "127.0.0.1", "--headless"], cwd=workdir, env=clean_env(),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        health = b""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    health = r.read().strip()
                    if health == b"ok":
                        break
            except OSError:
                time.sleep(0.5)
        assert health == b"ok", f"no healthy server on {url} (exit {proc.poll()}):\n{log.read_text()[-3000:]}"
        with urllib.request.urlopen(url + "/", timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # stg stops the streamlit server it started
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # Run the installed Home.py (the wheel's copy) the way Streamlit does, with AppTest.
    code = ("import json, sys, stg_app\n"
            "from pathlib import Path\n"
            "from streamlit.testing.v1 import AppTest\n"
            "home = Path(stg_app.__file__).parent / 'Home.py'\n"
            "at = AppTest.from_file(str(home), default_timeout=90).run()\n"
            "print(json.dumps({'home': str(home), 'stg': sys.modules['stg'].__file__,\n"
            "                  'exception': [str(e.value) for e in at.exception],\n"
            "                  'error': [str(e.value) for e in at.error],\n"
            "                  'title': [str(e.value) for e in at.title]}))\n")
    r = run([venv / "bin" / "python", "-c", code], workdir, clean_env(STG_RUNS=str(runs), STG_NO_WEBGL="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(info["home"]).resolve().is_relative_to(venv.resolve()), info
    assert Path(info["stg"]).resolve().is_relative_to(venv.resolve()), info
    assert not info["exception"] and not info["error"], info
    assert info["title"], info
