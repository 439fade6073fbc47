"""Review pages security: login beyond localhost, CSRF, path traversal, output escaping,
Host-header checks and response headers.

Traversal requests go over a real socket (http.client against uvicorn on 127.0.0.1) so that
no client-side URL normalisation hides what the server receives.
"""

from __future__ import annotations

import http.client
import os
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from station.errors import StationError
from station.review import store
from station.review.app import COOKIE, create_app
from station.review.sample import seed_parts
from station.review.security import AuthThrottle, SessionSigner, safe_data_path, safe_next
from station.review.server import background_server
from station.storage.alarms import NewAlarm, add_alarm, get_alarm
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
    before = _n_reviews(db)
    r = client.post(f"/parts/{pid}/review", data={"label": "false_reject", "operator": "x"})
    assert r.status_code == 401
    # Every route the app serves (its schema lists them all), bar the public ones named here
    # rather than read from the guard, so a route made public by mistake fails this test.
    fill = {"{part_id}": str(pid), "{alarm_id}": "1", "{rel}": image}
    tried = set()
    for template, methods in client.app.openapi()["paths"].items():
        if template in ("/login", "/healthz"):
            continue
        path = template
        for key, value in fill.items():
            path = path.replace(key, value)
        for method in methods:
            r = client.request(method.upper(), path, follow_redirects=False)
            assert r.status_code == 401, (method, template, r.status_code)
            tried.add((method, template))
    assert {("get", "/next"), ("get", "/alarms"), ("get", "/shadow")} <= tried
    assert ("post", "/alarms/{alarm_id}/clear") in tried and len(tried) >= 10
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


