"""Take the README's dashboard screenshots from a real run, with headless Debian Chromium.

    stg datamap --dataset fashion-sample --tasks composite --out runs/fashion-composite
    stg group runs/fashion-composite --k 3 --name g3
    stg train-groups runs/fashion-composite --grouping g3 --baselines mtl,random,stl
    python scripts/readme_screenshots.py runs --run fashion-composite --grouping g3

Writes assets/screenshots/{dashboard,grouping,task_map,grouped_training}.png.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", help="runs folder")
    ap.add_argument("--run", required=True, help="run name inside the runs folder")
    ap.add_argument("--k", default="3")
    ap.add_argument("--grouping", help="a trained grouping: also shoot grouped_training.png")
    ap.add_argument("--out", default=str(ROOT / "assets" / "screenshots"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = subprocess.Popen([sys.executable, "-m", "stg.cli", "app", "--runs", args.runs, "--port", str(port),
                            "--headless"], env={**os.environ, "STG_NO_WEBGL": "1"}, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read().strip() == b"ok":
                    break
            except OSError:
                time.sleep(0.3)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.set_default_timeout(120_000)

            def shot(path: str, name: str, wait_text: str) -> None:
                page.goto(f"{url}/{path}?run={args.run}")
                page.get_by_text(wait_text, exact=False).first.wait_for()
                page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']")
                page.wait_for_timeout(1500)
                page.screenshot(path=str(out / f"{name}.png"))

            shot("train", "dashboard", "Data maps after epoch")
            page.goto(f"{url}/grouping?run={args.run}")
            page.get_by_text("Membership (", exact=False).first.wait_for()
            box = page.get_by_label("k (clusters)", exact=True)
            box.fill(args.k)
            box.press("Enter")
            page.get_by_text(f"k={args.k}", exact=False).first.wait_for()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "grouping.png"))
            shot("task-map", "task_map", "PCA of their data-map features")
            if args.grouping:  # results against every baseline: needs `stg train-groups RUN --grouping G`
                page.set_viewport_size({"width": 1500, "height": 1900})
                page.goto(f"{url}/grouped-training?run={args.run}")
                page.get_by_label("Grouping", exact=True).click()
                page.get_by_role("option", name=args.grouping, exact=True).click()
                page.get_by_text("against each baseline", exact=False).first.wait_for()
                page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']")
                page.wait_for_timeout(1500)
                page.screenshot(path=str(out / "grouped_training.png"))
            browser.close()
    finally:
        os.killpg(app.pid, signal.SIGTERM)
    print(f"wrote {out}/dashboard.png, grouping.png, task_map.png" + (", grouped_training.png" if args.grouping else ""))


if __name__ == "__main__":
    main()
