"""Review pages: queue filters, counts and paging, the part page, storing reviews, CSV export,
the calibration-facing queries and the `station review` command's refusals.

Runs the real app (FastAPI TestClient) on a real SQLite database (and PostgreSQL when a server
is installed) with real PNG files in a scratch data root.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from station.review import store
from station.review.app import create_app
from station.review.sample import seed_parts
from station.storage.db import open_database
from station.storage.models import Part, Review, ReviewLabel, Verdict

BASE = "http://127.0.0.1:8080"


def _setup(tmp_path: Path, url: str | None = None, n: int = 24, **app_kw):  # noqa: ANN202
    url = url or f"sqlite:///{tmp_path}/station.db"
    data = tmp_path / "data"
    db = open_database(url)
    sample = seed_parts(db, data, n, size=(64, 48), seed=5, reject_rate=0.5, fault_rate=0.15)
    client = TestClient(create_app(url, data, **app_kw), base_url=BASE)
    return db, sample, client


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field on the page"
    return m.group(1)


def _row_ids(html: str) -> list[int]:
    return [int(x) for x in re.findall(r'<tr data-part-id="(\d+)"', html)]


def _count(html: str, name: str) -> int:
    m = re.search(rf'id="count-{name}">(\d+)<', html)
    assert m, name
    return int(m.group(1))


@pytest.fixture
def seeded(tmp_path: Path):  # noqa: ANN201
    db, sample, client = _setup(tmp_path)
    yield db, sample, client
    client.close()
    db.dispose()


def test_queue_lists_rejects_and_faults_newest_first_with_counts(seeded) -> None:
    db, sample, client = seeded
    html = client.get("/").text
    with db.session() as s:
        parts = s.scalars(select(Part).order_by(Part.started_at.desc(), Part.id.desc())).all()
        reviewed = set(s.scalars(select(Review.part_id)))
    queue = [p for p in parts if p.verdict in (Verdict.FAIL, Verdict.FAULT)]
    assert queue and len(queue) < len(parts)  # some passes are left out
    assert _row_ids(html) == [p.id for p in queue]
    assert _count(html, "total") == len(queue)
    assert _count(html, "fail") == sum(p.verdict == Verdict.FAIL for p in queue)
    assert _count(html, "fault") == sum(p.verdict == Verdict.FAULT for p in queue)
    assert _count(html, "unreviewed") == sum(p.id not in reviewed for p in queue)


def test_filters_verdict_reviewed_and_paging(tmp_path: Path) -> None:
    db, sample, client = _setup(tmp_path, n=40, page_size=4)
    with db.session() as s:
        faults = s.scalars(
            select(Part.id)
            .where(Part.verdict == Verdict.FAULT)
            .order_by(Part.started_at.desc(), Part.id.desc())
        ).all()
    html = client.get("/?verdict=fault&page=1").text
    assert _row_ids(html) == faults[:4]
    # Paging: page 2 continues where page 1 stopped, and the pager says how many pages.
    all_ids: list[int] = []
    page = 1
    while True:
        html = client.get(f"/?page={page}").text
        ids = _row_ids(html)
        assert 0 < len(ids) <= 4
        all_ids += ids
        if 'rel="next"' not in html:
            break
        page += 1
    assert all_ids == sorted(sample.rejected_ids, reverse=True)
    assert f"Page {page} of {page}" in html
    # Out-of-range page numbers clamp to the last page instead of failing.
    assert _row_ids(client.get("/?page=999").text) == _row_ids(html)
    # Reviewed or not: the seeded reviews split the queue.
    with db.session() as s:
        reviewed = set(s.scalars(select(Review.part_id)))
    big = TestClient(
        create_app(f"sqlite:///{tmp_path}/station.db", tmp_path / "data"), base_url=BASE
    )
    no = _row_ids(big.get("/?reviewed=no").text)
    yes = _row_ids(big.get("/?reviewed=yes").text)
    assert set(no).isdisjoint(reviewed) and set(yes) <= reviewed
    assert sorted(no + yes, reverse=True) == sorted(sample.rejected_ids, reverse=True)
    big.close()
    client.close()
    db.dispose()


def test_newest_review_counts_and_history_is_kept(seeded) -> None:
    db, sample, client = seeded
    pid = sample.rejected_ids[-1]
    page = client.get(f"/parts/{pid}")
    for label, who in (("defect_confirmed", "Ana"), ("false_reject", "Ben")):
        r = client.post(
            f"/parts/{pid}/review",
            data={"csrf": _csrf(page.text), "label": label, "operator": who, "comment": label},
            follow_redirects=False,
        )
        assert r.status_code == 303
    with db.session() as s:
        rows = s.scalars(select(Review).where(Review.part_id == pid).order_by(Review.id)).all()
        assert [r.label for r in rows][-2:] == [
            ReviewLabel.DEFECT_CONFIRMED,
            ReviewLabel.FALSE_REJECT,
        ]
        assert store.load_part(s, pid).newest_review.label == ReviewLabel.FALSE_REJECT
    html = client.get(f"/parts/{pid}").text
    history = html[html.index('id="history"') :]
    assert history.index("Ben") < history.index("Ana")  # newest first
    assert 'id="current-label">false reject<' in html
    fr = _row_ids(client.get("/?reviewed=false_reject").text)
    dc = _row_ids(client.get("/?reviewed=defect_confirmed").text)
    assert pid in fr and pid not in dc
    # The operator's name is remembered for the next part.
    assert 'value="Ben"' in client.get(f"/parts/{sample.rejected_ids[0]}").text


def test_review_redirects_to_next_part_in_the_filtered_queue(seeded) -> None:
    db, sample, client = seeded
    newest_two = client.get("/?reviewed=no")
    ids = _row_ids(newest_two.text)
    assert len(ids) >= 2
    r = client.post(
        f"/parts/{ids[0]}/review",
        data={
            "csrf": _csrf(client.get(f"/parts/{ids[0]}").text),
            "label": "defect_confirmed",
            "operator": "Ana",
            "q": "recipe=&reviewed=no",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert r.headers["location"].startswith(f"/parts/{ids[1]}?")
    nxt = client.get(r.headers["location"])
    assert f"Part {ids[0]} marked: defect confirmed." in nxt.text
    assert ids[0] not in _row_ids(client.get("/?reviewed=no").text)


def test_review_input_is_validated(seeded) -> None:
    db, sample, client = seeded
    pid = sample.rejected_ids[0]
    token = _csrf(client.get(f"/parts/{pid}").text)
    bad = [
        {"label": "pass", "operator": "Tess"},
        {"label": "defect_confirmed", "operator": "  "},
        {"label": "defect_confirmed", "operator": "Tess", "comment": "x" * 2001},
    ]
    for data in bad:
        r = client.post(f"/parts/{pid}/review", data={"csrf": token, **data})
        assert r.status_code == 400, data
    r = client.post(
        "/parts/999999/review", data={"csrf": token, "label": "false_reject", "operator": "Tess"}
    )
    assert r.status_code == 404
    with db.session() as s:
        assert (
            s.scalar(select(func.count()).select_from(Review).where(Review.operator == "Tess")) == 0
        )


def test_part_page_shows_every_pose_overlay_scores_and_reason(seeded) -> None:
    db, sample, client = seeded
    with db.session() as s:
        part = store.load_part(s, sample.rejected_ids[-1])
        assert part is not None
    html = client.get(f"/parts/{part.id}").text
    for shot in part.shots:
        assert f'src="/files/{shot.image_path}"' in html
        for det in shot.detections:
            assert f'src="/files/{det.heatmap_path}"' in html
            assert client.get(f"/files/{det.heatmap_path}").headers["content-type"] == "image/png"
        assert client.get(f"/files/{shot.image_path}").content[:4] == b"\x89PNG"
    assert 'id="overlay-opacity"' in html and 'type="range"' in html
    assert part.reason and part.reason in html
    assert html.count("<meter") == sum(len(s.detections) for s in part.shots)
    assert client.get("/parts/987654").status_code == 404


def test_missing_image_file_is_reported_not_linked(seeded) -> None:
    db, sample, client = seeded
    with db.session() as s:
        part = store.load_part(s, sample.rejected_ids[0])
        shot = part.shots[0]
        shot.image_path = "glassfiber/images/gone.png"
        s.add(shot)
    html = client.get(f"/parts/{sample.rejected_ids[0]}").text
    assert "image file missing: glassfiber/images/gone.png" in html
    assert 'src="/files/glassfiber/images/gone.png"' not in html


def test_bad_filter_values_are_reported(seeded) -> None:
    _, _, client = seeded
    r = client.get("/?date_from=yesterday&verdict=won&reviewed=maybe&page=x")
    assert r.status_code == 200
    assert "date from &#39;yesterday&#39; is not a date" in r.text
    assert "verdict &#39;won&#39; is not one of fail, fault, interrupted, pending, pass" in r.text


@pytest.mark.slow
def test_date_range_and_recipe_filters(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/station.db"
    data = tmp_path / "data"
    db = open_database(url)
    end = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
    seed_parts(db, data, 30, size=(32, 32), end=end, interval_s=6 * 3600, reject_rate=0.6, seed=1)
    seed_parts(db, data, 10, recipe="other", size=(32, 32), end=end, reject_rate=0.9, seed=2)
    client = TestClient(create_app(url, data), base_url=BASE)
    lo, hi = datetime(2026, 3, 15).date(), datetime(2026, 3, 17).date()
    html = client.get(f"/?date_from={lo}&date_to={hi}&recipe=glassfiber").text
    with db.session() as s:
        parts = s.scalars(select(Part).where(Part.verdict.in_(store.QUEUE_VERDICTS))).all()
    want = sorted(
        (
            p
            for p in parts
            if p.recipe == "glassfiber"
            and lo <= store.as_utc(p.started_at).astimezone().date() <= hi
        ),
        key=lambda p: (p.started_at, p.id),
        reverse=True,
    )
    assert want and _row_ids(html) == [p.id for p in want]
    other = _row_ids(client.get("/?recipe=other").text)
    assert other and all(p.recipe == "other" for p in parts if p.id in other)
    everything = _row_ids(client.get("/?recipe=").text)
    assert len(everything) == len(parts)
    # An app started for one recipe filters to it by default.
    one = TestClient(create_app(url, data, recipe_name="other"), base_url=BASE)
    assert _row_ids(one.get("/").text) == other
    one.close()
    client.close()
    db.dispose()


def test_csv_export_has_every_review_and_neutralises_formulas(seeded) -> None:
    db, sample, client = seeded
    pid = sample.rejected_ids[-1]
    token = _csrf(client.get(f"/parts/{pid}").text)
    for label, comment in (("false_reject", '=HYPERLINK("http://x")'), ("defect_confirmed", "ok")):
        client.post(
            f"/parts/{pid}/review",
            data={"csrf": token, "label": label, "operator": "Eve", "comment": comment},
        )
    r = client.get("/export.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    with db.session() as s:
        assert len(rows) == s.scalar(select(func.count()).select_from(Review))
    mine = [row for row in rows if row["operator"] == "Eve"]
    assert [row["label"] for row in mine] == ["false_reject", "defect_confirmed"]
    assert [row["is_latest"] for row in mine] == ["False", "True"]
    assert mine[0]["comment"].startswith("'=")  # not a live formula in a spreadsheet
    assert all(row["part_id"] == str(pid) for row in mine)
    assert list(csv.reader(io.StringIO(client.get("/export.csv?recipe=nope").text))) == [
        store.EXPORT_HEADER
    ]


@pytest.mark.slow
def test_queue_on_postgresql(tmp_path: Path, fresh_postgres_url: str) -> None:
    db, sample, client = _setup(tmp_path, url=fresh_postgres_url, n=20)
    html = client.get("/").text
    assert _row_ids(html) == sorted(sample.rejected_ids, reverse=True)
    pid = sample.rejected_ids[0]
    r = client.post(
        f"/parts/{pid}/review",
        data={
            "csrf": _csrf(client.get(f"/parts/{pid}").text),
            "label": "false_reject",
            "operator": "Pg",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert pid in _row_ids(client.get("/?reviewed=false_reject").text)
    assert "Pg" in client.get("/export.csv").text
    lo = (datetime.now(UTC) - timedelta(days=1)).date()
    assert _row_ids(client.get(f"/?date_from={lo}").text)
    client.close()
    db.dispose()


def test_cli_refuses_unsafe_binds(
    station_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from station.cli.app import main

    monkeypatch.delenv("STATION_REVIEW_TOKEN", raising=False)
    (station_home / "data").mkdir()
    junk = station_home / "junk.pem"
    junk.write_bytes(bytes(range(256)))
    cases = [
        (["review", "--host", "0.0.0.0"], "without an access token"),
        (["review", "--host", "192.168.1.7", "--token", "short"], "too short"),
        (["review", "--data-dir", str(station_home / "nowhere")], "does not exist"),
        (["review", "--data-dir", str(junk)], f"data directory {junk} is a file, not a folder"),
        (["review", "--ssl-certfile", "c.pem"], "both --ssl-certfile and --ssl-keyfile"),
        # TLS files are loaded up front: uvicorn fails on them with a traceback
        (["review", "--ssl-certfile", "c.pem", "--ssl-keyfile", "k.pem"],
         "cannot use --ssl-certfile c.pem with --ssl-keyfile k.pem: No such file"),
        (["review", "--ssl-certfile", str(junk), "--ssl-keyfile", str(junk)], "PEM"),
        # a name that does not resolve is about --host, not a busy port
        (["review", "--host", "no-such-host.invalid", "--token", secrets.token_urlsafe(24),
          "--port", "18779"], "give --host an address"),
    ]
    for argv, words in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        out, err = capsys.readouterr()
        assert words in err and "Traceback" not in err
        assert "review pages on" not in out  # nothing that looks like it serves


def test_review_pages_are_announced_only_once_the_port_is_bound(
    station_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from station.cli.app import main
    from station.review import server

    monkeypatch.delenv("STATION_REVIEW_TOKEN", raising=False)
    (station_home / "data").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as exc:
            main(["review", "--port", str(port)])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and f"cannot listen on 127.0.0.1:{port}" in err, (out, err)
    # on a free port the line comes once the address is bound, before the server runs
    calls: list[str] = []
    monkeypatch.setattr(
        server.uvicorn.Server, "run", lambda self: calls.append(capsys.readouterr().out)
    )
    main(["review", "--port", str(server.free_port())])
    assert len(calls) == 1 and "review pages on http://127.0.0.1:" in calls[0], calls


def test_review_next_opens_the_newest_unreviewed_part(seeded) -> None:
    db, sample, client = seeded
    todo = _row_ids(client.get("/?reviewed=no").text)
    r = client.get("/next?recipe=", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith(f"/parts/{todo[0]}?")
    assert "reviewed=no" in r.headers["location"]
    with db.session() as s:
        for pid in todo:
            store.add_review(s, pid, ReviewLabel.FALSE_REJECT, "Ana")
    r = client.get("/next?recipe=")
    assert r.url.path == "/" and "Nothing left to review here." in r.text


def test_audit_of_passed_parts(seeded) -> None:
    db, sample, client = seeded
    with db.session() as s:
        passed = s.scalars(
            select(Part.id)
            .where(Part.verdict == Verdict.PASS)
            .order_by(Part.started_at.desc(), Part.id.desc())
        ).all()
    html = client.get("/?verdict=pass").text
    assert passed and _row_ids(html) == list(passed)
    assert "passed (audit)" in html and _count(html, "total") == len(passed)
    page = client.get(f"/parts/{passed[0]}?verdict=pass").text
    assert ">Missed defect <kbd>D</kbd>" in page and ">Good <kbd>F</kbd>" in page
    r = client.post(
        f"/parts/{passed[0]}/review",
        data={"csrf": _csrf(page), "label": "false_reject", "operator": "Ana", "q": "verdict=pass"},
        follow_redirects=False,
    )
    assert r.headers["location"].startswith(f"/parts/{passed[1]}?")
    assert 'id="current-label">good<' in client.get(f"/parts/{passed[0]}").text
    assert _row_ids(client.get("/?verdict=pass&reviewed=false_reject").text) == [passed[0]]
    assert passed[0] not in _row_ids(client.get("/").text)  # not in the reject queue


def test_image_paths_with_odd_characters_are_url_quoted(seeded) -> None:
    db, sample, client = seeded
    root = client.app.state.data_root
    pid = sample.rejected_ids[0]
    with db.session() as s:
        shot = store.load_part(s, pid).shots[0]
        new = "glassfiber/images/odd name #1 ü.png"
        (root / shot.image_path).rename(root / new)
        shot.image_path = new
    html = client.get(f"/parts/{pid}").text
    assert 'src="/files/glassfiber/images/odd%20name%20%231%20%C3%BC.png"' in html
    r = client.get("/files/glassfiber/images/odd%20name%20%231%20%C3%BC.png")
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"


def test_review_next_in_an_audit_stays_in_the_audit(seeded) -> None:
    db, sample, client = seeded
    html = client.get("/?verdict=pass").text
    link = re.search(r'href="/next\?([^"]*)" class="navlink" id="start-review"', html)
    assert link and "verdict=pass" in link.group(1)
    r = client.get(f"/next?{link.group(1).replace('&amp;', '&')}", follow_redirects=False)
    pid = int(re.match(r"/parts/(\d+)", r.headers["location"]).group(1))
    with db.session() as s:
        assert s.get(Part, pid).verdict is Verdict.PASS


def test_database_down_is_a_clear_page_and_nothing_pretends_to_work(tmp_path: Path) -> None:
    db, sample, client = _setup(tmp_path)
    pid = sample.rejected_ids[0]
    token = _csrf(client.get(f"/parts/{pid}").text)
    db.dispose()
    client.app.state.db.dispose()
    (tmp_path / "station.db").write_bytes(b"this is no database" * 100)
    for path in ("/", f"/parts/{pid}", "/next?recipe=", "/export.csv", "/healthz"):
        r = client.get(path, headers={"accept": "text/html"})
        assert r.status_code == 503, (path, r.status_code, r.text[:200])
        assert "not a database" in r.text
    r = client.post(
        f"/parts/{pid}/review",
        data={"csrf": token, "label": "false_reject", "operator": "Ana", "comment": "keep me"},
        headers={"accept": "text/html"},
    )
    assert r.status_code == 503 and "Nothing was saved" in r.text
    client.close()


def test_odd_requests_get_answers_not_errors(seeded, tmp_path: Path) -> None:
    db, sample, client = seeded
    pid = sample.rejected_ids[0]
    # filters far out of range, and a recipe name that is none
    for query, said in (
        ("date_to=9999-12-31", "outside 1900-9998"),
        ("date_from=0001-01-01", "outside 1900-9998"),
        ("recipe=a%00b", "is not a recipe name"),
    ):
        r = client.get(f"/?{query}")
        assert r.status_code == 200 and said in r.text, query
        assert client.get(f"/export.csv?{query}").status_code == 200
    assert client.get("/export.csv?recipe=%E6%97%A5").status_code == 200
    for big in (2**31, 10**23):
        assert client.get(f"/parts/{big}").status_code == 404
    # a forged cookie with non-ASCII bytes is just no session
    r = client.get("/", headers={"cookie": "station_review=abc.\u00e9".encode()})
    assert r.status_code == 200
    # a link inside the data root named .png but holding something else is not served
    data = tmp_path / "data"
    (data / "notes.txt").write_text("secret")
    (data / "link.png").symlink_to(data / "notes.txt")
    assert client.get("/files/link.png").status_code == 404
    # the browser's count of a comment (line breaks as one) is what is checked; upload refused
    token = _csrf(client.get(f"/parts/{pid}").text)
    comment = ("x" * 198 + "\r\n") * 10  # 1990 characters as the browser counts them
    ok = {"csrf": token, "label": "false_reject", "operator": "Ana"}
    r = client.post(f"/parts/{pid}/review", data={**ok, "comment": comment}, follow_redirects=False)
    assert r.status_code == 303
    r = client.post(f"/parts/{pid}/review", data=ok, files={"comment": ("x.txt", b"upload")})
    assert r.status_code == 400 and "must be text" in r.text


def test_framework_refusals_get_the_error_page_too(seeded) -> None:
    db, sample, client = seeded
    html = {"accept": "text/html"}
    r = client.get("/no/such/page", headers=html)
    assert r.status_code == 404 and "no such page" in r.text and "<html" in r.text.lower()
    r = client.get("/parts/abc", headers=html)
    assert r.status_code == 400 and "malformed request (part_id)" in r.text
    assert client.get("/parts/abc").text == "malformed request (part_id)"  # not JSON


def test_interrupted_and_stalled_parts_are_in_the_queue_and_can_be_labelled(
    tmp_path: Path,
) -> None:
    db, sample, client = _setup(tmp_path, n=30)
    now = datetime.now(UTC)
    with db.session() as s:
        passed = s.scalars(select(Part).where(Part.verdict == Verdict.PASS)).all()
        assert len(passed) >= 7
        # four stopped mid-part (the recorder's recovery marks them so at the next start)
        for part in passed[3:7]:
            part.verdict, part.reason = Verdict.INTERRUPTED, "the station stopped mid-part"
            part.part_score = None
            s.delete(part.shots[-1])
        interrupted = [p.id for p in passed[3:7]]
        # pending: a live part 20 min old (station dead), one just started, an old capture
        for part, mode, age in zip(passed, ("live", "live", "capture"), (20, 0, 60), strict=False):
            part.verdict, part.mode = Verdict.PENDING, mode
            part.started_at = now - timedelta(minutes=age)
        stalled = passed[0].id
    html = client.get("/").text
    with db.session() as s:
        parts = s.scalars(select(Part).order_by(Part.started_at.desc(), Part.id.desc())).all()
    want = [p.id for p in parts if p.verdict in store.QUEUE_VERDICTS or p.id == stalled]
    assert len(interrupted) == 4 and set(interrupted) <= set(want)
    assert _row_ids(html) == want
    assert _count(html, "interrupted") == 4 and _count(html, "pending") == 1
    assert _count(html, "total") == len(want)
    row = html[html.index(f'data-part-id="{interrupted[0]}"') :]
    assert '<span class="badge interrupted">interrupted</span>' in row[: row.index("</tr>")]
    # the filter values
    r = client.get("/?verdict=interrupted")
    assert "is not one of" not in r.text
    assert _row_ids(r.text) == sorted(interrupted, reverse=True)
    assert _row_ids(client.get("/?verdict=pending").text) == [stalled]
    nxt = client.get("/next?recipe=&verdict=interrupted", follow_redirects=False)
    assert nxt.headers["location"].startswith(f"/parts/{max(interrupted)}?")
    # the part page asks what the sheet was, and the label is stored and shown as such
    pid = interrupted[0]
    page = client.get(f"/parts/{pid}?verdict=interrupted").text
    assert ">Sheet defective <kbd>D</kbd>" in page and ">Sheet good <kbd>F</kbd>" in page
    assert 'id="undecided"' in page and "No decision was stored" in page
    r = client.post(
        f"/parts/{pid}/review",
        data={
            "csrf": _csrf(page),
            "label": "defect_confirmed",
            "operator": "Ida",
            "q": "verdict=interrupted",
        },
    )
    assert r.status_code == 200 and f"Part {pid} marked: sheet defective." in r.text
    assert 'id="current-label">sheet defective<' in client.get(f"/parts/{pid}").text
    assert _row_ids(client.get("/?verdict=interrupted&reviewed=defect_confirmed").text) == [pid]
    assert _row_ids(client.get("/?verdict=interrupted&reviewed=no").text) == sorted(
        set(interrupted) - {pid}, reverse=True
    )
    rows = [r for r in csv.DictReader(io.StringIO(client.get("/export.csv").text))]
    mine = [r for r in rows if r["operator"] == "Ida"]
    assert [(r["part_id"], r["part_verdict"], r["label"], r["label_meaning"]) for r in mine] == [
        (str(pid), "interrupted", "defect_confirmed", "sheet defective")
    ]
    client.close()
    db.dispose()


def test_csv_export_is_safe_for_semicolon_comma_and_tab_readers(seeded) -> None:
    db, sample, client = seeded
    pid = sample.rejected_ids[-1]
    token = _csrf(client.get(f"/parts/{pid}").text)
    comments = [";=1+1", "fold, @SUM(A1)", 'x;"=HYPERLINK(1)', "a\t-2+3", "line\n+cmd"]
    for comment in comments:
        client.post(
            f"/parts/{pid}/review",
            data={"csrf": token, "label": "false_reject", "operator": "Eve", "comment": comment},
        )
    text = client.get("/export.csv").text
    for delimiter in (",", ";", "\t"):
        for row in csv.reader(io.StringIO(text), delimiter=delimiter):
            for cell in row:
                start = cell.lstrip(' "')
                if start[:1] in ("=", "+", "-", "@", "\t", "\r"):  # only a plain number may
                    assert re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?", start), (delimiter, cell)
    rows = list(csv.DictReader(io.StringIO(text)))
    mine = [r["comment"] for r in rows if r["operator"] == "Eve"]
    assert mine[0] == "';'=1+1" and mine[1] == "'fold, '@SUM(A1)"
    # numbers stay numbers: unquoted in the file, numeric to a reader
    scored = next(r for r in rows if r["part_score"])
    line = next(ln for ln in text.splitlines() if ln.startswith(scored["review_id"] + ","))
    assert f",{scored['part_score']}," in line and float(scored["part_score"]) > 0
    assert int(scored["part_id"]) > 0 and int(scored["sequence"]) > 0


def _sheet_part(db, sample) -> Part:  # noqa: ANN001
    """A rejected sample part that has a sheet map with at least one defect."""
    with db.session() as s:
        for pid in sample.rejected_ids:
            part = store.load_part(s, pid)
            if part.sheet_map_path and part.sheet_defects:
                return part
    raise AssertionError("the sample has no rejected part with a sheet map")


def _remap(s, row: Part, defects: list) -> None:  # noqa: ANN001
    """Record `row`'s sheet map again (max fusion, the exact twin camera) with `defects`."""
    from station.storage.parts import record_sheet_map

    record_sheet_map(
        s, row, png_path=row.sheet_map_path, extent_mm=row.sheet_map_extent_mm,
        mm_per_px=row.sheet_map_mm_per_px, fusion="max", camera_source="exact twin",
        region_mm=row.sheet_region_mm,
        footprints={sh.pose_name: sh.footprint_mm for sh in row.shots}, defects=defects,
    )  # fmt: skip


