r"""Why the representation *before* the projection head is the better one
(Xue, Gan, Ni, Joshi & Mirzasoleiman, "Investigating the Benefits of Projection Head for
Representation Learning", ICLR 2024, arXiv:2403.11391).

Part A, the paper's theory model: a deep *linear* encoder :math:`f(x) = W_L \cdots W_1 x`
trained from a small initialisation by full-batch gradient descent on the spectral
contrastive loss (HaoChen et al., 2021),

.. math:: \mathcal L(f) = -2\,\mathbb E_{x,x^+}[f(x)^\top f(x^+)]
                        + \mathbb E_{x,x'}[(f(x)^\top f(x'))^2],

with :math:`x'` independent of :math:`x`. For a linear :math:`f = F x` both terms are functions
of second moments only,

.. math:: \mathcal L(F) = -2\,\mathrm{tr}(F C_+ F^\top) + \lVert F \Sigma F^\top\rVert_F^2,
          \quad C_+ = \mathbb E[x x^{+\top}],\ \Sigma = \mathbb E[x x^\top],

so one GD step costs :math:`O(d^2 h)` whatever the number of samples (`spectral_moments`).
Gradient descent from a small balanced start keeps the layers balanced
(:math:`W_{l+1}^\top W_{l+1} \approx W_l W_l^\top`), so a direction's gain in layer :math:`l` is
about the :math:`l/L`-th power of its gain at the top: the weights of the input features grow
*more unequal with depth* (the paper's "layer-wise progressive feature weighting").

Part B, supervised contrastive pretraining with a head (`SupConModel`, `supcon_pretrain`)
and the paper's Sec. 7 alternative to a learned head, a *fixed* diagonal re-weighting
(`FixedReweightHead`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..losses.contrastive import supcon
from ..metrics.representation import feature_weights, weight_spread
from ..models.mlp import ProjectionHead
from ..train import fit
from ..train.ssl import EncoderWithHead

__all__ = ["pair_moments", "spectral_moments", "spectral_pairs", "balanced_init", "train_linear",
           "train_relu", "layer_outputs", "weight_profile", "FixedReweightHead", "make_head",
           "SupConModel", "supcon_pretrain", "digit_augment"]


# ----------------------------------------------------------------------------- part A
def pair_moments(x: torch.Tensor, x_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample moments of the pairs: :math:`C_+` (symmetrised cross-view covariance) and
    :math:`\\Sigma` (second moment of all views), both ``(d, d)`` float64.

    ``x, x_pos``: ``(N, d)``, row i of ``x_pos`` the positive view of row i of ``x``.
    """
    x, xp = x.double(), x_pos.double()
    n = len(x)
    c = x.T @ xp / n
    c_pos = (c + c.T) / 2                                   # E[x x+^T], both orders of the pair
    sigma = (x.T @ x + xp.T @ xp) / (2 * n)                 # E[x x^T] over both views
    return c_pos, sigma


def _product(layers: Sequence[torch.Tensor]) -> torch.Tensor:
    f = layers[0]
    for w in layers[1:]:
        f = w @ f                                           # F = W_L ... W_1
    return f


