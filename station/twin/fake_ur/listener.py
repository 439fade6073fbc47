"""The fake controller's TCP plumbing: a listener thread per port that serves each
connection on its own thread, and exact reads."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable

log = logging.getLogger("station.fake_ur")

Handler = Callable[[socket.socket], None]


class Listener(threading.Thread):
    """Accepts connections on `host:port` and serves each with `handler` on its own thread;
    `on_open` / `on_close` see every connection come and go (the owner's bookkeeping)."""

    def __init__(
        self, host: str, port: int, handler: Handler, on_open: Handler, on_close: Handler
    ) -> None:
        super().__init__(name=f"fake-ur-listen-{port}", daemon=True)
        self.port, self.handler = port, handler
        self.on_open, self.on_close = on_open, on_close
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.on_open(conn)
            threading.Thread(
                target=self._serve, args=(conn,), name=f"fake-ur-conn-{self.port}", daemon=True
            ).start()
        self.sock.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass
        except Exception:
            log.exception("fake UR: handler on port %d failed", self.port)
        finally:
            self.on_close(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.join(timeout=2)


def recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return buf
