"""`FakeURController`: RTDE (30004), dashboard (29999) and script ports (30001-30003) on one host.

ur_rtde's RTDEControlInterface, RTDEReceiveInterface and RTDEIOInterface connect to it as to a
real controller (it reports a CB3 UR5, PolyScope 3.15, so RTDE runs at 125 Hz). Use a distinct
loopback address per instance (127.0.0.2, 127.0.0.3, ...): ur_rtde always uses the standard
ports. Faults for tests and demos: `protective_stop`, `arm_protective_stop` (mid-move),
`emergency_stop`, `drop_connections`, `disconnect_network` (drop and refuse), `go_silent`
(accept but never answer). Every program start makes the installation's TCP and payload
active again (`installation_tcp_offset`, `installation_payload`), as a real controller does.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from station.twin.fake_ur import rtde_protocol as rp
from station.twin.fake_ur.listener import Listener, recv_exact
from station.twin.fake_ur.robot import CYCLE_S, RobotModel
from station.ur_modes import ROBOT_MODES, SAFETY_MODES

log = logging.getLogger("station.fake_ur")

RTDE_PORT = 30004
DASHBOARD_PORT = 29999
SCRIPT_PORTS = (30001, 30002, 30003)
ACTUAL_Q = [0.0, -1.571, 1.571, -1.571, -1.571, 0.0]  # joint space is not simulated


class _RtdeSession:
    """One RTDE client connection: recipes, start/pause, streaming, inputs."""

    def __init__(self, owner: FakeURController, conn: socket.socket) -> None:
        self.owner, self.conn, self.model = owner, conn, owner.model
        self.write_lock = threading.Lock()
        self.protocol = 1
        self.outputs: list[str] = []
        self.output_types: list[str] = []
        self.output_struct: struct.Struct | None = None
        self.frequency = 125.0
        self.inputs: dict[int, tuple[list[str], list[str], struct.Struct]] = {}
        self.started = threading.Event()
        self.closed = threading.Event()

    def send(self, kind: int, payload: bytes = b"") -> None:
        with self.write_lock:
            self.conn.sendall(rp.package(kind, payload))

    def serve(self) -> None:
        streamer = threading.Thread(target=self._stream, name="fake-ur-rtde-stream", daemon=True)
        streamer.start()
        try:
            while True:
                size, kind = rp.HEADER.unpack(recv_exact(self.conn, rp.HEADER.size))
                payload = recv_exact(self.conn, size - rp.HEADER.size)
                if self.owner.silent:
                    continue
                self._handle(kind, payload)
        finally:
            self.closed.set()
            self.owner._release_inputs(self)

    def _handle(self, kind: int, payload: bytes) -> None:
        log.debug("rtde <- %s %r", chr(kind), payload[:120])
        if kind == rp.REQUEST_PROTOCOL_VERSION:
            (version,) = struct.unpack(">H", payload[:2])
            ok = version in (1, 2)
            if ok:
                self.protocol = version
            self.send(kind, struct.pack(">B", 1 if ok else 0))
        elif kind == rp.GET_URCONTROL_VERSION:
            self.send(kind, struct.pack(">IIII", *self.owner.controller_version))
        elif kind == rp.SETUP_OUTPUTS:
            self._setup_outputs(payload)
        elif kind == rp.SETUP_INPUTS:
            self._setup_inputs(payload)
        elif kind == rp.START:
            ok = self.output_struct is not None or bool(self.inputs)
            if ok:
                self.started.set()
            self.send(kind, struct.pack(">B", 1 if ok else 0))
        elif kind == rp.PAUSE:
            self.started.clear()
            self.send(kind, struct.pack(">B", 1))
        elif kind == rp.DATA_PACKAGE:
            self._apply_input(payload)
        elif kind == rp.TEXT_MESSAGE:
            pass
        else:
            log.warning("fake UR: unknown RTDE package type %d", kind)

    def _setup_outputs(self, payload: bytes) -> None:
        if self.protocol >= 2:
            (self.frequency,) = struct.unpack(">d", payload[:8])
            names_raw = payload[8:]
        else:
            names_raw = payload
        names = [n for n in names_raw.decode("ascii", "replace").split(",") if n]
        types = [rp.OUTPUT_TYPES.get(n, "NOT_FOUND") for n in names]
        if "NOT_FOUND" in types or not names:
            missing = [n for n, t in zip(names, types, strict=True) if t == "NOT_FOUND"]
            log.warning("fake UR: output recipe has unknown variables: %s", missing)
            self.send(rp.SETUP_OUTPUTS, struct.pack(">B", 0) + ",".join(types).encode())
            return
        self.outputs, self.output_types = names, types
        self.output_struct = rp.recipe_struct(types)
        self.frequency = min(max(self.frequency, 1.0), self.owner.max_frequency)
        self.send(rp.SETUP_OUTPUTS, struct.pack(">B", 1) + ",".join(types).encode())

    def _setup_inputs(self, payload: bytes) -> None:
        names = [n for n in payload.decode("ascii", "replace").split(",") if n]
        types = [rp.INPUT_TYPES.get(n, "NOT_FOUND") for n in names]
        if "NOT_FOUND" not in types:
            types = [
                "IN_USE" if self.owner._input_owner(n, self) else t
                for n, t in zip(names, types, strict=True)
            ]
        if "NOT_FOUND" in types or "IN_USE" in types or not names:
            self.send(rp.SETUP_INPUTS, struct.pack(">B", 0) + ",".join(types).encode())
            return
        recipe_id = len(self.inputs) + 1
        self.inputs[recipe_id] = (names, types, rp.recipe_struct(types))
        self.owner._claim_inputs(names, self)
        self.send(rp.SETUP_INPUTS, struct.pack(">B", recipe_id) + ",".join(types).encode())

    def _apply_input(self, payload: bytes) -> None:
        recipe_id = payload[0]
        recipe = self.inputs.get(recipe_id)
        if recipe is None:
            log.warning("fake UR: data package for unknown input recipe %d", recipe_id)
            return
        names, types, st = recipe
        body = payload[1:]
        if len(body) != st.size:
            log.warning(
                "fake UR: input recipe %d expects %d bytes, got %d", recipe_id, st.size, len(body)
            )
            return
        values = rp.unflatten(types, st.unpack(body))
        self.model.apply_inputs(dict(zip(names, values, strict=True)))

    def _stream(self) -> None:
        next_t = time.monotonic()
        while not self.closed.is_set() and not self.owner.stopping.is_set():
            if not self.started.wait(0.05):
                next_t = time.monotonic()
                continue
            st = self.output_struct
            if st is not None and not self.owner.silent:
                values = [self.owner._output_value(n) for n in self.outputs]
                body = struct.pack(">B", 1) + st.pack(*rp.flatten(values))
                try:
                    # Never block on a client that does not read: skip the package instead.
                    _, writable, _ = select.select([], [self.conn], [], 0)
                    if writable:
                        self.send(rp.DATA_PACKAGE, body)
                except (OSError, ValueError):
                    return
            next_t += 1.0 / self.frequency
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_t = time.monotonic()


class FakeURController:
    """A protocol-level fake of a UR5 controller that ur_rtde really connects to."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        speed_scale: float = 1.0,
        controller_version: tuple[int, int, int, int] = (3, 15, 8, 106339),
        initial_tcp_pose: list[float] | None = None,
        protective_stop_unlock_delay_s: float = 5.0,
        robot_model: str = "UR5",
        serial_number: str = "2019300000",
        remote_control: bool = True,
        installation_tcp_offset: list[float] | None = None,  # metres, rotvec; default zero
        installation_payload: float = 0.0,  # kg
    ) -> None:
        self.host = host
        self.controller_version = controller_version
        self.max_frequency = 125.0 if controller_version[0] <= 3 else 500.0
        self.robot_model = robot_model
        self.serial_number = serial_number
        self.remote_control = remote_control  # e-Series pendant: local or remote control
        self.model = RobotModel(
            speed_scale=speed_scale,
            initial_tcp_pose=initial_tcp_pose,
            protective_stop_unlock_delay_s=protective_stop_unlock_delay_s,
            installation_tcp_offset=installation_tcp_offset,
            installation_payload=installation_payload,
        )
        self.silent = False
        self.stopping = threading.Event()
        self.dashboard_log: list[str] = []
        self._listeners: list[Listener] = []
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._input_owners: dict[str, _RtdeSession] = {}
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeURController:
        if self._started:
            return self
        self.stopping.clear()
        self.model.start()
        self._open_listeners()
        self._started = True
        log.info("fake UR controller listening on %s", self.host)
        return self

    def stop(self) -> None:
        if not self._started:
            return
        self.stopping.set()
        self._close_listeners()
        self.drop_connections()
        self.model.stop()
        self._started = False

    def __enter__(self) -> FakeURController:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _open_listeners(self) -> None:
        handlers: list[tuple[int, Callable[[socket.socket], None]]] = [
            (RTDE_PORT, self._serve_rtde),
            (DASHBOARD_PORT, self._serve_dashboard),
        ] + [(p, self._serve_script) for p in SCRIPT_PORTS]
        try:
            for port, handler in handlers:
                lst = Listener(self.host, port, handler, self._track, self._untrack)
                self._listeners.append(lst)
                lst.start()
        except OSError as exc:
            self._close_listeners()
            raise OSError(f"fake UR controller cannot listen on {self.host}: {exc}") from exc

    def _close_listeners(self) -> None:
        for lst in self._listeners:
            lst.close()
        self._listeners = []

    # -- connection bookkeeping ------------------------------------------------------------
    def _track(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)

    @property
    def connection_count(self) -> int:
        with self._conns_lock:
            return len(self._conns)

    def _input_owner(self, name: str, session: _RtdeSession) -> bool:
        """True when another live session already writes this input variable."""
        with self._conns_lock:
            owner = self._input_owners.get(name)
            return owner is not None and owner is not session and not owner.closed.is_set()

    def _claim_inputs(self, names: list[str], session: _RtdeSession) -> None:
        with self._conns_lock:
            for n in names:
                if not n.endswith("_mask"):
                    self._input_owners[n] = session

    def _release_inputs(self, session: _RtdeSession) -> None:
        with self._conns_lock:
            for n in [n for n, s in self._input_owners.items() if s is session]:
                del self._input_owners[n]

    # -- servers -----------------------------------------------------------------------------
    def _serve_rtde(self, conn: socket.socket) -> None:
        _RtdeSession(self, conn).serve()

    def _serve_script(self, conn: socket.socket) -> None:
        buf = ""
        while True:
            data = conn.recv(65536)
            if not data:
                return
            if self.silent:
                continue
            buf += data.decode("utf-8", "replace")
            buf = self._take_programs(buf)

    def _take_programs(self, buf: str) -> str:
        """Run every complete top-level program (def/sec ... end) found in `buf`."""
        lines = buf.split("\n")
        start = None
        consumed = 0
        for i, line in enumerate(lines[:-1]):  # the last piece may be an incomplete line
            stripped = line.rstrip()
            if start is None and (stripped.startswith("def ") or stripped.startswith("sec ")):
                start = i
            elif start is not None and stripped == "end":
                program = "\n".join(lines[start : i + 1]) + "\n"
                self.model.run_program(program)
                start = None
                consumed = i + 1
            elif start is None:
                if stripped:
                    self.model.received_scripts.append(stripped)
                    log.warning("fake UR: ignoring top-level script line %r", stripped[:80])
                consumed = i + 1
        return "\n".join(lines[consumed:])

    def _serve_dashboard(self, conn: socket.socket) -> None:
        if not self.silent:
            conn.sendall(b"Connected: Universal Robots Dashboard Server\n")
        buf = b""
        while True:
            data = conn.recv(4096)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if self.silent:
                    continue
                command = line.decode("utf-8", "replace").strip()
                reply, close = self._dashboard_reply(command)
                conn.sendall((reply + "\n").encode())
                if close:
                    return

    def _dashboard_reply(self, command: str) -> tuple[str, bool]:
        m = self.model
        self.dashboard_log.append(command)
        low = command.lower()
        prog = m.program_name
        if low == "robotmode":
            return f"Robotmode: {ROBOT_MODES.get(m.robot_mode, 'UNKNOWN')}", False
        if low == "safetymode":
            return f"Safetymode: {SAFETY_MODES.get(m.safety_mode, 'UNKNOWN')}", False
        if low == "safetystatus":
            return f"Safetystatus: {SAFETY_MODES.get(m.safety_mode, 'UNKNOWN')}", False
        if low == "running":
            return f"Program running: {'true' if m.program_running() else 'false'}", False
        if low == "programstate":
            state = "PLAYING" if m.program_running() else "STOPPED"
            return f"{state} {prog}", False
        if low == "polyscopeversion":
            major, minor, bugfix, build = self.controller_version
            return f"URSoftware {major}.{minor}.{bugfix}.{build} (Jun 20 2023)", False
        if low == "is in remote control":
            return ("true" if self.remote_control else "false"), False
        if low == "unlock protective stop":
            return m.unlock_protective_stop(), False
        if low == "close safety popup":
            return "closing safety popup", False
        if low == "close popup":
            return "closing popup", False
        if low.startswith("popup "):
            return "showing popup", False
        if low == "power on":
            m.power_on()
            return "Powering on", False
        if low == "power off":
            m.power_off()
            return "Powering off", False
        if low == "brake release":
            m.brake_release()
            return "Brake releasing", False
        if low == "restart safety":
            return "Restarting safety", False
        if low.startswith("load "):
            return f"File not found: {command[5:]}", False
        if low == "play":
            return "Failed to execute: play", False
        if low == "stop":
            m.stop_program()
            return "Stopped", False
        if low == "pause":
            return "Failed to execute: pause", False
        if low == "get loaded program":
            return "No program loaded", False
        if low == "isprogramsaved":
            return f"true {prog}", False
        if low == "get robot model":
            return self.robot_model, False
        if low == "get serial number":
            return self.serial_number, False
        if low.startswith("addtolog "):
            return "Added log message", False
        if low == "quit":
            return "Disconnected", True
        if low == "shutdown":
            return "Shutting down", False
        return f"could not understand: '{command}'", False

    # -- RTDE output values ------------------------------------------------------------------
    def _output_value(self, name: str) -> Any:
        m = self.model
        if name == "timestamp":
            return m.timestamp()
        if name in ("actual_TCP_pose", "target_TCP_pose"):
            return m.tcp_pose()
        if name in ("actual_TCP_speed", "target_TCP_speed"):
            return m.tcp_speed()
        if name in ("actual_q", "target_q"):
            return ACTUAL_Q
        if name == "robot_mode":
            return m.robot_mode
        if name in ("safety_mode", "safety_status"):
            return m.safety_mode
        if name == "safety_status_bits":
            return m.safety_status_bits()
        if name == "robot_status_bits":
            return m.robot_status_bits()
        if name == "runtime_state":
            return m.runtime_state()
        if name == "actual_digital_input_bits":
            return m.digital_in
        if name == "actual_digital_output_bits":
            return m.digital_out
        if name in ("speed_scaling", "target_speed_fraction"):
            return m.speed_slider
        if name == "payload":
            return m.payload
        if name == "payload_cog":
            return m.payload_cog
        if name.startswith("output_int_register_"):
            return m.out_int[int(name.rsplit("_", 1)[1])]
        if name.startswith("output_double_register_"):
            return m.out_double[int(name.rsplit("_", 1)[1])]
        if name.startswith("input_int_register_"):
            return m.in_int[int(name.rsplit("_", 1)[1])]
        if name.startswith("input_double_register_"):
            return m.in_double[int(name.rsplit("_", 1)[1])]
        if name == "actual_main_voltage" or name == "actual_robot_voltage":
            return 48.0
        t = rp.OUTPUT_TYPES[name]
        zero: dict[str, Any] = {
            "VECTOR6D": [0.0] * 6,
            "VECTOR3D": [0.0] * 3,
            "VECTOR6INT32": [0] * 6,
            "VECTOR6UINT32": [0] * 6,
            "DOUBLE": 0.0,
            "BOOL": False,
        }
        return zero.get(t, 0)

    # -- state for tests and operators -------------------------------------------------------
    @property
    def tcp_pose(self) -> list[float]:
        return self.model.tcp_pose()

    @property
    def program_running(self) -> bool:
        return self.model.program_running()

    @property
    def safety_mode(self) -> str:
        return SAFETY_MODES.get(self.model.safety_mode, "UNKNOWN")

    @property
    def robot_mode(self) -> str:
        return ROBOT_MODES.get(self.model.robot_mode, "UNKNOWN")

    def digital_output(self, index: int) -> bool:
        """Standard digital output `index` (0-7) as the controller drives it."""
        return bool(self.model.digital_out >> index & 1)

    def digital_input(self, index: int) -> bool:
        return bool(self.model.digital_in >> index & 1)

    def set_digital_input(self, index: int, value: bool) -> None:
        """Drive standard digital input `index` (0-7), e.g. the part-present sensor."""
        self.model.set_digital_input(index, value)

    # -- faults ------------------------------------------------------------------------------
    def protective_stop(self) -> None:
        self.model.protective_stop()

    def arm_protective_stop(self, at_fraction: float = 0.5) -> None:
        """The next linear move triggers a protective stop when it is this far along."""
        self.model.arm_protective_stop(at_fraction)

    def delay_async_report(self, seconds: float) -> None:
        """Fault: an async move reports "running" this late (a loaded controller or host)."""
        self.model.async_report_cycles = max(2, round(seconds / CYCLE_S))

    def unlock_protective_stop(self) -> str:
        return self.model.unlock_protective_stop()

    def safeguard_stop(self) -> None:
        self.model.safeguard_stop()

    def reset_safeguard(self) -> None:
        self.model.reset_safeguard()

    def emergency_stop(self) -> None:
        self.model.emergency_stop()

    def release_emergency_stop(self) -> None:
        self.model.release_emergency_stop()

    def arm_link_loss(self, kind: str = "silent") -> None:
        """The next linear move starts, then the link dies before ur_rtde sees the command
        acknowledged: "silent" (a hung controller) or "cut" (the cable pulled)."""
        faults = {"silent": self.go_silent, "cut": self.disconnect_network}
        self.model.on_next_move = faults[kind]

    def freeze_outputs(self, frozen: bool = True) -> None:
        """Ignore digital output writes (an output held by a program or a failed I/O board)."""
        self.model.outputs_frozen = frozen

    def drop_connections(self) -> None:
        """Close every client connection at once; the ports keep listening."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()

    def disconnect_network(self) -> None:
        """As if the cable were pulled: connections drop and new ones are refused."""
        self._close_listeners()
        self.drop_connections()

    def reconnect_network(self) -> None:
        if not self._listeners and self._started:
            self._open_listeners()

    def go_silent(self, silent: bool = True) -> None:
        """Accept connections and read requests but never answer or stream (a hung peer)."""
        self.silent = silent

    freeze = go_silent

    def clear_faults(self) -> None:
        self.silent = False
        self.model.outputs_frozen = False
        self.reconnect_network()
        with self.model.lock:
            self.model._armed_stop = None
            self.model.safety_mode = 1
            if self.model.robot_mode != 7:
                self.model.robot_mode = 7

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()
