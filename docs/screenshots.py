"""Full-page screenshots of eda.html and report.html in headless Chromium: docs/{eda,report}.png

    .venv/bin/digits data kaggle /tmp/replica5 --seed 5
    .venv/bin/digits eda /tmp/replica5/train.csv --out /tmp/eda5
    .venv/bin/digits train --train /tmp/train5k.csv --epochs 3 --out /tmp/run5  # + report.html
    .venv/bin/python docs/screenshots.py /tmp/eda5/eda.html /tmp/run5/report.html

Uses Debian's chromium (never downloads a browser) with a throwaway profile; fails if a page logs
a console error or a request leaves the page (the reports must be self-contained).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
WIDTH = 1280  # a laptop window; the pages are at most 1200 px wide


def screenshot(page_path: Path, out: Path, scale: float) -> None:
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=ARGS, headless=True,
            viewport={"width": WIDTH, "height": 900}, device_scale_factor=scale,
        )  # fmt: skip
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else
                errors.append(f"network request: {r.url}"))  # fmt: skip
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        broken = page.evaluate(
            "[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length"
        )
        if broken:
            errors.append(f"{broken} image(s) failed to decode")
        page.screenshot(path=str(out), full_page=True)
        browser.close()
    if errors:
        raise SystemExit(f"{page_path}: " + "; ".join(errors))
    print(f"{page_path} -> {out} ({out.stat().st_size / 1e6:.2f} MB), no console errors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eda_html", type=Path)
    parser.add_argument("report_html", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--scale", type=float, default=0.5, help="device pixels per CSS pixel")
    args = parser.parse_args()
    screenshot(args.eda_html, args.out / "eda.png", args.scale)
    screenshot(args.report_html, args.out / "report.png", args.scale)


if __name__ == "__main__":
    main()
