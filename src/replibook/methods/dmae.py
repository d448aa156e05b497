r"""DMAE (Bai et al., CVPR 2023): distil a frozen MAE teacher into an MAE student during pre-training.

The student is an ordinary MAE. Its extra objective aligns its intermediate tokens with
those of a frozen, MAE-pretrained teacher that is fed the *same visible patches*::

    L = L_MAE(student) + alpha * || norm(W s_k) - norm(t_j) ||_1

- ``s_k``: the student's block-``k`` output on the visible tokens (before the final norm, CLS
  included); ``W``: a linear projection to the teacher's width; ``t_j``: the teacher's block-``j``
  output on the same tokens; ``norm``: L2 normalisation over channels (official
  ``forward_distillation_loss_embedding``); the L1 is averaged over all elements; alpha = 1.
- The teacher reuses the student's random mask (``ids_keep``) and only needs to run its first
  ``j`` blocks — the paper's efficiency argument. (The released training loop runs the teacher's
  whole encoder; `step_time` measures both.)

Streaming (the full preset, the paper's ImageNet setting): `pretrain`, `finetune` and `evaluate`
also take data loaders of uint8 images (`imagenet_data`), with ImageNet normalisation and flips on
the device, bf16 autocast on CUDA, MAE's per-iteration warm-up + cosine schedule, gradient
accumulation, and for fine-tuning layer-wise lr decay, mixup/cutmix, label smoothing and global
pooling. The teacher then is the official MAE ViT-L checkpoint (`teacher_model`).

Also here: the chapter's zoo entries (`mae_vit_digits`, an MAE-pretrained TinyViT teacher on
MNIST 5k, and `mae_vit_digits_ft`, its supervised fine-tuned copy for the logit-KD baseline),
the few-label fine-tuning protocol and the logit-KD baseline.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import runtime, zoo
from ..data.augment import random_flip
from ..losses.distill import feature, kd_kl
from ..metrics.classification import accuracy, predict
from ..models.mae import MAE, encode_visible, load_official_vit, random_masking
from ..models.vit import TinyViT, set_drop_path
from ..train import fit
from ..train.fit import History

__all__ = ["alignment_loss", "DistilledMAE", "make_student", "pretrain", "finetune",
           "step_time", "evaluate", "load_data", "TEACHER", "TEACHER_FT", "teacher_model", "prepare",
           "imagenet_data", "StreamData", "mix_batch", "random_erase", "rand_augment", "lr_at"]

TEACHER, TEACHER_FT = "mae_vit_digits", "mae_vit_digits_ft"


def alignment_loss(student_tokens: torch.Tensor, teacher_tokens: torch.Tensor, proj: nn.Module) -> torch.Tensor:
    r""":math:`\mathrm{mean}\,| \hat{W s} - \hat t |` with :math:`\hat v = v / \|v\|_2` over channels.

    ``student_tokens`` (B, T, d_s), ``teacher_tokens`` (B, T, d_t) on the same visible tokens;
    ``proj`` maps d_s -> d_t. The teacher side is detached.
    """
    s = F.normalize(proj(student_tokens), dim=-1)
    t = F.normalize(teacher_tokens.detach(), dim=-1)
    return feature(s, t, kind="l1")


class DistilledMAE(nn.Module):
    """An MAE student plus DMAE's projection and frozen teacher.

    Args:
        mae: the student `MAE`.
        teacher: a frozen `TinyViT` (MAE-pretrained), or None for the plain MAE baseline.
        student_block, teacher_block: 1-based indices of the aligned blocks (student block 3 of 4
            -> teacher block 4 of 6 at small size, as the paper aligns 9/12 -> 18/24).
        alpha: weight of the alignment term (1 in the official code).
        teacher_full: run the teacher's whole encoder every step (what the released code does)
            instead of stopping at ``teacher_block`` (the paper's design). Same loss either way.
    The teacher is not a submodule (it is never trained or saved): put it on the device first.
    ``forward(x, generator) -> (loss, parts)``.
    """

    def __init__(self, mae: MAE, teacher: TinyViT | None = None, student_block: int = 3,
                 teacher_block: int = 4, alpha: float = 1.0, teacher_full: bool = False):
        super().__init__()
        self.mae, self.alpha, self.teacher_full = mae, alpha, teacher_full
        self.student_block, self.teacher_block = student_block, teacher_block
        self.teacher = [teacher]          # a list keeps the frozen teacher out of parameters()/state_dict()
        dev = next(mae.parameters()).device          # on the student's device (the teacher is put there first)
        self.proj = nn.Linear(mae.encoder.dim, teacher.dim, device=dev) if teacher is not None else None

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        masking = random_masking(x.shape[0], self.mae.num_patches, self.mae.mask_ratio, generator, x.device)
        out = self.mae(x, masking=masking)
        parts = {"mae": out.loss.detach()}
        loss = out.loss
        teacher = self.teacher[0]
        if teacher is not None:
            with torch.no_grad():
                upto = None if self.teacher_full else self.teacher_block
                _, t_layers = encode_visible(teacher, x, masking[0], upto=upto)
            align = alignment_loss(out.layers[self.student_block - 1], t_layers[self.teacher_block - 1], self.proj)
            parts["align"] = align.detach()
            loss = loss + self.alpha * align
        return loss, parts


def make_student(seed: int, img_size: int = 16, patch: int = 4, dim: int = 48, depth: int = 4, heads: int = 4,
                 dec_dim: int = 48, dec_depth: int = 1, mask_ratio: float = 0.75, num_classes: int = 10,
                 in_chans: int = 1, mlp_ratio: float = 2.0, dec_heads: int = 4, pos: str = "learned",
                 norm_eps: float = 1e-5) -> MAE:
    """The student MAE. Defaults: the small tier's TinyViT(16 px, patch 4, d 48, 4 blocks), 1-block decoder.

    The full preset passes MAE's ViT-B/16 (224 px, d 768, 12 blocks, 12 heads, MLP ratio 4, LayerNorm
    eps 1e-6, fixed sin-cos positions) with the 512-d, 8-block, 16-head decoder (``mae_vit_base_patch16_dec512d8b``).
    """
    torch.manual_seed(seed)
    vit = TinyViT(img_size=img_size, patch=patch, in_chans=in_chans, num_classes=num_classes, dim=dim, depth=depth,
                  heads=heads, mlp_ratio=mlp_ratio, norm_kwargs={"eps": norm_eps} if norm_eps != 1e-5 else None)
    return MAE(vit, dec_dim=dec_dim, dec_depth=dec_depth, dec_heads=dec_heads, mask_ratio=mask_ratio,
               mlp_ratio=mlp_ratio, pos=pos, norm_eps=norm_eps)


def _adamw(params, lr: float, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.Optimizer:
    # the fused kernel: the same update, one pass over all parameters (a few % faster for tiny ViTs on a CPU)
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)


# --------------------------------------------------------------------------- streaming helpers (full preset)

def prepare(xb: torch.Tensor, device=None, flip: torch.Generator | None = None,
            augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """A uint8 batch ``(B, 3, S, S)`` -> float on ``device``, ImageNet-normalised (`data.real_imagenet`).
    With a generator, each image is first flipped left-right with probability 1/2 (MAE's random flip);
    ``augment`` (uint8 -> uint8, e.g. `rand_augment`) runs after the flip."""
    from ..data.real_imagenet import normalize, to_float
    xb = xb.to(device, non_blocking=True)
    if flip is not None:
        xb = random_flip(xb, flip)
    if augment is not None:
        xb = augment(xb)
    return normalize(to_float(xb))


_RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
             "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY")


def _rand_op(img: torch.Tensor, op: str, level: float, sign: float, fill: list[float]) -> torch.Tensor:
    """One RandAugment op on a uint8 image ``(3, H, W)`` at ``level`` in [0, 1] (timm's "increasing"
    variants: a larger level is always a stronger change)."""
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode
    bil = InterpolationMode.BILINEAR
    h, w = img.shape[-2:]
    if op == "AutoContrast":
        return TF.autocontrast(img)
    if op == "Equalize":
        return TF.equalize(img)
    if op == "Invert":
        return TF.invert(img)
    if op == "Rotate":
        return TF.rotate(img, sign * 30.0 * level, interpolation=bil, fill=fill)
    if op == "Posterize":                               # keep the top 4 - 4 level bits
        bits = max(4 - int(level * 4), 0)
        return img & (0xFF ^ (2 ** (8 - bits) - 1))
    if op == "Solarize":                                # invert pixels at or above the threshold
        return torch.where(img.int() >= 256 - int(level * 256), 255 - img, img)
    if op == "SolarizeAdd":
        add = int(level * 110)
        return torch.where(img < 128, (img.int() + add).clamp(max=255).to(img.dtype), img)
    if op in ("Color", "Contrast", "Brightness", "Sharpness"):
        factor = max(0.1, 1.0 + sign * 0.9 * level)
        fn = {"Color": TF.adjust_saturation, "Contrast": TF.adjust_contrast, "Brightness": TF.adjust_brightness,
              "Sharpness": TF.adjust_sharpness}[op]
        return fn(img, factor)
    if op in ("ShearX", "ShearY"):
        deg = math.degrees(math.atan(sign * 0.3 * level))
        shear = [deg, 0.0] if op == "ShearX" else [0.0, deg]
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=bil, fill=fill)
    if op in ("TranslateX", "TranslateY"):
        shift = sign * 0.45 * level
        tr = [int(round(shift * w)), 0] if op == "TranslateX" else [0, int(round(shift * h))]
        return TF.affine(img, angle=0.0, translate=tr, scale=1.0, shear=[0.0, 0.0], interpolation=bil, fill=fill)
    raise ValueError(f"unknown RandAugment op {op!r}")


def rand_augment(x: torch.Tensor, generator: torch.Generator, n: int = 2, magnitude: float = 9.0,
                 mstd: float = 0.5, p: float = 0.5) -> torch.Tensor:
    """timm's ``rand-m9-mstd0.5-inc1`` RandAugment (Cubuk et al. 2020) on a uint8 batch ``(B, 3, H, W)``,
    on its device, per image: ``n`` ops drawn with replacement from the 15 "increasing" ops, each
    applied with probability ``p`` at magnitude ~ N(``magnitude``, ``mstd``) clipped to [0, 10], with a
    random sign for signed ops; geometric ops fill with the ImageNet mean colour. Differences from timm:
    bilinear resampling (timm: bicubic) and shears about the image centre (PIL: the corner)."""
    fill = [124.0, 116.0, 104.0]
    out = x.clone()
    for i in range(x.shape[0]):
        img = out[i]
        ops = torch.randint(0, len(_RAND_OPS), (n,), generator=generator).tolist()
        u = torch.rand(n, 2, generator=generator).tolist()
        mags = (magnitude + mstd * torch.randn(n, generator=generator)).clamp(0.0, 10.0).tolist()
        for k in range(n):
            if u[k][0] >= p:
                continue
            img = _rand_op(img, _RAND_OPS[ops[k]], mags[k] / 10.0, -1.0 if u[k][1] < 0.5 else 1.0, fill)
        out[i] = img
    return out


def lr_at(epoch: float, lr: float, warmup_epochs: float, epochs: float, min_lr: float = 0.0) -> float:
    """MAE's schedule (util/lr_sched.py), per iteration: linear warm-up over ``warmup_epochs``, then a
    half-cycle cosine from ``lr`` to ``min_lr`` at ``epochs``; ``epoch`` is fractional."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span))


def _no_decay(name: str, p: torch.Tensor, skip: Iterable[str] = ()) -> bool:
    # timm's add_weight_decay / MAE's lr_decay: no decay for biases, norms (1-D) and named embeddings
    return p.ndim <= 1 or name.endswith(".bias") or name in tuple(skip)


def _wd_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if not _no_decay(n, p)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if _no_decay(n, p)], "weight_decay": 0.0}]


