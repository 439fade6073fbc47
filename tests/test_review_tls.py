"""`station review` over HTTPS: a certificate made by openssl, a plain and an encrypted key,
served by the real command and fetched with the certificate as the only trusted one."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from station.cli.review import KEY_PASSWORD_ENV
from station.review.sample import seed_parts
from station.review.server import free_port
from station.storage.db import open_database

PASS_PHRASE = "line-3-review"


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cert.pem for 127.0.0.1, its key plain (plain.key) and encrypted (locked.key)."""
    d = tmp_path_factory.mktemp("tls")
    _openssl(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "plain.key",
             "-out", "cert.pem", "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1")  # fmt: skip
    _openssl(d, "pkey", "-in", "plain.key", "-aes256", "-passout", f"pass:{PASS_PHRASE}",
             "-out", "locked.key")  # fmt: skip
    assert "ENCRYPTED" in (d / "locked.key").read_text()
    return d


@pytest.fixture
def site(station_home: Path) -> tuple[str, Path]:
    url = f"sqlite:///{station_home}/station.db"
    data = station_home / "data"
    db = open_database(url)
    seed_parts(db, data, 4, size=(48, 32), seed=3, reject_rate=0.5)
    db.dispose()
    return url, data


def _serve_and_fetch(site: tuple[str, Path], tls: Path, key: str, env: dict[str, str]) -> str:
    """Start `station review` with HTTPS, fetch its queue page trusting only cert.pem."""
    url, data = site
    port = free_port()
    cmd = [sys.executable, "-m", "station", "review", "--db-url", url, "--data-dir", str(data),
           "--port", str(port), "--ssl-certfile", str(tls / "cert.pem"),
           "--ssl-keyfile", str(tls / key)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    trust = ssl.create_default_context(cafile=str(tls / "cert.pem"))  # checks 127.0.0.1 too
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"https://127.0.0.1:{port}/", verify=trust)
                break
            except httpx.ConnectError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(proc.communicate()[0]) from None
                time.sleep(0.2)
        assert r.status_code == 200, r.text
        return r.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_https_with_a_plain_key(site: tuple[str, Path], tls: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != KEY_PASSWORD_ENV}
    assert "<title>Queue · station</title>" in _serve_and_fetch(site, tls, "plain.key", env)


def test_https_with_an_encrypted_key_and_its_pass_phrase(
    site: tuple[str, Path], tls: Path
) -> None:
    env = {**os.environ, KEY_PASSWORD_ENV: PASS_PHRASE}
    assert "<title>Queue · station</title>" in _serve_and_fetch(site, tls, "locked.key", env)


@pytest.mark.parametrize("phrase", [None, "wrong"])
def test_an_encrypted_key_without_its_pass_phrase_is_one_line(
    site: tuple[str, Path],
    tls: Path,
    phrase: str | None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from station.cli.app import main

    if phrase is None:
        monkeypatch.delenv(KEY_PASSWORD_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_PASSWORD_ENV, phrase)
    url, data = site
    argv = ["review", "--db-url", url, "--data-dir", str(data), "--port", str(free_port()),
            "--ssl-certfile", str(tls / "cert.pem"),
            "--ssl-keyfile", str(tls / "locked.key")]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(argv)  # never a pass-phrase prompt on the terminal
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert f"cannot use --ssl-certfile {tls / 'cert.pem'}" in err and KEY_PASSWORD_ENV in err
    assert "Traceback" not in err and "review pages on" not in out
