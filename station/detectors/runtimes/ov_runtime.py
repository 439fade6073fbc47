"""OpenVINO: a compiled model on the device the recipe's `device` asks for.

cpu -> OpenVINO CPU; cuda / cuda:N -> OpenVINO GPU (GPU.N; OpenVINO's GPU plugin drives
Intel GPUs); auto -> GPU when OpenVINO sees one, else CPU (and says so). A device OpenVINO
does not have is an error, never a silent fall-back. Inference precision is fixed at f32 (the
CPU plugin would otherwise pick bf16 on CPUs that have it); INT8 is a separate, measured
option.

The graph's batch axis stays dynamic: compiling a static shape per batch size was measured
(PatchCore, 4 500-row bank, 1 and 2 threads, batch 1 and 8) and gave no difference beyond the
noise (docs/runtimes.md), so one compilation serves every batch size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from station.errors import DetectorError, cause

EXTRA = "pip install station[openvino]"


def openvino() -> Any:
    try:
        import openvino as ov
    except ImportError:
        raise DetectorError(
            "runtime openvino is not installed (python package openvino)", hint=EXTRA
        ) from None
    return ov


def device_for(device: str, available: list[str]) -> str:
    """The OpenVINO device name for a recipe `device`; DetectorError when it is absent."""
    spec = device.strip().lower()
    gpus = [d for d in available if d.startswith("GPU")]
    if spec == "auto":
        spec = "cuda" if gpus else "cpu"
    if spec == "cpu":
        return "CPU"
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        name = "GPU" if ":" not in spec else f"GPU.{spec[5:]}"
        if name not in available and not (name == "GPU" and gpus):
            raise DetectorError(
                f"device {device!r} on openvino needs an OpenVINO {name} device, but OpenVINO "
                f"sees only {', '.join(available) or 'none'}",
                hint="install the GPU driver OpenVINO uses, or set device: cpu",
            )
        return name
    raise DetectorError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")


class OvSession:
    """One OpenVINO IR (.xml + .bin) compiled for a device; `run(x)` -> outputs in order."""

    def __init__(self, graph: Path, device: str, threads: int) -> None:
        ov = openvino()
        core = ov.Core()
        target = device_for(device, list(core.available_devices))
        # LATENCY: one inference stream using every thread given (as torch's --threads).
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if target == "CPU":
            config["INFERENCE_NUM_THREADS"] = max(1, threads)
        try:
            self.compiled = core.compile_model(core.read_model(str(graph)), target, config)
        except Exception as exc:  # noqa: BLE001 (a graph the runtime refuses: one line)
            raise DetectorError(
                f"openvino cannot load {graph}: {cause(exc)}",
                hint="station export --format openvino again (the .xml and .bin belong together)",
            ) from None
        self.request = self.compiled.create_infer_request()
        self.on_gpu = target != "CPU"
        self.description = f"openvino {ov.__version__} {target}"
        self.cpu_note = "no GPU device"  # said by open_session when `device: auto` ran here

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        result = self.request.infer({0: x})
        # copies: the request's output buffers are reused by its next call
        return [np.array(result[o]) for o in self.compiled.outputs]