def test_part_page_shows_the_sheet_map_with_footprints_and_defects(seeded) -> None:
    db, sample, client = seeded
    part = _sheet_part(db, sample)
    html = client.get(f"/parts/{part.id}").text
    assert f'src="/files/{part.sheet_map_path}"' in html
    assert client.get(f"/files/{part.sheet_map_path}").content[:4] == b"\x89PNG"
    x0, y0, x1, y1 = part.sheet_map_extent_mm
    assert f'viewBox="{x0:g} {y0:g} {x1 - x0:g} {y1 - y0:g}"' in html
    rx0, ry0, rx1, ry1 = part.sheet_region_mm
    assert f'class="region" x="{rx0}" y="{ry0}" width="{rx1 - rx0}"' in html
    for shot in part.shots:
        points = " ".join(f"{x:g},{y:g}" for x, y in shot.footprint_mm)
        assert f'data-pose="{shot.pose_name}" points="{points}"' in html
    assert "sample data: axis-aligned footprints, no camera model" in html
    rows = re.findall(r'<tr id="defect-(\d+)"[^>]*>(.*?)</tr>', html, re.S)
    assert [int(i) for i, _ in rows] == [d.index for d in part.sheet_defects]
    for d, (_, cells) in zip(part.sheet_defects, rows, strict=True):
        text = re.sub(r"<[^>]+>", " ", cells)
        assert f"{d.x_mm:.1f}, {d.y_mm:.1f}" in text
        assert f"{d.area_mm2:.2f}" in text and f"{d.peak:.2f}×" in text
        assert d.detector in text and ", ".join(d.shots) in text
    assert 'id="defect-shots"' not in html  # nothing selected yet


