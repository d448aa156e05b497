r"""Knowledge distillation with the ND loss: feature *norm* and *direction* (Wang et al., 2023).

Paper: *Improving Knowledge Distillation via Regularizing Feature Norm and Direction*,
Wang, Cheng, Duan, Wang, Feng, Kong; arXiv:2305.17007 (ECCV 2024 as "... Feature Direction and
Norm"); code: https://github.com/WangYZ1608/Knowledge-Distillation-via-ND (``CIFAR/utils.py``
``DirectNormLoss``, ``CIFAR/train_cifar_kd.py``, ``CIFAR/emb_fea_distribution.py``).

Plain KD matches the student's softened logits to the teacher's. The paper argues that the
*penultimate* features matter, but not pointwise: the teacher's class means
:math:`c_k = \frac{1}{n_k}\sum_{i:y_i=k} t(x_i)` (training set) are a strong nearest-mean
classifier, so the student feature :math:`s_i` should point along the unit class-mean
direction :math:`e_{y_i} = c_{y_i}/\lVert c_{y_i}\rVert`; and students make features of smaller
norm than teachers, while large-norm features are the informative ones. One term does both:

.. math:: L_{ND} = \frac{1}{B}\sum_i \Big(1 - \frac{\langle s_i, e_{y_i}\rangle}
                                               {\max(\lVert s_i\rVert, \lVert t_i\rVert)}\Big).

While :math:`\lVert s_i\rVert < \lVert t_i\rVert` the ratio is the projection of :math:`s_i` on
:math:`e_{y_i}` measured in units of the teacher's norm, so the loss keeps falling as the
student's feature grows along :math:`e_{y_i}`, up to the teacher's norm; beyond it the ratio is
:math:`\cos(s_i, e_{y_i})`. The KD++ objective (official ``train_cifar_kd.py``) is

.. math:: L = \mathrm{CE}(z_s, y) + \min(1, \mathrm{epoch}/W)\; T^2\,\mathrm{KL}(p_t^T \| p_s^T)
              + \beta_{ND} L_{ND},

with the KD term warmed up over :math:`W` epochs (20 of 240 on CIFAR; epoch counted from 0) and
:math:`\beta_{ND} = 2` for ResNet-56 -> ResNet-20 (README).

The exploratory arms of the paper are here too: KD + L2 matching of the per-sample teacher
feature (FitNets on the penultimate layer) and KD + the cosine to :math:`e_{y_i}` alone
(direction without norm).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..losses.distill import feature as feature_loss
from ..losses.distill import kd_kl
from ..metrics.classification import accuracy
from ..metrics.representation import feature_norms
from ..models.mlp import MLP
from ..train import fit

__all__ = [
    "ARMS", "class_means", "class_directions", "nd_loss", "direction_loss", "l2_feature_loss",
    "kd_warmup_factor", "distill_loss_fn", "model_outputs", "feature_norms", "norm_ratio",
    "cos_to_class_direction", "bootstrap_ratio_ci", "StudentRun", "train_student", "chunk_ratios",
    "fit_teacher_quick", "outputs_dict", "plot_norm_hists",
]

ARMS = ("CE", "KD", "KD+L2", "KD+cos", "KD+ND")


# --------------------------------------------------------------------------- teacher class means

def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    r"""Class means :math:`c_k` of features ``(N, D)`` with labels ``(N,)``: ``(num_classes, D)``.

    Raises if a class has no sample (its direction would be undefined).
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"need features (N, D) and labels (N,), got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}")
    counts = torch.bincount(labels, minlength=num_classes)[:num_classes]
    if (counts == 0).any():
        raise ValueError(f"classes {torch.nonzero(counts == 0).flatten().tolist()} have no sample")
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    return sums / counts[:, None].to(features.dtype)


def class_directions(means: torch.Tensor) -> torch.Tensor:
    r"""Unit class-mean directions :math:`e_k = c_k / \lVert c_k\rVert`, ``(K, D)``."""
    return means / means.norm(dim=1, keepdim=True).clamp_min(1e-12)


# --------------------------------------------------------------------------- losses

