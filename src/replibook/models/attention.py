r"""Self-attention variants behind one interface, and a registry that picks one by name.

Every module here maps tokens to tokens and may return its attention maps::

    attn = make_attention("softmax", dim=64, heads=4)
    out, maps = attn(x, mask=None, return_maps=False)   # x: (B, N, dim) -> out: (B, N, dim)

- ``mask``: optional key-padding mask ``(B, N)`` bool, **True where a token is
  padding** (PyTorch's ``key_padding_mask`` convention, also used by
  ``models.norm.BatchNormSeq``). Padded tokens are never attended to; their own
  outputs are computed but meaningless.
- ``maps``: ``None`` unless ``return_maps=True``; then the (possibly implicit)
  attention matrix, ``(B, heads, N, N)`` (Linformer: ``(B, heads, N, k)``).
  Materialising it costs :math:`O(N^2)` even for the linear variants: use it for
  analysis, not in the training loop.

Variants (per head, :math:`Q, K, V \in \mathbb{R}^{n\times d}`):

====================  =====================================================================
name                  operator
====================  =====================================================================
``softmax``           :math:`\mathrm{softmax}(QK^\top/\sqrt d)\,V` (Vaswani et al. 2017)
``nystrom``           Nystromformer (Xiong et al. 2021): landmarks :math:`\tilde Q, \tilde K`
                      (segment means), :math:`\mathrm{sm}(Q\tilde K^\top)\,
                      \mathrm{sm}(\tilde Q\tilde K^\top)^+\,\mathrm{sm}(\tilde QK^\top)\,V`
``performer``         FAVOR+ (Choromanski et al. 2021): positive orthogonal random features
                      :math:`\phi` with :math:`E[\phi(q)^\top\phi(k)] = e^{q^\top k}`,
                      :math:`\phi(Q)(\phi(K)^\top V) / \phi(Q)(\phi(K)^\top 1)`
``linformer``         Linformer (Wang et al. 2020): keys and values projected along the
                      sequence to length :math:`k`, :math:`\mathrm{sm}(Q(EK)^\top)\,FV`
``linear``            Katharopoulos et al. (2020): :math:`\phi = \mathrm{elu} + 1`,
                      :math:`\phi(Q)(\phi(K)^\top V) / \phi(Q)(\phi(K)^\top 1)`
====================  =====================================================================

Paper-specific attentions register themselves from their ``replibook.methods``
module (e.g. SOFT's Gaussian-kernel Nystrom attention as ``"soft"``), after
which every shared model (``models.vit.TinyViT``) takes them by name.

Context arguments. Some variants need to know the token layout: Linformer its
maximum ``seq_len``, SOFT the 2-D ``grid`` of patch tokens and the number of
``num_prefix_tokens`` (a CLS token) in front of them. Models pass these three to
`make_attention`, which forwards each only to factories that accept it, so a
model never needs to know which variant it is building.
"""
from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from ..errors import UnknownName
from ..registry import Registry

__all__ = [
    "SoftmaxAttention", "NystromAttention", "PerformerAttention", "LinformerAttention",
    "LinearAttention", "softmax_attention", "iterative_pinv", "landmark_means",
    "orthogonal_gaussian", "favor_features", "split_heads", "merge_heads", "check_padding_mask",
    "register_attention", "unregister_attention", "make_attention", "available_attentions",
    "attention_entry", "CONTEXT_KEYS",
]


# ----------------------------------------------------------------------------- helpers

