"""Child process that owns the ur_rtde objects; run as `python -m station.hardware.ur.worker`.

ur_rtde can block forever while holding the GIL (a silent peer) and can abort the whole process
after a lost connection, so it never runs in the station's own process. This worker reads one
JSON request per line on stdin and writes one JSON reply per line on a private copy of stdout;
ur_rtde's own console output goes to stderr, which the parent logs. The parent enforces every
timeout and kills this process when it stops answering.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

SAFE_MODES = (1, 2)  # NORMAL, REDUCED: any other safety mode has stopped the arm
# Standard digital outputs/inputs are bits 0-7 of the RTDE digital bit fields.
RECEIVE_VARIABLES = [
    "timestamp",
    "actual_TCP_pose",
    "actual_TCP_speed",
    "robot_mode",
    "safety_mode",
    "safety_status_bits",
    "robot_status_bits",
    "actual_digital_input_bits",
    "actual_digital_output_bits",
    "payload",
    "payload_cog",
]


class Worker:
    def __init__(self) -> None:
        self.receive: Any = None
        self.control: Any = None
        self.io: Any = None

    def op_open_receive(self, host: str, frequency: float = -1.0) -> None:
        import rtde_receive

        self.receive = rtde_receive.RTDEReceiveInterface(host, frequency, RECEIVE_VARIABLES)

    def op_open_io(self, host: str) -> None:
        import rtde_io

        self.io = rtde_io.RTDEIOInterface(host)

    def op_open_control(self, host: str, frequency: float = -1.0) -> None:
        import rtde_control

        self.control = rtde_control.RTDEControlInterface(host, frequency)

    def op_state(self) -> dict[str, Any]:
        r = self.receive
        status = int(r.getRobotStatus())
        return {
            "connected": bool(r.isConnected()),
            "timestamp": float(r.getTimestamp()),
            "tcp": [float(v) for v in r.getActualTCPPose()],
            "robot_mode": int(r.getRobotMode()),
            "safety_mode": int(r.getSafetyMode()),
            "protective_stop": bool(r.isProtectiveStopped()),
            "emergency_stop": bool(r.isEmergencyStopped()),
            "program_running": bool(status & 2),
            "digital_in": int(r.getActualDigitalInputBits()),
            "digital_out": int(r.getActualDigitalOutputBits()),
            "control_connected": bool(self.control.isConnected()) if self.control else None,
        }

    def op_ensure_script(self, wait_s: float = 2.0) -> str:
        """Re-upload the control script when it is not running (a protective stop, Stop on the
        pendant): "running" (it was), "uploaded" (it runs again, with the installation's TCP
        and payload: the parent sets them again) or "stopped" (it did not start in wait_s)."""
        c = self.control
        if c.isProgramRunning():
            return "running"
        c.reuploadScript()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if c.isProgramRunning():
                return "uploaded"
            time.sleep(0.01)
        return "stopped"

    def op_set_tcp(self, offset: list[float]) -> bool:
        return bool(self.control.setTcp(offset))

    def op_set_payload(self, mass: float, cog: list[float]) -> bool:
        return bool(self.control.setPayload(mass, cog))

    def op_tcp_offset(self) -> list[float]:
        """The active TCP offset, asked of the control script (a full command round trip)."""
        return [float(v) for v in self.control.getTCPOffset()]

    def op_payload(self) -> dict[str, Any]:
        r = self.receive
        return {
            "payload": float(r.getPayload()),
            "payload_cog": [float(v) for v in r.getPayloadCog()],
        }

    def op_movel_start(self, pose: list[float], speed: float, acceleration: float) -> bool:
        """Start an async moveL; the parent polls `move_status` with short timeouts, so a call
        that blocks inside ur_rtde (a controller lost mid-command) is a dead link within them."""
        return bool(self.control.moveL(pose, speed, acceleration, True))

    def op_move_status(self) -> dict[str, Any]:
        c, r = self.control, self.receive
        stopped = r.isProtectiveStopped() or r.isEmergencyStopped()
        return {
            "progress": int(c.getAsyncOperationProgress()),  # < 0: no move running
            "tcp_speed": math.hypot(*r.getActualTCPSpeed()[:3]),  # m/s
            "stopped": bool(stopped or r.getSafetyMode() not in SAFE_MODES),
            "program_running": bool(c.isProgramRunning()),
            "connected": bool(r.isConnected()),
            "timestamp": float(r.getTimestamp()),
        }

    def op_stopl(self, acceleration: float) -> None:
        self.control.stopL(acceleration)

    def op_set_do(self, index: int, value: bool) -> bool:
        return bool(self.io.setStandardDigitalOut(index, value))

    def op_set_int_register(self, index: int, value: int) -> bool:
        return bool(self.io.setInputIntRegister(index, value))

    def op_close(self) -> None:
        # Stop the control script politely; the sockets close when this process exits.
        if self.control is not None and self.control.isProgramRunning():
            self.control.stopScript()


def die_with_parent() -> None:
    """Be killed when the station dies, even by SIGKILL (no atexit hook survives that): a
    child blocked inside ur_rtde never reads the end of its stdin. Linux only; the kernel
    signals when the thread that started this process ends, which is the station's main
    thread (links are opened there)."""
    parent = int(os.environ.get("STATION_UR_PARENT_PID", "0") or 0)
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if parent and os.getppid() != parent:  # it died before the line above took effect
        os._exit(0)


def main() -> None:
    die_with_parent()
    # Keep the reply channel to ourselves: ur_rtde prints to fd 1, so fd 1 becomes stderr.
    reply = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    worker = Worker()
    reply.write(json.dumps({"id": 0, "ok": True, "result": "ready"}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req.get("op", "")
        try:
            fn = getattr(worker, f"op_{op}")
            result = fn(**req.get("args", {}))
            msg = {"id": req["id"], "ok": True, "result": result}
        except Exception as exc:  # ur_rtde raises RuntimeError and friends; report them all
            msg = {"id": req["id"], "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        reply.write(json.dumps(msg) + "\n")
        if op == "close":
            break
    reply.flush()
    # Skip interpreter teardown: destroying ur_rtde objects after a lost link can abort.
    os._exit(0)


if __name__ == "__main__":
    main()
