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
