r"""Per-stage features of frozen ImageNet backbones, computed once and cached on disk.

Feature-based anomaly detectors (Rippel et al. 2020; PaDiM; PatchCore) and quality or
probing chapters read the activations of a pretrained CNN at several depths. For the
EfficientNet family (timm ``EfficientNet``: ``conv_stem``/``bn1``, seven MBConv stages in
``blocks``, ``conv_head``/``bn2``) the nine *levels* are, zero-indexed as in the official
code of Rippel et al. (``--extract_blocks 0 .. 8``):

======  ==============================  =========================
level   module                          Lite0 channels (stride)
======  ==============================  =========================
0       stem: ``bn1(conv_stem(x))``     32 (2)
1-7     ``blocks[0]`` .. ``blocks[6]``  16, 24, 40, 80, 112, 192, 320
8       head: ``bn2(conv_head(.))``     1280 (32)
======  ==============================  =========================

`stage_features` returns them (global-average pooled by default). The book's real
ImageNet backbone is zoo entry ``effnet_lite0_imagenet`` (`load_lite0`); its card records
the inputs it was trained with, :math:`(x - 0.5) / 0.5` on RGB in [0, 1] (*not* the
ImageNet mean/std), and `stage_features` applies the card's normalisation.
``pretrained=False`` gives the same architecture at timm's random initialisation (seeded),
the random-feature baseline.

`cached_features` stores any feature computation under
``$REPLIBOOK_CACHE/features/<name>-<key hash>-<data hash>.pt``, so a chapter pays for
backbone inference once per (model, settings, images).
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .. import runtime, zoo

__all__ = ["LEVEL_NAMES", "LITE0", "load_lite0", "stage_features", "data_hash", "cached_features",
           "lite0_features", "timm_features", "input_normalisation", "teacher_outputs"]

LEVEL_NAMES = ("stem", "block0", "block1", "block2", "block3", "block4", "block5", "block6", "head")
LITE0 = "effnet_lite0_imagenet"


def load_lite0(pretrained: bool = True, init_seed: int = 0, device=None) -> nn.Module:
    """The zoo's EfficientNet-Lite0: ImageNet weights, or timm's random init drawn with ``init_seed``.

    The random draw uses a forked RNG, so the caller's global random state is left alone.
    """
    if pretrained:
        return zoo.load(LITE0, device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(init_seed))
        return zoo.load(LITE0, pretrained=False, device=device)


def input_normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` the model expects on RGB in [0, 1]: from its zoo card, else timm's pretrained_cfg."""
    record = getattr(model, "zoo_record", None)
    if record is not None:
        info = zoo.card(record["name"]).get("preprocess") or {}
        if "mean" in info:
            return tuple(info["mean"]), tuple(info["std"])
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if "mean" in cfg and "std" in cfg:
        return tuple(cfg["mean"]), tuple(cfg["std"])
    return None


def _levels(stages: Sequence[int | str] | None) -> list[int]:
    if stages is None:
        return list(range(len(LEVEL_NAMES)))
    out = []
    for s in stages:
        level = LEVEL_NAMES.index(s) if isinstance(s, str) else int(s)
        if not 0 <= level < len(LEVEL_NAMES):
            raise ValueError(f"stage {s!r} is not one of 0..8 / {LEVEL_NAMES}")
        out.append(level)
    return sorted(set(out))