def test_alarm_clear_needs_the_sessions_csrf_token(site) -> None:
    db, _sample, url, data = site
    alarm = add_alarm(db, NewAlarm("glassfiber", "brightness", "ewma", None, None, None,
                                   140.0, 120.0, 130.0, 20.0, "brightness drifted"))
    assert alarm is not None
    client = TestClient(create_app(url, data), base_url=BASE)
    page = client.get("/alarms")
    assert f'id="alarm-{alarm.id}"' in page.text
    form = {"operator": "Ana"}
    for token in (None, "x" * 43):
        data_ = dict(form) if token is None else {**form, "csrf": token}
        r = client.post(f"/alarms/{alarm.id}/clear", data=data_, headers={"accept": "text/html"})
        assert r.status_code == 403 and "CSRF" in r.text
    r = client.post(f"/alarms/{alarm.id}/clear", data={**form, "csrf": _csrf(page.text)},
                    headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "Origin" in r.text
    assert get_alarm(db, alarm.id).open
    r = client.post(f"/alarms/{alarm.id}/clear", data={**form, "csrf": _csrf(page.text)},
                    follow_redirects=False)
    assert r.status_code == 303 and not get_alarm(db, alarm.id).open
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
        assert "<svg onload" not in html and "<b>L1</b>" not in html  # (the sheet map is SVG)
    part_html = client.get(f"/parts/{pid}").text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in part_html
    assert "&#34;&gt;&lt;svg onload=x&gt;" in part_html
    client.close()


@pytest.mark.slow
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

    for formula in ("=1+2", "-1+2", "+A1", "@SUM(A1)", " =HYPERLINK(x)", '"=1'):
        assert csv_cell(formula) == "'" + formula
    # a tab is a field start too (tab-delimited readers): quoted after it as well
    assert csv_cell("\t=1") == "'\t'=1"
    for number in ("-0.25", "+3e-5", "12", "-.5"):
        assert csv_cell(number) == number
    assert csv_cell(-0.25) == -0.25 and csv_cell("plain") == "plain"


# -- guessing, weak tokens, large bodies --------------------------------------------------------


@pytest.mark.slow
def test_bearer_guesses_are_throttled_per_address(site) -> None:
    db, sample, url, data = site
    far = "http://10.0.0.5:8080"
    client = TestClient(create_app(url, data, token=TOKEN), base_url=far)
    t0 = time.monotonic()
    codes = [
        client.get("/export.csv", headers={"authorization": f"Bearer guess-{i}"}).status_code
        for i in range(60)
    ]
    # the default allows 10 failures, then one more every 6 s
    assert codes.count(401) <= 11 + (time.monotonic() - t0) / 6
    assert codes.count(401) + codes.count(429) == 60
    r = client.get("/export.csv", headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 6
    assert "review_id" not in r.text  # throttled: even the right token is not looked at
    # Another address is counted on its own; with a long refill the count is exact.
    throttle = AuthThrottle(burst=5, refill_s=3600)
    app = create_app(url, data, token=TOKEN, throttle=throttle)
    other = TestClient(app, base_url=far, client=("10.0.0.9", 4000))
    right = {"authorization": f"Bearer {TOKEN}"}
    assert all(other.get("/export.csv", headers=right).status_code == 200 for _ in range(20))
    codes = [
        other.get("/", headers={"authorization": "Bearer nope"}).status_code for _ in range(40)
    ]
    assert codes == [401] * 5 + [429] * 35
    assert TestClient(app, base_url=far).get("/export.csv", headers=right).status_code == 200
    other.close()
    client.close()


@pytest.mark.slow
def test_parallel_login_guesses_are_throttled(site) -> None:
    db, sample, url, data = site
    app = create_app(url, data, token=TOKEN)  # default: 10 failures, then one every 6 s
    with background_server(app) as base, httpx.Client(base_url=base) as first:
        csrf = _csrf(first.get("/login").text)
        cookies = dict(first.cookies)

        def guess(i: int) -> int:
            with httpx.Client(base_url=base, cookies=cookies, timeout=30) as c:
                form = {"csrf": csrf, "operator": "Mal", "token": f"guess-{i:04d}-{i:04d}"}
                return c.post("/login", data=form).status_code

        t0 = time.monotonic()
        with ThreadPoolExecutor(40) as pool:
            codes = list(pool.map(guess, range(40)))
        assert codes.count(401) <= 11 + (time.monotonic() - t0) / 6
        assert codes.count(401) + codes.count(429) == 40
        with httpx.Client(base_url=base, cookies=cookies, timeout=30) as c:
            form = {"csrf": csrf, "operator": "Olga", "token": TOKEN}
            r = c.post("/login", data=form, headers={"accept": "text/html"})
        assert r.status_code == 429 and "Too many failed logins" in r.text
        assert int(r.headers["retry-after"]) > 0


def test_throttle_table_is_bounded() -> None:
    throttle = AuthThrottle(burst=3, refill_s=3600, max_clients=100)
    allowed = sum(
        throttle.acquire(f"10.1.{i // 250}.{i % 250}") == 0.0 for i in range(2000) for _ in range(5)
    )
    assert len(throttle) == 101  # 100 addresses and the shared bucket
    assert allowed == 100 * 3 + 3  # flooding addresses does not buy fresh buckets
    # an entry whose bucket has refilled is forgotten to make room
    quick = AuthThrottle(burst=1, refill_s=0.001, max_clients=2)
    assert quick.acquire("10.2.0.1") == quick.acquire("10.2.0.2") == 0.0
    time.sleep(0.01)
    assert quick.acquire("10.2.0.3") == 0.0 and len(quick) == 2
    assert "10.2.0.1" not in quick._buckets and "*" not in quick._buckets
    # IPv6: one /64 is one client
    v6 = AuthThrottle(burst=2, refill_s=3600)
    assert [v6.acquire(f"2001:db8::{i:x}") == 0.0 for i in range(5)] == [True, True] + [False] * 3
    assert len(v6) == 1


def test_weak_tokens_are_refused_at_startup(
    site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from station.cli.app import main

    db, sample, url, data = site
    for weak in ("aaaaaaaaaaaa", "a" * 40, "abcdabcdabcdabcd", "0123012301230123"):
        with pytest.raises(StationError, match="--token") as exc:
            create_app(url, data, token=weak)
        assert "secrets.token_urlsafe(24)" in str(exc.value) and "\n" not in str(exc.value)
    create_app(url, data, token=secrets.token_urlsafe(24))
    monkeypatch.setenv("STATION_REVIEW_TOKEN", "aaaaaaaaaaaaaaaa")
    with pytest.raises(SystemExit) as stop:
        main(["review", "--host", "192.168.1.7"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "STATION_REVIEW_TOKEN" in err and "too guessable" in err and "Traceback" not in err


def _raw(netloc: str, path: str, headers: dict[str, str], chunks: list[bytes]) -> int:
    """Send a POST over a plain socket (body in the given pieces), return the status."""
    conn = http.client.HTTPConnection(netloc, timeout=10)
    conn.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
    for k, v in {"Host": netloc, "Content-Type": FORM, **headers}.items():
        conn.putheader(k, v)
    conn.endheaders()
    try:
        for chunk in chunks:
            conn.send(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the whole body was sent
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status


def _chunked(body: bytes, size: int = 4096) -> list[bytes]:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"]


FORM = "application/x-www-form-urlencoded"


def test_large_bodies_are_refused_before_they_are_read(site) -> None:
    db, sample, url, data = site
    app = create_app(url, data, token=TOKEN)
    pid = sample.rejected_ids[0]
    with background_server(app) as base:
        netloc = urlsplit(base).netloc
        # a declared 100 MB: refused at once, after 1 KiB sent (the socket timeout is 10 s)
        big = {"Content-Length": str(100 * 1024 * 1024)}
        assert _raw(netloc, "/login", big, [b"token=" + b"x" * 1024]) == 413
        over = {"Content-Length": str(40 * 1024)}
        assert _raw(netloc, f"/parts/{pid}/review", over, [b"x" * 1024]) == 413
        # chunked: counted as it arrives
        chunked = {"Transfer-Encoding": "chunked"}
        assert _raw(netloc, "/login", chunked, _chunked(b"operator=" + b"x" * 20_000)) == 413
        # within the limits the same routes answer as usual (wrong CSRF, then a real login)
        assert _raw(netloc, "/login", chunked, _chunked(b"operator=Olga&token=x")) == 403
        with httpx.Client(base_url=base) as c:
            form = {"csrf": _csrf(c.get("/login").text), "operator": "Olga", "token": TOKEN}
            body = urlencode(form).encode()
            cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
        ok = _raw(netloc, "/login", {**chunked, "Cookie": cookie}, _chunked(body, 7))
        assert ok == 303
