"""End to end in a real headless Chromium (Playwright): queue -> part -> overlay -> mark ->
queue updated -> CSV export. The app runs under uvicorn on 127.0.0.1 with sample parts and
real PNG files in a scratch data root.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest

from station.review.app import create_app
from station.review.sample import CHROMIUM, CHROMIUM_ARGS, seed_parts
from station.review.server import background_server
from station.storage.db import open_database
from station.storage.models import Part, Verdict

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}"),
]


@pytest.mark.slow
def test_operator_reviews_a_part_in_the_browser(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    url = f"sqlite:///{tmp_path}/station.db"
    data = tmp_path / "data"
    db = open_database(url)
    sample = seed_parts(
        db,
        data,
        16,
        detectors=("patchcore", "simplenet"),
        size=(160, 128),
        seed=4,
        reject_rate=0.6,
        review_rate=0.0,
    )
    app = create_app(url, data)
    with background_server(app) as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        context = browser.new_context(
            viewport={"width": 1280, "height": 900}, accept_downloads=True
        )
        page = context.new_page()
        seen: list[str] = []
        page.on("request", lambda req: seen.append(req.url))
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        # Queue: every rejected part, newest first, nothing reviewed yet.
        page.goto(base + "/")
        rows = page.locator("#queue tbody tr")
        n = len(sample.rejected_ids)
        assert rows.count() == n
        assert page.inner_text("#count-unreviewed") == str(n)
        newest = max(sample.rejected_ids)
        assert rows.first.get_attribute("data-part-id") == str(newest)

        # N on the queue opens the newest part still to review.
        page.keyboard.press("n")
        page.wait_for_url(f"**/parts/{newest}?*")
        images = page.locator(".stack img.base")
        assert images.count() == 3
        for i in range(3):
            assert images.nth(i).evaluate("img => img.complete && img.naturalWidth") == 160
        overlay = page.locator(".stack img.overlay[data-detector=patchcore]").first
        assert overlay.evaluate("img => getComputedStyle(img).opacity") == "0.5"
        assert overlay.evaluate("img => img.naturalWidth") == 160

        # Opacity slider, then the H key hides the overlay, then the checkbox brings it back.
        page.locator("#overlay-opacity").fill("80")
        assert overlay.evaluate("img => getComputedStyle(img).opacity") == "0.8"
        assert page.inner_text("#overlay-opacity-value") == "80 %"
        page.keyboard.press("h")
        assert overlay.evaluate("img => getComputedStyle(img).display") == "none"
        page.locator("#overlay-show").check()
        assert overlay.evaluate("img => getComputedStyle(img).display") == "block"
        # Switching the detector shows the other heatmap.
        page.select_option("#overlay-detector", "simplenet")
        assert overlay.evaluate("img => getComputedStyle(img).display") == "none"
        other = page.locator(".stack img.overlay[data-detector=simplenet]").first
        assert other.evaluate("img => getComputedStyle(img).display") == "block"

        # Mark with the keyboard: name and comment first, D = defect confirmed.
        page.fill("#operator", "Dana")
        page.fill("#comment", "metal chip, <b>left</b> edge")
        page.locator("body").click(position={"x": 5, "y": 300})
        page.keyboard.press("d")
        page.wait_for_url(lambda u: f"/parts/{newest}?" not in u)
        assert f"Part {newest} marked: defect confirmed." in page.inner_text(".flash")
        assert page.input_value("#operator") == "Dana"  # remembered

        # N goes to the next (older) part, Q back to the queue, which shows the review.
        before = page.url
        page.keyboard.press("n")
        page.wait_for_url(lambda u: u != before)
        page.keyboard.press("q")
        page.wait_for_url(lambda u: "/parts/" not in u)
        assert page.inner_text("#count-unreviewed") == str(n - 1)
        assert page.inner_text("#count-confirmed") == "1"
        # The queue came back filtered to parts still to review: the marked one has left it.
        ids = page.locator("#queue tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.partId)"
        )
        assert len(ids) == n - 1 and str(newest) not in ids
        with page.expect_navigation():
            page.click("a.count:has(#count-total)")  # the whole queue again
        first = page.locator("#queue tbody tr").first
        assert first.get_attribute("data-part-id") == str(newest)
        assert "defect confirmed" in first.inner_text().lower()
        assert "Dana" in first.inner_text()

        # The F key marks a false reject from the part page.
        page.goto(f"{base}/parts/{min(sample.rejected_ids)}")
        with page.expect_navigation():
            page.keyboard.press("f")
        page.goto(base + "/?reviewed=false_reject")
        assert page.locator("#queue tbody tr").count() == 1

        # CSV export through the link.
        with page.expect_download() as info:
            page.click("#export-csv")
        text = Path(info.value.path()).read_text()
        rows_csv = list(csv.DictReader(io.StringIO(text)))
        assert [(r["operator"], r["label"]) for r in rows_csv] == [
            ("Dana", "defect_confirmed"),
            ("Dana", "false_reject"),
        ]
        assert rows_csv[0]["comment"] == "metal chip, <b>left</b> edge"
        assert rows_csv[0]["part_id"] == str(newest)

        browser.close()
    db.dispose()
    assert not errors, errors
    assert seen and all(u.startswith(base) for u in seen), "a page asked for an outside resource"


@pytest.mark.slow
def test_interrupted_parts_in_the_browser(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    url = f"sqlite:///{tmp_path}/station.db"
    data = tmp_path / "data"
    db = open_database(url)
    sample = seed_parts(db, data, 12, size=(96, 64), seed=8, reject_rate=0.5, review_rate=0)
    with db.session() as s:  # three passed sheets the station never decided
        stopped = [p.id for p in s.query(Part).filter(Part.verdict == Verdict.PASS)][:3]
        for pid in stopped:
            s.get(Part, pid).verdict = Verdict.INTERRUPTED
    assert len(stopped) == 3
    with background_server(create_app(url, data)) as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        context = browser.new_context(
            viewport={"width": 1280, "height": 900}, accept_downloads=True
        )
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        # The default queue lists them among the rejects, with a coloured badge and a count.
        page.goto(base + "/")
        ids = page.locator("#queue tbody tr").evaluate_all("rs => rs.map(r => +r.dataset.partId)")
        assert sorted(ids) == sorted(sample.rejected_ids + stopped)
        badge = page.locator(f"tr[data-part-id='{stopped[0]}'] .badge.interrupted")
        assert badge.is_visible() and badge.inner_text().lower() == "interrupted"
        colour = badge.evaluate("b => getComputedStyle(b).backgroundColor")
        assert colour == "rgb(161, 98, 7)"
        assert page.inner_text("#count-interrupted") == str(len(stopped))

        # Their count is a filter; N opens the newest, which asks what the sheet was.
        with page.expect_navigation():
            page.click("a.count.interrupted")
        rows = page.locator("#queue tbody tr")
        assert rows.count() == len(stopped)
        page.keyboard.press("n")
        page.wait_for_url(f"**/parts/{max(stopped)}?*")
        assert page.locator("#undecided").is_visible()
        assert page.inner_text("#mark-defect").startswith("Sheet defective")
        page.fill("#operator", "Ida")
        page.locator("body").click(position={"x": 5, "y": 300})
        page.keyboard.press("d")
        page.wait_for_url(lambda u: f"/parts/{max(stopped)}?" not in u)
        assert f"Part {max(stopped)} marked: sheet defective." in page.inner_text(".flash")

        page.goto(base + "/?verdict=interrupted&reviewed=defect_confirmed")
        assert page.locator("#queue tbody tr").count() == 1
        with page.expect_download() as info:
            page.click("#export-csv")
        rows_csv = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text())))
        assert [(r["part_id"], r["part_verdict"], r["label_meaning"]) for r in rows_csv] == [
            (str(max(stopped)), "interrupted", "sheet defective")
        ]
        browser.close()
    db.dispose()
    assert not errors, errors


@pytest.mark.slow
@pytest.mark.parametrize("javascript", [True, False], ids=["js", "no-js"])
def test_sheet_map_and_a_defect_link_in_the_browser(tmp_path: Path, javascript: bool) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    url = f"sqlite:///{tmp_path}/station.db"
    data = tmp_path / "data"
    db = open_database(url)
    sample = seed_parts(db, data, 8, size=(160, 128), seed=3, reject_rate=0.7, review_rate=0)
    with db.session() as s:
        part = next(
            p
            for p in (s.get(Part, pid) for pid in sample.rejected_ids)
            if p.sheet_map_path and p.sheet_defects
        )
        part_id, n_defects = part.id, len(part.sheet_defects)
        seeing = list(part.sheet_defects[0].shots)
    with background_server(create_app(url, data)) as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        page = browser.new_context(
            viewport={"width": 1280, "height": 900}, java_script_enabled=javascript
        ).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{base}/parts/{part_id}")

        # The map image is loaded and shown, the SVG lies exactly over it, footprints drawn.
        image = page.locator("#sheet-map-image")
        assert image.is_visible()
        assert image.evaluate("img => img.complete && img.naturalWidth") > 0
        box, over = image.bounding_box(), page.locator("#sheet-overlay").bounding_box()
        assert box["width"] > 300
        for k in ("x", "y", "width", "height"):
            assert over[k] == pytest.approx(box[k], abs=1.0)
        assert page.locator("#sheet-overlay polygon.footprint").count() == 3
        assert page.locator("#sheet-defects tbody tr").count() == n_defects
        assert page.locator("#defect-shots").count() == 0
        # The defect's marker lies on the map image.
        mark = page.locator("#defect-mark-0 circle").bounding_box()
        cx, cy = mark["x"] + mark["width"] / 2, mark["y"] + mark["height"] / 2
        assert box["x"] <= cx <= box["x"] + box["width"]
        assert box["y"] <= cy <= box["y"] + box["height"]

        # Selecting the defect in the list: it is highlighted and its shots are shown.
        with page.expect_navigation():
            page.click("#defect-0 a.defect-link")
        assert "defect=0" in page.url
        assert page.locator("#defect-shots").is_visible()
        assert "selected" in (page.locator("#defect-0").get_attribute("class") or "")
        shown = page.locator("#defect-shots figure.shot")
        assert [shown.nth(i).get_attribute("data-pose") for i in range(shown.count())] == seeing
        for i in range(shown.count()):
            img = shown.nth(i).locator("img.base")
            assert img.is_visible() and img.evaluate("i => i.naturalWidth") == 160
        sees = page.locator("#sheet-overlay polygon.footprint.sees")
        assert [sees.nth(i).get_attribute("data-pose") for i in range(sees.count())] == seeing

        # The marker on the map is a link too; "clear" drops the selection.
        with page.expect_navigation():
            page.click("#clear-defect")
        assert page.locator("#defect-shots").count() == 0
        with page.expect_navigation():
            page.locator("#defect-mark-0 circle").click()
        assert "defect=0" in page.url and page.locator("#defect-shots").is_visible()
        browser.close()
    db.dispose()
    assert not errors, errors