def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, N, heads * d) -> (B, heads, N, d)``."""
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """``(B, heads, N, d) -> (B, N, heads * d)``."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def check_padding_mask(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """Validate a key-padding mask for tokens ``x: (B, N, C)``; returns it as bool or None."""
    if mask is None:
        return None
    if mask.shape != x.shape[:2]:
        raise ValueError(f"padding mask must be (B, N) = {tuple(x.shape[:2])}, "
                         f"got {tuple(mask.shape)}")
    return mask.to(torch.bool)


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      mask: torch.Tensor | None = None, causal: bool = False,
                      dropout_p: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Explicit scaled dot-product attention; returns ``(out, probs)``.

    :math:`A = \mathrm{softmax}(QK^\top/\sqrt d)` with padded keys (``mask`` True)
    and, if ``causal``, future keys set to :math:`-\infty` before the softmax.
    Shapes: ``q, k, v: (B, h, N, d)``, ``mask: (B, N)`` -> ``out: (B, h, N, d)``,
    ``probs: (B, h, N, N)``.
    """
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])          # Q K^T / sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(mask[:, None, None, :], float("-inf"))
    if causal:
        n_q, n_k = scores.shape[-2:]
        future = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    probs = scores.softmax(dim=-1)                                       # rows sum to 1
    attn = F.dropout(probs, dropout_p) if dropout_p > 0 else probs
    return attn @ v, probs


