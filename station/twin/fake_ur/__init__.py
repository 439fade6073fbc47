"""A protocol-level fake UR controller (RTDE, dashboard, script ports) that ur_rtde connects to.

See `station.twin.fake_ur.controller.FakeURController`; `station sim robot-server` runs one.
"""

from station.twin.fake_ur.controller import FakeURController

__all__ = ["FakeURController"]