def test_selecting_a_defect_shows_the_shots_that_see_it(seeded) -> None:
    from station.geometry.sheet_map import SheetDefect

    db, sample, client = seeded
    part = _sheet_part(db, sample)
    with db.session() as s:  # two defects: one seen by two shots, one by the third
        row = s.get(Part, part.id)
        _remap(s, row, [
            SheetDefect((320.0, -30.0), 4.0, 1.7, "patchcore", ("left", "centre")),
            SheetDefect((350.0, -30.0), 2.0, 1.2, "patchcore", ("right",)),
        ])
    page = client.get(f"/parts/{part.id}?verdict=fail").text
    link = re.search(r'<a href="([^"]+)" class="defect-link"', page)
    assert link, "no defect link"
    href = link.group(1).replace("&amp;", "&")
    assert "verdict=fail" in href and "defect=0" in href  # keeps the queue's filter
    html = client.get(href).text
    chosen = html[html.index('id="defect-shots"') :]
    chosen = chosen[: chosen.index("</section>")]
    assert re.findall(r'<figure class="shot card" data-shot="\d+" data-pose="(\w+)"', chosen) == [
        "left",
        "centre",
    ]
    with db.session() as s:
        shots = {sh.pose_name: sh for sh in store.load_part(s, part.id).shots}
    for pose in ("left", "centre"):
        assert f'src="/files/{shots[pose].image_path}"' in chosen
        for det in shots[pose].detections:
            assert f'src="/files/{det.heatmap_path}"' in chosen
    assert shots["right"].image_path not in chosen
    assert '<tr id="defect-0" class="selected">' in html
    assert 'class="defect-mark selected" id="defect-mark-0"' in html
    assert re.findall(r'class="footprint sees" data-pose="(\w+)"', html) == ["left", "centre"]
    # the other one, and values that select nothing
    html = client.get(f"/parts/{part.id}?defect=1").text
    assert "seen by 1 shot " in html and '<tr id="defect-1" class="selected">' in html
    for bad in ("7", "abc", "-1", "1" * 40):
        r = client.get(f"/parts/{part.id}?defect={bad}")
        assert r.status_code == 200 and 'id="defect-shots"' not in r.text


