r"""Contrastive objectives on embeddings (components.md, section 6).

All losses take raw embeddings and L2-normalise them inside, so a caller never has to
remember to: the similarities are cosines divided by a temperature :math:`\tau`.

- `info_nce` — one-directional InfoNCE (van den Oord et al. 2018; MoCo, He et al. 2020):
  the positive of query :math:`q_i` is key :math:`k_i`; the negatives are the other keys of
  the batch, or the rows of a MoCo queue when one is given.
- `nt_xent` — SimCLR's normalised-temperature cross-entropy (Chen et al. 2020, Eq. 1) over
  the :math:`2N` views of a batch: every view is an anchor, its partner is the positive,
  the other :math:`2N-2` views are negatives.
- `supcon` — the supervised contrastive loss :math:`\mathcal{L}^{sup}_{out}` (Khosla et al.
  2020, Eq. 2): positives are all other samples with the anchor's label.
- `spectral` — the spectral contrastive loss (HaoChen et al. 2021, Eq. 5).
- `pair_masks` — positive/negative masks from labels within a window (shared by the
  imbalanced-regression chapters: ConR, SupReMix).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["info_nce", "nt_xent", "supcon", "spectral", "pair_masks"]


def _unit(z: torch.Tensor) -> torch.Tensor:
    return F.normalize(z.float(), dim=-1)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None = None,
             tau: float = 0.2) -> torch.Tensor:
    r"""InfoNCE with key :math:`k_i` as the positive of query :math:`q_i`.

    .. math:: \ell_i = -\log \frac{\exp(q_i\cdot k_i/\tau)}{\exp(q_i\cdot k_i/\tau) + \sum_{n} \exp(q_i\cdot n/\tau)}

    Args:
        q, k: ``(N, D)`` queries and keys (normalised inside).
        queue: ``None`` — the negatives of :math:`q_i` are the other keys :math:`k_{j\ne i}`
            of the batch (CLIP/CPC style); ``(K, D)`` — the negatives are the queue's rows
            only (MoCo; the other batch keys are *not* negatives, as in the paper).
        tau: temperature.
    Returns:
        Scalar, the mean of :math:`\ell_i`.
    """
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    q, k = _unit(q), _unit(k)
    if queue is None:
        logits = q @ k.T / tau                                   # (N, N); positives on the diagonal
        target = torch.arange(len(q), device=q.device)
    else:
        pos = (q * k).sum(-1, keepdim=True)                      # (N, 1)
        neg = q @ _unit(queue).T                                 # (N, K)
        logits = torch.cat([pos, neg], dim=1) / tau
        target = torch.zeros(len(q), dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    r"""SimCLR's NT-Xent loss over the :math:`2N` views :math:`(z1_1..z1_N, z2_1..z2_N)`.

    Each of the :math:`2N` views is an anchor; its positive is the other view of the same
    image; the denominator runs over all :math:`2N-1` other views (Chen et al. 2020, Eq. 1,
    averaged over both orderings of every pair).

    Args: ``z1, z2`` ``(N, D)``, the two views' projections. Returns a scalar.
    """
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = len(z1)
    z = _unit(torch.cat([z1, z2]))                               # (2N, D)
    sim = z @ z.T / tau
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def supcon(z: torch.Tensor, y: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    r"""Supervised contrastive loss :math:`\mathcal{L}^{sup}_{out}` (Khosla et al. 2020, Eq. 2).

    .. math:: \mathcal{L} = \frac{1}{|A|}\sum_{i\in A} \frac{-1}{|P(i)|} \sum_{p\in P(i)}
              \log \frac{\exp(z_i\cdot z_p/\tau)}{\sum_{a\ne i}\exp(z_i\cdot z_a/\tau)}

    Args:
        z: ``(N, D)`` embeddings; stack all views of all images along ``N``.
        y: ``(N,)`` integer labels (views of one image share its label).
        tau: temperature.
    Anchors with no positive (a label seen once in the batch) are left out of :math:`A`;
    a batch with no positive pair at all gives 0 (with a gradient path).
    """
    if len(z) != len(y):
        raise ValueError(f"z has {len(z)} rows but y has {len(y)} labels")
    z = _unit(z)
    n = len(z)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = (z @ z.T / tau).masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]).to(z.device) & ~eye
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not has.any():
        return z.sum() * 0.0
    mean_log_prob_pos = log_prob.masked_fill(~pos, 0.0).sum(1)[has] / n_pos[has]
    return -mean_log_prob_pos.mean()


def spectral(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    r"""Spectral contrastive loss (HaoChen et al. 2021, Eq. 5), on the raw embeddings.

    .. math:: \mathcal{L} = -2\,\mathbb{E}_i[z1_i^\top z2_i] + \mathbb{E}_{i\ne j}[(z1_i^\top z2_j)^2]

    Unlike the other losses this one is *not* normalised: the embedding norm is part of
    the objective (the paper's :math:`f(x)` is unconstrained).
    """
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = len(z1)
    if n < 2:
        raise ValueError("spectral needs at least 2 pairs (the negative term averages over i != j)")
    z1, z2 = z1.float(), z2.float()
    pos = (z1 * z2).sum(-1).mean()
    cross = (z1 @ z2.T) ** 2
    off = cross.masked_fill(torch.eye(n, dtype=torch.bool, device=z1.device), 0.0).sum() / (n * (n - 1))
    return -2.0 * pos + off


def pair_masks(y: torch.Tensor, window: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Positive and negative pair masks from labels: ``pos[i, j] = |y_i - y_j| <= window``.

    Args:
        y: ``(N,)`` or ``(N, 1)`` labels, integer classes or continuous targets.
        window: label distance still counted as similar (0: equal labels only).
    Returns:
        ``(pos, neg)``, boolean ``(N, N)``; the diagonal is False in both.
    """
    y = y.reshape(len(y), -1).float()
    if y.shape[1] != 1:
        raise ValueError(f"pair_masks expects one label per sample, got shape {tuple(y.shape)}")
    dist = (y - y.T).abs()
    eye = torch.eye(len(y), dtype=torch.bool, device=y.device)
    pos = (dist <= window) & ~eye
    neg = ~(dist <= window) & ~eye
    return pos, neg