def iterative_pinv(a: torch.Tensor, iters: int = 6) -> torch.Tensor:
    r"""Moore-Penrose inverse by Nystromformer's iteration (Xiong et al. 2021, eq. 16).

    :math:`Z_0 = A^\top / (\|A\|_1 \|A\|_\infty)`, then
    :math:`Z_{k+1} = \tfrac14 Z_k (13I - AZ_k(15I - AZ_k(7I - AZ_k)))`, which
    converges to :math:`A^+` (third order). Gradients flow through the iterations.
    Shapes: ``a: (*, m, m) -> (*, m, m)``.
    """
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    col = a.abs().sum(dim=-2).amax(dim=-1)                                # ||A||_1 (max column sum)
    row = a.abs().sum(dim=-1).amax(dim=-1)                                # ||A||_inf (max row sum)
    z = a.transpose(-1, -2) / (col * row)[..., None, None]
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def _resolve_pinv(pinv: str | Callable[[torch.Tensor], torch.Tensor], iters: int
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    if callable(pinv):
        return pinv
    if pinv == "iterative":
        return functools.partial(iterative_pinv, iters=iters)
    if pinv == "exact":
        return torch.linalg.pinv
    raise ValueError(f"pinv must be 'iterative', 'exact' or a callable, got {pinv!r}")


def landmark_means(t: torch.Tensor, m: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Nystromformer's landmarks: means of ``m`` contiguous segments of the sequence.

    Segments follow ``F.adaptive_avg_pool1d`` (so ``N`` need not be a multiple of
    ``m``; ``m = N`` returns the tokens themselves). With a padding mask the mean is
    over the valid tokens of each segment (an all-padding segment gives zeros).
    Shapes: ``t: (B, h, N, d)``, ``mask: (B, N)`` -> ``(B, h, m, d)``.
    """
    b, h, n, d = t.shape
    if not 1 <= m <= n:
        raise ValueError(f"need 1 <= landmarks <= tokens, got {m} landmarks for {n} tokens")
    flat = t.reshape(b * h, n, d).transpose(1, 2)                         # (B h, d, N)
    if mask is None:
        pooled = F.adaptive_avg_pool1d(flat, m)
    else:
        valid = (~mask).to(t.dtype)[:, None, :].expand(b, h, n).reshape(b * h, 1, n)
        num = F.adaptive_avg_pool1d(flat * valid, m)
        den = F.adaptive_avg_pool1d(valid, m)
        pooled = num / den.clamp_min(1e-6)
    return pooled.transpose(1, 2).reshape(b, h, m, d)


def orthogonal_gaussian(m: int, d: int, generator: torch.Generator | None = None,
                        orthogonal: bool = True) -> torch.Tensor:
    r"""``m`` random feature directions ``(m, d)`` for FAVOR+.

    ``orthogonal=True``: blocks of ``d`` exactly orthogonal rows (QR of a Gaussian
    matrix), each row rescaled to the norm of an independent Gaussian vector, so
    every row is still marginally :math:`\mathcal N(0, I_d)` (Choromanski et al.
    2021, Sec. 2.4). ``orthogonal=False``: i.i.d. Gaussian rows.
    """
    if not orthogonal:
        return torch.randn(m, d, generator=generator)
    blocks = []
    for _ in range(math.ceil(m / d)):
        g = torch.randn(d, d, generator=generator)
        qmat, _ = torch.linalg.qr(g)
        blocks.append(qmat.T)                                            # rows orthonormal
    w = torch.cat(blocks)[:m]
    norms = torch.randn(m, d, generator=generator).norm(dim=1, keepdim=True)
    return w * norms


def favor_features(x: torch.Tensor, w: torch.Tensor, is_query: bool) -> torch.Tensor:
    r"""Positive random features :math:`\phi(x) = \exp(w^\top x - \|x\|^2/2 - c)/\sqrt m`.

    :math:`E_w[\phi(q)^\top\phi(k)] = e^{q^\top k} e^{-c_q - c_k}`. The stabiliser
    :math:`c` (the max of :math:`w^\top x` per query row, or over all keys of a
    head) keeps the exponentials finite and cancels in attention's normalisation.
    Shapes: ``x: (B, h, N, d)``, ``w: (m, d)`` -> ``(B, h, N, m)``.
    """
    proj = x @ w.T                                                        # w^T x
    sq = 0.5 * (x * x).sum(dim=-1, keepdim=True)                          # ||x||^2 / 2
    if is_query:
        stab = proj.amax(dim=-1, keepdim=True)
    else:
        stab = proj.amax(dim=(-2, -1), keepdim=True)
    return torch.exp(proj - sq - stab.detach()) / math.sqrt(w.shape[0]) + 1e-6


class _Attention(nn.Module):
    """Shared projections ``x -> Q, K, V`` (one Linear) and the output projection."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, head_dim: int | None = None):
        super().__init__()
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"dim {dim} is not divisible by heads {heads}")
            head_dim = dim // heads
        self.dim, self.heads, self.head_dim = dim, heads, head_dim
        inner = heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x: (B, N, dim)`` -> ``q, k, v: (B, heads, N, head_dim)``."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, head_dim={self.head_dim}"


# ---------------------------------------------------------------------------- variants

class SoftmaxAttention(_Attention):
    r"""Multi-head scaled dot-product attention (Vaswani et al. 2017):
    :math:`\mathrm{softmax}(QK^\top/\sqrt d)V` per head, then an output projection.

    Without ``return_maps`` it calls ``F.scaled_dot_product_attention`` (fused
    kernels where available); with it, the explicit `softmax_attention` (same
    function, tested). Weights load from ``nn.MultiheadAttention``:
    ``qkv.weight = in_proj_weight``, ``proj = out_proj`` (tested).

    Args: ``dim``, ``heads``; ``qkv_bias``; ``dropout`` on the attention probabilities
    (training only); ``causal`` masks future tokens.
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, dropout: float = 0.0,
                 causal: bool = False, head_dim: int | None = None):
        super().__init__(dim, heads, qkv_bias, head_dim)
        self.dropout, self.causal = dropout, causal

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                return_maps: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = check_padding_mask(mask, x)
        q, k, v = self.qkv_heads(x)
        p = self.dropout if self.training else 0.0
        if return_maps:
            out, maps = softmax_attention(q, k, v, mask, self.causal, p)
        else:
            keep = None
            if mask is not None:
                keep = ~mask[:, None, None, :]                           # True = may attend
            if self.causal and keep is not None:
                n = x.shape[1]
                keep = keep & torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p,
                                                 is_causal=self.causal and keep is None)
            maps = None
        return self.proj(merge_heads(out)), maps


class NystromAttention(_Attention):
    r"""Nystromformer (Xiong et al. 2021, arXiv:2102.03902): softmax attention through landmarks.

    With segment-mean landmarks :math:`\tilde Q, \tilde K \in \mathbb R^{m\times d}`,

    .. math::
        \hat A = \underbrace{\mathrm{sm}(Q\tilde K^\top/\sqrt d)}_{n\times m}\,
                 \underbrace{\mathrm{sm}(\tilde Q\tilde K^\top/\sqrt d)^+}_{m\times m}\,
                 \underbrace{\mathrm{sm}(\tilde QK^\top/\sqrt d)}_{m\times n},
        \qquad \text{out} = \hat A V

    computed right to left, :math:`O(nmd)`. With :math:`m = n` the landmarks are
    the tokens and, with an exact pseudo-inverse, :math:`\hat A = A A^+ A = A`:
    exact softmax attention (the known answer the tests use).

    Args:
        num_landmarks: ``m`` (clipped to the sequence length).
        pinv: ``"iterative"`` (Nystromformer's iteration, `iterative_pinv`),
            ``"exact"`` (``torch.linalg.pinv``) or a callable ``A -> A^+`` (e.g. SOFT's
            Newton iteration, to compare both kernels with the same inverse).
        pinv_iters: iterations of ``"iterative"`` (6 in the paper).
    """

    def __init__(self, dim: int, heads: int, num_landmarks: int = 64,
                 pinv: str | Callable[[torch.Tensor], torch.Tensor] = "iterative",
                 pinv_iters: int = 6, qkv_bias: bool = True, head_dim: int | None = None):
        super().__init__(dim, heads, qkv_bias, head_dim)
        self.num_landmarks, self.pinv_iters = num_landmarks, pinv_iters
        self.pinv_name = pinv if isinstance(pinv, str) else getattr(pinv, "__name__", "callable")
        self._pinv = _resolve_pinv(pinv, pinv_iters)

    def kernels(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three softmax kernels ``(n x m, m x m pinv-ed, m x n)`` of one forward pass."""
        m = min(self.num_landmarks, q.shape[2])
        scale = q.shape[-1] ** -0.5
        q_l, k_l = landmark_means(q, m, mask), landmark_means(k, m, mask)
        k1 = (q @ k_l.transpose(-1, -2) * scale).softmax(-1)              # sm(Q K~^T)
        k2 = (q_l @ k_l.transpose(-1, -2) * scale).softmax(-1)            # sm(Q~ K~^T)
        s3 = q_l @ k.transpose(-1, -2) * scale
        if mask is not None:
            s3 = s3.masked_fill(mask[:, None, None, :], float("-inf"))
        k3 = s3.softmax(-1)                                               # sm(Q~ K^T)
        return k1, self._pinv(k2), k3

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                return_maps: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = check_padding_mask(mask, x)
        q, k, v = self.qkv_heads(x)
        k1, k2_inv, k3 = self.kernels(q, k, mask)
        out = k1 @ (k2_inv @ (k3 @ v))                                     # right to left: O(n m d)
        maps = k1 @ k2_inv @ k3 if return_maps else None
        return self.proj(merge_heads(out)), maps

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, landmarks={self.num_landmarks}, pinv={self.pinv_name}"


class PerformerAttention(_Attention):
    r"""Performer / FAVOR+ (Choromanski et al. 2021, arXiv:2009.14794).

    Softmax attention's kernel :math:`e^{q^\top k/\sqrt d}` is estimated with
    ``num_features`` positive random features of :math:`q d^{-1/4}, k d^{-1/4}`
    (`favor_features`), and attention becomes
    :math:`\phi(Q)(\phi(K)^\top V)\,/\,\phi(Q)(\phi(K)^\top\mathbf 1)`, :math:`O(nmd)`.
    The estimate is unbiased for the kernel and its error falls as
    :math:`1/\sqrt m` (tested against exact attention).

    The random directions are a buffer drawn at construction from torch's global
    generator (so ``torch.manual_seed`` fixes them) and kept fixed; call
    `redraw_features` to draw new ones. Orthogonal blocks by default.
    """

    def __init__(self, dim: int, heads: int, num_features: int = 64, orthogonal: bool = True,
                 qkv_bias: bool = True, head_dim: int | None = None):
        super().__init__(dim, heads, qkv_bias, head_dim)
        self.num_features, self.orthogonal = num_features, orthogonal
        self.register_buffer("features", orthogonal_gaussian(num_features, self.head_dim,
                                                             orthogonal=orthogonal))

    @torch.no_grad()
    def redraw_features(self, generator: torch.Generator | None = None) -> None:
        w = orthogonal_gaussian(self.num_features, self.head_dim, generator, self.orthogonal)
        self.features.copy_(w.to(self.features))

    def feature_maps(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``phi(Q), phi(K)``: ``(B, h, N, m)``; padded keys get zero features."""
        scale = q.shape[-1] ** -0.25                                      # q^T k / sqrt(d) split
        w = self.features.to(q.dtype)
        phi_q = favor_features(q * scale, w, is_query=True)
        if mask is not None:
            k = k.masked_fill(mask[:, None, :, None], 0.0)
        phi_k = favor_features(k * scale, w, is_query=False)
        if mask is not None:
            phi_k = phi_k.masked_fill(mask[:, None, :, None], 0.0)
        return phi_q, phi_k

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                return_maps: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = check_padding_mask(mask, x)
        q, k, v = self.qkv_heads(x)
        phi_q, phi_k = self.feature_maps(q, k, mask)
        kv = phi_k.transpose(-1, -2) @ v                                  # phi(K)^T V: (m, d)
        norm = phi_q @ phi_k.sum(dim=-2, keepdim=True).transpose(-1, -2)  # phi(Q) phi(K)^T 1
        out = (phi_q @ kv) / norm
        maps = None
        if return_maps:
            scores = phi_q @ phi_k.transpose(-1, -2)
            maps = scores / scores.sum(dim=-1, keepdim=True)
        return self.proj(merge_heads(out)), maps

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, features={self.num_features}, orthogonal={self.orthogonal}"


class LinformerAttention(_Attention):
    r"""Linformer (Wang et al. 2020, arXiv:2006.04768): keys and values projected along the
    sequence.

    Learned :math:`E, F \in \mathbb R^{k\times n}` (shared by the heads) give
    :math:`\mathrm{softmax}(Q(EK)^\top/\sqrt d)\,(FV)`, :math:`O(nkd)`. The layer is
    built for a maximum ``seq_len``; a shorter input uses the first columns of
    :math:`E, F`. Padded keys and values are zeroed before the projection. With
    :math:`k = n` and :math:`E = F = I` it is exact softmax attention (tested).

    Maps are ``(B, heads, N, k)`` (attention over the projected keys).
    """

    def __init__(self, dim: int, heads: int, seq_len: int, k: int = 64, share_kv: bool = False,
                 qkv_bias: bool = True, head_dim: int | None = None):
        super().__init__(dim, heads, qkv_bias, head_dim)
        self.seq_len, self.k, self.share_kv = seq_len, k, share_kv
        self.E = nn.Parameter(torch.randn(k, seq_len) / math.sqrt(k))
        self.F = self.E if share_kv else nn.Parameter(torch.randn(k, seq_len) / math.sqrt(k))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                return_maps: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = check_padding_mask(mask, x)
        n = x.shape[1]
        if n > self.seq_len:
            raise ValueError(f"LinformerAttention was built for {self.seq_len} tokens, got {n}")
        q, k, v = self.qkv_heads(x)
        if mask is not None:
            keep = (~mask)[:, None, :, None].to(k.dtype)
            k, v = k * keep, v * keep
        k_proj = self.E[:, :n] @ k                                         # E K: (B, h, k, d)
        v_proj = self.F[:, :n] @ v                                         # F V
        out, probs = softmax_attention(q, k_proj, v_proj)
        return self.proj(merge_heads(out)), probs if return_maps else None

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, seq_len={self.seq_len}, k={self.k}, "
                f"share_kv={self.share_kv}")


class LinearAttention(_Attention):
    r"""Linear attention (Katharopoulos et al. 2020, arXiv:2006.16236).

    Feature map :math:`\phi = \mathrm{elu}+1`:

    :math:`\mathrm{out}_i = \phi(q_i)^\top \sum_j \phi(k_j) v_j^\top \,/\,
    \phi(q_i)^\top \sum_j \phi(k_j)`, :math:`O(nd^2)`; equal to normalising
    :math:`\phi(Q)\phi(K)^\top` by its row sums and multiplying by :math:`V` (tested).
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                return_maps: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = check_padding_mask(mask, x)
        q, k, v = self.qkv_heads(x)
        phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
        if mask is not None:
            phi_k = phi_k.masked_fill(mask[:, None, :, None], 0.0)
        kv = phi_k.transpose(-1, -2) @ v                                  # sum_j phi(k_j) v_j^T
        norm = phi_q @ phi_k.sum(dim=-2, keepdim=True).transpose(-1, -2)
        out = (phi_q @ kv) / norm.clamp_min(1e-6)
        maps = None
        if return_maps:
            scores = phi_q @ phi_k.transpose(-1, -2)
            maps = scores / scores.sum(dim=-1, keepdim=True)
        return self.proj(merge_heads(out)), maps


# ---------------------------------------------------------------------------- registry

CONTEXT_KEYS = ("seq_len", "grid", "num_prefix_tokens")


@dataclass
class AttentionEntry:
    """A registered attention: its factory ``(dim, heads, **kw) -> module`` and aliases."""
    name: str
    factory: Callable[..., nn.Module]
    aliases: tuple[str, ...] = ()


_REGISTRY: Registry[AttentionEntry] = Registry(
    "attention", hint="Paper-specific attentions register themselves when their replibook.methods "
                      "module is imported.")


def register_attention(name: str, factory: Callable[..., nn.Module], *, aliases: Sequence[str] = (),
                       overwrite: bool = False) -> Callable[..., nn.Module]:
    """Register ``factory(dim, heads, **kw) -> module`` under ``name`` (and ``aliases``).

    Same rules as ``models.norm.register`` (`replibook.registry.Registry`): names are
    case-insensitive with ``-`` equal to ``_``; registering the same factory again (a
    reloaded methods module) replaces the entry; a different factory under a taken name
    raises unless ``overwrite``.
    """
    _REGISTRY.add(name, factory, aliases, overwrite=overwrite,
                  make_entry=lambda key, alias_keys: AttentionEntry(key, factory, alias_keys))
    return factory


def unregister_attention(name: str) -> None:
    """Remove a registered attention and its aliases."""
    _REGISTRY.remove(name)


def available_attentions(with_aliases: bool = False) -> list[str]:
    """Registered attention names (canonical; plus aliases if asked)."""
    return _REGISTRY.names(with_aliases)


def attention_entry(name: str) -> AttentionEntry:
    """The registry entry for ``name`` (or an alias); ``UnknownName`` lists the known ones."""
    return _REGISTRY.get(name)


def _accepted(factory: Callable, names: Sequence[str]) -> set[str]:
    """Which of ``names`` ``factory`` accepts as keyword arguments (all if it takes ``**kw``)."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return set(names)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return set(names)
    return {n for n in names if n in params}


def make_attention(attn: str | Callable[..., nn.Module], dim: int, heads: int,
                   **kwargs: Any) -> nn.Module:
    """Build an attention module for ``dim`` channels and ``heads`` heads.

    ``attn`` is a registered name (see `available_attentions`), a class, or a
    callable ``(dim, heads, **kw)``. The context keys ``seq_len``, ``grid`` and
    ``num_prefix_tokens`` (`CONTEXT_KEYS`) are passed only to factories that take
    them; every other keyword goes to the factory as is (so a typo is an error).
    """
    if isinstance(attn, str):
        factory = attention_entry(attn).factory
    elif callable(attn):
        factory = attn
    else:
        raise TypeError(f"attn must be a name, a class or a callable, got {type(attn).__name__}")
    context = {k: kwargs.pop(k) for k in CONTEXT_KEYS if k in kwargs}
    accepted = _accepted(factory, list(context))
    kwargs.update({k: v for k, v in context.items() if k in accepted})
    return factory(dim, heads, **kwargs)


register_attention("softmax", SoftmaxAttention, aliases=("mha", "full", "dot_product"))
register_attention("nystrom", NystromAttention, aliases=("nystromformer",))
register_attention("performer", PerformerAttention, aliases=("favor", "favor+"))
register_attention("linformer", LinformerAttention)
register_attention("linear", LinearAttention, aliases=("linear_elu", "katharopoulos"))
