r"""Multi-layer perceptrons with a swappable normalization, and projection heads.

Norm placement follows the batch-norm and layer-norm papers: the norm acts on
the *summed inputs* of a layer, before its nonlinearity,

.. math:: h^{l+1} = f\big(\mathrm{Norm}(W^l h^l + b^l)\big),

so ``MLP([784, 256, 256, 10], norm="ln")`` is
Linear -> LN -> ReLU -> Linear -> LN -> ReLU -> Linear (the last layer plain,
giving logits). ``norm`` is any name of :mod:`replibook.models.norm`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from .norm import is_norm_activation, make_act, make_norm

__all__ = ["MLP", "ProjectionHead"]


class MLP(nn.Module):
    """Linear -> norm -> activation -> dropout per hidden layer; the last Linear is plain.

    Args:
        sizes: ``[in, hidden_1, ..., out]``; at least two entries.
        norm: a norm name / class / partial (see ``models.norm.make_norm``), or None.
        act: activation name, class or None.
        dropout: dropout probability after each hidden activation.
        norm_last: also normalise the output of the last Linear (no activation there),
            e.g. a BN-ed embedding.
        bias: bias of the Linear layers (with a norm after them it is redundant but
            harmless; set False for the LN invariance tests of the paper's Sec. 5.1).
        flatten: flatten inputs of rank > 2 to ``(B, -1)`` (permutation-invariant MNIST).
        norm_kwargs: extra keyword arguments for every norm, e.g. ``{"num_groups": 4}``.

    Shapes: ``x: (B, sizes[0])`` (or ``(B, *)`` flattening to it) -> ``(B, sizes[-1])``;
    with ``return_features=True`` also the last hidden activations ``(B, sizes[-2])``.
    """

    def __init__(self, sizes: Sequence[int], norm: str | Callable[..., nn.Module] | None = None,
                 act: str | Callable[[], nn.Module] | None = "relu", dropout: float = 0.0,
                 norm_last: bool = False, bias: bool = True, flatten: bool = True,
                 norm_kwargs: dict[str, Any] | None = None):
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2:
            raise ValueError(f"MLP needs at least [in, out] sizes, got {sizes}")
        self.sizes, self.flatten = sizes, flatten
        norm_kwargs = dict(norm_kwargs or {})
        fused = is_norm_activation(norm)
        hidden: list[nn.Module] = []
        for d_in, d_out in zip(sizes[:-2], sizes[1:-1]):
            hidden.append(nn.Linear(d_in, d_out, bias=bias))
            if fused:   # a norm-activation layer (e.g. EvoNorm) replaces both
                hidden.append(make_norm(norm, d_out, apply_act=True, **norm_kwargs))
            else:
                hidden.append(make_norm(norm, d_out, **norm_kwargs))
                hidden.append(make_act(act))
            if dropout > 0:
                hidden.append(nn.Dropout(dropout))
        self.hidden = nn.Sequential(*hidden)
        self.out = nn.Linear(sizes[-2], sizes[-1], bias=bias)
        if norm_last:
            kw = {"apply_act": False, **norm_kwargs} if fused else norm_kwargs
            self.out_norm = make_norm(norm, sizes[-1], **kw)
        else:
            self.out_norm = nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last hidden activations ``(B, sizes[-2])`` (the input itself for a one-layer MLP)."""
        if self.flatten and x.dim() > 2:
            x = x.flatten(1)
        return self.hidden(x)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        h = self.features(x)
        out = self.out_norm(self.out(h))
        return (out, h) if return_features else out


class ProjectionHead(nn.Module):
    """The head between an encoder and a contrastive / distillation loss.

    kind:
        "mlp": Linear(in, hidden) -> [norm] -> act -> Linear(hidden, out) (SimCLR-style);
        "linear": Linear(in, out);
        "none": identity (``out_dim`` is ignored; output = input).

    Shapes: ``(B, in_dim) -> (B, out_dim)`` (``(B, in_dim)`` for "none").
    """

    def __init__(self, in_dim: int, hidden: int | None = None, out_dim: int = 128, kind: str = "mlp",
                 norm: str | Callable[..., nn.Module] | None = None, act: str | None = "relu"):
        super().__init__()
        self.kind = kind
        if kind == "mlp":
            self.net: nn.Module = MLP([in_dim, hidden or in_dim, out_dim], norm=norm, act=act)
        elif kind == "linear":
            self.net = nn.Linear(in_dim, out_dim)
        elif kind == "none":
            self.net = nn.Identity()
        else:
            from ..errors import UnknownName
            raise UnknownName(f"unknown projection head kind {kind!r}; known: mlp, linear, none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
