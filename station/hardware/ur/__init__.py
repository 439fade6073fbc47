"""The UR5 link: ur_rtde in a supervised child process, behind the Robot and LineIO protocols.

`URRobot(robot_cfg)` (station.hardware.ur.robot) and `URLineIO(robot_cfg, line_cfg)`
(station.hardware.ur.line_io). ur_rtde itself is imported only in the child
(station.hardware.ur.worker), never in the station's process.
"""
