"""Review pages security: login beyond localhost, CSRF, path traversal, output escaping,
Host-header checks and response headers.

Traversal requests go over a real socket (http.client against uvicorn on 127.0.0.1) so that
no client-side URL normalisation hides what the server receives.
"""

from __future__ import annotations

import http.client
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from station.errors import StationError
from station.review import store
from station.review.app import COOKIE, create_app
from station.review.sample import seed_parts
from station.review.security import SessionSigner, safe_data_path, safe_next
from station.review.server import background_server
from station.storage.db import open_database
from station.storage.models import Part, Review

BASE = "http://127.0.0.1:8080"
TOKEN = "s3cret-operator-token"


@pytest.fixture
def site(tmp_path: Path):  # noqa: ANN201
    url = f"sqlite:///{tmp_path}/station.db"
    data = tmp_path / "data"
    db = open_database(url)
    sample = seed_parts(db, data, 12, size=(48, 32), seed=9, reject_rate=0.6)
    yield db, sample, url, data
    db.dispose()


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m
    return m.group(1)


def _n_reviews(db) -> int:  # noqa: ANN001
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Review)) or 0


# -- login required beyond localhost -----------------------------------------------------------


def test_everything_refused_without_login_when_auth_is_required(site) -> None:
    db, sample, url, data = site
    client = TestClient(create_app(url, data, token=TOKEN), base_url="http://10.0.0.5:8080")
    pid = sample.rejected_ids[0]
    with db.session() as s:
        image = store.load_part(s, pid).shots[0].image_path
    html = {"accept": "text/html"}
    for path in ("/", f"/parts/{pid}", "/?verdict=fail"):
        r = client.get(path, headers=html, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
        assert "Part #" not in r.text
    for path in (f"/files/{image}", "/export.csv", f"/parts/{pid}"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 401, path
        assert b"PNG" not in r.content and "review_id" not in r.text
    r = client.post(f"/parts/{pid}/review", data={"label": "false_reject", "operator": "x"})
    assert r.status_code == 401
    before = _n_reviews(db)
    # A wrong token, a forged cookie and a bearer token on a POST are all refused.
    login = client.get("/login")
    assert login.status_code == 200 and 'name="token"' in login.text
    r = client.post(
        "/login", data={"csrf": _csrf(login.text), "operator": "Mal", "token": "wrong-token-123"}
    )
    assert r.status_code == 401 and "Wrong access token" in r.text
    assert client.get("/", headers=html, follow_redirects=False).status_code == 303
    forged = SessionSigner(b"not the server key").dumps({"csrf": "x", "auth": "y", "operator": "M"})
    client.cookies.set(COOKIE, forged)
    assert client.get("/export.csv").status_code == 401
    r = client.post(
        f"/parts/{pid}/review",
        headers={"authorization": f"Bearer {TOKEN}"},
        data={"label": "false_reject", "operator": "x"},
    )
    assert r.status_code == 401
    assert _n_reviews(db) == before
    # Public: the login page, static files and the health check.
    assert client.get("/static/review.css").status_code == 200
    assert client.get("/healthz").text == "ok"
    client.close()


def test_login_then_pages_actions_and_logout(site) -> None:
    db, sample, url, data = site
    client = TestClient(create_app(url, data, token=TOKEN), base_url="http://10.0.0.5:8080")
    pid = sample.rejected_ids[0]
    target = f"/parts/{pid}?recipe="
    login = client.get("/", headers={"accept": "text/html"})  # follows to the login page
    assert 'name="token"' in login.text
    r = client.post(
        "/login",
        data={"csrf": _csrf(login.text), "operator": "Olga", "token": TOKEN, "next": target},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == target
    page = client.get(target)
    assert page.status_code == 200 and "Marking as <b>Olga</b>" in page.text
    r = client.post(
        f"/parts/{pid}/review",
        data={"csrf": _csrf(page.text), "label": "defect_confirmed", "operator": "Someone else"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    with db.session() as s:
        newest = s.scalars(select(Review).order_by(Review.id.desc())).first()
    assert newest.operator == "Olga"  # the logged-in operator, not a form field
    # Logging out needs the CSRF token too; afterwards pages are refused again.
    assert client.post("/logout", data={}).status_code == 403
    page = client.get("/")
    r = client.post("/logout", data={"csrf": _csrf(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    assert client.get("/export.csv").status_code == 401
    # Bearer token for scripts (GET only).
    anon = TestClient(create_app(url, data, token=TOKEN), base_url="http://10.0.0.5:8080")
    r = anon.get("/export.csv", headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.text.startswith("review_id,")
    assert anon.get("/export.csv", headers={"authorization": "Bearer nope"}).status_code == 401
    anon.close()
    client.close()


def test_auth_needs_a_real_token_and_next_stays_on_site(site) -> None:
    db, sample, url, data = site
    with pytest.raises(StationError, match="access token"):
        create_app(url, data, require_auth=True)
    with pytest.raises(StationError, match="access token"):
        create_app(url, data, token="short")
    for bad in ("//evil.example/x", "https://evil.example", "/\\evil.example", "javascript:x"):
        assert safe_next(bad) == "/"
    assert safe_next("/parts/3?recipe=a") == "/parts/3?recipe=a"
    client = TestClient(create_app(url, data, token=TOKEN), base_url="http://10.0.0.5:8080")
    login = client.get("/login?next=//evil.example/")
    r = client.post(
        "/login",
        data={
            "csrf": _csrf(login.text),
            "operator": "O",
            "token": TOKEN,
            "next": "//evil.example/",
        },
        follow_redirects=False,
    )
    assert r.headers["location"] == "/"
    client.close()


# -- CSRF ------------------------------------------------------------------------------------


def test_review_post_needs_the_sessions_csrf_token(site) -> None:
    db, sample, url, data = site
    client = TestClient(create_app(url, data), base_url=BASE)
    pid = sample.rejected_ids[0]
    good = _csrf(client.get(f"/parts/{pid}").text)
    other = TestClient(create_app(url, data), base_url=BASE)
    foreign = _csrf(other.get(f"/parts/{pid}").text)  # valid, but another session's
    form = {"label": "false_reject", "operator": "Ana", "comment": "c"}
    before = _n_reviews(db)
    for token in (None, "", "x" * 43, foreign):
        data_ = dict(form) if token is None else {**form, "csrf": token}
        r = client.post(f"/parts/{pid}/review", data=data_, headers={"accept": "text/html"})
        assert r.status_code == 403 and "CSRF" in r.text
    # Right token, but posted from another site's page.
    r = client.post(
        f"/parts/{pid}/review",
        data={**form, "csrf": good},
        headers={"origin": "http://evil.example"},
    )
    assert r.status_code == 403 and "Origin" in r.text
    # GET never changes anything.
    assert client.get(f"/parts/{pid}/review").status_code == 405
    assert _n_reviews(db) == before
    r = client.post(
        f"/parts/{pid}/review",
        data={**form, "csrf": good},
        headers={"origin": BASE},
        follow_redirects=False,
    )
    assert r.status_code == 303 and _n_reviews(db) == before + 1
    other.close()
    client.close()


# -- files and traversal -----------------------------------------------------------------------


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((4, 4), 200, np.uint8))


def test_safe_data_path_refuses_everything_outside_the_data_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _png(root / "glassfiber/images/a.png")
    _png(tmp_path / "secret.png")
    (root / "notes.txt").write_text("x")
    (root / "glassfiber/link.png").symlink_to(tmp_path / "secret.png")
    assert safe_data_path(root, "glassfiber/images/a.png") == (root / "glassfiber/images/a.png")
    refused = [
        "",
        "../secret.png",
        "glassfiber/../../secret.png",
        "glassfiber/images/../../../secret.png",
        "./glassfiber/images/a.png",
        "glassfiber//images/a.png",
        str(tmp_path / "secret.png"),
        "/etc/passwd",
        "C:/secret.png",
        "..\\secret.png",
        "glassfiber\\images\\a.png",
        "glassfiber/images/a.png\x00.png",
        "notes.txt",
        "glassfiber/link.png",  # a symlink that leaves the root
        "glassfiber/images/none.png",
        "glassfiber/images",
    ]
    for rel in refused:
        assert safe_data_path(root, rel) is None, rel


def test_traversal_over_http_is_refused(site, tmp_path: Path) -> None:
    db, sample, url, data = site
    secret = tmp_path / "secret.png"
    _png(secret)
    marker = secret.read_bytes()
    with db.session() as s:
        image = store.load_part(s, sample.rejected_ids[0]).shots[0].image_path
    app = create_app(url, data)
    attempts = [
        "/files/../secret.png",
        "/files/%2e%2e/secret.png",
        "/files/%2E%2E%2Fsecret.png",
        "/files/..%2fsecret.png",
        "/files/..%2Fsecret.png",
        "/files/%252e%252e%252fsecret.png",
        "/files/glassfiber/../../secret.png",
        "/files/glassfiber/%2e%2e/%2e%2e/secret.png",
        "/files/..%5csecret.png",
        "/files/..\\secret.png",
        f"/files/{secret}",
        f"/files//{secret}",
        "/files/%2F" + str(secret).lstrip("/").replace("/", "%2F"),
        "/files/%2fetc%2fpasswd",
        "/files/station.db",
        "/files/../station.db",
        "/static/../station.db",
        "/static/%2e%2e/%2e%2e/%2e%2e/app.py",
    ]
    with background_server(app) as base:
        netloc = urlsplit(base).netloc
        for path in attempts:
            conn = http.client.HTTPConnection(netloc, timeout=10)
            conn.request("GET", path, headers={"Host": netloc})
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            assert resp.status in (400, 404), (path, resp.status)
            assert marker not in body and b"SQLite" not in body and b"create_app" not in body
        conn = http.client.HTTPConnection(netloc, timeout=10)
        conn.request("GET", f"/files/{image}", headers={"Host": netloc})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read()[:4] == b"\x89PNG"
        conn.close()


def test_database_paths_outside_the_root_are_not_served(site, tmp_path: Path) -> None:
    db, sample, url, data = site
    _png(tmp_path / "secret.png")
    pid = sample.rejected_ids[0]
    with db.session() as s:
        part = store.load_part(s, pid)
        part.shots[0].image_path = "../secret.png"
        part.shots[1].image_path = str(tmp_path / "secret.png")
    client = TestClient(create_app(url, data), base_url=BASE)
    html = client.get(f"/parts/{pid}").text
    assert html.count("image file missing") == 2
    assert "/files/../secret.png" not in html
    client.close()


# -- escaping and headers ---------------------------------------------------------------------


def test_html_in_comments_names_and_reasons_is_escaped(site) -> None:
    db, sample, url, data = site
    pid = sample.rejected_ids[-1]
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    with db.session() as s:
        part = s.get(Part, pid)
        part.reason = evil
        part.line_part_id = "<b>L1</b>"
    client = TestClient(create_app(url, data), base_url=BASE)
    page = client.get(f"/parts/{pid}").text
    r = client.post(
        f"/parts/{pid}/review",
        data={
            "csrf": _csrf(page),
            "label": "false_reject",
            "operator": '"><svg onload=x>',
            "comment": evil,
        },
    )
    assert r.status_code == 200
    for html in (client.get(f"/parts/{pid}").text, client.get("/").text):
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "<svg" not in html and "<b>L1</b>" not in html
    part_html = client.get(f"/parts/{pid}").text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in part_html
    assert "&#34;&gt;&lt;svg onload=x&gt;" in part_html
    client.close()


def test_security_headers_and_host_check(site) -> None:
    db, sample, url, data = site
    client = TestClient(create_app(url, data), base_url=BASE)
    for path in ("/", f"/parts/{sample.rejected_ids[0]}", "/static/review.js"):
        r = client.get(path)
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
    fresh = TestClient(create_app(url, data), base_url=BASE)
    cookie = fresh.get("/").headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    fresh.close()
    # Localhost-only mode: a page reached under a foreign name (DNS rebinding) is refused.
    for host in ("evil.example", "evil.example:8080", "10.0.0.5"):
        assert client.get("/", headers={"host": host}).status_code == 400
    for host in ("localhost:8080", "127.0.0.1", "[::1]:8080"):
        assert client.get("/", headers={"host": host}).status_code == 200
    client.close()


def test_no_external_resources_in_pages(site) -> None:
    db, sample, url, data = site
    client = TestClient(create_app(url, data), base_url=BASE)
    here = Path(__file__).resolve().parents[1] / "station/review"
    texts = [client.get("/").text, client.get(f"/parts/{sample.rejected_ids[0]}").text]
    texts += [p.read_text() for p in (here / "static").iterdir()]
    for text in texts:
        assert not re.search(r"(src|href)=\"(https?:)?//", text)
        assert "url(http" not in text and "@import" not in text
    assert os.path.isfile(here / "static/review.js")
    client.close()


def test_csv_cells_neutralise_formulas_but_keep_numbers() -> None:
    from station.review.security import csv_cell

    for formula in ("=1+2", "-1+2", "+A1", "@SUM(A1)", " =HYPERLINK(x)", "\t=1"):
        assert csv_cell(formula) == "'" + formula
    for number in ("-0.25", "+3e-5", "12", "-.5"):
        assert csv_cell(number) == number
    assert csv_cell(-0.25) == -0.25 and csv_cell("plain") == "plain"
