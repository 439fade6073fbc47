"""Security pieces of the review pages: signed session cookies, CSRF tokens, safe file paths.

- Sessions: a JSON payload signed with HMAC-SHA256 (`payload.signature`, both base64url),
  carrying the CSRF token, the operator name and, when login is required, a fingerprint of the
  access token (so a new token voids old sessions). Expired or tampered cookies are ignored.
- Files: `safe_data_path()` maps a URL path onto a file under the data root and refuses
  anything else (`..`, absolute paths, backslashes, NUL, symlinks leaving the root, non-images).
- Access token: `weak_token()` refuses short or low-entropy tokens; `AuthThrottle` limits
  failed logins and Bearer guesses per client address.
- Bodies: `BodyLimit` refuses request bodies over a per-route size before they are parsed.
- CSV: `csv_cell()` / `csv_line()` neutralise spreadsheet formulas.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import ipaddress
import json
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path, PurePosixPath
from typing import Any

from station.errors import StationError

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
}
LOCAL_HOST_NAMES = ("127.0.0.1", "localhost", "::1")
MIN_TOKEN_CHARS = 16
MIN_TOKEN_DISTINCT = 6
# length x the entropy of the token's own character frequencies (a random 16-character
# hex token scores 42 to 48; "aaaa..." 0, "abcdabcd..." 2 bits a character)
MIN_TOKEN_BITS = 40.0
MAKE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(24))"'


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


def weak_token(token: str) -> str | None:
    """Why `token` is too weak for the review pages, or None when it will do."""
    n, distinct = len(token), len(set(token))
    bits = sum(c * math.log2(n / c) for c in collections.Counter(token).values())
    if n < MIN_TOKEN_CHARS:
        return f"too short ({n} characters, at least {MIN_TOKEN_CHARS})"
    if distinct < MIN_TOKEN_DISTINCT or bits < MIN_TOKEN_BITS:
        return f"too guessable ({distinct} distinct characters, about {bits:.0f} bits)"
    return None


def check_token(token: str | None, option: str = "--token or STATION_REVIEW_TOKEN") -> None:
    """Refuse a missing or weak access token with one line naming the option and the fix."""
    problem = weak_token(token) if token else "missing"
    if problem:
        raise StationError(
            f"the review access token ({option}) is {problem}: make one with {MAKE_TOKEN}"
        )


class AuthThrottle:
    """Failed-authentication limit per client address: a token bucket of `burst` attempts that
    refills one every `refill_s`. An attempt takes a token up front (so concurrent guesses
    count too) and a success gives it back. At most `max_clients` addresses are tracked; when
    the table is full and its oldest entry is still draining, new addresses share one bucket.
    IPv6 addresses count per /64 (one host usually owns the whole prefix).
    """

    def __init__(self, burst: int = 10, refill_s: float = 6.0, max_clients: int = 4096) -> None:
        self.burst = burst
        self.refill_s = refill_s
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(address: str | None) -> str:
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return address or "?"
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped:
                return str(ip.ipv4_mapped)
            if not ip.is_loopback:
                return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip)

    def _level(self, key: str, now: float) -> float:
        level, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, level + (now - at) / self.refill_s)

    def acquire(self, address: str | None) -> float:
        """Take one attempt: 0.0 when allowed, else the seconds until the next one is."""
        now = time.monotonic()
        with self._lock:
            key = self.key(address)
            if key not in self._buckets and len(self._buckets) >= self.max_clients:
                oldest = next(iter(self._buckets))
                if self._level(oldest, now) >= self.burst:
                    del self._buckets[oldest]
                else:
                    key = "*"  # table full of recent failures: one shared bucket
            level = self._level(key, now)
            if level < 1.0:
                return (1.0 - level) * self.refill_s
            self._buckets[key] = (level - 1.0, now)
            self._buckets.move_to_end(key)
            return 0.0

    def succeeded(self, address: str | None) -> None:
        """The attempt taken was right: give it back."""
        now = time.monotonic()
        with self._lock:
            key = self.key(address)
            if key in self._buckets:
                self._buckets[key] = (min(self.burst, self._level(key, now) + 1.0), now)

    def __len__(self) -> int:
        return len(self._buckets)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]


class BodyLimit:
    """ASGI middleware: a request body over `limit(method, path)` bytes gets 413. A declared
    Content-Length is checked before anything is read; a chunked body is counted as it arrives
    and refused once past the limit: the app then sees a disconnect and its answer is dropped."""

    def __init__(self, app: ASGIApp, limit: Callable[[str, str], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["method"], scope["path"])
        declared = [v for k, v in scope["headers"] if k == b"content-length"]
        if declared and not (declared[0].isdigit() and int(declared[0]) <= limit):
            await self._refuse(send, limit)
            return
        seen = 0
        started = refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen <= limit:
                return message
            refused = True
            if not started:
                await self._refuse(send, limit)
            return {"type": "http.disconnect"}

        async def watched(message: Message) -> None:
            nonlocal started
            if not refused:
                started = started or message["type"] == "http.response.start"
                await send(message)

        try:
            await self.app(scope, counted, watched)
        except Exception:  # the app's reaction to the disconnect (ClientDisconnect and kin)
            if not refused:
                raise

    @staticmethod
    async def _refuse(send: Any, limit: int) -> None:
        body = f"request body too large (limit {limit} bytes)".encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"x-content-type-options", b"nosniff"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


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
# A formula character where a reader splitting on ; , tab or a line break sees a field start
# (after optional blanks and quotes).
_INNER_FORMULA = re.compile(r'([,;\t\r\n][ "]*)(?=[=+\-@\t\r])')


def csv_cell(value: object) -> object:
    """Neutralise spreadsheet formulas in text cells (CSV injection, OWASP): a cell that starts
    with = + - @ tab or CR, or has one at a field start for a ; , or tab delimited reader, gets
    a leading quote and one after each such delimiter. Plain numbers ("-0.25") stay numbers."""
    if not isinstance(value, str) or _NUMBER.fullmatch(value):
        return value
    inner = _INNER_FORMULA.sub(r"\1'", value)
    if inner != value or value.lstrip(' "').startswith(_FORMULA_START):
        return "'" + inner
    return value


def csv_line(cells: list[object]) -> str:
    """One CSV record (comma, CRLF): every cell through `csv_cell`; a neutralised cell or one
    holding a quote, delimiter or line break is quoted."""
    out = []
    for cell in cells:
        value = csv_cell(cell)
        text = "" if value is None else str(value)
        if isinstance(value, str) and (text.startswith("'") or re.search(r'[",;\t\r\n]', text)):
            text = '"' + text.replace('"', '""') + '"'
        out.append(text)
    return ",".join(out) + "\r\n"
