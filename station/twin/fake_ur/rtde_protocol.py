"""RTDE wire format: package types, variable types, and packing of values.

Follows Universal Robots' "Real-Time Data Exchange (RTDE) Guide": every package is a big-endian
header (uint16 size including the header, uint8 type) and a payload. Data values are packed
big-endian in recipe order. Only what the fake controller needs lives here.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

HEADER = struct.Struct(">HB")

# Package types (ASCII letters on the wire).
REQUEST_PROTOCOL_VERSION = ord("V")
GET_URCONTROL_VERSION = ord("v")
TEXT_MESSAGE = ord("M")
DATA_PACKAGE = ord("U")
SETUP_OUTPUTS = ord("O")
SETUP_INPUTS = ord("I")
START = ord("S")
PAUSE = ord("P")

# struct format per RTDE type
TYPE_FORMATS: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "B",
    "UINT32": "I",
    "UINT64": "Q",
    "INT32": "i",
    "DOUBLE": "d",
    "VECTOR3D": "3d",
    "VECTOR6D": "6d",
    "VECTOR6INT32": "6i",
    "VECTOR6UINT32": "6I",
}


def _output_table() -> dict[str, str]:
    v6 = "VECTOR6D"
    table = {
        "timestamp": "DOUBLE",
        "target_q": v6,
        "target_qd": v6,
        "target_qdd": v6,
        "target_current": v6,
        "target_moment": v6,
        "actual_q": v6,
        "actual_qd": v6,
        "actual_current": v6,
        "actual_current_as_torque": v6,
        "joint_control_output": v6,
        "actual_TCP_pose": v6,
        "actual_TCP_speed": v6,
        "actual_TCP_force": v6,
        "target_TCP_pose": v6,
        "target_TCP_speed": v6,
        "actual_digital_input_bits": "UINT64",
        "joint_temperatures": v6,
        "actual_execution_time": "DOUBLE",
        "robot_mode": "INT32",
        "joint_mode": "VECTOR6INT32",
        "safety_mode": "INT32",
        "safety_status": "INT32",
        "actual_tool_accelerometer": "VECTOR3D",
        "speed_scaling": "DOUBLE",
        "target_speed_fraction": "DOUBLE",
        "actual_momentum": "DOUBLE",
        "actual_main_voltage": "DOUBLE",
        "actual_robot_voltage": "DOUBLE",
        "actual_robot_current": "DOUBLE",
        "actual_joint_voltage": v6,
        "actual_digital_output_bits": "UINT64",
        "runtime_state": "UINT32",
        "elbow_position": "VECTOR3D",
        "elbow_velocity": "VECTOR3D",
        "robot_status_bits": "UINT32",
        "safety_status_bits": "UINT32",
        "analog_io_types": "UINT32",
        "standard_analog_input0": "DOUBLE",
        "standard_analog_input1": "DOUBLE",
        "standard_analog_output0": "DOUBLE",
        "standard_analog_output1": "DOUBLE",
        "io_current": "DOUBLE",
        "tool_mode": "UINT32",
        "tool_analog_input_types": "UINT32",
        "tool_analog_input0": "DOUBLE",
        "tool_analog_input1": "DOUBLE",
        "tool_output_voltage": "INT32",
        "tool_output_current": "DOUBLE",
        "tool_temperature": "DOUBLE",
        "tcp_force_scalar": "DOUBLE",
        "output_bit_registers0_to_31": "UINT32",
        "output_bit_registers32_to_63": "UINT32",
        "input_bit_registers0_to_31": "UINT32",
        "input_bit_registers32_to_63": "UINT32",
        "payload": "DOUBLE",
        "payload_cog": "VECTOR3D",
        "payload_inertia": v6,
        "script_control_line": "UINT32",
        "ft_raw_wrench": v6,
        "joint_position_deviation_ratio": "DOUBLE",
        "collision_detection_ratio": "DOUBLE",
        "time_scale_source": "UINT32",
    }
    for i in range(48):
        table[f"output_int_register_{i}"] = "INT32"
        table[f"output_double_register_{i}"] = "DOUBLE"
        table[f"input_int_register_{i}"] = "INT32"
        table[f"input_double_register_{i}"] = "DOUBLE"
    for i in range(64, 128):
        table[f"output_bit_register_{i}"] = "BOOL"
        table[f"input_bit_register_{i}"] = "BOOL"
    return table


def _input_table() -> dict[str, str]:
    table = {
        "speed_slider_mask": "UINT32",
        "speed_slider_fraction": "DOUBLE",
        "standard_digital_output_mask": "UINT8",
        "standard_digital_output": "UINT8",
        "configurable_digital_output_mask": "UINT8",
        "configurable_digital_output": "UINT8",
        "tool_digital_output_mask": "UINT8",
        "tool_digital_output": "UINT8",
        "standard_analog_output_mask": "UINT8",
        "standard_analog_output_type": "UINT8",
        "standard_analog_output_0": "DOUBLE",
        "standard_analog_output_1": "DOUBLE",
        "input_bit_registers0_to_31": "UINT32",
        "input_bit_registers32_to_63": "UINT32",
        "external_force_torque": "VECTOR6D",
    }
    for i in range(48):
        table[f"input_int_register_{i}"] = "INT32"
        table[f"input_double_register_{i}"] = "DOUBLE"
    for i in range(64, 128):
        table[f"input_bit_register_{i}"] = "BOOL"
    return table


OUTPUT_TYPES = _output_table()
INPUT_TYPES = _input_table()


def recipe_struct(types: Sequence[str]) -> struct.Struct:
    """A struct that packs one data package body (after the recipe id) for these types."""
    return struct.Struct(">" + "".join(TYPE_FORMATS[t] for t in types))


def flatten(values: Sequence[Any]) -> list[Any]:
    """Vectors become their elements, in order, as struct.pack wants them."""
    flat: list[Any] = []
    for v in values:
        if isinstance(v, list | tuple):
            flat.extend(v)
        else:
            flat.append(v)
    return flat


def unflatten(types: Sequence[str], flat: Sequence[Any]) -> list[Any]:
    """The inverse of `flatten` for a recipe's types."""
    out: list[Any] = []
    i = 0
    for t in types:
        fmt = TYPE_FORMATS[t]
        n = int(fmt[:-1]) if len(fmt) > 1 else 1
        if n == 1:
            out.append(flat[i])
        else:
            out.append(list(flat[i : i + n]))
        i += n
    return out


def package(kind: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(HEADER.size + len(payload), kind) + payload
