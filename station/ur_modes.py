"""UR controller robot and safety modes, as RTDE and the dashboard report them.

Shared by the driver (to explain a refusal) and the fake controller (to answer with them).
"""

from __future__ import annotations

ROBOT_MODES = {
    -1: "NO_CONTROLLER",
    0: "DISCONNECTED",
    1: "CONFIRM_SAFETY",
    2: "BOOTING",
    3: "POWER_OFF",
    4: "POWER_ON",
    5: "IDLE",
    6: "BACKDRIVE",
    7: "RUNNING",
    8: "UPDATING_FIRMWARE",
}
POWER_OFF, IDLE, RUNNING = 3, 5, 7

SAFETY_MODES = {
    1: "NORMAL",
    2: "REDUCED",
    3: "PROTECTIVE_STOP",
    4: "RECOVERY",
    5: "SAFEGUARD_STOP",
    6: "SYSTEM_EMERGENCY_STOP",
    7: "ROBOT_EMERGENCY_STOP",
    8: "VIOLATION",
    9: "FAULT",
}
NORMAL, REDUCED, PROTECTIVE_STOP, RECOVERY, SAFEGUARD_STOP = 1, 2, 3, 4, 5
ROBOT_EMERGENCY_STOP, VIOLATION, FAULT = 7, 8, 9
