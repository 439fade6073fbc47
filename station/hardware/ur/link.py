"""Parent side of the supervised ur_rtde child process (`station.hardware.ur.worker`).

`URLink.call(op, timeout_s, **args)` sends one request and waits for its reply at most
`timeout_s`. When the child does not answer in time, or dies (ur_rtde aborted it), the child is
killed and the call raises the link's error class (RobotError or LineIOError) with one line
naming the controller and what failed. `start()` again gives a fresh child: that is reconnect.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import weakref
from typing import IO, Any

from station.errors import HardwareError

log = logging.getLogger("station.hardware.ur")

_EOF = object()
PARENT_ENV = "STATION_UR_PARENT_PID"
# an open_* request failed: ur_rtde could not connect to (or start its script on) the controller
CONNECT_HINT = (
    "check robot.host, the network cable, that the controller is on and in remote control, "
    "and that its RTDE port 30004 is reachable"
)
_LINKS: weakref.WeakSet[URLink] = weakref.WeakSet()


@atexit.register
def _kill_children() -> None:
    # A child blocked inside ur_rtde cannot notice that the station exited: end it here.
    for link in list(_LINKS):
        link.kill()


class URLink:
    def __init__(self, host: str, error_cls: type[HardwareError], role: str) -> None:
        self.host = host
        self.error_cls = error_cls
        self.role = role  # "robot" or "line I/O": named in messages
        self._proc: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[Any] = queue.Queue()
        self._next_id = 1
        self._lock = threading.Lock()
        _LINKS.add(self)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _fail(self, what: str, hint: str | None = None) -> HardwareError:
        return self.error_cls(f"UR {self.role} link to {self.host}: {what}", hint)

    def start(self, timeout_s: float) -> None:
        self.kill()
        env = dict(os.environ)
        # The child must import this package even when it is not installed.
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        env[PARENT_ENV] = str(os.getpid())  # the child ends itself when this process dies
        self._proc = subprocess.Popen(  # -P: never a `station` found in the current folder
            [sys.executable, "-P", "-m", "station.hardware.ur.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        self._replies = queue.Queue()
        assert self._proc.stdout is not None and self._proc.stderr is not None
        threading.Thread(
            target=self._read_replies, args=(self._proc.stdout, self._replies), daemon=True
        ).start()
        threading.Thread(target=self._drain_log, args=(self._proc.stderr,), daemon=True).start()
        self._wait_reply(0, "start", timeout_s)

    def _read_replies(self, stream: IO[str], replies: queue.Queue[Any]) -> None:
        with stream:
            for line in stream:
                try:
                    replies.put(json.loads(line))
                except json.JSONDecodeError:
                    log.debug("ur worker: unexpected output %r", line)
        replies.put(_EOF)

    def _drain_log(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                log.debug("ur_rtde[%s %s]: %s", self.role, self.host, line.rstrip())

    def _wait_reply(self, req_id: int, op: str, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                msg = self._replies.get(timeout=left) if left > 0 else self._replies.get_nowait()
            except queue.Empty:
                self.kill()
                raise self._fail(
                    f"no answer to {op} within {timeout_s:.1f} s; link closed",
                    "check that the controller is on, reachable and not hung, then reconnect",
                ) from None
            if msg is _EOF:
                try:
                    code = self._proc.wait(timeout=2) if self._proc is not None else None
                except subprocess.TimeoutExpired:
                    code = None
                self.kill()
                raise self._fail(
                    f"link process ended during {op} (exit code {code}); connection lost",
                    "check the network cable and the controller, then reconnect",
                )
            if msg.get("id") != req_id:
                continue  # a late reply to an earlier, timed-out request
            if not msg.get("ok"):
                hint = CONNECT_HINT if op.startswith("open_") else None
                raise self._fail(f"{op} failed: {msg.get('error')}", hint)
            return msg.get("result")

    def call(self, op: str, timeout_s: float, **args: Any) -> Any:
        with self._lock:
            if not self.alive:
                if self._proc is not None:  # it was started, and has ended on its own
                    code = self._proc.poll()
                    self.kill()
                    raise self._fail(
                        f"link process ended (exit code {code}); connection lost (cannot {op})",
                        "check the network cable and the controller, then reconnect",
                    )
                raise self._fail(f"not connected (cannot {op})", "connect first")
            req_id = self._next_id
            self._next_id += 1
            proc = self._proc
            assert proc is not None and proc.stdin is not None
            try:
                proc.stdin.write(json.dumps({"id": req_id, "op": op, "args": args}) + "\n")
                proc.stdin.flush()
            except OSError:
                self.kill()
                raise self._fail(f"link process is gone (cannot {op})", "reconnect") from None
            return self._wait_reply(req_id, op, timeout_s)

    def close(self, timeout_s: float = 2.0) -> None:
        if self.alive:
            try:
                self.call("close", timeout_s)
            except HardwareError as exc:
                log.debug("closing %s link: %s", self.role, exc)
        self.kill()

    def kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.warning("ur worker %d did not exit after SIGKILL", proc.pid)
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        # stdout/stderr reach EOF by themselves; their reader threads then close them.
        self._proc = None
