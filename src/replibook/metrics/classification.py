"""Classification metrics on logits or predicted labels (torch tensors or arrays)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def accuracy(logits_or_pred: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of correct predictions. ``logits_or_pred``: (N, K) logits or (N,) labels."""
    pred = logits_or_pred.argmax(-1) if logits_or_pred.dim() > 1 else logits_or_pred
    return float((pred == y).float().mean())


def nll(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Mean negative log-likelihood (cross-entropy, nats) of labels ``y`` under ``logits`` (N, K)."""
    return float(nn.functional.cross_entropy(logits.float(), y))


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, in chunks (restores the previous mode)."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def per_class_accuracy(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> np.ndarray:
    pred, y = pred.cpu().numpy(), y.cpu().numpy()
    return np.array([(pred[y == k] == k).mean() if (y == k).any() else np.nan for k in range(num_classes)])


def balanced_accuracy(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    return float(np.nanmean(per_class_accuracy(pred, y, num_classes)))


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def shot_accuracy(pred, y, train_counts, many: int = 100, few: int = 20) -> dict[str, float]:
    """Accuracy over the many-, medium- and few-shot classes of a long-tailed training set.

    The split of Liu et al. (2019, OLTR), used by the long-tail literature: a class is
    *many-shot* with more than ``many`` training samples, *few-shot* with fewer than ``few``,
    *medium* otherwise. Each group's number is the mean of its classes' accuracies (so every
    class counts once). Args: ``pred`` (N,) predicted labels or (N, K) logits, ``y`` (N,),
    ``train_counts`` (K,) training samples per class. A group with no class, or whose classes
    have no test sample, is NaN. Returns ``{"many", "medium", "few", "all"}`` ("all" = balanced
    accuracy over the classes with test samples).
    """
    pred, y, counts = _np(pred), _np(y), _np(train_counts)
    if pred.ndim > 1:
        pred = pred.argmax(-1)
    per = np.array([(pred[y == k] == k).mean() if (y == k).any() else np.nan for k in range(len(counts))])
    groups = {"many": counts > many, "medium": (counts <= many) & (counts >= few), "few": counts < few}
    out = {}
    for name, sel in groups.items():
        vals = per[sel]
        vals = vals[~np.isnan(vals)]
        out[name] = float(vals.mean()) if len(vals) else float("nan")
    out["all"] = float(np.nanmean(per))
    return out


def expected_calibration_error(logits, y, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017): confidence-weighted |accuracy - confidence| over equal-width bins.

    ``logits`` (N, K) (softmax applied here), ``y`` (N,). Bins are (k/n_bins, (k+1)/n_bins];
    returns the sample-weighted mean gap.
    """
    probs = torch.softmax(torch.as_tensor(_np(logits)).float(), dim=-1).numpy()
    y = _np(y)
    conf, pred = probs.max(-1), probs.argmax(-1)
    correct = (pred == y).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)
