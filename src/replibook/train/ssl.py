r"""Self-supervised pretraining loops shared by several chapters (components.md, section 8).

`simclr_pretrain` trains an encoder and a projection head with SimCLR's NT-Xent loss
(Chen et al. 2020) on two augmented views of every minibatch image: the objective the
long-tail, projection-head and feature-transformation chapters start from. It is `fit`
with a contrastive ``loss_fn``, so it keeps fit's fixed update budget, AMP on CUDA and
progress bar.

`moco_pretrain` is MoCo (He et al. 2020; v2 with an MLP head, Chen et al. 2020): a query
encoder trained by InfoNCE against a momentum-updated key encoder (`momentum_update`) and a
FIFO queue of past keys (`MoCoQueue`). A ``feature_transform`` hook sees the normalised
``(q, k, queue)`` just before the logits, which is where the feature-transformation chapter
plugs in positive extrapolation and negative interpolation (Zhu et al. 2021).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import simclr_augment
from ..losses.contrastive import info_nce, nt_xent
from .. import runtime
from .fit import History, fit

__all__ = ["EncoderWithHead", "SimCLRModel", "simclr_pretrain", "MoCoQueue", "momentum_update", "moco_logits", "MoCoRun",
           "moco_pretrain"]

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class EncoderWithHead(nn.Module):
    """``projector(encoder(x))``: what a contrastive loss sees. ``encoder`` alone gives the
    representation used downstream. SimCLR's, SupCon's and MoCo's query branch all have this form."""

    def __init__(self, encoder: nn.Module, projector: nn.Module):
        super().__init__()
        self.encoder, self.projector = encoder, projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))


SimCLRModel = EncoderWithHead


def simclr_pretrain(encoder: nn.Module, projector: nn.Module, x: torch.Tensor, *, steps: int,
                    batch_size: int = 256, lr: float = 1e-3, tau: float = 0.5, augment: Augment | None = None,
                    weight_decay: float = 1e-6, opt: str = "adamw", schedule: str | None = "cosine",
                    seed: int = 0, progress: bool = True, desc: str | None = "SimCLR") -> History:
    r"""Train ``encoder`` + ``projector`` in place for ``steps`` updates of NT-Xent on images ``x``.

    Each update draws a minibatch of ``x`` (N, C, H, W), makes two views with
    ``augment(batch, generator)`` (default `simclr_augment`), and minimises
    ``nt_xent(projector(encoder(v1)), projector(encoder(v2)), tau)``. The augmentation draws
    from its own generator seeded with ``seed``, so a run is reproducible. Both modules end
    in eval mode. Returns fit's `History` (``history.wall_s``; no eval curve).
    """
    aug = augment or (lambda b, g: simclr_augment(b, generator=g))
    gen = torch.Generator().manual_seed(seed + 7919)
    model = SimCLRModel(encoder, projector)

    def loss_fn(m: SimCLRModel, xb: torch.Tensor) -> torch.Tensor:
        v1, v2 = aug(xb, gen), aug(xb, gen)
        z = m(torch.cat([v1, v2]))
        return nt_xent(z[:len(xb)], z[len(xb):], tau)

    return fit(model, (x,), steps=steps, batch_size=batch_size, lr=lr, opt=opt, weight_decay=weight_decay,
               loss_fn=loss_fn, schedule=schedule, seed=seed, progress=progress, desc=desc)


# ---------------------------------------------------------------------------
# MoCo
# ---------------------------------------------------------------------------

FeatureTransform = Callable[..., "tuple[torch.Tensor, torch.Tensor, torch.Tensor]"]


