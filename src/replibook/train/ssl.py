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

Full-size datasets do not fit in memory: `moco_pretrain` also takes a stream of batches (a
DataLoader of uint8 crops, run by `stream_fit`, fit's streaming sibling), and
`linear_eval_stream` / `extract_features` evaluate a frozen encoder batch by batch (the
MoCo linear-evaluation protocol, and features for kNN).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
import itertools
from typing import Any, Callable, Iterable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import simclr_augment
from ..losses.contrastive import info_nce, nt_xent
from .. import runtime
from .fit import Batches, History, cycle_epochs, fit, stream_fit

__all__ = ["EncoderWithHead", "SimCLRModel", "simclr_pretrain", "MoCoQueue", "momentum_update", "moco_logits", "MoCoRun",
           "moco_pretrain", "linear_eval_stream", "extract_features"]

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


def _first(item: Any) -> torch.Tensor:
    """The images of a loader item: the item itself, or its first element for ``(x, y)``."""
    return item[0] if isinstance(item, (tuple, list)) else item


def moco_pretrain(encoder: nn.Module, projector: nn.Module, x: torch.Tensor | None = None, *, steps: int,
                  batches: Batches | None = None,
                  batch_size: int = 256, queue_size: int = 4096, momentum: float = 0.999, tau: float = 0.2,
                  lr: float = 0.03, opt: str = "sgd", weight_decay: float = 1e-4, schedule: str | None = "cosine",
                  augment: Augment | None = None, feature_transform: FeatureTransform | None = None,
                  shuffle_bn_splits: int = 4, eval_x: torch.Tensor | None = None, eval_every: int = 10,
                  seed: int = 0, device: torch.device | str | None = None, progress: bool = True,
                  desc: str | None = "MoCo") -> MoCoRun:
    r"""Train ``encoder`` + ``projector`` in place with MoCo v2 for ``steps`` updates on images ``x``
    (a tensor held in memory) or on a stream of ``batches`` (data that do not fit in memory).

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

    Streaming (``batches``, see `stream_fit`; ``x`` must be None and ``batch_size`` is the
    loader's): each item is ``views`` or ``(views, labels)`` with ``views`` of shape
    ``(B, 2, C, H, W)``, two crops per image already made by the loader (uint8 or float);
    uint8 is scaled to [0, 1] on the device and ``augment`` is applied to each view
    separately (the device-side rest of the augmentation). A 4-D batch is used like a
    minibatch of ``x`` (two augmentations of the same images). On CUDA the step runs under
    bf16 autocast, channels-last.

    ``eval_x``: a fixed batch of images (4-D, or 5-D pairs of crops like a stream item);
    every ``eval_every`` updates its two views (the same augmentation draw each time) are
    encoded in eval mode and the un-transformed score statistics against the current queue
    go into ``history.metrics`` (``pos``, ``neg_mean``, ``neg_var``, and the plain InfoNCE
    ``loss``).
    """
    if (x is None) == (batches is None):
        raise ValueError("moco_pretrain needs exactly one of x (a tensor) and batches (a stream)")
    if batch_size > queue_size:
        raise ValueError(f"batch_size ({batch_size}) must not exceed queue_size ({queue_size})")
    aug = augment or (lambda b, g: simclr_augment(b, generator=g))
    model = MoCoModel(encoder, projector)
    dev = torch.device(device) if device is not None else runtime.device()
    model.to(dev)
    channels_last = batches is not None and dev.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    key_model = copy.deepcopy(model)
    for p in key_model.parameters():
        p.requires_grad_(False)
    key_model.train()
    gen = torch.Generator().manual_seed(seed + 7919)
    gen_ft = torch.Generator().manual_seed(seed + 15485863)   # its own stream: views match across hooks
    queue_gen = torch.Generator().manual_seed(seed + 31)
    queues: list[MoCoQueue] = []
    if x is not None:
        with torch.no_grad():
            dim = model(x[:2].to(dev)).shape[1]
        queues.append(MoCoQueue(dim, queue_size, generator=queue_gen, device=dev))
    else:                       # the feature size from the first item (eval mode: BN statistics untouched)
        stream = cycle_epochs(batches)
        head = next(stream)
        batches = itertools.chain([head], stream)
        probe = _first(head)[:2]
        probe = probe[:, 0] if probe.dim() == 5 else probe
        model.eval()
        with torch.no_grad():
            dim = model(probe.to(dev).float()).shape[1]
        model.train()
        queues.append(MoCoQueue(dim, queue_size, generator=queue_gen, device=dev))
    scores = torch.zeros(max(steps, 0), 6, device=dev)
    calls = [0]

    def prep(t: torch.Tensor) -> torch.Tensor:
        t = t.to(dev, non_blocking=True)
        t = t.float().div_(255.0) if t.dtype == torch.uint8 else t
        return t.contiguous(memory_format=torch.channels_last) if channels_last else t

    def two_views(xb: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if xb.dim() == 5:                              # (B, 2, C, H, W): two crops made by the loader
            xb = xb.to(dev, non_blocking=True)         # one contiguous copy, then split on the device
            return prep(aug(prep(xb[:, 0]), g)), prep(aug(prep(xb[:, 1]), g))
        if batches is not None:
            xb = prep(xb)
            return prep(aug(xb, g)), prep(aug(xb, g))
        return aug(xb, g), aug(xb, g)

    def loss_fn(m: MoCoModel, xb: Any) -> torch.Tensor:
        if batches is not None:
            xb = _first(xb)
            if len(xb) > queue_size:
                raise ValueError(f"a batch of {len(xb)} does not fit a queue of {queue_size}")
        xq, xk = two_views(xb, gen)
        q = F.normalize(m(xq).float(), dim=1)
        with torch.no_grad():
            if calls[0] > 0:
                momentum_update(m, key_model, momentum)
            key_model.train()
            k = F.normalize(_keys(key_model, xk, shuffle_bn_splits, gen).float(), dim=1)
        queue = queues[0]
        neg = queue.keys.clone()
        if feature_transform is None:
            loss = info_nce(q, k, neg, tau)
            row = _score_row(q, k, neg)
            row = row + row
        else:
            q2, k2, neg2 = feature_transform(q, k, neg, generator=gen_ft)
            logits = moco_logits(q2, k2, neg2, tau)
            loss = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
            row = _score_row(q, k, neg) + _score_row(q2, k2, neg2)
        if calls[0] < len(scores):
            scores[calls[0]] = torch.stack(row)
        calls[0] += 1
        queue.enqueue(k)
        return loss

    eval_fn = None
    if eval_x is not None:
        g_eval = torch.Generator().manual_seed(seed + 104729)
        if batches is None and eval_x.dim() == 4:
            ev = eval_x.to(dev)
            ev_q, ev_k = aug(ev, g_eval), aug(ev, g_eval)
        else:
            ev_q, ev_k = two_views(eval_x, g_eval)

        def held_out_scores(m: MoCoModel) -> dict[str, float]:
            key_model.eval()
            q = F.normalize(m(ev_q).float(), dim=1)
            k = F.normalize(key_model(ev_k).float(), dim=1)
            key_model.train()
            pos, nm, nv = _score_row(q, k, queues[0].keys)
            return {"pos": float(pos), "neg_mean": float(nm), "neg_var": float(nv),
                    "loss": float(info_nce(q, k, queues[0].keys, tau))}
        eval_fn = held_out_scores

    if batches is None:
        history = fit(model, (x,), steps=steps, batch_size=batch_size, lr=lr, opt=opt, weight_decay=weight_decay,
                      loss_fn=loss_fn, schedule=schedule, eval_fn=eval_fn,
                      eval_every=eval_every if eval_fn else None, seed=seed, device=dev, progress=progress, desc=desc)
    else:
        history = stream_fit(model, batches, steps=steps, lr=lr, opt=opt, weight_decay=weight_decay, loss_fn=loss_fn,
                             schedule=schedule, eval_fn=eval_fn, eval_every=eval_every if eval_fn else None,
                             device=dev, progress=progress, desc=desc)
    key_model.eval()
    names = ["pos", "neg_mean", "neg_var", "pos_ft", "neg_mean_ft", "neg_var_ft"]
    table = scores[:calls[0]].cpu().numpy()
    frame = pd.DataFrame(table, columns=names)
    frame.insert(0, "step", range(1, len(frame) + 1))
    return MoCoRun(history=history, scores=frame, key_model=key_model, queue=queues[0],
                   info=dict(queue_size=queue_size, momentum=momentum, tau=tau, batch_size=batch_size,
                             shuffle_bn_splits=shuffle_bn_splits, transformed=feature_transform is not None,
                             streamed=batches is not None))


# ---------------------------------------------------------------------------
# Streamed evaluation of a frozen encoder (full-size datasets)
# ---------------------------------------------------------------------------

Prepare = Callable[[torch.Tensor], torch.Tensor]


def _to_device_float(x: torch.Tensor, dev: torch.device) -> torch.Tensor:
    x = x.to(dev, non_blocking=True)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def extract_features(encoder: nn.Module, batches: Iterable[Any], *, prepare: Prepare | None = None,
                     device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen ``encoder`` (eval mode) over a stream of ``(x, y)`` batches -> ``(features float32, labels)``
    on the CPU. uint8 images are scaled to [0, 1] on the device, then ``prepare`` (e.g.
    normalisation); bf16 autocast on CUDA."""
    dev = torch.device(device) if device is not None else runtime.device()
    was = encoder.training
    encoder.to(dev).eval()
    feats, labels = [], []
    for xb, yb in batches:
        xb = _to_device_float(xb, dev)
        with runtime.autocast(dev):
            f = encoder(prepare(xb) if prepare else xb)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(yb).cpu())
    encoder.train(was)
    return torch.cat(feats), torch.cat(labels)


def linear_eval_stream(encoder: nn.Module, train_batches: Batches,
                       val_batches: Iterable[Any] | Callable[[], Iterable[Any]], *, num_classes: int, epochs: int, lr: float = 30.0, milestones: tuple[int, ...] = (60, 80),
                       gamma: float = 0.1, weight_decay: float = 0.0, momentum: float = 0.9,
                       prepare_train: Prepare | None = None, prepare_eval: Prepare | None = None,
                       device: torch.device | str | None = None, seed: int = 0, progress: bool = True,
                       desc: str | None = "linear eval") -> dict[str, Any]:
    r"""The MoCo / PyContrast linear-evaluation protocol on a frozen encoder, streamed.

    For ``epochs`` epochs over ``train_batches`` (a callable ``epoch -> iterable`` of
    ``(x, y)``, e.g. a loader of fresh random crops per epoch, or an iterable): the encoder's
    features (eval mode, no gradient, bf16 autocast on CUDA, ``prepare_train`` applied to the
    [0, 1] images first, e.g. a flip and the normalisation) feed a linear layer trained with
    SGD (``lr``, ``momentum``, ``weight_decay``) and cross-entropy; the learning rate is
    multiplied by ``gamma`` after each epoch in ``milestones``. Then top-1 / top-5 accuracy on
    ``val_batches`` (``prepare_eval``). Returns ``{"acc", "top5", "train_acc" (last epoch, on
    the augmented crops), "epochs", "classifier"}``.
    """
    dev = torch.device(device) if device is not None else runtime.device()
    encoder.to(dev).eval()
    torch.manual_seed(seed)
    clf: nn.Linear | None = None
    optimizer = scheduler = None
    train_acc = float("nan")
    from tqdm.auto import tqdm
    for epoch in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        it = train_batches(epoch) if callable(train_batches) else train_batches
        correct = seen = 0
        for xb, yb in it:
            with torch.no_grad(), runtime.autocast(dev):
                xb = _to_device_float(xb, dev)
                f = encoder(prepare_train(xb) if prepare_train else xb).float()
            if clf is None:
                clf = nn.Linear(f.shape[1], num_classes).to(dev)
                optimizer = torch.optim.SGD(clf.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
                scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
            yb = torch.as_tensor(yb).to(dev)
            logits = clf(f)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
        if clf is None:
            raise ValueError("linear_eval_stream: the training stream yielded no batch")
        scheduler.step()
        train_acc = correct / max(seen, 1)
    clf.eval()
    top1 = top5 = n = 0
    val = val_batches() if callable(val_batches) else val_batches
    with torch.no_grad():
        for xb, yb in val:
            xb = _to_device_float(xb, dev)
            with runtime.autocast(dev):
                f = encoder(prepare_eval(xb) if prepare_eval else xb).float()
            logits = clf(f)
            yb = torch.as_tensor(yb).to(dev)
            top = logits.topk(min(5, num_classes), dim=1).indices
            top1 += int((top[:, 0] == yb).sum())
            top5 += int((top == yb[:, None]).any(1).sum())
            n += len(yb)
    return {"acc": top1 / max(n, 1), "top5": top5 / max(n, 1), "train_acc": train_acc, "epochs": epochs,
            "classifier": clf}
