"""Security pieces of the review pages: signed session cookies, CSRF tokens, safe file paths.

- Sessions: a JSON payload signed with HMAC-SHA256 (`payload.signature`, both base64url),
  carrying the CSRF token, the operator name and, when login is required, a fingerprint of the
  access token (so a new token voids old sessions). Expired or tampered cookies are ignored.
- Files: `safe_data_path()` maps a URL path onto a file under the data root and refuses
  anything else (`..`, absolute paths, backslashes, NUL, symlinks leaving the root, non-images).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import time
from pathlib import Path, PurePosixPath
from typing import Any

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
}
LOCAL_HOST_NAMES = ("127.0.0.1", "localhost", "::1")
MIN_TOKEN_CHARS = 12


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Signs and checks session cookies; `max_age_s` bounds how long one stays valid."""

    def __init__(self, secret: bytes, max_age_s: int = 12 * 3600) -> None:
        self._secret = secret
        self.max_age_s = max_age_s

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest())

    def dumps(self, data: dict[str, Any]) -> str:
        body = dict(data, iat=int(time.time()))
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def loads(self, cookie: str | None) -> dict[str, Any] | None:
        if not cookie or cookie.count(".") != 1:
            return None
        payload, sig = cookie.split(".")
        try:
            # bytes: compare_digest refuses non-ASCII text with a TypeError (a 500)
            if not hmac.compare_digest(sig.encode(), self._sign(payload).encode()):
                return None
            data = json.loads(_unb64(payload))
        except (ValueError, UnicodeError):
            return None
        if not isinstance(data, dict):
            return None
        iat = data.get("iat")
        if not isinstance(iat, int) or time.time() - iat > self.max_age_s:
            return None
        return data

    def fingerprint(self, token: str) -> str:
        """A value tied to the access token that does not reveal it."""
        return hmac.new(self._secret, b"token:" + token.encode(), hashlib.sha256).hexdigest()[:32]


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def tokens_equal(given: str | None, expected: str | None) -> bool:
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; anything else counts as beyond localhost."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_without_port(host_header: str) -> str:
    h = host_header.strip().lower()
    if h.startswith("["):  # [::1]:8080
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def safe_next(target: str | None, default: str = "/") -> str:
    """A same-site path to go back to after login/review; anything else becomes `default`."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return default
    if "\\" in target or any(ord(c) < 32 for c in target):
        return default
    return target


def safe_data_path(data_root: Path, rel: str) -> Path | None:
    """The file `rel` (a POSIX path relative to the data root) names, or None when refused.

    Refused: empty, absolute, drive or UNC forms, backslashes, NUL/control characters, any
    `.`/`..` component, a suffix that is not an image type, anything that (after following
    symlinks) lies outside the data root, and anything that is not an existing regular file.
    """
    if not rel or len(rel) > 1024 or "\\" in rel or any(ord(c) < 32 for c in rel):
        return None
    if rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):  # absolute or drive-letter
        return None
    parts = PurePosixPath(rel).parts
    if not parts or any(p in ("", ".", "..") for p in rel.split("/")):
        return None
    if PurePosixPath(rel).suffix.lower() not in IMAGE_TYPES:
        return None
    root = data_root.resolve()
    try:
        target = (root / Path(*parts)).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(root) or not target.is_file():
        return None
    if target.suffix.lower() not in IMAGE_TYPES:  # a link named .png to something else
        return None
    return target


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def csv_cell(value: object) -> object:
    """Neutralise spreadsheet formulas in text cells (CSV injection): prefix with a quote.
    A plain number ("-0.25") is left as it is: it is a value, not a formula."""
    if isinstance(value, str) and value.lstrip(" ").startswith(_FORMULA_START):
        if _NUMBER.fullmatch(value):
            return value
        return "'" + value
    return value
