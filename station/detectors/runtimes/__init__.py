"""Deployment runtimes: trained models exported to ONNX / OpenVINO and served from them.

- `graphs`: what each detector exports (PatchCore: features, each patch's exact nearest-bank
  distance and the smoothed map, the bank a graph constant; the others: their whole scoring
  forward) and the ONNX export.
- `sidecar`: the export's files beside the artifact, its JSON sidecar and the stale checks.
- `export`: `station export` (trace, write, check against eager torch, record).
- `ort_runtime`, `ov_runtime`: sessions on ONNX Runtime / OpenVINO, `device` -> providers.
- `detector`: `RuntimeDetector` (same `predict` contract) and `load_runtime_model`, which
  `station.detectors.engine.load_models` uses for a recipe detector whose `runtime` is
  `onnxruntime` or `openvino`.
Measurements and tolerances: docs/runtimes.md.
"""