def spectral_moments(layers: Sequence[torch.Tensor], c_pos: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Population spectral loss of the linear map ``F = W_L ... W_1`` (``layers`` in the order
    they act): :math:`-2\\,\\mathrm{tr}(F C_+ F^\\top) + \\lVert F\\Sigma F^\\top\\rVert_F^2`."""
    f = _product(layers)
    attract = torch.trace(f @ c_pos @ f.T)                  # E[f(x)^T f(x+)]
    repel = (f @ sigma @ f.T).pow(2).sum()                  # E[(f(x)^T f(x'))^2], x' independent
    return -2.0 * attract + repel


def spectral_pairs(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """The same value as `replibook.losses.contrastive.spectral` (negatives i != j) in
    :math:`O(N D^2)` instead of :math:`O(N^2 D)`, using
    :math:`\\sum_{i,j} (a_i^\\top b_j)^2 = \\langle A^\\top A, B^\\top B\\rangle_F`; for full-batch
    training on thousands of pairs."""
    n = len(z1)
    if z1.shape != z2.shape or n < 2:
        raise ValueError("z1 and z2 must have the same shape (N >= 2, D)")
    diag = (z1 * z2).sum(1)                                 # a_i^T b_i
    all_pairs = ((z1.T @ z1) * (z2.T @ z2)).sum()           # sum_{i,j} (a_i^T b_j)^2
    return -2.0 * diag.mean() + (all_pairs - diag.pow(2).sum()) / (n * (n - 1))


def balanced_init(widths: Sequence[int], scale: float, seed: int) -> list[torch.Tensor]:
    """Gaussian layers ``widths[l+1] x widths[l]`` with entries of std ``scale / sqrt(fan_in)``
    (float64, seeded)."""
    g = torch.Generator().manual_seed(int(seed))
    return [torch.randn(o, i, generator=g, dtype=torch.float64) * scale / i ** 0.5
            for i, o in zip(widths[:-1], widths[1:])]


def train_linear(x: torch.Tensor, x_pos: torch.Tensor, widths: Sequence[int], *, steps: int,
                 lr: float = 1e-2, init: float = 1e-2, seed: int = 0,
                 record_every: int = 0) -> dict:
    """Full-batch GD (no momentum, no weight decay) of a deep linear encoder on the spectral loss.

    ``widths = [d, h_1, ..., h_L]``. Returns ``{"layers": [W_1, ..., W_L] (float64),
    "loss": final loss, "trace": [(step, loss), ...] every ``record_every`` steps}``.
    """
    c_pos, sigma = pair_moments(x, x_pos)
    layers = [w.requires_grad_() for w in balanced_init(widths, init, seed)]
    trace = []
    for t in range(steps + 1):
        loss = spectral_moments(layers, c_pos, sigma)
        if record_every and t % record_every == 0:
            trace.append((t, float(loss.detach())))
        if t == steps:
            break
        grads = torch.autograd.grad(loss, layers)
        with torch.no_grad():
            for w, g in zip(layers, grads):
                w -= lr * g                                 # W <- W - lr dL/dW
    return {"layers": [w.detach() for w in layers], "loss": float(loss.detach()), "trace": trace}


def train_relu(x: torch.Tensor, x_pos: torch.Tensor, widths: Sequence[int], *, steps: int,
               lr: float = 1e-2, init: float = 1e-2, seed: int = 0) -> dict:
    """Full-batch GD of :math:`f(x) = W_2\\,\\mathrm{relu}(W_1 x)` on the spectral loss
    (`spectral_pairs` over all N pairs). ``widths = [d, h, out]``."""
    if len(widths) != 3:
        raise ValueError("train_relu expects widths [d, hidden, out]")
    w1, w2 = (w.float().requires_grad_() for w in balanced_init(widths, init, seed))
    x, xp = x.float(), x_pos.float()
    for _ in range(steps):
        loss = spectral_pairs(torch.relu(x @ w1.T) @ w2.T, torch.relu(xp @ w1.T) @ w2.T)
        g1, g2 = torch.autograd.grad(loss, [w1, w2])
        with torch.no_grad():
            w1 -= lr * g1
            w2 -= lr * g2
    with torch.no_grad():
        loss = spectral_pairs(torch.relu(x @ w1.T) @ w2.T, torch.relu(xp @ w1.T) @ w2.T)
    return {"layers": [w1.detach(), w2.detach()], "loss": float(loss)}


def layer_outputs(layers: Sequence[torch.Tensor], x: torch.Tensor, relu: bool = False) -> list[torch.Tensor]:
    """Representations after each layer, ``[W_1 x, W_2 W_1 x, ...]`` (with ``relu``: the ReLU
    after every layer but the last, i.e. ``[relu(W_1 x), W_2 relu(W_1 x)]``)."""
    outs, h = [], x.to(layers[0].dtype)
    for i, w in enumerate(layers):
        h = h @ w.T
        if relu and i < len(layers) - 1:
            h = torch.relu(h)
        outs.append(h)
    return outs


def weight_profile(layers: Sequence[torch.Tensor], directions: torch.Tensor) -> list[dict]:
    """Per layer l: the feature weights :math:`\\lVert W_l\\cdots W_1 u_k\\rVert` and their spread."""
    out = []
    for depth in range(1, len(layers) + 1):
        w = feature_weights(list(layers[:depth]), directions)
        out.append({"layer": depth, "weights": w, "spread": weight_spread(w)})
    return out


# ----------------------------------------------------------------------------- part B
class FixedReweightHead(nn.Module):
    r"""A non-trainable diagonal head :math:`g(h) = \mathrm{diag}(1, \kappa^{-1}, \dots,
    \kappa^{-(p-1)})\, h` (paper Sec. 7 as we read it; the form could not be checked
    against the paper's text, see the chapter). :math:`\kappa = 1` is no head; a larger
    :math:`\kappa` lets the loss lean on the first coordinates and leaves the others of the
    pre-head representation less specialised. Shapes: ``(B, p) -> (B, p)``."""

    def __init__(self, dim: int, kappa: float):
        super().__init__()
        if kappa < 1:
            raise ValueError(f"kappa must be >= 1, got {kappa}")
        self.kappa = float(kappa)
        self.register_buffer("scales", torch.tensor(float(kappa)) ** -torch.arange(dim, dtype=torch.float32))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.scales


def make_head(kind: str, dim: int, kappa: float = 1.02, norm: str | None = "bn") -> nn.Module:
    """``"mlp"`` (Linear-norm-ReLU-Linear, output as wide as the input, as in the co-author
    code), ``"none"``, or ``"fixed_diag"`` (`FixedReweightHead`)."""
    if kind == "fixed_diag":
        return FixedReweightHead(dim, kappa)
    return ProjectionHead(dim, hidden=dim, out_dim=dim, kind=kind, norm=norm if kind == "mlp" else None)


SupConModel = EncoderWithHead      # encoder + head; forward returns the head output (what the loss sees)


def supcon_pretrain(model: SupConModel, x: torch.Tensor, y: torch.Tensor, *, steps: int,
                    batch_size: int = 256, lr: float = 1e-3, tau: float = 0.1,
                    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                    weight_decay: float = 1e-5, seed: int = 0, progress: bool = False, desc: str = "SupCon"):
    """Train ``model`` in place on `supcon` over two augmented views of each minibatch
    (labels ``y``: the coarse classes). Returns fit's History; the model ends in eval mode."""
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    aug = augment or (lambda b, g: b)

    def loss_fn(m, xb, yb):
        views = torch.cat([aug(xb, gen), aug(xb, gen)])     # 2B views, labels repeated
        return supcon(m(views), torch.cat([yb, yb]), tau=tau)

    hist = fit(model, (x, y), steps=steps, batch_size=batch_size, lr=lr, opt="adamw",
               weight_decay=weight_decay, loss_fn=loss_fn, seed=seed, progress=progress, desc=desc)
    model.eval()
    return hist


def digit_augment(x: torch.Tensor, generator: torch.Generator | None = None, shift: int = 2,
                  noise: float = 0.1, erase: int = 4) -> torch.Tensor:
    """Small-image views for digits ``(B, 1, H, W)`` in [0, 1]: a random translation by up to
    ``shift`` pixels (zero fill; no flips, digits are not mirror-symmetric), Gaussian pixel noise
    of std ``noise`` and one ``erase`` x ``erase`` square set to 0 at a random place."""
    b, _, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (shift, shift, shift, shift))
    dy = torch.randint(0, 2 * shift + 1, (b,), generator=generator).to(dev)
    dx = torch.randint(0, 2 * shift + 1, (b,), generator=generator).to(dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    out = padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(x.shape[1], device=dev)[None, :, None, None], rows, cols]
    out = out + noise * torch.randn(out.shape, generator=generator).to(dev)
    if erase:
        ey = torch.randint(0, h - erase + 1, (b,), generator=generator).to(dev)
        ex = torch.randint(0, w - erase + 1, (b,), generator=generator).to(dev)
        r = torch.arange(h, device=dev)[None, :, None]
        c = torch.arange(w, device=dev)[None, None, :]
        hole = ((r >= ey[:, None, None]) & (r < ey[:, None, None] + erase)
                & (c >= ex[:, None, None]) & (c < ex[:, None, None] + erase))
        out = out.masked_fill(hole[:, None], 0.0)
    return out
