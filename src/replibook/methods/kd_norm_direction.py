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

The chapter's ``full`` size is the paper's CIFAR-100 ResNet-56 -> ResNet-20 experiment; its pieces
are at the end of this module: the zoo entry ``resnet56_cifar100`` (the official CIFAR ResNet
checkpoint layout, renamed into `ResNetCIFAR` with option-B shortcuts by `load_official_resnet`),
the official recipe `CIFAR100_RECIPE`, the device-side augmentation (`data.augment.random_crop_flip` with zero padding), the teacher's
class means `teacher_class_means` and the student loop `train_image_student` (bfloat16 autocast
on CUDA).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import runtime, zoo
from ..data.augment import random_crop_flip
from ..errors import DatasetMissing
from ..losses.distill import feature as feature_loss
from ..losses.distill import kd_kl
from ..metrics.classification import accuracy
from ..metrics.representation import feature_norms
from ..models.mlp import MLP
from ..models.resnet import ResNetCIFAR
from ..train import fit

__all__ = [
    "ARMS", "class_means", "class_directions", "nd_loss", "direction_loss", "l2_feature_loss",
    "kd_warmup_factor", "distill_loss_fn", "model_outputs", "feature_norms", "norm_ratio",
    "cos_to_class_direction", "bootstrap_ratio_ci", "StudentRun", "train_student", "chunk_ratios",
    "fit_teacher_quick", "outputs_dict", "plot_norm_hists", "objective",
    "CIFAR100_MEAN", "CIFAR100_STD", "CIFAR100_RECIPE", "TEACHER", "TEACHER_DIR", "official_resnet_key",
    "load_official_resnet", "official_init", "normalise", "teacher_class_means",
    "image_outputs", "lr_at", "train_image_student", "TEACHER_TRAINED",
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
        return objective(arm, logits, s, y, t_logits, t_feats, kd_weight=kd_warmup_factor(epoch, warmup_epochs),
                         directions=directions, T=T, beta=beta, t_sq_norm=t_sq_norm)

    return loss_fn


def objective(arm: str, logits: torch.Tensor, s: torch.Tensor, y: torch.Tensor, t_logits: torch.Tensor | None,
              t_feats: torch.Tensor | None, *, kd_weight: float, directions: torch.Tensor | None, T: float,
              beta: float, t_sq_norm: float = 1.0) -> torch.Tensor:
    """One arm's loss on a batch: CE, plus ``kd_weight`` times KD, plus ``beta`` times the L2 / cos / ND term."""
    loss = F.cross_entropy(logits, y)
    if arm == "CE":
        return loss
    loss = loss + kd_weight * kd_kl(logits, t_logits, T=T)
    if arm == "KD+L2":
        loss = loss + beta * l2_feature_loss(s, t_feats, t_sq_norm)
    elif arm == "KD+cos":
        loss = loss + beta * direction_loss(s, y, directions)
    elif arm == "KD+ND":
        loss = loss + beta * nd_loss(s, t_feats, y, directions)
    return loss


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
    model: nn.Module | None = field(default=None, repr=False)     # kept only when asked (zoo training)


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


# ======================================================================= full tier: CIFAR-100, ResNet-56 -> ResNet-20
#
# The official recipe (CIFAR/README.md and CIFAR/train_cifar_kd.py of the ND repository): 240 epochs;
# ``--batch_size 64`` per GPU times the default two GPUs = 128; SGD lr 0.1, momentum 0.9, Nesterov,
# weight decay 5e-4 on every parameter; lr x0.1 at the start of epochs 150, 180 and 210; KD with
# T = 4 and weight 1 warmed up by min(1, epoch / 20); ND weight 2 for ResNet-56 -> ResNet-20. Data:
# torchvision CIFAR-100, Pad(4) (zeros) + RandomCrop(32) + horizontal flip, normalised with the
# CIFAR-100 statistics below (Dataset/cifar.py of the repository's ReviewKD++ folder; the same values
# as CRD's dataset/cifar100.py, with which the teachers were trained).

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
CIFAR100_RECIPE: dict[str, Any] = dict(
    epochs=240, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
    lr_milestones=[150, 180, 210], lr_gamma=0.1, kd_warmup_epochs=20, T=4.0, beta=2.0, pad=4,
    teacher_depth=56, student_depth=20, num_classes=100)

TEACHER = "resnet56_cifar100"
TEACHER_DIR = "cifar100-teachers"
_CRD_URL = "http://shape2prog.csail.mit.edu/repo/resnet{depth}_vanilla/ckpt_epoch_240.pth"


def official_resnet_key(key: str) -> str:
    """Name of an official CIFAR ResNet parameter (ND repo ``Models/resnet_cifar.py``, identical to CRD's
    ``models/resnet.py``) in `replibook.models.resnet.ResNetCIFAR`: ``downsample`` -> ``shortcut`` and
    ``fc`` -> ``linear``; a DataParallel ``module.`` prefix is dropped. Everything else keeps its name."""
    if key.startswith("module."):
        key = key[len("module."):]
    if key.startswith("fc."):
        key = "linear." + key[len("fc."):]
    return key.replace(".downsample.", ".shortcut.")


def load_official_resnet(model: nn.Module, checkpoint: Mapping[str, Any], what: str = "checkpoint") -> str:
    """Load an official CIFAR ResNet checkpoint into a ``ResNetCIFAR(shortcut="B")``, strictly, by renamed key.

    ``checkpoint`` is the file's content: CRD's teachers (``{"model": state_dict, ...}``, which the ND
    scripts read with ``torch.load(path)["model"]``), the ND baseline trainer's
    ``{"model_state_dict": ...}`` (with ``module.``) or a bare state dict. Returns the key it read.
    """
    from ..errors import ReplibookError
    key = next((k for k in ("model", "model_state_dict", "state_dict") if k in checkpoint), None)
    state = checkpoint[key] if key is not None else checkpoint
    renamed = {official_resnet_key(k): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ReplibookError(f"{what}: not an official CIFAR ResNet of this depth (missing {missing[:4]}, "
                             f"unexpected {list(unexpected)[:4]})")
    return key or "state dict"


def _teacher_path(cfg: Mapping[str, Any]) -> Path:
    depth = int(cfg["depth"])
    rel = f"{TEACHER_DIR}/resnet{depth}_vanilla/ckpt_epoch_240.pth"
    how = (f"download CRD's CIFAR-100 teacher ({_CRD_URL.format(depth=depth)}, fetched by "
           "scripts/fetch_pretrained_teachers.sh of github.com/HobbitLong/RepDistiller; the ND code reads "
           f"its 'model' entry) to $REPLIBOOK_DATA/{rel}, or train one with the ND repository's "
           "train_cifar_baseline.py and put its checkpoint there")
    root = runtime.data_dir()
    if root is None:
        raise DatasetMissing(f"CIFAR-100 ResNet-{depth} teacher: REPLIBOOK_DATA is not set; {how}")
    path = root / rel
    if not path.is_file():
        raise DatasetMissing(f"CIFAR-100 ResNet-{depth} teacher not found at {path}; {how}")
    return path


def _teacher_arch(cfg: Mapping[str, Any]) -> nn.Module:
    return ResNetCIFAR(depth=int(cfg["depth"]), num_classes=100, width=16, shortcut="B")


@zoo.register_real(TEACHER, config={"depth": 56},
                   arch=_teacher_arch, weights_path=_teacher_path, card={
    "summary": "CIFAR-100 ResNet-56 teacher of the ND paper's ResNet-56 -> ResNet-20 pair (CRD's published "
               "'vanilla' teacher, the checkpoint layout the ND scripts read)",
    "architecture": "ResNetCIFAR(depth=56, num_classes=100, width=16, shortcut='B'): the official CIFAR "
                    "ResNet (1x1-conv + BN downsampling shortcuts), parameters renamed on load",
    "trained_on": "CIFAR-100 train (50,000 images), 240 epochs, by CRD's train_teacher.py",
    "weights": f"$REPLIBOOK_DATA/{TEACHER_DIR}/resnet56_vanilla/ckpt_epoch_240.pth (not in the repository)",
    "preprocess": {"mean": CIFAR100_MEAN, "std": CIFAR100_STD, "size": 32,
                   "note": "RGB in [0,1], then (x - mean) / std with CIFAR-100 statistics"},
    "cpu_time_estimate": "inference only; about 125 MFLOP per image",
    "chapters": [50],
})
def _load_teacher(model: nn.Module, cfg: dict[str, Any]) -> Path:
    path = _teacher_path(cfg)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:   # the ND baseline trainer / CRD's "last" files also pickle argparse options
        blob = torch.load(path, map_location="cpu", weights_only=False)
    load_official_resnet(model, blob, what=str(path))
    return path


def official_init(model: nn.Module) -> nn.Module:
    """The official student initialisation (ND ``Models/resnet_cifar.py``): Kaiming-normal (fan-out, ReLU)
    convolutions, BatchNorm weight 1 and bias 0, linear weight and bias from N(0, 0.01^2)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.normal_(m.bias, 0.0, 0.01)
    return model


def normalise(x: torch.Tensor, mean=CIFAR100_MEAN, std=CIFAR100_STD) -> torch.Tensor:
    """``(x - mean) / std`` per channel for images ``(B, 3, H, W)`` in [0, 1]."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


@torch.no_grad()
def teacher_class_means(teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, *,
                        augment: bool = True, pad: int = 4, seed: int = 0,
                        batch_size: int = 1000) -> tuple[torch.Tensor, float]:
    """Class means of the teacher's penultimate features on the training images ``x`` (in [0, 1]) and the
    mean squared feature norm (for the L2 arm), as ``(means (K, D), mean |t|^2)``.

    As the official ``emb_fea_distribution.py``, which runs the teacher (eval mode) once over the
    training set *with its training transform*: ``augment=True`` draws one pad-crop-flip per image.
    """
    gen = torch.Generator().manual_seed(seed)
    feats = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        xb = random_crop_flip(xb, pad, gen, mode="constant") if augment else xb
        feats.append(model_outputs(teacher, normalise(xb), batch_size)[1].float())
    f = torch.cat(feats)
    return class_means(f, y, num_classes), float(f.pow(2).sum(1).mean())


def _autocast(device: torch.device, amp: bool):
    import contextlib
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def image_outputs(model: nn.Module, x: torch.Tensor, *, amp: bool = False,
                  batch_size: int = 1000) -> dict[str, torch.Tensor]:
    """``{"logits", "features"}`` (float32) of a CIFAR network on images ``x`` in [0, 1] (normalised here)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    outs = []
    for i in range(0, len(x), batch_size):
        with _autocast(dev, amp):
            outs.append(model(normalise(x[i:i + batch_size]), return_features=True))
    model.train(was)
    return {"logits": torch.cat([o[0] for o in outs]).float(), "features": torch.cat([o[1] for o in outs]).float()}


def lr_at(epoch: int, cfg: Mapping[str, Any]) -> float:
    """Step schedule: ``lr * gamma^(number of milestones <= epoch)`` (epochs from 0, as the official loop)."""
    return float(cfg["lr"]) * float(cfg["lr_gamma"]) ** sum(epoch >= m for m in cfg["lr_milestones"])


def train_image_student(arm: str, data, teacher: nn.Module | None, directions: torch.Tensor | None,
                        t_sq_norm: float, teacher_test: Mapping[str, torch.Tensor] | None, cfg: Mapping[str, Any],
                        seed: int, *, progress: bool = False, keep_model: bool = False) -> StudentRun:
    """Train one CIFAR ResNet student with ``arm``'s objective (official recipe) and measure it on the test split.

    ``data`` has ``.train.x/.y`` and ``.test.x/.y`` (images in [0, 1] on the training device). Each epoch
    visits a seeded permutation in batches of ``batch_size`` (last batch partial, like a shuffling
    DataLoader); each batch is pad-crop-flipped and normalised on the device, the frozen teacher sees the
    same batch. SGD (momentum, Nesterov, weight decay on all parameters), step schedule `lr_at`, KD
    warm-up `kd_warmup_factor`; bfloat16 autocast on CUDA when ``cfg["amp"]``. ``cfg`` keys: those of
    `CIFAR100_RECIPE` plus ``amp`` and ``eval_every`` (epochs; 0 = only at the end).

    Metrics: ``acc`` (final epoch, test), ``acc_best`` (best evaluated epoch, the official scripts' "best"
    checkpoint), ``norm_ratio``, ``cos_dir``, ``s_norm``, ``t_norm`` (test), ``train_loss`` (last epoch mean).
    With ``arm="CE"`` the teacher, directions and teacher outputs may be None (plain training, e.g. of a
    teacher: `train_cifar_baseline.py`'s recipe is this loop without KD); the teacher metrics are then left out.
    """
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; known: {', '.join(ARMS)}")
    if arm != "CE" and (teacher is None or teacher_test is None):
        raise ValueError(f"arm {arm} needs the teacher and its test outputs")
    from ..progress import track
    x_tr, y_tr = data.train.x, data.train.y
    device = x_tr.device
    amp, bs, pad = bool(cfg.get("amp", True)), int(cfg["batch_size"]), int(cfg["pad"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True      # fixed 32x32 shapes: let cuDNN pick its fastest kernels
    torch.manual_seed(seed)
    model = official_init(ResNetCIFAR(depth=int(cfg["student_depth"]), num_classes=int(cfg["num_classes"]),
                                      width=16, shortcut="B")).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=float(cfg["lr"]), momentum=float(cfg["momentum"]),
                          weight_decay=float(cfg["weight_decay"]), nesterov=bool(cfg["nesterov"]))
    gen = torch.Generator().manual_seed(seed)
    directions = directions.to(device) if directions is not None else None
    epochs, every = int(cfg["epochs"]), int(cfg.get("eval_every", 0))
    curve: list[tuple[int, float]] = []
    train_loss = float("nan")
    for epoch in (track(range(epochs), desc=f"{arm} seed {seed}") if progress else range(epochs)):
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch, cfg)
        kd_w = kd_warmup_factor(epoch, int(cfg["kd_warmup_epochs"]))
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen).to(device)
        total, count = torch.zeros((), device=device), 0
        for i in range(0, len(perm), bs):
            idx = perm[i:i + bs]
            xb, yb = normalise(random_crop_flip(x_tr[idx], pad, gen, mode="constant")), y_tr[idx]
            with _autocast(device, amp):
                t_logits = t_feats = None
                if arm != "CE":
                    with torch.no_grad():
                        t_logits, t_feats = teacher(xb, return_features=True)
                    t_logits, t_feats = t_logits.float(), t_feats.float()
                logits, s = model(xb, return_features=True)
            loss = objective(arm, logits.float(), s.float(), yb, t_logits, t_feats, kd_weight=kd_w,
                             directions=directions, T=float(cfg["T"]), beta=float(cfg["beta"]), t_sq_norm=t_sq_norm)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.detach() * len(idx), count + len(idx)
        train_loss = float(total) / max(1, count)
        if every and ((epoch + 1) % every == 0) and epoch + 1 < epochs:
            out = image_outputs(model, data.test.x, amp=amp)
            curve.append((epoch + 1, accuracy(out["logits"], data.test.y)))
    out = image_outputs(model, data.test.x, amp=amp)
    acc = accuracy(out["logits"], data.test.y)
    curve.append((epochs, acc))
    s = out["features"]
    s_norm = float(feature_norms(s).mean())
    metrics = {"acc": acc, "acc_best": max(a for _, a in curve), "s_norm": s_norm, "train_loss": train_loss}
    if teacher_test is not None:
        t_norm = float(feature_norms(teacher_test["features"].to(device)).mean())
        metrics.update(norm_ratio=s_norm / t_norm, t_norm=t_norm)
    if directions is not None:
        metrics["cos_dir"] = cos_to_class_direction(s, data.test.y, directions)
    return StudentRun(arm, seed, metrics, s.detach().cpu(), curve, model if keep_model else None)


# --------------------------------------------------------------------------- a teacher trained here

TEACHER_TRAINED = "resnet56_cifar100_trained"
_TRAINED_CONFIG: dict[str, Any] = {
    **{k: CIFAR100_RECIPE[k] for k in ("epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay",
                                       "lr_milestones", "lr_gamma", "pad")},
    "depth": 56, "amp": True, "seed": 0}


@zoo.register(TEACHER_TRAINED, config=_TRAINED_CONFIG, arch=_teacher_arch, card={
    "summary": "CIFAR-100 ResNet-56 trained by replibook with the ND repository's baseline recipe (the "
               "alternative when CRD's published teacher is not available)",
    "architecture": "ResNetCIFAR(depth=56, num_classes=100, width=16, shortcut='B'), official initialisation",
    "trained_on": "CIFAR-100 train (50,000 images, torchvision pickles in $REPLIBOOK_DATA)",
    "training": "train_cifar_baseline.py's recipe: CE, 240 epochs of batch 128, SGD Nesterov momentum 0.9, "
                "lr 0.1, wd 5e-4, x0.1 at epochs 150/180/210, pad-4 crop + flip, CIFAR-100 normalisation; "
                "bfloat16 autocast on CUDA",
    "preprocess": {"mean": CIFAR100_MEAN, "std": CIFAR100_STD, "size": 32,
                   "note": "RGB in [0,1], then (x - mean) / std with CIFAR-100 statistics"},
    "cpu_time_estimate": "GPU only: 94,000 updates of a ResNet-56 (not timed here)",
    "chapters": [50],
})
def _train_teacher_here(cfg: dict[str, Any], progress: bool = True) -> tuple[nn.Module, dict]:
    from ..data.real import cifar100
    data = cifar100(device=runtime.device())
    run_cfg = {**cfg, "student_depth": cfg["depth"], "num_classes": 100, "kd_warmup_epochs": 0, "T": 4.0,
               "beta": 0.0, "eval_every": 0}
    run = train_image_student("CE", data, None, None, 1.0, None, run_cfg, seed=int(cfg["seed"]),
                              progress=progress, keep_model=True)
    return run.model, {"test_acc": run.metrics["acc"], "train_loss": run.metrics["train_loss"]}