def _layer_decay_groups(vit: TinyViT, weight_decay: float, layer_decay: float) -> list[dict]:
    """BEiT/MAE layer-wise lr decay: embeddings are layer 0, block i is layer i + 1, the rest (final
    norms, head) layer depth + 1; a group's lr is scaled by ``layer_decay ** (depth + 1 - layer)``.
    No weight decay for biases, norms, ``pos_embed`` and ``cls_token`` (MAE's ``no_weight_decay``)."""
    depth = len(vit.encoder.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in vit.named_parameters():
        if not p.requires_grad:
            continue
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
            layer = 0
        elif name.startswith("encoder.blocks."):
            layer = int(name.split(".")[2]) + 1
        else:
            layer = depth + 1
        nd = _no_decay(name, p, ("cls_token", "pos_embed"))
        g = groups.setdefault((layer, nd), {"params": [], "weight_decay": 0.0 if nd else weight_decay,
                                            "lr_scale": layer_decay ** (depth + 1 - layer)})
        g["params"].append(p)
    return list(groups.values())


def _epoch_loaders(data) -> Callable[[int], Iterable]:
    """A loader factory ``epoch -> iterable of (x uint8, y)``: ``data`` itself when it is one
    (``imagenet_loader(..., epoch=e)`` reshuffles per epoch), else the same loader every epoch."""
    if callable(data) and not hasattr(data, "__iter__"):
        return data
    return lambda epoch: data


def _stream_train(model: nn.Module, loaders: Callable[[int], Iterable], step_loss: Callable, opt, *,
                  epochs: float, lr: float, warmup_epochs: float, min_lr: float, accum: int,
                  max_steps: int | None, clip: float | None, progress: bool, desc: str | None) -> History:
    """The loop of MAE's ``train_one_epoch``: per-iteration lr, bf16 autocast on CUDA, gradient
    accumulation over ``accum`` loader batches; ``max_steps`` stops early (tests, pilots)."""
    dev = next(model.parameters()).device
    hist, t0, updates, running, count = History(), time.perf_counter(), 0, 0.0, 0
    model.train()
    n_epochs = int(math.ceil(epochs))
    done = False
    for epoch in range(n_epochs):
        loader = loaders(epoch)
        n_iter = len(loader)
        opt.zero_grad(set_to_none=True)          # as MAE: a ragged accumulation tail is dropped
        for i, batch in enumerate(loader):
            frac = epoch + i / n_iter
            if frac >= epochs:
                break
            if i % accum == 0:
                for g in opt.param_groups:
                    g["lr"] = lr_at(frac, lr, warmup_epochs, epochs, min_lr) * g.get("lr_scale", 1.0)
            with runtime.autocast(dev):
                loss = step_loss(*batch)
            (loss / accum).backward()
            running += float(loss.detach())
            count += 1
            if (i + 1) % accum == 0:
                if clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                updates += 1
                if progress and updates % 50 == 0:
                    print(f"{desc or 'train'}: epoch {frac:.2f}, update {updates}, loss {running / count:.4f}",
                          flush=True)
                if max_steps is not None and updates >= max_steps:
                    done = True
                    break
        hist.append(updates, running / max(count, 1), {})
        running, count = 0.0, 0
        if done:
            break
    opt.zero_grad(set_to_none=True)
    model.eval()
    hist.wall_s = time.perf_counter() - t0
    return hist


def pretrain(model: DistilledMAE, x, *, steps: int | None = None, batch_size: int = 128, lr: float = 1e-3,
             weight_decay: float = 0.05, seed: int = 0, progress: bool = False, desc: str | None = None,
             epochs: float | None = None, warmup_epochs: float = 0.0, accum: int = 1,
             max_steps: int | None = None) -> History:
    """MAE (or DMAE, when ``model`` has a teacher) pre-training with AdamW (betas 0.9/0.95, as MAE).

    ``x`` a tensor: ``steps`` updates of ``batch_size`` with cosine decay (through `train.fit`).
    ``x`` a loader (or ``epoch -> loader``) of uint8 images: the official recipe — ``epochs`` passes,
    linear warm-up for ``warmup_epochs`` then half-cycle cosine (per iteration), ``accum`` loader
    batches per update, no weight decay on biases and norms, random flips and ImageNet
    normalisation on the device, bf16 autocast on CUDA. Returns a `History` (``wall_s``).
    """
    gen = torch.Generator().manual_seed(seed + 17)
    if isinstance(x, torch.Tensor):
        if steps is None:
            raise ValueError("pretrain on a tensor needs steps")
        opt = _adamw([p for p in model.parameters() if p.requires_grad], lr, weight_decay)
        return fit(model, (x,), steps=steps, batch_size=batch_size, opt=opt, schedule="cosine", seed=seed,
                   loss_fn=lambda m, xb: m(xb, gen)[0], progress=progress, desc=desc)
    if epochs is None:
        raise ValueError("pretrain on a loader needs epochs")
    dev = next(model.parameters()).device
    flip = torch.Generator().manual_seed(seed + 23)
    opt = _adamw(_wd_groups(model, weight_decay), lr, weight_decay)
    return _stream_train(model, _epoch_loaders(x), lambda xb, yb: model(prepare(xb, dev, flip), gen)[0], opt,
                         epochs=epochs, lr=lr, warmup_epochs=warmup_epochs, min_lr=0.0, accum=accum,
                         max_steps=max_steps, clip=None, progress=progress, desc=desc)


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, mixup: float = 0.0, cutmix: float = 0.0,
              smoothing: float = 0.0, switch_prob: float = 0.5, generator: torch.Generator | None = None):
    """timm's batch-mode Mixup/CutMix with label smoothing: ``(x', soft targets (B, C))``.

    The batch is mixed with its reverse. With both alphas > 0, CutMix is used with probability
    ``switch_prob``. lambda ~ Beta(alpha, alpha); CutMix pastes a box of area (1 - lambda) (clipped at
    the border, lambda corrected to the pasted area). Targets: ``lam * smooth(y) + (1 - lam) * smooth(y
    reversed)`` with ``smooth`` = ``1 - s + s / C`` on the label and ``s / C`` elsewhere.
    """
    off = smoothing / num_classes
    onehot = torch.full((len(y), num_classes), off, device=x.device)
    onehot.scatter_(1, y.view(-1, 1).to(x.device), 1.0 - smoothing + off)
    if mixup <= 0 and cutmix <= 0:
        return x, onehot
    u = torch.rand(3, generator=generator).tolist()
    use_cut = cutmix > 0 and (mixup <= 0 or u[0] < switch_prob)
    alpha = cutmix if use_cut else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if generator is None else float(
        np.random.default_rng(int(torch.randint(0, 2 ** 31, (1,), generator=generator))).beta(alpha, alpha))
    if use_cut:
        h, w = x.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch_, cw_ = int(h * cut), int(w * cut)
        cy, cx = int(u[1] * h), int(u[2] * w)
        y0, y1 = max(cy - ch_ // 2, 0), min(cy + ch_ // 2, h)
        x0, x1 = max(cx - cw_ // 2, 0), min(cx + cw_ // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
        x = lam * x + (1.0 - lam) * x.flip(0)
    return x, lam * onehot + (1.0 - lam) * onehot.flip(0)


def random_erase(x: torch.Tensor, p: float, generator: torch.Generator, area=(0.02, 1 / 3),
                 log_ratio=(math.log(0.3), math.log(1 / 0.3)), attempts: int = 10) -> torch.Tensor:
    """timm's RandomErasing (Zhong et al. 2020), ``mode="pixel"``, on a normalised batch: each image, with
    probability ``p``, gets one rectangle of area fraction in ``area`` and log aspect ratio in ``log_ratio``
    (up to ``attempts`` draws to fit) filled with per-pixel standard normal noise."""
    if p <= 0:
        return x
    x = x.clone()
    b, c, h, w = x.shape
    for i in range(b):
        if float(torch.rand(1, generator=generator)) >= p:
            continue
        for _ in range(attempts):
            u = torch.rand(4, generator=generator).tolist()
            target = (area[0] + u[0] * (area[1] - area[0])) * h * w
            ratio = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
            eh, ew = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
            if 0 < eh < h and 0 < ew < w:
                top, left = int(u[2] * (h - eh + 1)), int(u[3] * (w - ew + 1))
                noise = torch.randn(c, eh, ew, generator=generator).to(x.device, x.dtype)
                x[i, :, top:top + eh, left:left + ew] = noise
                break
    return x


def _use_global_pool(vit: TinyViT, eps: float = 1e-6) -> None:
    """MAE fine-tuning's classifier: mean of the patch tokens' block outputs, then a fresh LayerNorm
    (``fc_norm``); the encoder's final norm is dropped (timm ``global_pool="avg"``)."""
    vit.pool = "mean"
    vit.encoder.norm = nn.Identity()
    vit.encoder._mask_norm = False
    vit.fc_norm = nn.LayerNorm(vit.dim, eps=eps).to(vit.cls_token.device if vit.cls_token is not None
                                                     else next(vit.parameters()).device)


def finetune(vit: TinyViT, x, y: torch.Tensor | None = None, *, epochs: float, lr: float = 1e-3,
             batch_size: int = 100, weight_decay: float = 0.05, seed: int = 0,
             kd_logits: torch.Tensor | None = None, kd_T: float = 1.0, head: nn.Linear | None = None,
             **stream: Any):
    """End-to-end fine-tuning of a pre-trained encoder (in place), from ``head`` or a fresh linear head.

    ``head``: a starting head, e.g. the linear probe (`train.probes.linear_head`: LP-FT, Kumar
    et al. 2022), so that a short fine-tune starts where the probe ends. ``epochs`` of AdamW on
    cross-entropy over ``(x, y)``. With ``kd_logits`` (a fine-tuned
    teacher's cached logits on the same ``x``) every batch also minimises ``kd_kl`` at
    temperature ``kd_T``: the paper's baseline of distilling a *fine-tuned* teacher during
    fine-tuning. Both variants take the same number of updates.

    ``x`` a loader (or ``epoch -> loader``): see `_finetune_stream` (``stream`` holds its options).
    """
    if not isinstance(x, torch.Tensor):
        return _finetune_stream(vit, x, epochs=epochs, lr=lr, weight_decay=weight_decay, seed=seed, kd_T=kd_T,
                                **stream)
    if stream:
        raise TypeError(f"options {sorted(stream)} apply to loaders only")
    torch.manual_seed(seed + 5)
    vit.head = (copy.deepcopy(head) if head is not None else nn.Linear(vit.dim, int(y.max()) + 1)).to(x.device)
    vit.requires_grad_(True)
    steps = max(1, int(round(epochs * len(x) / batch_size)))
    opt = _adamw(vit.parameters(), lr, weight_decay)
    if kd_logits is None:
        fit(vit, (x, y), steps=steps, batch_size=batch_size, opt=opt, schedule="cosine", seed=seed, progress=False)
    else:
        def loss_fn(m, xb, yb, zb):
            logits = m(xb)
            return F.cross_entropy(logits, yb) + kd_kl(logits, zb, T=kd_T)

        fit(vit, (x, y, kd_logits), steps=steps, batch_size=batch_size, opt=opt, loss_fn=loss_fn,
            schedule="cosine", seed=seed, progress=False)
    vit.eval()
    return vit


def _finetune_stream(vit: TinyViT, data, *, epochs: float, num_classes: int, lr: float, weight_decay: float,
                     seed: int, kd_T: float = 1.0, kd_teacher: nn.Module | None = None, layer_decay: float = 1.0,
                     warmup_epochs: float = 0.0, min_lr: float = 0.0, smoothing: float = 0.0, mixup: float = 0.0,
                     cutmix: float = 0.0, reprob: float = 0.0, drop_path: float = 0.0, randaug: bool = False,
                     global_pool: bool = True,
                     accum: int = 1, clip: float | None = None,
                     betas=(0.9, 0.999), max_steps: int | None = None, progress: bool = False,
                     desc: str | None = None) -> TinyViT:
    """MAE's end-to-end fine-tuning recipe on a loader (official ``main_finetune.py``): a new head
    (truncated normal, std 2e-5) on global-pooled features (``global_pool``), AdamW with layer-wise lr
    decay, warm-up + cosine to ``min_lr`` per iteration, stochastic depth rising to ``drop_path``,
    flips, RandAugment (``randaug``: `rand_augment`) and random erasing (``reprob``) on the device,
    Mixup/CutMix with label smoothing (soft-target cross-entropy), bf16 autocast on CUDA. With
    ``kd_teacher`` (a fine-tuned classifier) every batch adds ``kd_kl`` at ``kd_T`` towards its logits
    on the same mixed images: the logit-distillation baseline.
    """
    dev = next(vit.parameters()).device
    torch.manual_seed(seed + 5)
    if global_pool:
        _use_global_pool(vit)
    vit.head = nn.Linear(vit.dim, num_classes).to(dev)
    nn.init.trunc_normal_(vit.head.weight, std=2e-5)
    nn.init.zeros_(vit.head.bias)
    vit.requires_grad_(True)
    set_drop_path(vit, drop_path)
    opt = _adamw(_layer_decay_groups(vit, weight_decay, layer_decay), lr, weight_decay, betas=betas)
    flip = torch.Generator().manual_seed(seed + 29)
    erase = torch.Generator().manual_seed(seed + 37)
    ra_gen = torch.Generator().manual_seed(seed + 41)
    augment = (lambda xb: rand_augment(xb, ra_gen)) if randaug else None
    mixgen = torch.Generator().manual_seed(seed + 31)
    if kd_teacher is not None:
        kd_teacher.eval().requires_grad_(False)

    def step_loss(xb, yb):
        xe = random_erase(prepare(xb, dev, flip, augment), reprob, erase)
        xm, target = mix_batch(xe, yb.to(dev), num_classes, mixup=mixup, cutmix=cutmix, smoothing=smoothing,
                               generator=mixgen)
        logits = vit(xm)
        loss = torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        if kd_teacher is not None:
            with torch.no_grad():
                t_logits = kd_teacher(xm)
            loss = loss + kd_kl(logits.float(), t_logits.float(), T=kd_T)
        return loss

    _stream_train(vit, _epoch_loaders(data), step_loss, opt, epochs=epochs, lr=lr, warmup_epochs=warmup_epochs,
                  min_lr=min_lr, accum=accum, max_steps=max_steps, clip=clip, progress=progress, desc=desc)
    set_drop_path(vit, 0.0)
    vit.eval()
    return vit


def step_time(model: DistilledMAE, x: torch.Tensor, steps: int = 10, batch_size: int = 128, warmup: int = 2,
              seed: int = 0, amp: bool = False) -> float:
    """Median seconds per pre-training update (forward, backward, AdamW step) on batches of ``x``
    (``amp``: under `runtime.autocast`, bf16 on CUDA)."""
    gen = torch.Generator().manual_seed(seed)
    model.to(x.device)
    opt = _adamw([p for p in model.parameters() if p.requires_grad], 1e-4, 0.0)
    times = []
    model.train()
    for i in range(warmup + steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=gen).to(x.device)
        t0 = time.perf_counter()
        with (runtime.autocast(x.device) if amp else torch.autocast("cpu", enabled=False)):
            loss, _ = model(x[idx], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    model.eval()
    return float(np.median(times))


def evaluate(vit: TinyViT, x, y: torch.Tensor | None = None) -> float:
    """Top-1 accuracy on tensors ``(x, y)``, or over a loader of uint8 images (ImageNet-normalised,
    bf16 autocast on CUDA)."""
    if isinstance(x, torch.Tensor):
        return accuracy(predict(vit, x), y)
    dev = next(vit.parameters()).device
    vit.eval()
    correct, total = 0, 0
    with torch.no_grad(), runtime.autocast(dev):
        for xb, yb in x:
            pred = vit(prepare(xb, dev)).argmax(-1).cpu()
            correct += int((pred == yb).sum())
            total += len(yb)
    return correct / max(total, 1)


# --------------------------------------------------------------------------- the full preset's data and teachers

@dataclass
class StreamData:
    """ImageNet as loaders: ``pretrain(epoch)``, ``finetune(epoch)`` (random resized crops), ``val``
    (resize + centre crop), ``x_timing`` (one uint8 batch for `step_time`)."""
    name: str
    source: str
    num_classes: int
    n_train: int
    n_val: int
    pretrain: Callable[[int], Any]
    finetune: Callable[[int], Any]
    val: Any
    info: dict = field(default_factory=dict)

    def card(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "n_train": self.n_train, "n_test": self.n_val,
                "num_classes": self.num_classes, "info": self.info}

    def timing_batch(self, n: int) -> torch.Tensor:
        xb, _ = next(iter(self.pretrain(0)))
        return xb[:n]


def imagenet_data(*, classes=None, size: int = 224, batch_size: int = 256, ft_batch_size: int = 256,
                  pretrain_crop=(0.2, 1.0), finetune_crop=(0.08, 1.0), workers: int | None = None, seed: int = 0,
                  max_per_class: int | None = None, root=None) -> StreamData:
    """ImageNet (``<root or $REPLIBOOK_DATA>/imagenet/{train,val}/<wnid>/*.JPEG``) as loaders, through
    `replibook.data.real_imagenet`: MAE pre-training crops (scale 0.2-1), fine-tuning crops
    (0.08-1, as timm's training transform), evaluation resize to 256/224 of ``size`` + centre crop."""
    from ..data import real_imagenet as IN
    _, y_tr, names = IN.imagenet_files("train", classes=classes, root=root, max_per_class=max_per_class, seed=seed)
    _, y_val, _ = IN.imagenet_files("val", classes=classes, root=root, seed=seed)
    common = dict(classes=classes, size=size, workers=workers, seed=seed, root=root)

    def pre(epoch: int):
        return IN.imagenet_loader("train", batch_size=batch_size, crop_scale=pretrain_crop, shuffle=True,
                                  drop_last=True, epoch=epoch, max_per_class=max_per_class, **common)

    def ft(epoch: int):
        return IN.imagenet_loader("train", batch_size=ft_batch_size, crop_scale=finetune_crop, shuffle=True,
                                  drop_last=True, epoch=epoch, max_per_class=max_per_class, **common)

    val = IN.imagenet_loader("val", batch_size=ft_batch_size, crop_scale=None, shuffle=False, drop_last=False,
                             **common)
    label = "ImageNet-1k" if classes is None else (f"ImageNet-{len(names)}" if not isinstance(classes, str)
                                                   else f"ImageNet ({classes})")
    return StreamData(label, "REPLIBOOK_DATA/imagenet (user-provided)", len(names), len(y_tr), len(y_val), pre,
                      ft, val, {"size": size, "classes": classes if isinstance(classes, (str, type(None)))
                                else len(names), "max_per_class": max_per_class})


def teacher_model(spec: dict[str, Any], device=None) -> TinyViT:
    """A frozen teacher from an official MAE checkpoint: ``spec = {"checkpoint": file name under
    $REPLIBOOK_DATA/mae/ or a path, "heads": ...}`` (`models.mae.load_official_vit`)."""
    vit = load_official_vit(spec["checkpoint"], heads=spec.get("heads"), root=spec.get("root"))
    return vit.to(device).eval().requires_grad_(False)


# --------------------------------------------------------------------------- zoo: the MAE teacher and its fine-tuned copy

_TEACHER_CONFIG = {"data": "mnist5k", "size": 16, "split": [4000, 1000], "data_seed": 0, "patch": 4, "dim": 128,
                   "depth": 6, "heads": 4, "dec_dim": 64, "dec_depth": 2, "mask_ratio": 0.75, "steps": 1000,
                   "batch_size": 128, "lr": 1.5e-3, "weight_decay": 0.05, "seed": 0}
_FT_CONFIG = {"teacher": dict(_TEACHER_CONFIG), "epochs": 10, "lr": 5e-4, "batch_size": 128, "weight_decay": 0.05,
              "seed": 0}


def _teacher_arch(cfg: dict[str, Any]) -> TinyViT:
    return TinyViT(img_size=cfg["size"], patch=cfg["patch"], in_chans=1, num_classes=10, dim=cfg["dim"],
                   depth=cfg["depth"], heads=cfg["heads"])


def load_data(name: str, size: int, split: Sequence[int] | None, seed: int = 0, device=None):
    """The chapter's datasets: ``"digits"`` (smoke), ``"mnist5k"`` (small), ``"mnist"`` (full; real MNIST
    through `data.real`, resized to ``size``)."""
    from ..data import bundled, real
    if name == "digits":
        return bundled.digits(size=size, split=tuple(split), seed=seed, device=device)
    if name == "mnist5k":
        return bundled.mnist5k(size=size, split=tuple(split), seed=seed, device=device)
    if name == "mnist":
        data = real.mnist(seed=seed, device=device)
        if size != data.train.x.shape[-1]:
            for part in (data.train, data.test):
                part.x = F.interpolate(part.x, size=(size, size), mode="bilinear", align_corners=False,
                                       antialias=True)
        return data
    raise ValueError(f"unknown dataset {name!r}; known: digits, mnist5k, mnist")


def _data(cfg: dict[str, Any]):
    return load_data(cfg["data"], cfg["size"], cfg.get("split"), cfg["data_seed"])


@zoo.register(TEACHER, config=_TEACHER_CONFIG, arch=_teacher_arch, card={
    "summary": "MAE-pretrained TinyViT on MNIST 5k at 16 px (the DMAE teacher, ch. 66; a stand-in for "
               "the official MAE ViT-L)",
    "architecture": "TinyViT(16 px, patch 4, d 128, 6 blocks, 4 heads, CLS); MAE decoder d 64, 2 blocks "
                    "(discarded); head untrained",
    "trained_on": "replibook.data.bundled.mnist5k(size=16, split=(4000, 1000)) train split, no labels",
    "training": "MAE, mask 0.75, norm-pix loss, AdamW (0.9, 0.95) lr 1.5e-3 wd 0.05, cosine, 1000 updates "
                "of 128",
    "cpu_time_estimate": "about 3-4 min on one CPU thread (est.)",
    "chapters": [66, 8],
})
def _train_teacher(cfg: dict[str, Any], progress: bool = True):
    data = _data(cfg)
    torch.manual_seed(cfg["seed"])
    mae = MAE(_teacher_arch(cfg), dec_dim=cfg["dec_dim"], dec_depth=cfg["dec_depth"], mask_ratio=cfg["mask_ratio"])
    model = DistilledMAE(mae)
    hist = pretrain(model, data.train.x, steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                    weight_decay=cfg["weight_decay"], seed=cfg["seed"], progress=progress, desc=f"zoo: {TEACHER}")
    with torch.no_grad():
        gen = torch.Generator().manual_seed(123)
        test_loss = float(model(data.test.x[:500], gen)[0])
    return mae.encoder, {"test_mae_loss": test_loss, "wall_s": hist.wall_s, "data_source": data.source}


def _finetune_teacher(vit: TinyViT, x: torch.Tensor, y: torch.Tensor, cfg: dict[str, Any]) -> None:
    # the zoo entry's recipe as first built (constant lr, head kept): not `finetune`, whose schedule
    # changed later, so that the cached teacher's config still describes how it was trained
    torch.manual_seed(cfg["seed"] + 5)
    vit.head = nn.Linear(vit.dim, int(y.max()) + 1)
    steps = cfg["epochs"] * int(np.ceil(len(x) / cfg["batch_size"]))
    fit(vit, (x, y), steps=steps, batch_size=cfg["batch_size"], opt=_adamw(vit.parameters(), cfg["lr"],
        cfg["weight_decay"]), schedule=None, seed=cfg["seed"], progress=False)
    vit.eval()


def _ft_arch(cfg: dict[str, Any]) -> TinyViT:
    return _teacher_arch(cfg["teacher"])


@zoo.register(TEACHER_FT, config=_FT_CONFIG, arch=_ft_arch, card={
    "summary": "the MAE teacher fine-tuned with labels on MNIST 5k (the logit-KD baseline's teacher, ch. 66)",
    "architecture": "as mae_vit_digits, with a trained linear head",
    "trained_on": "mnist5k(size=16) train split, all 4000 labels",
    "training": "end-to-end fine-tuning from mae_vit_digits, AdamW lr 5e-4 wd 0.05, 10 epochs of batch 128",
    "cpu_time_estimate": "about 30 s on 2 CPU cores (est.)",
    "chapters": [66],
})
def _train_teacher_ft(cfg: dict[str, Any], progress: bool = True):
    data = _data(cfg["teacher"])
    vit = zoo.load(TEACHER, cfg=cfg["teacher"], progress=progress, device="cpu")
    vit.requires_grad_(True).train()
    _finetune_teacher(vit, data.train.x, data.train.y, cfg)
    return vit, {"test_acc": evaluate(vit, data.test.x, data.test.y), "data_source": data.source}