@torch.no_grad()
def stage_features(model: nn.Module, x: torch.Tensor, stages: Sequence[int | str] | None = None,
                   pooled: bool = True, size: int | None = None, normalize: bool = True,
                   batch_size: int = 64) -> dict[int, torch.Tensor]:
    """Outputs of the requested levels (default all nine) for images ``x (B, 3, H, W)`` in [0, 1].

    Args:
        stages: level indices 0..8 or names from `LEVEL_NAMES`.
        pooled: global-average pool each map to ``(B, C)``; else ``(B, C, h, w)`` maps.
        size: resize the images to ``size`` x ``size`` first (bilinear; antialiased when
            shrinking); None keeps them.
        normalize: apply the model's input normalisation (`input_normalisation`).
    Returns:
        ``{level: tensor}`` on ``x``'s device, float32. Inference runs in eval mode, in
        chunks of ``batch_size``, and stops after the deepest requested level.
    """
    levels = _levels(stages)
    for part in ("conv_stem", "bn1", "blocks", "conv_head", "bn2"):
        if not hasattr(model, part):
            raise TypeError(f"stage_features needs a timm EfficientNet-style model (missing .{part})")
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    norm = input_normalisation(model) if normalize else None
    deepest = max(levels)
    chunks: dict[int, list[torch.Tensor]] = {lv: [] for lv in levels}
    for start in range(0, len(x), batch_size):
        h = x[start:start + batch_size].to(dev, torch.float32)
        if size is not None and tuple(h.shape[-2:]) != (size, size):
            h = F.interpolate(h, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=size < h.shape[-1])
        if norm is not None:
            mean = torch.tensor(norm[0], device=dev).view(1, -1, 1, 1)
            std = torch.tensor(norm[1], device=dev).view(1, -1, 1, 1)
            h = (h - mean) / std
        outs = [model.bn1(model.conv_stem(h))]                              # level 0
        for block in model.blocks[:min(deepest, 7)]:                         # levels 1..7
            outs.append(block(outs[-1]))
        if deepest == 8:
            outs.append(model.bn2(model.conv_head(outs[-1])))               # level 8
        for lv in levels:
            out = outs[lv]
            chunks[lv].append((out.mean(dim=(2, 3)) if pooled else out).float().to(x.device))
    model.train(was_training)
    if len(x) == 0:
        raise ValueError("stage_features: no images")
    return {lv: torch.cat(parts) for lv, parts in chunks.items()}


def data_hash(images: torch.Tensor | np.ndarray, length: int = 16) -> str:
    """A short SHA-256 of the images' shape, dtype and values (as float32 on the CPU)."""
    arr = images.detach().to("cpu", torch.float32).contiguous().numpy() if isinstance(images, torch.Tensor) \
        else np.ascontiguousarray(images, dtype=np.float32)
    h = hashlib.sha256(f"{arr.shape}|float32|".encode())
    h.update(arr.tobytes())
    return h.hexdigest()[:length]