def test_a_simulated_part_shows_the_twin_defects_beside_the_found_regions(seeded) -> None:
    from station.geometry.sheet_map import SheetDefect

    db, sample, client = seeded
    part = _sheet_part(db, sample)
    html = client.get(f"/parts/{part.id}").text
    assert 'class="twin-defect"' not in html and "twin-legend" not in html  # a real part
    with db.session() as s:
        row = s.get(Part, part.id)
        box = (318.5, -31.0, 321.5, -28.5)
        _remap(s, row, [SheetDefect((320.0, -30.0), 4.0, 1.7, "patchcore", ("left",), box)])
        row.twin_defects = [
            {"kind": "fold", "size_mm": 4.25, "bbox_mm": [319.0, -32.0, 323.0, -29.0]},
            {"kind": "stain", "size_mm": 3.0, "bbox_mm": [1.0, 2.0]},  # damaged: not drawn
        ]
    html = client.get(f"/parts/{part.id}").text
    assert re.findall(r'<rect class="defect-box" x="([^"]+)" y="([^"]+)" width="([^"]+)" '
                      r'height="([^"]+)"', html) == [("318.5", "-31.0", "3.0", "2.5")]
    twin = re.findall(r'<rect class="twin-defect" x="([^"]+)" y="([^"]+)" width="([^"]+)" '
                      r'height="([^"]+)".*?<title>([^<]+)</title>', html)
    assert twin == [("319.0", "-32.0", "4.0", "3.0",
                     "twin defect: fold 4.25 mm (the simulated station's truth)")]
    assert "cyan boxes: the defects the twin drew (1), which a real cell does not know" in html


