r"""RotNet: self-supervised features from predicting image rotations.

Gidaris, Singh & Komodakis, "Unsupervised Representation Learning by Predicting Image
Rotations", ICLR 2018 (arXiv 1803.07728). A network ``F`` sees an image rotated by one of
``K`` angles and must say which; to do so it has to find the objects' canonical
orientation, so its intermediate features end up describing object parts.

Pretext objective (paper Eq. 1-3): with :math:`g_r(x)` the image rotated by
:math:`r \cdot 360/K` degrees,

.. math:: \mathcal{L}(x) = -\frac{1}{K} \sum_{r=0}^{K-1} \log F_r\big(g_r(x)\big),

and all ``K`` rotations of an image sit in the same minibatch (Sec. 2.2.1: better than
sampling one rotation per image). The rotated batch comes from
`replibook.data.augment.rotate_batch` (exact ``rot90`` for multiples of 90 degrees).

Evaluation (Sec. 3.1): freeze the pretext network, tap block ``k``'s feature map and train
a classifier on it (`replibook.train.probes.mlp` for the paper's non-linear head, which
reads the flattened map); or fine-tune the whole net from the RotNet weights with few
labels (Sec. 3.1.2, `replibook.train.probes.label_efficiency`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import rotate_batch
from ..models.convnets import NIN
from ..train import probes
from ..train.fit import History, fit

__all__ = ["make_nin", "rotnet_loss", "pretrain", "block_features", "pretext_accuracy", "conv_head",
           "probe_blocks", "select_block", "downsample", "channel_standardize", "load_images"]


def make_nin(in_ch: int, num_classes: int, blocks: int = 4, width: int = 32, seed: int = 0,
             **kwargs) -> NIN:
    """A freshly initialised `NIN` with a linear classifier on its pooled last block (seeded)."""
    torch.manual_seed(seed)
    return NIN(in_ch, blocks=blocks, width=width, num_classes=num_classes, return_blocks=False, **kwargs)


def rotnet_loss(model: nn.Module, x: torch.Tensor, k_rot: int = 4) -> torch.Tensor:
    """Eq. 1-3: mean cross-entropy of predicting the rotation of every image at every rotation.

    x: (B, C, S, S) -> the loss over the (k_rot * B) rotated copies.
    """
    x_rot, r = rotate_batch(x, k_rot)                   # g_r(x) for r = 0..K-1, grouped by r
    return F.cross_entropy(model(x_rot), r)             # -1/K sum_r log F_r(g_r(x)), batch mean


def pretrain(model: nn.Module, x: torch.Tensor, *, k_rot: int = 4, steps: int = 250, batch_size: int = 32,
             lr: float = 2e-3, weight_decay: float = 0.0, opt: str = "adam", schedule: str | None = None,
             seed: int = 0, progress: bool = True, desc: str | None = None) -> History:
    """Train ``model`` (whose classifier has ``k_rot`` outputs) on the rotation pretext.

    ``batch_size`` counts *images*; each step sees ``k_rot * batch_size`` rotated copies.
    Labels are never used: ``x`` is the only tensor passed to the loop.
    """
    return fit(model, (x,), steps=steps, batch_size=batch_size, lr=lr, opt=opt, weight_decay=weight_decay,
               schedule=schedule, loss_fn=lambda m, xb: rotnet_loss(m, xb, k_rot), seed=seed,
               progress=progress, desc=desc or f"RotNet pretext ({k_rot} rotations)")


@torch.no_grad()
def block_features(model: NIN, x: torch.Tensor, blocks: Sequence[int] | None = None,
                   batch_size: int = 500) -> dict[int, torch.Tensor]:
    """Maps of the frozen ``model``'s blocks (1-based, taken after the block's pooling),
    ``{k: (N, C_k, H_k, W_k)}``, computed in eval mode (BatchNorm running statistics).

    The official non-linear head reads the *flattened* map (not a pooled vector):
    ``features[k].flatten(1)``; the conv head reads the map itself.
    """
    wanted = list(blocks) if blocks is not None else list(range(1, len(model.blocks) + 1))
    was_training = model.training
    model.eval()
    out: dict[int, list[torch.Tensor]] = {k: [] for k in wanted}
    for i in range(0, len(x), batch_size):
        maps = model.block_maps(x[i:i + batch_size], upto=max(wanted))
        for k in wanted:
            out[k].append(maps[k - 1])
    model.train(was_training)
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def pretext_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, k_rot: int = 4,
                     num_classes: int = 10, batch_size: int = 500) -> dict:
    """Rotation-prediction accuracy on held-out images: overall, per rotation and per object class.

    Returns ``{"acc": float, "per_rotation": (k_rot,), "per_class": (num_classes,) or None}``.
    """
    model.eval()
    correct = []
    for i in range(0, len(x), batch_size):
        x_rot, r = rotate_batch(x[i:i + batch_size], k_rot)
        correct.append((model(x_rot).argmax(1) == r).view(k_rot, -1))   # rows grouped by rotation
    hit = torch.cat(correct, dim=1).float().cpu()                       # (k_rot, N)
    per_class = None
    if y is not None:
        yc = y.cpu()
        per_class = np.array([hit[:, yc == c].mean().item() if (yc == c).any() else float("nan")
                              for c in range(num_classes)])
    return {"acc": hit.mean().item(), "per_rotation": hit.mean(1).numpy(), "per_class": per_class}


def conv_head(in_ch: int, num_classes: int, width: int = 32, seed: int = 0) -> NIN:
    """The paper's conv classifier on a frozen block map (official ``NIN_ConvBlock3``): one NIN
    block (conv3x3 + 1x1 + 1x1, BN + ReLU, no pooling), global average pool, linear."""
    torch.manual_seed(seed)
    return NIN(in_ch, blocks=1, width=width, num_classes=num_classes, return_blocks=False, pool_blocks=())


def probe_blocks(features: dict[int, torch.Tensor], y: torch.Tensor, splits: dict[str, torch.Tensor],
                 *, seed: int = 0, **mlp_kwargs) -> dict[int, dict[str, float]]:
    """The non-linear probe (`replibook.train.probes.mlp`) on every block's flattened map.

    ``features[k]`` holds every image's map (N, ...); ``splits`` maps "train" (required) and any
    evaluation split names ("val", "test") to index tensors into it; ``y`` (N,) are the labels.
    Returns ``{k: {split: accuracy for every split but train, "train": train accuracy}}``.
    """
    tr = splits["train"]
    out: dict[int, dict[str, float]] = {}
    for k, f in features.items():
        flat = f.flatten(1)
        evals = {name: idx for name, idx in splits.items() if name != "train"}
        first = next(iter(evals))
        res = probes.mlp(flat[tr], y[tr], flat[evals[first]], y[evals[first]], seed=seed, **mlp_kwargs)
        scores = {"train": res["train_acc"], first: res["acc"]}
        for name, idx in evals.items():
            if name != first:
                scores[name] = float((res["predict"](flat[idx]) == y[idx].cpu().numpy()).mean())
        out[k] = scores
    return out


def select_block(val_acc: dict[int, Sequence[float]]) -> int:
    """The block with the highest mean validation accuracy over seeds (ties: the earlier block)."""
    means = {k: float(np.mean(v)) for k, v in val_acc.items()}
    return max(sorted(means), key=lambda k: (means[k], -k))


def downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, S, S) images in [0, 1] -> (N, C, size, size), antialiased bilinear."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def channel_standardize(x_tr: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Per-channel (x - mean) / std with statistics of ``x_tr`` only, applied to every split."""
    mean = x_tr.mean((0, 2, 3), keepdim=True)
    std = x_tr.std((0, 2, 3), keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (x_tr, *others)]


