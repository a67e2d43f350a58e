"""Screenshot of the draw-a-digit page with a hand-drawn "7" and its prediction: docs/draw.png

    .venv/bin/python docs/draw_screenshot.py RUN_DIR

Starts `digits serve RUN_DIR` on 127.0.0.1, draws with mouse events in Debian's headless
Chromium (never a downloaded browser, throwaway profile), waits for the answer, and fails if
the page logs a console error.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
SEVEN = [[(0.28, 0.22), (0.72, 0.22), (0.62, 0.45), (0.45, 0.82)], [(0.4, 0.52), (0.7, 0.52)]]


def draw(page, strokes: list[list[tuple[float, float]]]) -> None:
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in stroke]
        page.mouse.move(*xy[0])
        page.mouse.down()
        for x, y in xy[1:]:
            page.mouse.move(x, y, steps=12)
        page.mouse.up()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "draw.png")
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    digits = Path(sys.executable).parent / "digits"
    server = subprocess.Popen([str(digits), "serve", str(args.run_dir), "--port", str(args.port)])
    url = f"http://127.0.0.1:{args.port}"
    errors: list[str] = []
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
            browser = playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, args=ARGS, headless=True,
                viewport={"width": 800, "height": 560},
            )  # fmt: skip
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url)
            expect(page.locator("#model-info")).to_contain_text("Model:")
            draw(page, SEVEN)
            expect(page.locator("#status")).to_contain_text("answered in", timeout=15_000)
            time.sleep(0.5)  # the last queued request's answer
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    if errors:
        raise SystemExit("console errors: " + "; ".join(errors))
    print(f"{args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