def test_the_part_page_says_where_the_sheet_was_found(seeded) -> None:
    db, sample, client = seeded
    part = _sheet_part(db, sample)
    html = client.get(f"/parts/{part.id}").text
    assert 'id="sheet-placement"' not in html and 'class="sheet-outline"' not in html
    corners = [[251.2, -149.0], [551.1, -148.6], [550.8, 151.3], [250.9, 150.9]]
    found = {"problem": None, "offset_mm": [1.0, 1.1], "angle_deg": 0.07,
             "size_mm": [299.9, 299.9], "corners_mm": corners, "past_region_mm": -1.7}
    with db.session() as s:
        s.get(Part, part.id).sheet_placement = found
    html = client.get(f"/parts/{part.id}").text
    said = re.search(r'<p class="muted" id="sheet-placement">([^<]+)</p>', html).group(1)
    assert said == ("sheet found +1.0 / +1.1 mm off its place, +0.07 deg, 299.9 x 299.9 mm "
                    "(magenta outline)")
    assert ('class="sheet-outline" points="251.2,-149 551.1,-148.6 550.8,151.3 250.9,150.9"'
            in html)
    with db.session() as s:  # not found: the problem alone, no outline
        s.get(Part, part.id).sheet_placement = {"problem": "the sheet's left edge was not found"}
    html = client.get(f"/parts/{part.id}").text
    assert "sheet not found: the sheet&#39;s left edge was not found</p>" in html
    assert 'class="sheet-outline"' not in html


