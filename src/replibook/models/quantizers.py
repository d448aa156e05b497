r"""Latent quantizers: per-dimension scalar codebooks with a straight-through gradient.

`ScalarLatentQuantizer` is the latent space of Hsu et al. 2023 ("Disentanglement via
Latent Quantization", Sec. 3): latent dimension :math:`j` has its own learnable scalar
codebook :math:`V_j = (v_{j1}, \dots, v_{jn_v})`, initialised to ``linspace(-0.5, 0.5,
n_v)``; a continuous code is rounded dimension by dimension to the nearest value,

.. math:: z_{q,j} = \operatorname*{arg\,min}_{v \in V_j} |z_{c,j} - v|, \qquad
          \hat z = z_c + \operatorname{sg}(z_q - z_c)

so the forward pass decodes :math:`z_q` while the encoder receives the decoder's gradient
unchanged (straight-through, :math:`\partial \hat z / \partial z_c = I`). Two losses come
with it, averaged over latent dimensions and batch:

.. math:: \mathcal L_\text{quantize} = \overline{(\operatorname{sg}(z_c) - z_q)^2} \;\text{(moves the codebooks)},\qquad
          \mathcal L_\text{commit} = \overline{(z_c - \operatorname{sg}(z_q))^2} \;\text{(pulls the encoder to its code)}.

The code space is a grid of :math:`n_v^{D}` points built from only :math:`D \cdot n_v`
scalars, unlike a VQ-VAE codebook of whole vectors. `usage` summarises how many of the
values a set of codes actually uses.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["ScalarLatentQuantizer", "usage", "perplexity"]


class ScalarLatentQuantizer(nn.Module):
    """Quantize each of ``n_latents`` dimensions to its own learnable scalar codebook.

    Args:
        n_latents: D, the number of latent dimensions.
        n_values: values per codebook, one int for all dimensions or one per dimension
            (shorter codebooks are padded internally and never selected).
        init_range: codebooks start at ``linspace(low, high, n_values)``.
        learn_values: whether the codebook values get gradients (``optimize_values`` in the
            official code); otherwise they stay at their initial grid.

    ``forward(z_c)`` with ``z_c`` (B, D) returns ``(z_hat, z_q, indices, losses)``:
    ``z_hat`` the straight-through code to decode (B, D), ``z_q`` the quantized values
    (B, D), ``indices`` (B, D) long, ``losses`` a dict with the scalar ``"quantization"`` and
    ``"commitment"`` losses (means over batch and dimensions).
    """

    def __init__(self, n_latents: int, n_values: int | Sequence[int] = 10,
                 init_range: tuple[float, float] = (-0.5, 0.5), learn_values: bool = True):
        super().__init__()
        counts = [int(n_values)] * n_latents if isinstance(n_values, int) else [int(v) for v in n_values]
        if len(counts) != n_latents or min(counts) < 1:
            raise ValueError(f"n_values must be a positive int or {n_latents} positive ints, got {n_values}")
        vmax = max(counts)
        lo, hi = init_range
        values = torch.zeros(n_latents, vmax)
        valid = torch.zeros(n_latents, vmax, dtype=torch.bool)
        for j, k in enumerate(counts):
            values[j, :k] = torch.linspace(lo, hi, k)
            valid[j, :k] = True
        self.values = nn.Parameter(values, requires_grad=learn_values)     # (D, V)
        self.register_buffer("valid", valid, persistent=False)
        self.n_latents, self.n_values = n_latents, counts

    def codebook(self, j: int) -> torch.Tensor:
        """The current values of latent ``j``'s codebook, (n_values[j],)."""
        return self.values[j, : self.n_values[j]].detach()

    def quantize(self, z_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codebook value per dimension: ``(z_q, indices)``, both (B, D)."""
        if z_c.ndim != 2 or z_c.shape[1] != self.n_latents:
            raise ValueError(f"expected codes (B, {self.n_latents}), got {tuple(z_c.shape)}")
        dist = (z_c.unsqueeze(-1) - self.values.unsqueeze(0)).abs()          # (B, D, V)
        dist = dist.masked_fill(~self.valid, float("inf"))
        indices = dist.argmin(dim=-1)                                         # (B, D)
        z_q = torch.gather(self.values.expand(z_c.shape[0], -1, -1), 2, indices.unsqueeze(-1)).squeeze(-1)
        return z_q, indices

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook values for integer codes ``indices`` (B, D) -> (B, D)."""
        return torch.gather(self.values.expand(indices.shape[0], -1, -1), 2, indices.unsqueeze(-1)).squeeze(-1)

    def forward(self, z_c: torch.Tensor):
        z_q, indices = self.quantize(z_c)
        z_hat = z_c + (z_q - z_c).detach()                                    # straight-through
        losses = {
            "quantization": ((z_c.detach() - z_q) ** 2).mean(),              # trains the codebooks
            "commitment": ((z_c - z_q.detach()) ** 2).mean(),                # trains the encoder
        }
        return z_hat, z_q, indices, losses


def usage(indices: torch.Tensor, n_values: int) -> torch.Tensor:
    """How often each codebook entry is used: frequencies that sum to 1 over the last axis.

    ``indices`` (N,) (one shared codebook, e.g. a VQ layer) -> (n_values,);
    ``indices`` (N, D) (one codebook per latent) -> (D, n_values). The fraction of entries
    in use is ``(usage(...) > 0).float().mean(-1)``; see also `perplexity`.
    """
    idx = torch.as_tensor(indices).long()
    if idx.numel() and (idx.min() < 0 or idx.max() >= n_values):
        raise ValueError(f"indices must lie in [0, {n_values})")
    if idx.ndim == 1:
        return torch.bincount(idx, minlength=n_values).float() / max(len(idx), 1)
    if idx.ndim != 2:
        raise ValueError(f"indices must be (N,) or (N, D), got {tuple(idx.shape)}")
    onehot = torch.nn.functional.one_hot(idx, n_values).float()              # (N, D, V)
    return onehot.mean(0)


def perplexity(freq: torch.Tensor) -> torch.Tensor:
    """``exp(entropy)`` of usage frequencies along the last axis: the effective number of
    entries in use (1 when one entry takes everything, ``n_values`` when use is uniform)."""
    p = freq.clamp_min(0)
    ent = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
    return torch.exp(ent)
