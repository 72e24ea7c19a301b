"""End to end in a real browser: `stg app` + headless Debian Chromium driven by Playwright.

Starts a short run on the embedded Fashion-MNIST sample, waits for the data-map grid, changes k on
the grouping page, downloads an export, and keeps its screenshots in test-artifacts/screenshots/
(or $STG_SCREENSHOTS). The README's pictures come from scripts/readme_screenshots.py.
"""

from __future__ import annotations

import json
import re
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("STG_SCREENSHOTS", ROOT / "test-artifacts" / "screenshots"))
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]

if not CHROMIUM.exists():
    pytest.skip(f"browser test needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser test needs the playwright package")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"stg app exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError("stg app did not become healthy")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    port = free_port()
    stg = Path(sys.executable).parent / "stg"
    cmd = [str(stg), "app", "--runs", str(runs), "--port", str(port), "--headless"] if stg.exists() else \
        [sys.executable, "-m", "stg.cli", "app", "--runs", str(runs), "--port", str(port), "--headless"]
    env = {**os.environ, "STG_NO_WEBGL": "1"}  # no GPU in CI: draw the detail scatter as SVG
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the app and the streamlit server it started
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)


def settle(page, timeout: float = 60_000) -> None:
    """Wait until Streamlit is connected and the script is not running."""
    page.wait_for_selector("[data-testid='stAppViewContainer']", timeout=timeout)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=timeout)
    page.wait_for_timeout(300)


# columns = the heatmap's x categories (z may arrive base64-encoded, without a .length)
HEATMAP_COLUMNS = """() => [...document.querySelectorAll('.js-plotly-plot')]
    .flatMap(g => (g.data || []).filter(t => t.type === 'heatmap' && t.x && t.x.length).map(t => t.x.length))"""


def wait_heatmap_columns(page, *, has: int, lacks: int | None = None) -> list[int]:
    """Wait until some Plotly heatmap on the page has ``has`` columns (the membership heatmap: one
    per cluster) and none has ``lacks``; return the column counts. Fails by timeout otherwise."""
    page.wait_for_function(
        f"() => {{ const c = ({HEATMAP_COLUMNS})(); return c.includes({has}) && !c.includes({lacks or -1}); }}")
    return page.evaluate(HEATMAP_COLUMNS)


def grid_hover(page) -> str:
    """Hover cells of the first map of the data-map grid until one holds samples; its hover text."""
    grid = page.locator(".js-plotly-plot").first
    grid.scroll_into_view_if_needed()
    box = grid.locator(".nsewdrag").first.bounding_box()
    for fy in (0.05, 0.15, 0.3, 0.5):
        for fx in (0.05, 0.15, 0.3):
            page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
            hover = page.locator(".hoverlayer .hovertext")
            try:
                hover.first.wait_for(timeout=1500)
            except sync_api.TimeoutError:
                continue  # an empty cell has no hover
            lines = hover.first.locator("tspan.line").all_text_contents() or [hover.first.text_content()]
            return " ".join(" ".join(lines).split())
    raise AssertionError("no cell of the first map answered a hover")