def test_a_fail_without_a_region_on_its_map_says_what_failed_it(seeded) -> None:

    db, sample, client = seeded
    part = _sheet_part(db, sample)
    assert 'id="no-sheet-defects"' not in client.get(f"/parts/{part.id}").text
    with db.session() as s:
        row = s.get(Part, part.id)
        _remap(s, row, [])
        verdict = row.verdict
    html = client.get(f"/parts/{part.id}").text
    said = re.search(r'<p class="muted" id="no-sheet-defects">([^<]+)</p>', html).group(1)
    assert verdict is Verdict.FAIL
    assert said.startswith("No defect region on the sheet map: no spot of the map reaches the "
                           "threshold, so the part failed on a shot's own score")
    with db.session() as s:
        s.get(Part, part.id).verdict = Verdict.FAULT  # a fault: nothing to explain there
    html = client.get(f"/parts/{part.id}").text
    assert '<p class="muted" id="no-sheet-defects">No defect region on the sheet map.</p>' in html


def test_part_without_a_sheet_map_shows_as_before(seeded) -> None:
    db, sample, client = seeded
    with db.session() as s:
        old = s.scalars(select(Part).where(Part.sheet_map_path.is_(None))).first()
        assert old is not None  # the sample's faulted parts have none
        old = store.load_part(s, old.id)
    html = client.get(f"/parts/{old.id}?defect=0").text
    assert 'id="sheet-map"' not in html and "<svg" not in html
    for shot in old.shots:
        assert f'src="/files/{shot.image_path}"' in html