def nd_loss(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    r""":math:`L_{ND} = \frac1B\sum_i 1 - \langle s_i, e_{y_i}\rangle / \max(\lVert s_i\rVert, \lVert t_i\rVert)`.

    Args:
        s: student features ``(B, D)`` (projected to the teacher's width if they differ).
        t: teacher features ``(B, D)`` (detached: only their norms enter).
        y: labels ``(B,)``.
        directions: unit class-mean directions ``(K, D)`` (`class_directions`).
    As in the official ``DirectNormLoss``, the max is taken per sample and the gradient flows
    through whichever norm is larger (only the student's can carry one).
    """
    if s.shape != t.shape:
        raise ValueError(f"student {tuple(s.shape)} and teacher {tuple(t.shape)} features differ in shape")
    e = directions[y].to(s.dtype)                              # e_{y_i}: (B, D)
    proj = (s * e).sum(1)                                      # <s_i, e_{y_i}>
    scale = torch.maximum(s.norm(dim=1), t.detach().norm(dim=1))   # max(|s_i|, |t_i|)
    return (1.0 - proj / scale.clamp_min(1e-12)).mean()


def direction_loss(s: torch.Tensor, y: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    r"""Direction only: :math:`\frac1B\sum_i 1 - \cos(s_i, e_{y_i})` (the paper's cosine baseline)."""
    return feature_loss(s, directions[y].to(s.dtype), kind="cosine")


def l2_feature_loss(s: torch.Tensor, t: torch.Tensor, t_sq_norm: float) -> torch.Tensor:
    r"""FitNets-style matching of the penultimate feature, made scale-free:
    :math:`\frac1B\sum_i \lVert s_i - t_i\rVert^2 / \overline{\lVert t\rVert^2}`.

    ``t_sq_norm`` is the teacher's mean squared feature norm on the training set, so the term is
    about 1 for a student at zero and comparable to the ND and cosine terms (both in [0, 2]).
    """
    d = s.shape[1]
    return feature_loss(s, t, kind="l2") * d / t_sq_norm     # mean over elements * D = mean_i |s_i - t_i|^2


def kd_warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """``min(1, epoch / warmup_epochs)`` with epochs counted from 0 (official ``--warm_up``); 1 if no warm-up."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, epoch / warmup_epochs)


def distill_loss_fn(arm: str, *, directions: torch.Tensor | None = None, T: float = 4.0,
                    beta: float = 2.0, warmup_epochs: int = 0, steps_per_epoch: int = 1,
                    t_sq_norm: float = 1.0):
    """``loss_fn(model, x, y, t_logits, t_features)`` for `replibook.train.fit`, one per arm of `ARMS`.

    CE always; KD (``kd_kl`` at temperature ``T``, weight 1, warmed up over ``warmup_epochs``) in
    every arm but "CE"; plus ``beta`` times the L2, cosine or ND term. The epoch is counted from
    the number of calls (``steps_per_epoch`` updates per epoch), as fit makes one call per update.
    """
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; known: {', '.join(ARMS)}")
    if arm in ("KD+cos", "KD+ND") and directions is None:
        raise ValueError(f"arm {arm} needs the teacher's class-mean directions")
    calls = [0]

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, t_logits: torch.Tensor,
                t_feats: torch.Tensor) -> torch.Tensor:
        epoch = calls[0] // max(1, steps_per_epoch)
        calls[0] += 1
        logits, s = model(x, return_features=True)
        loss = F.cross_entropy(logits, y)
        if arm == "CE":
            return loss
        loss = loss + kd_warmup_factor(epoch, warmup_epochs) * kd_kl(logits, t_logits, T=T)
        if arm == "KD+L2":
            loss = loss + beta * l2_feature_loss(s, t_feats, t_sq_norm)
        elif arm == "KD+cos":
            loss = loss + beta * direction_loss(s, y, directions)
        elif arm == "KD+ND":
            loss = loss + beta * nd_loss(s, t_feats, y, directions)
        return loss

    return loss_fn


# --------------------------------------------------------------------------- measurements

@torch.no_grad()
def model_outputs(model: nn.Module, x: torch.Tensor, batch_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, features)`` of a model with ``forward(x, return_features=True)``, eval mode, in chunks."""
    was = model.training
    model.eval()
    outs = [model(x[i:i + batch_size], return_features=True) for i in range(0, len(x), batch_size)]
    model.train(was)
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def norm_ratio(student: torch.Tensor, teacher: torch.Tensor) -> float:
    r"""Mean student feature norm over mean teacher feature norm (features ``(N, D_s)``, ``(N, D_t)``)."""
    return float(feature_norms(student).mean() / feature_norms(teacher).mean())


def cos_to_class_direction(s: torch.Tensor, y: torch.Tensor, directions: torch.Tensor) -> float:
    r"""Mean :math:`\cos(s_i, e_{y_i})` over samples."""
    return float(F.cosine_similarity(s, directions[y].to(s.dtype), dim=1).mean())


def bootstrap_ratio_ci(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, n_boot: int = 2000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """``mean(a) / mean(b)`` with a paired percentile bootstrap interval over samples (rows of a and b)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("a and b must be 1-D arrays of equal length (one value per sample)")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    ratios = a[idx].mean(1) / b[idx].mean(1)
    lo, hi = np.quantile(ratios, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(a.mean() / b.mean()), float(lo), float(hi)


def chunk_ratios(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, n_chunks: int) -> list[float]:
    """``mean(a) / mean(b)`` on ``n_chunks`` disjoint consecutive chunks of the samples (replicates)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if n_chunks < 1 or n_chunks > len(a):
        raise ValueError(f"need 1 <= n_chunks <= {len(a)}, got {n_chunks}")
    return [float(ca.mean() / cb.mean()) for ca, cb in zip(np.array_split(a, n_chunks), np.array_split(b, n_chunks))]


# --------------------------------------------------------------------------- one student run

@dataclass
class StudentRun:
    """What one trained student gives: metrics, its test features (for figures) and the train curve."""

    arm: str
    seed: int
    metrics: dict[str, float]
    test_features: torch.Tensor
    curve: Any = field(default=None, repr=False)


def train_student(arm: str, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                  teacher_train: Mapping[str, torch.Tensor], teacher_test: Mapping[str, torch.Tensor],
                  directions: torch.Tensor, cfg: Mapping[str, Any], seed: int,
                  progress: bool = False) -> StudentRun:
    """Train one MLP student with ``arm``'s objective and measure it on the test split.

    ``cfg`` keys: ``student_hidden`` (list; the last width must equal the teacher's D), ``epochs``,
    ``batch_size``, ``lr``, ``weight_decay``, ``T``, ``beta``, ``kd_warmup_epochs``. Adam with
    cosine decay (`fit`). Metrics: ``acc`` (test), ``norm_ratio`` (mean |s| / mean |t| on test),
    ``cos_dir`` (mean cos(s_i, e_{y_i}) on test), ``s_norm``, ``t_norm``.
    """
    x_tr, y_tr = train
    x_te, y_te = test
    d_t = teacher_train["features"].shape[1]
    hidden = [int(h) for h in cfg["student_hidden"]]
    if hidden[-1] != d_t:
        raise ValueError(f"the student's penultimate width {hidden[-1]} must equal the teacher's D={d_t} "
                         "(no projector in this chapter)")
    torch.manual_seed(seed)
    model = MLP([x_tr.shape[1], *hidden, int(teacher_train["logits"].shape[1])])
    steps_per_epoch = len(x_tr) // int(cfg["batch_size"])
    t_sq = float(feature_norms(teacher_train["features"]).pow(2).mean())
    loss_fn = distill_loss_fn(arm, directions=directions, T=float(cfg["T"]), beta=float(cfg["beta"]),
                              warmup_epochs=int(cfg["kd_warmup_epochs"]), steps_per_epoch=steps_per_epoch,
                              t_sq_norm=t_sq)
    hist = fit(model, (x_tr, y_tr, teacher_train["logits"], teacher_train["features"]),
               steps=int(cfg["epochs"]) * steps_per_epoch, batch_size=int(cfg["batch_size"]),
               lr=float(cfg["lr"]), weight_decay=float(cfg.get("weight_decay", 0.0)), schedule="cosine",
               loss_fn=loss_fn, seed=seed, progress=progress, desc=f"{arm} seed {seed}")
    logits, s = model_outputs(model, x_te)
    t = teacher_test["features"]
    s_norm, t_norm = float(feature_norms(s).mean()), float(feature_norms(t).mean())
    metrics = {"acc": accuracy(logits, y_te), "norm_ratio": s_norm / t_norm,
               "cos_dir": cos_to_class_direction(s, y_te, directions), "s_norm": s_norm, "t_norm": t_norm}
    return StudentRun(arm, seed, metrics, s.detach().cpu(), hist)


# --------------------------------------------------------------------------- teachers and figures

def fit_teacher_quick(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, batch_size: int = 64,
                      lr: float = 3e-3, seed: int = 0) -> nn.Module:
    """Train an (untrained, zoo-frozen) teacher briefly with CE, then freeze it again (smoke runs only)."""
    model.requires_grad_(True)
    fit(model, (x, y), steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=False, desc="teacher")
    model.eval()
    model.requires_grad_(False)
    return model


def outputs_dict(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"logits", "features"}`` of a model on ``x`` (the shape `models.backbones.teacher_outputs` returns)."""
    logits, feats = model_outputs(model, x)
    return {"logits": logits, "features": feats}


def plot_norm_hists(ax, norms: Mapping[str, np.ndarray | torch.Tensor], title: str, bins: int = 40) -> None:
    """Overlaid histograms of per-sample feature norms, one per label, with their means as dashed lines."""
    arrays = {k: np.asarray(v, dtype=float) for k, v in norms.items()}
    hi = max(float(a.max()) for a in arrays.values())
    edges = np.linspace(0, hi * 1.02, bins + 1)
    for i, (label, a) in enumerate(arrays.items()):
        color = f"C{i}"
        ax.hist(a, bins=edges, alpha=0.45, color=color, label=f"{label} (mean {a.mean():.2f})")
        ax.axvline(a.mean(), color=color, ls="--", lw=1)
    ax.set_xlabel("feature norm ||f(x)||")
    ax.set_ylabel("test samples")
    ax.set_title(title)
    ax.legend()