class MoCoQueue:
    """A fixed-size FIFO of L2-normalised keys (MoCo's dictionary of negatives).

    ``size`` rows of dimension ``dim``, initialised to random unit vectors (as in the official
    code, so the first updates already see ``size`` negatives). `enqueue` overwrites the oldest
    rows with the new keys, wrapping around; ``keys`` is the buffer itself (detach/clone before
    changing it).
    """

    def __init__(self, dim: int, size: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None):
        if size < 1 or dim < 1:
            raise ValueError(f"MoCoQueue needs size >= 1 and dim >= 1, got size={size}, dim={dim}")
        self.keys = F.normalize(torch.randn(size, dim, generator=generator), dim=1).to(device or "cpu")
        self.ptr = 0

    def __len__(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        """Write the (re-normalised, detached) keys ``k`` (B, dim) over the B oldest rows."""
        if k.dim() != 2 or k.shape[1] != self.keys.shape[1]:
            raise ValueError(f"keys must be (B, {self.keys.shape[1]}), got {tuple(k.shape)}")
        if k.shape[0] > len(self):
            raise ValueError(f"cannot enqueue {k.shape[0]} keys into a queue of {len(self)}")
        idx = (torch.arange(k.shape[0], device=self.keys.device) + self.ptr) % len(self)
        self.keys[idx] = F.normalize(k.detach().float(), dim=1).to(self.keys.device)
        self.ptr = (self.ptr + k.shape[0]) % len(self)


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    r"""MoCo's key-encoder update :math:`\theta_k \leftarrow m\,\theta_k + (1 - m)\,\theta_q`, in place.

    Only parameters move; buffers (BatchNorm running statistics) of ``target`` stay its own,
    since the key encoder computes them on its own forward passes (as in the official code).
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {m}")
    for p_o, p_t in zip(online.parameters(), target.parameters(), strict=True):
        p_t.mul_(m).add_(p_o.detach(), alpha=1.0 - m)


def moco_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float) -> torch.Tensor:
    """``[q_i . k_i, q_i . n_1, ..., q_i . n_K] / tau`` WITHOUT normalising (N, 1 + K).

    For features that are already unit vectors this is what `info_nce` computes; after a
    feature transformation the mixed vectors are deliberately not re-normalised (the official
    FT code's default, ``--postmix_norm`` off), so the logits must not normalise again.
    """
    pos = (q * k).sum(-1, keepdim=True)
    return torch.cat([pos, q @ queue.T], dim=1) / tau


def _score_row(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        neg = q.float() @ queue.float().T
        return (q * k).sum(-1).float().mean(), neg.mean(), neg.var(dim=1).mean()


MoCoModel = EncoderWithHead     # the query branch; the key branch is a momentum copy


@dataclass
class MoCoRun:
    """What `moco_pretrain` returns.

    ``history``: fit's History (held-out score curves in ``history.metrics`` when an
    ``eval_x`` was given); ``scores``: per-update training score statistics (DataFrame with
    ``step``, ``pos`` / ``neg_mean`` / ``neg_var`` on the un-transformed features and
    ``pos_ft`` / ``neg_mean_ft`` / ``neg_var_ft`` on what the logits saw); ``key_model``: the
    momentum encoder + head; ``queue``: the final `MoCoQueue`.
    """

    history: History
    scores: pd.DataFrame
    key_model: nn.Module
    queue: MoCoQueue
    info: dict = field(default_factory=dict)


def _keys(key_model: nn.Module, x: torch.Tensor, splits: int, gen: torch.Generator) -> torch.Tensor:
    """Key features with MoCo's shuffled BN simulated on one device: the batch is permuted and
    split into ``splits`` groups, each normalised by its own BatchNorm statistics, so a query
    and its key never share batch statistics computed on the same set of images."""
    if splits <= 1:
        return key_model(x)
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    out = torch.cat([key_model(chunk) for chunk in x[perm].chunk(splits)])
    return out[torch.argsort(perm)]


def moco_pretrain(encoder: nn.Module, projector: nn.Module, x: torch.Tensor, *, steps: int,
                  batch_size: int = 256, queue_size: int = 4096, momentum: float = 0.999, tau: float = 0.2,
                  lr: float = 0.03, opt: str = "sgd", weight_decay: float = 1e-4, schedule: str | None = "cosine",
                  augment: Augment | None = None, feature_transform: FeatureTransform | None = None,
                  shuffle_bn_splits: int = 4, eval_x: torch.Tensor | None = None, eval_every: int = 10,
                  seed: int = 0, device: torch.device | str | None = None, progress: bool = True,
                  desc: str | None = "MoCo") -> MoCoRun:
    r"""Train ``encoder`` + ``projector`` in place with MoCo v2 for ``steps`` updates on images ``x``.

    Per update (He et al. 2020, Algorithm 1): two views ``x_q, x_k = augment(batch)``;
    ``q = normalize(projector(encoder(x_q)))``; the key model (a frozen copy of encoder +
    projector, updated by `momentum_update` with ``momentum`` before each key pass) gives
    ``k = normalize(key(x_k))`` without gradient (shuffled BN simulated by
    ``shuffle_bn_splits`` groups, see `_keys`); then

    - without ``feature_transform``: ``loss = info_nce(q, k, queue, tau)``;
    - with it: ``q', k', queue' = feature_transform(q, k, queue, generator=g)`` on the
      normalised features, and the loss is the cross-entropy of `moco_logits` (``q'``,
      ``k'``, ``queue'``) with the positive at index 0, not re-normalised;

    and finally the ORIGINAL keys ``k`` are enqueued (the official FT trainer enqueues the
    un-mixed keys). Augmentation and transform draws come from two generators seeded with
    ``seed``, so a CPU run is reproducible and runs with different hooks (or none) see the
    same minibatches and the same augmented views.

    ``eval_x``: a fixed batch of images; every ``eval_every`` updates its two views (the same
    augmentation draw each time) are encoded in eval mode and the un-transformed score
    statistics against the current queue go into ``history.metrics`` (``pos``,
    ``neg_mean``, ``neg_var``, and the plain InfoNCE ``loss``).
    """
    if batch_size > queue_size:
        raise ValueError(f"batch_size ({batch_size}) must not exceed queue_size ({queue_size})")
    aug = augment or (lambda b, g: simclr_augment(b, generator=g))
    model = MoCoModel(encoder, projector)
    dev = torch.device(device) if device is not None else runtime.device()
    model.to(dev)
    key_model = copy.deepcopy(model)
    for p in key_model.parameters():
        p.requires_grad_(False)
    key_model.train()
    gen = torch.Generator().manual_seed(seed + 7919)
    gen_ft = torch.Generator().manual_seed(seed + 15485863)   # its own stream: views match across hooks
    with torch.no_grad():
        dim = model(x[:2].to(dev)).shape[1]
    queue = MoCoQueue(dim, queue_size, generator=torch.Generator().manual_seed(seed + 31), device=dev)
    rows: list[tuple[torch.Tensor, ...]] = []
    first = [True]

    def loss_fn(m: MoCoModel, xb: torch.Tensor) -> torch.Tensor:
        xq, xk = aug(xb, gen), aug(xb, gen)
        q = F.normalize(m(xq).float(), dim=1)
        with torch.no_grad():
            if not first[0]:
                momentum_update(m, key_model, momentum)
            first[0] = False
            key_model.train()
            k = F.normalize(_keys(key_model, xk, shuffle_bn_splits, gen).float(), dim=1)
        neg = queue.keys.clone()
        if feature_transform is None:
            loss = info_nce(q, k, neg, tau)
            row = _score_row(q, k, neg)
            rows.append(row + row)
        else:
            q2, k2, neg2 = feature_transform(q, k, neg, generator=gen_ft)
            logits = moco_logits(q2, k2, neg2, tau)
            loss = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
            rows.append(_score_row(q, k, neg) + _score_row(q2, k2, neg2))
        queue.enqueue(k)
        return loss

    eval_fn = None
    if eval_x is not None:
        ev = eval_x.to(dev)
        g_eval = torch.Generator().manual_seed(seed + 104729)
        ev_q, ev_k = aug(ev, g_eval), aug(ev, g_eval)

        def held_out_scores(m: MoCoModel) -> dict[str, float]:
            key_model.eval()
            q = F.normalize(m(ev_q).float(), dim=1)
            k = F.normalize(key_model(ev_k).float(), dim=1)
            key_model.train()
            pos, nm, nv = _score_row(q, k, queue.keys)
            return {"pos": float(pos), "neg_mean": float(nm), "neg_var": float(nv),
                    "loss": float(info_nce(q, k, queue.keys, tau))}
        eval_fn = held_out_scores

    history = fit(model, (x,), steps=steps, batch_size=batch_size, lr=lr, opt=opt, weight_decay=weight_decay,
                  loss_fn=loss_fn, schedule=schedule, eval_fn=eval_fn, eval_every=eval_every if eval_fn else None,
                  seed=seed, device=dev, progress=progress, desc=desc)
    key_model.eval()
    names = ["pos", "neg_mean", "neg_var", "pos_ft", "neg_mean_ft", "neg_var_ft"]
    table = torch.stack([torch.stack(r) for r in rows]).cpu().numpy() if rows else None
    scores = pd.DataFrame(table, columns=names) if table is not None else pd.DataFrame(columns=names)
    scores.insert(0, "step", range(1, len(scores) + 1))
    return MoCoRun(history=history, scores=scores, key_model=key_model, queue=queue,
                   info=dict(queue_size=queue_size, momentum=momentum, tau=tau, batch_size=batch_size,
                             shuffle_bn_splits=shuffle_bn_splits, transformed=feature_transform is not None))