def test_missing_sheet_map_file_is_reported_not_linked(seeded) -> None:
    db, sample, client = seeded
    part = _sheet_part(db, sample)
    (Path(client.app.state.data_root) / part.sheet_map_path).unlink()
    html = client.get(f"/parts/{part.id}").text
    assert f"sheet map file missing: {part.sheet_map_path}" in html
    assert 'id="sheet-map-image"' not in html and 'id="sheet-defects"' in html


def test_sample_sheet_maps_are_fused_from_the_shot_maps(seeded) -> None:
    """Passed parts: no region reaches the threshold. Rejected ones: the shot over threshold
    sees a defect, whose peak is that shot's ratio (fusion by max keeps a view's peak)."""
    db, sample, client = seeded
    with db.session() as s:
        parts = [store.load_part(s, pid) for pid in sample.part_ids]
    mapped = [p for p in parts if p.sheet_map_path]
    assert {p.verdict for p in mapped} == {Verdict.PASS, Verdict.FAIL}
    for part in mapped:
        over = {
            (sh.pose_name, d.detector): d.normalized_score
            for sh in part.shots
            for d in sh.detections
            if d.normalized_score >= 1.0
        }
        if part.verdict is Verdict.PASS:
            assert part.sheet_defects == [] and over == {}
            continue
        (pose, detector), ratio = max(over.items(), key=lambda kv: kv[1])
        best = max(part.sheet_defects, key=lambda d: d.peak)
        assert pose in best.shots and best.detector == detector
        assert best.peak == pytest.approx(ratio, rel=1e-3)
        shot = next(sh for sh in part.shots if sh.pose_name == pose)
        (fx0, fy0), (fx1, fy1) = shot.footprint_mm[0], shot.footprint_mm[2]
        assert fx0 <= best.x_mm <= fx1 and fy0 <= best.y_mm <= fy1