def _to(obj: Any, device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def cached_features(name: str, images: torch.Tensor, key: Mapping[str, Any] | str,
                    fn: Callable[[torch.Tensor], Any]) -> Any:
    """``fn(images)``, read from the cache when this (name, key, images) was computed before.

    The file is ``$REPLIBOOK_CACHE/features/<name>-<config_hash(key)>-<data_hash(images)>.pt``;
    ``key`` must name everything besides the images that changes the result (model, weights,
    levels, input size, ...). ``fn`` returns a tensor or a dict of tensors; the result comes
    back on ``images``' device. Writes are atomic (a crash never leaves a truncated file).
    """
    key = {"key": key} if isinstance(key, str) else dict(key)
    path = runtime.cache_dir("features") / f"{name}-{runtime.config_hash(key)}-{data_hash(images)}.pt"
    if path.exists():
        return _to(torch.load(path, map_location="cpu", weights_only=True), images.device)
    out = fn(images)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(_to(out, "cpu"), tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def lite0_features(images: torch.Tensor, pretrained: bool = True, init_seed: int = 0, size: int | None = 128,
                   stages: Sequence[int | str] | None = None, pooled: bool = True, cache: bool = True,
                   batch_size: int = 64, device=None) -> dict[int, torch.Tensor]:
    """`stage_features` of the zoo's Lite0 (pretrained or random init), cached by default.

    The model is loaded only when the cache misses. Returns ``{level: (N, C)}`` on
    ``images``' device.
    """
    levels = _levels(stages)
    key = {"model": LITE0, "config": zoo.config(LITE0), "pretrained": bool(pretrained),
           "init_seed": None if pretrained else int(init_seed), "size": size, "levels": levels,
           "pooled": bool(pooled), "torch": torch.__version__.split("+")[0], "timm": _timm_version()}

    def compute(x: torch.Tensor) -> dict[int, torch.Tensor]:
        model = load_lite0(pretrained=pretrained, init_seed=init_seed, device=device)
        return stage_features(model, x, stages=levels, pooled=pooled, size=size, batch_size=batch_size)

    if not cache:
        return compute(images)
    out = cached_features(f"lite0-{'imagenet' if pretrained else 'random'}", images, key, compute)
    # a cache hit still counts as using the zoo entry (the chapter's ledger lists it)
    zoo._note_used(zoo.entry_record(LITE0, pretrained=pretrained))
    return {int(k): v for k, v in out.items()}


def timm_features(model_name: str, images: torch.Tensor, size: int | None, stages: Sequence[int | str] | None = None,
                  pretrained: bool = True, init_seed: int = 0, pooled: bool = True, cache: bool = True,
                  batch_size: int = 16, device=None) -> dict[int, torch.Tensor]:
    """`stage_features` of a timm EfficientNet with timm's own pretrained weights (e.g.
    ``"tf_efficientnet_b4"``, the paper's backbone; downloaded by timm, so `full` size only),
    normalised with the model's ``pretrained_cfg`` mean/std; or its random init ``init_seed``
    (same normalisation). Cached like `lite0_features`."""
    levels = _levels(stages)
    key = {"model": f"timm:{model_name}", "pretrained": bool(pretrained),
           "init_seed": None if pretrained else int(init_seed), "size": size, "levels": levels,
           "pooled": bool(pooled), "torch": torch.__version__.split("+")[0], "timm": _timm_version()}

    def compute(x: torch.Tensor) -> dict[int, torch.Tensor]:
        import timm
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(init_seed))
            model = timm.create_model(model_name, pretrained=pretrained)
        model.to(runtime.device() if device is None else device).eval().requires_grad_(False)
        return stage_features(model, x, stages=levels, pooled=pooled, size=size, batch_size=batch_size)

    tag = "pretrained" if pretrained else "random"
    out = cached_features(f"timm-{model_name}-{tag}", images, key, compute) if cache else compute(images)
    return {int(k): v for k, v in out.items()}


def _timm_version() -> str:
    try:
        from importlib import metadata
        return metadata.version("timm")
    except Exception:   # pragma: no cover - timm missing
        return "none"


@torch.no_grad()
def _teacher_forward(model: nn.Module, x: torch.Tensor, with_features: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if with_features:
        try:
            out = model(x, return_features=True)
            if isinstance(out, tuple) and len(out) == 2:
                return out[0], out[1]
        except TypeError:
            pass
        if hasattr(model, "features"):
            return model(x), model.features(x)
        raise ValueError(f"{type(model).__name__} exposes neither forward(x, return_features=True) nor "
                         "features(x); call teacher_outputs(..., features=False)")
    return model(x), None


def teacher_outputs(name: str, x: torch.Tensor, cfg: Mapping[str, Any] | None = None, batch_size: int = 500,
                    features: bool = True, pretrained: bool = True, device=None) -> dict[str, torch.Tensor]:
    """Logits (and pooled features) of zoo model ``name`` on inputs ``x``, computed once and cached.

    Distillation chapters call this for every seed and arm; the teacher runs only on a cache
    miss. The entry's preprocessing (`zoo.preprocess`, without resizing) is applied here, so
    ``x`` is what the chapter holds: images in [0, 1] ``(N, C, H, W)`` or signals. The cache
    key is the entry name, its full config, the torch version and a hash of ``x``
    (`cached_features`).

    Returns ``{"logits": (N, K), "features": (N, D)}`` (no ``"features"`` when
    ``features=False``) on ``x``'s device. The model must return ``(logits, features)`` from
    ``forward(x, return_features=True)`` or provide ``features(x)``. ``pretrained=False`` (smoke
    runs) uses the untrained architecture with torch's current random state and is not cached.
    """
    key = {"model": name, "config": zoo.config(name, cfg), "features": bool(features),
           "torch": torch.__version__.split("+")[0]}

    def compute(inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        model = zoo.load(name, cfg, pretrained=pretrained, device=device)
        dev = next(model.parameters()).device
        logits, feats = [], []
        for i in range(0, len(inputs), batch_size):
            chunk = inputs[i:i + batch_size].to(dev)
            if chunk.dim() == 4:
                chunk = zoo.preprocess(name, chunk, resize=False)
            lo, fe = _teacher_forward(model, chunk, features)
            logits.append(lo.float().cpu())
            if fe is not None:
                feats.append(fe.float().flatten(1).cpu())
        out = {"logits": torch.cat(logits)}
        if features:
            out["features"] = torch.cat(feats)
        return out

    if not pretrained:
        return {k: v.to(x.device) for k, v in compute(x).items()}
    out = cached_features(f"teacher-{name}", x, key, compute)
    zoo._note_used(zoo.entry_record(name, zoo.config(name, cfg)))
    return {k: v.to(x.device) for k, v in out.items()}