def explore_end_to_end(page, app_url: str, tmp_path: Path) -> None:
    """Explore samples on the finished run: the hover label names the sample, a click shows its
    thumbnail with index and class, a lasso selects a region whose indices download as CSV, and
    the table counts every task's samples per region."""
    import csv

    page.goto(app_url + "/explore?run=browser-demo&task=footwear")
    settle(page)
    page.get_by_text("Samples per region").first.wait_for()
    plot = page.locator(".js-plotly-plot").first
    plot.scroll_into_view_if_needed()
    point = plot.locator(".scatterlayer .trace .points path").first
    point.wait_for()
    settle(page)
    page.wait_for_timeout(1500)  # the page's first reruns (URL query) redraw the chart: click after them
    box = point.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    hover = page.locator(".hoverlayer .hovertext").first
    hover.wait_for()
    assert "sample" in hover.text_content()
    page.mouse.click(x, y)
    page.get_by_text(re.compile(r"Sample \d+: class \S+")).first.wait_for()  # "**Sample N**: class C"
    page.locator("[data-testid='stImage'] img").first.wait_for()
    settle(page)
    page.screenshot(path=str(SHOTS / "explore_click.png"))

    plot.hover()
    plot.locator(".modebar-btn[data-title='Lasso Select']").first.click()
    drag = plot.locator(".nsewdrag").first.bounding_box()
    x0, y0, w, h = drag["x"], drag["y"], drag["width"], drag["height"]
    lasso = [(0.02, 0.02), (0.6, 0.02), (0.6, 0.6), (0.02, 0.6), (0.02, 0.03)]  # the upper-left: easy to learn
    page.mouse.move(x0 + w * lasso[0][0], y0 + h * lasso[0][1])
    page.mouse.down()
    for fx, fy in lasso[1:]:
        page.mouse.move(x0 + w * fx, y0 + h * fy, steps=8)
    page.mouse.up()
    selected = page.get_by_text("samples selected", exact=False).first
    selected.wait_for()
    n = int(selected.text_content().split()[0].replace(",", ""))
    assert n > 1
    settle(page)
    page.screenshot(path=str(SHOTS / "explore_selection.png"))
    with page.expect_download() as info:
        page.get_by_role("button", name="Indices (CSV)").click()
    target = tmp_path / "selection.csv"
    info.value.save_as(target)
    rows = list(csv.DictReader(target.open()))
    assert len(rows) == n and all(r["dataset_index"].isdigit() for r in rows)

    page.get_by_text("Samples per region").first.scroll_into_view_if_needed()
    page.get_by_text("footwear at epoch 2: easy-to-learn", exact=False).first.wait_for()
    page.screenshot(path=str(SHOTS / "explore_regions.png"), full_page=True)


# every visible element of the page's main area that reaches past the window's right edge (a range
# input of a slider is invisible and wider than its track: left out)
OVERFLOW = """() => {
  const W = window.innerWidth, out = [];
  for (const el of document.querySelector('[data-testid="stMain"]').querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > W + 1 && !(el.tagName === 'INPUT' && el.type === 'range')
        && getComputedStyle(el).visibility !== 'hidden') {
      const owner = el.closest('[data-testid]');
      out.push(el.tagName + ' in ' + (owner ? owner.getAttribute('data-testid') : '?') + ' to ' + Math.round(r.right));
    }
  }
  return [...new Set(out)];
}"""
PAGES_800 = ("overview", "train", "explore", "compare-maps", "task-map", "grouping", "grouped-training", "export",
             "affinity", "compare", "learn")


def narrow_window(page, app_url: str) -> None:
    """At 800 px (the sidebar open leaves about 500 px) nothing on any page reaches past the window,
    and the explorer's map spans the main column instead of sharing it with the selection panel."""
    page.set_viewport_size({"width": 800, "height": 1000})
    for path in PAGES_800:
        page.goto(f"{app_url}/{path}?run=browser-demo")
        settle(page)
        page.wait_for_timeout(1500)  # charts lay out after the script ends
        assert page.evaluate(OVERFLOW) == [], path
        if path == "train":  # the new-run form, open
            page.get_by_text("Start a new data-map run", exact=False).first.click()
            page.get_by_label("Tasks spec (optional)", exact=True).wait_for()
            page.wait_for_timeout(800)
            assert page.evaluate(OVERFLOW) == [], "the new-run form"
            page.screenshot(path=str(SHOTS / "train_form_800px.png"))
        if path == "explore":
            main = page.locator("[data-testid='stMainBlockContainer']").bounding_box()
            plot = page.locator(".js-plotly-plot").first.bounding_box()
            assert plot["width"] > 0.9 * main["width"] - 64, (plot, main)  # 64: the container's padding
            page.screenshot(path=str(SHOTS / "explore_800px.png"))


