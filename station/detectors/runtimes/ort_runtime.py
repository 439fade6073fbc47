"""ONNX Runtime: an inference session on the providers the recipe's `device` asks for.

cpu -> CPUExecutionProvider; cuda / cuda:N -> CUDAExecutionProvider on that GPU (with
`tensorrt: true`: TensorrtExecutionProvider first, CUDA for what TensorRT does not take);
auto -> cuda when ONNX Runtime has the CUDA provider, else cpu (and says so). A provider that
is not available is an error: never a silent fall-back to the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from station.errors import DetectorError, cause

EXTRA = "pip install station[onnx]"


def ort_module() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise DetectorError(
            "runtime onnxruntime is not installed (python package onnxruntime)", hint=EXTRA
        ) from None
    return onnxruntime


def providers_for(device: str, available: list[str], tensorrt: bool = False) -> list[Any]:
    """The provider list for a recipe `device`; DetectorError when one is not available."""
    spec = device.strip().lower()
    if spec == "auto":
        spec = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if spec == "cpu":
        return ["CPUExecutionProvider"]
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        index = int(spec[5:]) if ":" in spec else 0
        wanted = ["TensorrtExecutionProvider"] if tensorrt else []
        wanted.append("CUDAExecutionProvider")
        missing = [p for p in wanted if p not in available]
        if missing:
            raise DetectorError(
                f"device {device!r} on onnxruntime needs {', '.join(missing)}, but this "
                f"onnxruntime has only {', '.join(available)}",
                hint="install onnxruntime-gpu (and CUDA / TensorRT), or set device: cpu",
            )
        # CUDA's TF32 off (on by default): its rounding moved PatchCore's maps by about 2e-3 of
        # their size, past what `station export` checks on the CPU (1e-3)
        extra = {"CUDAExecutionProvider": {"use_tf32": "0"}}
        return [(p, {"device_id": index, **extra.get(p, {})}) for p in wanted]
    raise DetectorError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")


class OrtSession:
    """One ONNX graph on ONNX Runtime; `run(x)` -> the graph's outputs in order."""

    def __init__(self, graph: Path, device: str, threads: int, tensorrt: bool = False) -> None:
        ort = ort_module()
        available = list(ort.get_available_providers())
        providers = providers_for(device, available, tensorrt)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        # No busy-waiting between calls: spinning intra-op threads took the CPU from the
        # torch steps after the graph (PatchCore's re-weighting) and from other processes
        # (docs/runtimes.md). Graph optimisation stays at ONNX Runtime's default, all levels.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(graph), opts, providers=providers)
        except Exception as exc:  # noqa: BLE001 (a graph the runtime refuses: one line)
            raise DetectorError(f"onnxruntime cannot load {graph}: {cause(exc)}",
                                hint="station export --format onnx again") from None
        used = self.session.get_providers()
        names = [p if isinstance(p, str) else p[0] for p in providers]
        if used[: len(names)] != names:  # the session dropped a provider it could not start
            raise DetectorError(
                f"onnxruntime started {', '.join(used)} instead of {', '.join(names)} for {graph}",
                hint="check the GPU driver and CUDA libraries, or set device: cpu",
            )
        self.input = self.session.get_inputs()[0].name
        self.on_gpu = names[0] != "CPUExecutionProvider"
        self.description = f"onnxruntime {ort.__version__} {names[0]}"
        self.cpu_note = "no CUDA provider"  # said by open_session when `device: auto` ran here

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(o) for o in self.session.run(None, {self.input: x})]