def test_sheet_map_page_on_postgresql(tmp_path: Path, fresh_postgres_url: str) -> None:
    db, sample, client = _setup(tmp_path, url=fresh_postgres_url, n=12)
    part = _sheet_part(db, sample)
    html = client.get(f"/parts/{part.id}?defect=0").text
    assert f'src="/files/{part.sheet_map_path}"' in html and 'id="defect-shots"' in html
    assert html.count('class="footprint') == 3
    client.close()
    db.dispose()


def test_a_captured_part_says_it_was_captured_not_that_the_station_stopped(
    tmp_path: Path,
) -> None:
    from station.storage.parts import PartRecord, write_part

    db, _, client = _setup(tmp_path, n=2)
    record = PartRecord(recipe="glassfiber", recipe_sha256="", mode="capture",
                        ground_truth="defect", key="")  # fmt: skip
    write_part(db, record)
    with db.session() as s:
        pid = s.scalars(select(Part.id).where(Part.mode == "capture")).one()
    page = client.get(f"/parts/{pid}").text
    assert 'id="captured"' in page and "never inspected or decided" in page
    assert "its label, defect, is its dataset folder" in page
    assert 'id="undecided"' not in page and "station stopped" not in page
    client.close()
    db.dispose()


def test_the_newest_review_counts_and_a_tie_goes_to_the_later_row(seeded) -> None:
    """Calibration, retraining and the part page read `Part.reviews` oldest first."""
    db, sample, _client = seeded
    pid = sample.rejected_ids[0]
    t = datetime.now(UTC) + timedelta(days=1)  # after the sample's reviews
    with db.session() as s:
        for who, label, when in (("Ana", ReviewLabel.FALSE_REJECT, t + timedelta(hours=1)),
                                 ("Ben", ReviewLabel.DEFECT_CONFIRMED, t),
                                 ("Cy", ReviewLabel.FALSE_REJECT, t)):
            s.add(Review(part_id=pid, operator=who, label=label, created_at=when))
    with db.session() as s:
        part = store.load_part(s, pid)
        assert [r.operator for r in part.reviews][-3:] == ["Ben", "Cy", "Ana"]
        assert part.newest_review.operator == "Ana"
        s.add(Review(part_id=pid, operator="Dee", label=ReviewLabel.DEFECT_CONFIRMED,
                     created_at=t + timedelta(hours=1)))
    with db.session() as s:
        assert store.load_part(s, pid).newest_review.operator == "Dee"


def test_a_fault_is_judged_as_a_sheet_not_as_the_detectors_reject() -> None:
    """A fault rejects whatever the sheet was: the operator says what the sheet is, as for an
    interrupted part; "false reject" would blame a detector that never decided."""
    assert store.label_text(ReviewLabel.DEFECT_CONFIRMED, Verdict.FAULT) == "sheet defective"
    assert store.label_text(ReviewLabel.FALSE_REJECT, Verdict.FAULT) == "sheet good"
    assert store.label_text(ReviewLabel.FALSE_REJECT, Verdict.FAIL) == "false reject"
    assert store.label_text(ReviewLabel.DEFECT_CONFIRMED, Verdict.PASS) == "missed defect"