def test_dashboard_end_to_end(app_url: str, tmp_path: Path) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(60_000)

            # 1. start a short run on the embedded data
            page.goto(app_url + "/train")
            settle(page)
            page.get_by_label("Tasks spec (optional)", exact=True).fill("composite")
            page.get_by_label("Run name (optional)", exact=True).fill("browser-demo")
            page.get_by_label("Epochs", exact=True).fill("2")
            page.get_by_label("Limit (training images, 0 = all)", exact=True).fill("400")
            page.get_by_text("Record affinities", exact=True).first.click()
            page.get_by_role("button", name="Start run").click()

            # 2. the data-map grid appears and the run finishes (the fragment polls the job)
            page.get_by_text("Data maps after epoch 2").first.wait_for(timeout=540_000)  # a shared CPU can be slow
            page.get_by_text("browser-demo", exact=False).first.wait_for()
            page.get_by_text(" done, 2/2 epochs", exact=False).first.wait_for(timeout=60_000)
            settle(page)
            page.wait_for_timeout(800)
            page.screenshot(path=str(SHOTS / "dashboard.png"))
            page.screenshot(path=str(SHOTS / "train.png"), full_page=True)
            assert re.fullmatch(r"\S+ [\d,]+ samples variability [\d.]+ confidence [\d.]+", grid_hover(page)), \
                "a grid cell's hover names its task, count, variability and confidence"

            # 2b. the explorer: hover names the sample, a click shows its image, a lasso exports indices
            explore_end_to_end(page, app_url, tmp_path)

            # 3. grouping: change k and see the membership heatmap change
            page.goto(app_url + "/grouping?run=browser-demo")
            settle(page)
            page.get_by_text("Membership (fuzzy-kmeans k=4").first.wait_for()
            assert 4 in wait_heatmap_columns(page, has=4)
            k_box = page.get_by_label("k (clusters)", exact=True)
            k_box.fill("3")
            k_box.press("Enter")
            page.get_by_text("Membership (fuzzy-kmeans k=3").first.wait_for()
            settle(page)
            columns = wait_heatmap_columns(page, has=3, lacks=4)
            assert 3 in columns and 4 not in columns
            page.screenshot(path=str(SHOTS / "grouping.png"), full_page=True)
            page.get_by_label("Save as", exact=True).fill("browser-k3")
            page.get_by_role("button", name="Save grouping").click()
            page.get_by_text("saved", exact=False).first.wait_for()

            # 4. task map
            page.goto(app_url + "/task-map?run=browser-demo")
            settle(page)
            page.get_by_text("tasks, PCA of their data-map features", exact=False).first.wait_for()
            page.screenshot(path=str(SHOTS / "task_map.png"), full_page=True)

            # 5. export: download the grouping as JSON and check the file
            page.goto(app_url + "/export?run=browser-demo")
            settle(page)
            with page.expect_download() as info:
                page.get_by_role("button", name="JSON").click()
            target = tmp_path / "grouping.json"
            info.value.save_as(target)
            doc = json.loads(target.read_text())
            assert doc["grouping"]["k"] == 3
            assert len(doc["tasks"]) == 13 and {"task", "cluster"} <= set(doc["tasks"][0])
            page.screenshot(path=str(SHOTS / "export.png"), full_page=True)

            # 6. affinity: the run recorded TAG's affinity; the heatmap shows and TAG selects groups
            page.goto(app_url + "/affinity?run=browser-demo")
            settle(page)
            page.get_by_text("TAG lookahead affinity: row onto column", exact=False).first.wait_for()
            page.get_by_role("button", name="Select groups by tag").click()
            page.get_by_text("objective", exact=False).first.wait_for()
            settle(page)
            page.screenshot(path=str(SHOTS / "affinity.png"), full_page=True)

            # 7. a narrow window
            narrow_window(page, app_url)
        finally:
            browser.close()
    for name in ("dashboard", "train", "explore_click", "explore_selection", "explore_regions", "grouping",
                 "task_map", "export", "affinity", "explore_800px"):
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000
