"""Running the review app with uvicorn: in the foreground (CLI) or in a thread (tests, tools)."""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Callable, Iterator

import uvicorn
from fastapi import FastAPI

from station.errors import StationError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _config(app: FastAPI, host: str, port: int, **kw: object) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        proxy_headers=False,  # never trust X-Forwarded-* from the shop network
        server_header=False,
        log_level=str(kw.pop("log_level", "info")),
        **kw,  # type: ignore[arg-type]
    )


def serve(
    app: FastAPI, host: str, port: int, on_bound: Callable[[], None] | None = None, **kw: object
) -> None:
    """Serve until Ctrl-C; a port already in use is a StationError. `on_bound` runs once the
    address is known to bind (e.g. to print where the pages are), before the server starts."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host.strip("[]"), port))
    except OSError as exc:
        busy = exc.errno in (errno.EADDRINUSE, errno.EACCES)
        raise StationError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            hint="pick another --port, or stop the program using it" if busy
            else "give --host an address of this machine, e.g. 127.0.0.1 or 0.0.0.0",
        ) from None
    if on_bound is not None:
        on_bound()
    uvicorn.Server(_config(app, host, port, **kw)).run()


@contextlib.contextmanager
def background_server(
    app: FastAPI, host: str = "127.0.0.1", port: int | None = None
) -> Iterator[str]:
    """Run `app` in a daemon thread; yields its base URL and stops it on exit."""
    port = port or free_port(host)
    server = uvicorn.Server(_config(app, host, port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("review server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
