"""Screenshot of the review part page (docs/review_part.png) on sample data, in headless Chromium.

Usage: .venv/bin/python tools/screenshot_review.py [--out docs/review_part.png]
       [--width 1280] [--height 1000] [--queue-out PATH]
       [--sheet-out docs/review_sheet_map.png]

Seeds a scratch SQLite database and data root with sample parts (station.review.sample), serves
the review app on 127.0.0.1 and photographs a rejected part's page with the heatmap overlay on,
then its sheet map (the sample's, fused from the sample shot maps) with its first defect
selected and the shots that see it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from station.review.app import create_app
from station.review.sample import CHROMIUM, CHROMIUM_ARGS, seed_parts
from station.review.server import background_server
from station.storage.db import open_database


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/review_part.png")
    ap.add_argument("--queue-out", default=None, help="also photograph the queue page here")
    ap.add_argument(
        "--sheet-out",
        default="docs/review_sheet_map.png",
        help="the sheet map section with a defect selected ('' = skip)",
    )
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1000)
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/review.db"
        data = Path(tmp) / "data"
        db = open_database(url)
        sample = seed_parts(
            db, data, 40, detectors=("patchcore", "simplenet"), size=(480, 384), seed=3
        )
        db.dispose()
        app = create_app(url, data)
        with background_server(app) as base, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            if args.queue_out:
                page.goto(base + "/")
                page.screenshot(path=args.queue_out, full_page=False)
            # The newest rejected part that failed (not a fault), so heatmaps show a defect.
            page.goto(f"{base}/?verdict=fail")
            page.click("#queue tbody tr:first-child a.partlink")
            page.fill("#operator", "Ana")
            page.screenshot(path=args.out, full_page=True)
            if args.sheet_out and page.locator("#sheet-defects a.defect-link").count():
                with page.expect_navigation():
                    page.click("#sheet-defects a.defect-link")
                page.locator("#sheet-map").screenshot(path=args.sheet_out)
                print(f"wrote {args.sheet_out}")
            browser.close()
        print(f"wrote {args.out} ({len(sample.rejected_ids)} rejected sample parts)")


if __name__ == "__main__":
    main()
