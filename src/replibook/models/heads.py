r"""Classifier and probe heads that sit on a feature vector (components.md, section 5).

- `LinearHead`: one affine map, logits ``W h + b`` (the usual classifier on an embedding and
  the linear probe).
- `MLPHead`: hidden layers (Linear -> norm -> activation) then a plain Linear, built on
  `replibook.models.mlp.MLP` so the norm is any registered name.
- `WeightNormClassifier`: a linear classifier whose weight rows are reparameterised as
  :math:`w_k = g_k\, v_k / \lVert v_k \rVert` (Salimans & Kingma 2016), the classifier of
  SHOT (Liang et al. 2020, "Do we really need to access the source data?"), whose
  hypothesis is kept frozen while the features adapt.

Every head maps ``(B, in_dim)`` to ``(B, num_classes)``; inputs of higher rank are
flattened to ``(B, -1)`` first, so a head can also sit directly on a small feature map.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .mlp import MLP

__all__ = ["LinearHead", "MLPHead", "WeightNormClassifier"]


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1) if x.dim() > 2 else x


class LinearHead(nn.Module):
    """Logits ``h @ W.T + b``: ``(B, in_dim) -> (B, num_classes)``."""

    def __init__(self, in_dim: int, num_classes: int, bias: bool = True):
        super().__init__()
        self.in_dim, self.num_classes = in_dim, num_classes
        self.fc = nn.Linear(in_dim, num_classes, bias=bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(_flat(h))


class MLPHead(nn.Module):
    """``hidden`` layers of Linear -> norm -> activation (-> dropout), then a plain Linear.

    Args:
        in_dim, num_classes: input features and outputs.
        hidden: widths of the hidden layers (``()`` makes it a linear head).
        norm, act, dropout: as in `replibook.models.mlp.MLP`.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: Sequence[int] = (256,),
                 norm: str | Callable[..., nn.Module] | None = None, act: str | None = "relu",
                 dropout: float = 0.0):
        super().__init__()
        self.in_dim, self.num_classes = in_dim, num_classes
        self.mlp = MLP([in_dim, *hidden, num_classes], norm=norm, act=act, dropout=dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mlp(_flat(h))


class WeightNormClassifier(nn.Module):
    r"""Weight-normalised linear classifier (SHOT's ``feat_classifier(type="wn")``).

    Each class row is :math:`w_k = g_k\, v_k / \lVert v_k \rVert_2`, logits
    :math:`z_k = w_k^\top h + b_k`; the direction ``v`` and the gain ``g`` are separate
    parameters (``torch.nn.utils.parametrizations.weight_norm`` with ``dim=0``), so
    ``weight_g`` and ``weight_v`` can be frozen or trained separately.

    Initialisation follows SHOT: ``v`` Xavier-normal, ``g = ||v_k||`` (so the initial weight
    equals ``v``), bias zero.
    """

    def __init__(self, in_dim: int, num_classes: int, bias: bool = True):
        super().__init__()
        self.in_dim, self.num_classes = in_dim, num_classes
        fc = nn.Linear(in_dim, num_classes, bias=bias)
        nn.init.xavier_normal_(fc.weight)
        if bias:
            nn.init.zeros_(fc.bias)
        self.fc = nn.utils.parametrizations.weight_norm(fc, name="weight", dim=0)

    @property
    def weight_g(self) -> nn.Parameter:
        """Per-class gains ``(num_classes, 1)``."""
        return self.fc.parametrizations.weight.original0

    @property
    def weight_v(self) -> nn.Parameter:
        """Unnormalised directions ``(num_classes, in_dim)``."""
        return self.fc.parametrizations.weight.original1

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight ``g * v / ||v||`` ``(num_classes, in_dim)``."""
        return self.fc.weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(_flat(h))