def load_images(name: str, size: int, n_train: int | None, n_test: int | None, seed: int = 0, device=None):
    """The chapter's image data: ``(dataset, x_train, y_train, x_test, y_test)``.

    ``name``: ``"cifar10"`` (`replibook.data.real.cifar10`, balanced subsets, downsampled to
    ``size``), ``"mnist5k"`` or ``"digits"`` (bundled, resized to ``size``). Images are
    standardised per channel with training-split statistics; ``dataset`` is the loader's
    `Dataset` (for its ledger card).
    """
    if name == "cifar10":
        from ..data.real import cifar10
        ds = cifar10(n_train=n_train, n_test=n_test, seed=seed, device=device)
        x_tr, x_te = downsample(ds.train.x, size), downsample(ds.test.x, size)
        ds.info["downsampled_to"] = size
    elif name in ("mnist5k", "digits"):
        from ..data import bundled
        ds = getattr(bundled, name)(size=size, split=(n_train, n_test), seed=seed, device=device)
        x_tr, x_te = ds.train.x, ds.test.x
    else:
        raise ValueError(f"unknown dataset {name!r} (cifar10, mnist5k, digits)")
    x_tr, x_te = channel_standardize(x_tr, x_te)
    return ds, x_tr, ds.train.y, x_te, ds.test.y
