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

Also here: the chapter's zoo entries (`mae_vit_digits`, an MAE-pretrained TinyViT teacher on
MNIST 5k, and `mae_vit_digits_ft`, its supervised fine-tuned copy for the logit-KD baseline),
the few-label fine-tuning protocol and the logit-KD baseline.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import zoo
from ..losses.distill import feature, kd_kl
from ..metrics.classification import accuracy, predict
from ..models.mae import MAE, encode_visible, random_masking
from ..models.vit import TinyViT
from ..train import fit

__all__ = ["alignment_loss", "DistilledMAE", "make_student", "pretrain", "finetune",
           "step_time", "evaluate", "load_data", "TEACHER", "TEACHER_FT"]

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
        self.proj = nn.Linear(mae.encoder.dim, teacher.dim) if teacher is not None else None

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
                 dec_dim: int = 48, dec_depth: int = 1, mask_ratio: float = 0.75, num_classes: int = 10) -> MAE:
    """The small tier's student: TinyViT(16 px, patch 4, d 48, 4 blocks) in an MAE with a 1-block decoder."""
    torch.manual_seed(seed)
    vit = TinyViT(img_size=img_size, patch=patch, in_chans=1, num_classes=num_classes, dim=dim, depth=depth,
                  heads=heads)
    return MAE(vit, dec_dim=dec_dim, dec_depth=dec_depth, dec_heads=4, mask_ratio=mask_ratio)


def _adamw(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)


def pretrain(model: DistilledMAE, x: torch.Tensor, *, steps: int, batch_size: int = 128, lr: float = 1e-3,
             weight_decay: float = 0.05, seed: int = 0, progress: bool = False, desc: str | None = None):
    """MAE (or DMAE, when ``model`` has a teacher) pre-training for ``steps`` AdamW updates
    (betas 0.9/0.95, as MAE) with cosine decay. Returns fit's `History`."""
    gen = torch.Generator().manual_seed(seed + 17)
    opt = _adamw([p for p in model.parameters() if p.requires_grad], lr, weight_decay)
    return fit(model, (x,), steps=steps, batch_size=batch_size, opt=opt, schedule="cosine", seed=seed,
               loss_fn=lambda m, xb: m(xb, gen)[0], progress=progress, desc=desc)


def finetune(vit: TinyViT, x: torch.Tensor, y: torch.Tensor, *, epochs: float, lr: float = 1e-3,
             batch_size: int = 100, weight_decay: float = 0.05, seed: int = 0,
             kd_logits: torch.Tensor | None = None, kd_T: float = 1.0, head: nn.Linear | None = None):
    """End-to-end fine-tuning of a pre-trained encoder (in place), from ``head`` or a fresh linear head.

    ``head``: a starting head, e.g. the linear probe (`train.probes.linear_head`: LP-FT, Kumar
    et al. 2022), so that a short fine-tune starts where the probe ends. ``epochs`` of AdamW on
    cross-entropy over ``(x, y)``. With ``kd_logits`` (a fine-tuned
    teacher's cached logits on the same ``x``) every batch also minimises ``kd_kl`` at
    temperature ``kd_T``: the paper's baseline of distilling a *fine-tuned* teacher during
    fine-tuning. Both variants take the same number of updates.
    """
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


def step_time(model: DistilledMAE, x: torch.Tensor, steps: int = 10, batch_size: int = 128, warmup: int = 2,
              seed: int = 0) -> float:
    """Median seconds per pre-training update (forward, backward, AdamW step) on batches of ``x``."""
    gen = torch.Generator().manual_seed(seed)
    opt = _adamw([p for p in model.parameters() if p.requires_grad], 1e-4, 0.0)
    times = []
    model.train()
    for i in range(warmup + steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=gen).to(x.device)
        t0 = time.perf_counter()
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


def evaluate(vit: TinyViT, x: torch.Tensor, y: torch.Tensor) -> float:
    return accuracy(predict(vit, x), y)


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
