r"""Chapter `unified-normalization`: Yang et al. (2022), *Unified Normalization for Accelerating
and Stabilizing Transformers*, ACM MM 2022, arXiv:2208.01313.

Why it exists
-------------
Layer norm (LN) computes its statistics per token at inference, which costs a reduction,
a division and a square root for every token. Batch-style ("offline") normalisers use
statistics frozen after training, so at inference they are a per-channel affine map that
can be folded into the adjacent linear layer and disappear. Naively swapping LN for BN in a
Transformer trains badly because token statistics fluctuate strongly from batch to batch
and contain extreme outliers. Unified Normalization (UN) keeps the BN-style (offline)
statistics but

- **smooths fluctuations**: the forward pass divides by the *geometric mean* of the last
  ``W`` per-batch quadratic means, and the backward pass subtracts a window-averaged,
  exponentially smoothed gradient statistic (PowerNorm-style approximate backprop,
  with a scale compensation ``r``);
- **filters outliers**: after warm-up, a batch whose statistic makes the window's
  arithmetic and geometric means drift apart by more than ``W`` times the recorded
  variance of the window is treated as an outlier: its statistic is replaced by the
  running one in the window and the step is not smoothed.

For tokens ``x: (B, N, C)`` and channel ``c`` (no mean subtraction, as in PowerNorm)::

    x2_t      = mean over valid tokens of x^2                        (per channel)
    var_t     = exp(mean_{k<W} log x2_{t-k})   (geometric mean of the window)
    y         = gamma * x / sqrt(var_t + eps) + beta
    running   <- m * running + (1 - m) * var_t                        (m = 0.9)

and at inference ``y = gamma * x / sqrt(running + eps) + beta``: an affine map that
:func:`fold_affine_into_linear` merges into the next ``nn.Linear``.

This module holds the layer (registered as ``make_norm("unified", C)``), the folding,
the chapter's data (variable-length MNIST-1D with a padding mask), training glue,
the latency measurement, three small claim predicates the shared ``claims`` module
lacks, and the figures.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import plots, runtime
from ..models import norm as norm_registry
from ..models.norm import BatchNormSeq

__all__ = [
    "UnifiedNorm", "UNFunction", "norm_affine", "fold_affine_into_linear", "fold_norms",
    "FoldedAway", "ChannelAffine",
    "random_crops", "TokenTask", "load_token_data", "make_token_model", "task_logits",
    "un_modules", "train_token_model", "latency", "collapsed", "arm_norms", "COLOURS",
    "results_table",
    "plot_loss_panels", "plot_fluctuation", "plot_latency",
]


# ------------------------------------------------------------------------------ the layer

class UNFunction(torch.autograd.Function):
    r"""Forward and approximate backward of UN in training mode (paper Sec. 4; Alg. 1).

    ``x: (B, N, C)``; ``valid: (B, N, 1)`` float (1 = real token, 0 = padding) or None;
    ``un`` the :class:`UnifiedNorm` whose buffers hold the windows and running statistics
    (updated in place, as the official implementation does).

    The statistic is taken over the valid tokens only; padded tokens are scaled like the
    others, and since they do not enter ``var_t`` they receive no statistic correction in
    the backward pass. With smoothing off (``W = 1``) the backward is then the *exact*
    gradient of ``gamma * x / sqrt(mean_valid(x^2) + eps) + beta`` (tested with
    ``gradcheck``). The official code averages over all positions, padding included.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, x, weight, bias, valid, un):
        t = int(un.iters)                       # iteration counter, already incremented (t >= 1)
        W_f, eps = un.fp_window, un.eps
        slot = t % W_f
        if valid is None:
            count = x.shape[0] * x.shape[1]
            x2 = (x * x).mean(dim=(0, 1))                         # x2_t = mean x^2 over tokens
        else:
            count = valid.sum()
            x2 = (x * x * valid).sum(dim=(0, 1)) / count          # ... over valid tokens only
        buf = un.buffer_x2                                        # (W, C) window of x2
        # W = 1 switches smoothing off: forward uses x2_t, backward the exact gradient
        skip = W_f == 1
        check = un.outlier_filtration and not skip and t >= un.warmup_iters
        if check:
            # one scalar: variance of sqrt(window) over entries and channels, before adding x2_t
            recorded = torch.sqrt(buf).var()
        buf[slot] = x2
        if check:
            am = buf.mean(dim=0)                                  # arithmetic mean of the window
            gm = torch.exp(torch.log(buf).mean(dim=0))            # geometric mean of the window
            if bool((am - gm > W_f * recorded).any()):            # AM - GM > W * Var(sqrt(window))
                buf[slot] = un.running_var                        # outlier: out of the window
                skip = True
                un.skip_counter += 1
        if t <= W_f or t < un.warmup_iters or skip:
            var = x2                                              # warm-up / skip: batch statistic
        else:
            var = torch.exp(torch.log(buf).mean(dim=0))           # var_t = geometric mean of window
        # scale compensation passed to the backward: r = sqrt(var_t + eps) / sqrt(running + eps)
        if t <= max(un.compensation_start, un.warmup_iters) or skip:
            r = torch.ones_like(var)
        else:
            r = (torch.sqrt(var + eps) / torch.sqrt(un.running_var + eps)).clamp(
                1.0 / un.r_clamp, un.r_clamp)
        inv_std = torch.rsqrt(var + eps)
        z = x * inv_std                                           # z = x / sqrt(var_t + eps)
        # running <- m * running + (1 - m) * var_t
        un.running_var.mul_(un.momentum).add_((1.0 - un.momentum) * var)
        if un.trace is not None:
            un.trace.append({"iter": t, "x2": x2.detach().cpu(), "var": var.detach().cpu(),
                             "skip": skip})
        ctx.un, ctx.t, ctx.skip, ctx.count = un, t, skip, count
        ctx.save_for_backward(z, inv_std, weight, r, valid)
        return torch.addcmul(bias, z, weight)                     # y = gamma * z + beta

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dy):
        z, inv_std, weight, r, valid = ctx.saved_tensors
        un, t, skip = ctx.un, ctx.t, ctx.skip
        W_b, m = un.bp_window, un.momentum
        # per-channel sums over tokens, shared by the weight gradient and the statistic gz
        dyz = (dy * z).sum(dim=(0, 1))
        g = dy * (weight * r)                                     # g = dL/dy * gamma * r
        # gz_t = mean over tokens of g z. With padding: every output used var_t, so the sum runs
        # over all tokens, divided by the number of valid tokens var_t was averaged over
        gz = weight * r * dyz / ctx.count
        slot = t % W_b
        un.buffer_gz[slot] = un.ema_gz if skip else gz            # window of gz (ema on skips)
        if t <= W_b or t < un.warmup_iters or skip:
            mean_gz = gz
        else:
            mean_gz = un.buffer_gz.mean(dim=0)                    # window mean of gz
        # ema_gz <- m * ema_gz + (1 - m) * mean_gz
        un.ema_gz.mul_(m).add_((1.0 - m) * mean_gz)
        corr = mean_gz if skip else un.ema_gz
        # dL/dx = (g - corr z) / sqrt(var_t + eps); padded tokens get no correction
        corr_z = corr * z if valid is None else corr * z * valid
        gx = (g - corr_z) * inv_std
        return gx, r * dyz, dy.sum(dim=(0, 1)), None, None


class UnifiedNorm(nn.Module):
    r"""Unified Normalization (Yang et al. 2022, arXiv:2208.01313) for tokens ``(B, N, C)``.

    Training mode runs :class:`UNFunction` (fluctuation smoothing in the forward and
    backward passes, optional adaptive outlier filtration); evaluation mode is the
    per-channel affine map

    .. math:: y = \gamma \odot x / \sqrt{\mathrm{running\_var} + \epsilon} + \beta,

    which :func:`fold_norms` merges into the following linear layer.

    Args (defaults of the official ``UN1d``):
        num_features: channels ``C``.
        window_size: ``W`` for both passes, or ``(W_forward, W_backward)``. ``W = 1``
            switches smoothing off (forward uses the batch statistic, backward is exact).
        warmup_iters: iterations that use plain batch statistics (paper: 4000).
        outlier_filtration: the adaptive outlier filter (official: on for vision, off for NLP).
        eps, momentum: as in the paper (``1e-5``, running average ``m = 0.9``).
        compensation_start: the scale compensation ``r`` stays 1 until iteration
            ``max(compensation_start, warmup_iters)``; the official code hard-codes 1000.
        r_clamp: ``r`` is clamped to ``[1 / r_clamp, r_clamp]`` (official: 5).

    Shapes: ``x: (B, N, C)`` or ``(N, C)``; ``padding_mask: (B, N)`` bool, True at padding
    (statistics use the valid tokens only) -> same shape as ``x``.

    Buffers: ``running_var``, ``ema_gz``, ``iters``, ``buffer_x2 (W_f, C)``,
    ``buffer_gz (W_b, C)``, ``skip_counter`` (batches filtered as outliers). Set
    ``trace = []`` to record ``x2_t``, ``var_t`` and the skip flag of every training step.
    """

    channels_last = True

    def __init__(self, num_features: int, window_size: int | Sequence[int] = 4,
                 warmup_iters: int = 4000, outlier_filtration: bool = False, eps: float = 1e-5,
                 momentum: float = 0.9, compensation_start: int = 1000, r_clamp: float = 5.0):
        super().__init__()
        if isinstance(window_size, int):
            fp, bp = window_size, window_size
        else:
            fp, bp = (int(w) for w in window_size)
        if fp < 1 or bp < 1:
            raise ValueError(f"UnifiedNorm: window sizes must be >= 1, got {window_size}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"UnifiedNorm: momentum must be in [0, 1), got {momentum}")
        self.num_features, self.fp_window, self.bp_window = num_features, fp, bp
        self.warmup_iters, self.outlier_filtration = int(warmup_iters), bool(outlier_filtration)
        self.eps, self.momentum = eps, momentum
        self.compensation_start, self.r_clamp = int(compensation_start), float(r_clamp)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("ema_gz", torch.zeros(num_features))
        self.register_buffer("iters", torch.zeros((), dtype=torch.long))
        self.register_buffer("buffer_x2", torch.zeros(fp, num_features))
        self.register_buffer("buffer_gz", torch.zeros(bp, num_features))
        self.register_buffer("skip_counter", torch.zeros((), dtype=torch.long))
        self.trace: list[dict[str, Any]] | None = None

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        squeeze = x.dim() == 2
        if squeeze:
            x = x.unsqueeze(0)
            padding_mask = None if padding_mask is None else padding_mask.unsqueeze(0)
        if x.dim() != 3 or x.shape[-1] != self.num_features:
            raise ValueError(f"UnifiedNorm expects (B, N, {self.num_features}), "
                             f"got {tuple(x.shape)}")
        if not self.training:
            # inference: a per-channel affine map (foldable into the next linear layer)
            y = x * (self.weight * torch.rsqrt(self.running_var + self.eps)) + self.bias
            return y.squeeze(0) if squeeze else y
        valid = None
        if padding_mask is not None:
            if padding_mask.shape != x.shape[:2]:
                raise ValueError(f"padding_mask must be (B, N) = {tuple(x.shape[:2])}, "
                                 f"got {tuple(padding_mask.shape)}")
            valid = (~padding_mask.bool()).unsqueeze(-1).to(x.dtype)
            if not bool(valid.any()):
                raise ValueError("UnifiedNorm: every token of the batch is padding")
        with torch.no_grad():
            self.iters += 1
        y = UNFunction.apply(x, self.weight, self.bias, valid, self)
        return y.squeeze(0) if squeeze else y

    def extra_repr(self) -> str:
        return (f"{self.num_features}, window=({self.fp_window}, {self.bp_window}), "
                f"warmup={self.warmup_iters}, outlier_filtration={self.outlier_filtration}, "
                f"eps={self.eps}, momentum={self.momentum}")


def _unified(num_features: int, **kwargs: Any) -> UnifiedNorm:
    """Unified Normalization (UN, arXiv:2208.01313) for tokens (B, N, C)."""
    return UnifiedNorm(num_features, **kwargs)


# ``register`` accepts the same factory again (a reload of this module), so importing is idempotent.
norm_registry.register("unified", _unified, aliases=("un", "unified_norm"), channels_last=True)


# ---------------------------------------------------------------------------- folding

def norm_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of a normaliser's inference map ``y = scale * x + shift`` (per channel).

    Defined for :class:`UnifiedNorm` (``scale = gamma / sqrt(running_var + eps)``,
    ``shift = beta``) and :class:`BatchNormSeq` (which also subtracts its running mean).
    LayerNorm has no such map: its statistics depend on each token.
    """
    with torch.no_grad():
        if isinstance(norm, UnifiedNorm):
            scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
            return scale.clone(), norm.bias.detach().clone()
        if isinstance(norm, BatchNormSeq) and norm.track_running_stats:
            inv = torch.rsqrt(norm.running_var + norm.eps)
            w = norm.weight if norm.affine else torch.ones_like(inv)
            b = norm.bias if norm.affine else torch.zeros_like(inv)
            scale = w * inv
            return scale.clone(), (b - norm.running_mean * scale).clone()
    raise TypeError(f"{type(norm).__name__} has no fixed inference-time affine map to fold")


@torch.no_grad()
def fold_affine_into_linear(scale: torch.Tensor, shift: torch.Tensor,
                            linear: nn.Linear) -> nn.Linear:
    r"""The linear layer equal to ``linear(scale * x + shift)``.

    .. math:: W(s \odot x + b_n) + b = (W\,\mathrm{diag}(s))\,x + (W b_n + b)

    Shapes: ``scale, shift: (in_features,)``. Returns a new ``nn.Linear`` (with a bias)
    on ``linear``'s device and dtype; ``linear`` is left untouched.
    """
    if scale.shape != (linear.in_features,) or shift.shape != (linear.in_features,):
        raise ValueError(f"scale/shift must have shape ({linear.in_features},), "
                         f"got {tuple(scale.shape)} and {tuple(shift.shape)}")
    w = linear.weight
    folded = nn.Linear(linear.in_features, linear.out_features, bias=True,
                       device=w.device, dtype=w.dtype)
    folded.weight.copy_(w * scale.to(w)[None, :])                  # W diag(s)
    bias = w @ shift.to(w)                                         # W b_n
    if linear.bias is not None:
        bias = bias + linear.bias                                  # + b
    folded.bias.copy_(bias)
    return folded


class FoldedAway(nn.Module):
    """Stands where a normaliser was folded into its consumers: returns ``x`` unchanged
    (accepting and ignoring a ``padding_mask``, so call sites need no change)."""

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return x


class ChannelAffine(nn.Module):
    """A frozen per-channel ``scale * x + shift`` (a normaliser whose output does not feed
    a linear layer directly, e.g. a final norm read through a slice)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.addcmul(self.shift, x, self.scale)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, Mapping):
        return _first_tensor(next(iter(out.values())))
    raise TypeError(f"cannot compare model outputs of type {type(out).__name__}")


@torch.no_grad()
def fold_norms(model: nn.Module, *example_args: Any, tol: float = 1e-4,
               **example_kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """An inference copy of ``model`` with every UN (and BN-over-tokens) folded away.

    One forward pass on the example input finds, for each foldable normaliser, the
    ``nn.Linear`` layers that read its output tensor directly (in a pre-norm Transformer:
    the attention's input projection and the MLP's first layer). Those layers absorb the
    normaliser's affine map (:func:`fold_affine_into_linear`) and the normaliser becomes
    :class:`FoldedAway`. A normaliser read only through other ops (e.g. a final norm whose
    CLS token is sliced out before the head) becomes a frozen :class:`ChannelAffine`.

    The folded copy is checked against the original on the example input; a difference
    above ``tol`` (absolute, on the first output tensor) raises ``RuntimeError``.

    Returns ``(folded_model, report)`` with ``report = {"folded": {norm: [linears]},
    "affine_only": [norms], "max_abs_err": float}``. ``model`` is not modified.
    """
    model = copy.deepcopy(model).eval()
    norms = {n: m for n, m in model.named_modules() if isinstance(m, (UnifiedNorm, BatchNormSeq))}
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    produced: dict[int, str] = {}
    keep_alive: list[torch.Tensor] = []                  # keeps ids unique during the trace
    consumers: dict[str, set[str]] = {n: set() for n in norms}
    conflicts: set[str] = set()
    handles = []

    def on_norm(name: str) -> Callable:
        def hook(_module, _inp, out):
            keep_alive.append(out)
            produced[id(out)] = name
        return hook

    def on_linear(name: str) -> Callable:
        def hook(_module, inp):
            src = produced.get(id(inp[0])) if inp else None
            if src is not None:
                consumers[src].add(name)
            else:
                conflicts.add(name)                      # also fed by something else
        return hook

    for n, m in norms.items():
        handles.append(m.register_forward_hook(on_norm(n)))
    for n, m in linears.items():
        handles.append(m.register_forward_pre_hook(on_linear(n)))
    try:
        reference = _first_tensor(model(*example_args, **example_kwargs)).clone()
    finally:
        for h in handles:
            h.remove()
    owners: dict[str, list[str]] = {}
    for norm_name, lins in consumers.items():
        for lin in lins:
            owners.setdefault(lin, []).append(norm_name)
    report: dict[str, Any] = {"folded": {}, "affine_only": []}
    for norm_name, norm in norms.items():
        scale, shift = norm_affine(norm)
        lins = sorted(consumers[norm_name])
        ok = bool(lins) and all(len(owners[lin]) == 1 and lin not in conflicts for lin in lins)
        if ok:
            for lin in lins:
                _set_submodule(model, lin, fold_affine_into_linear(scale, shift, linears[lin]))
            _set_submodule(model, norm_name, FoldedAway())
            report["folded"][norm_name] = lins
        else:
            _set_submodule(model, norm_name, ChannelAffine(scale, shift))
            report["affine_only"].append(norm_name)
    out = _first_tensor(model(*example_args, **example_kwargs))
    err = float((out - reference).abs().max())
    report["max_abs_err"] = err
    if not err <= tol:
        raise RuntimeError(f"fold_norms: folded model differs from the original by {err:.2e} "
                           f"> {tol:g}; the model reads a normaliser's output in a way folding "
                           "does not preserve")
    return model, report


# ------------------------------------------------------------------------------- data

def random_crops(x: torch.Tensor, var_len: tuple[int, int], seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop each token sequence to a random length and pad it back, with a padding mask.

    Every sequence of ``x: (N, T, F)`` keeps a random contiguous crop of ``L`` tokens,
    ``L`` uniform in ``var_len = (lo, hi)`` (inclusive), with a random start. The crop is
    moved to the front and the rest is zero padding. Crops are drawn once from ``seed``
    (a private generator), so the data set is fixed before any training run.

    Returns ``(x_cropped (N, T, F), padding_mask (N, T) bool, True at padding)``.
    """
    n, length = x.shape[0], x.shape[1]
    lo, hi = int(var_len[0]), int(var_len[1])
    if not 1 <= lo <= hi <= length:
        raise ValueError(f"random_crops: need 1 <= lo <= hi <= {length}, got {var_len}")
    rng = np.random.default_rng(seed)
    lengths = rng.integers(lo, hi + 1, size=n)
    starts = rng.integers(0, length - lengths + 1)
    pos = torch.arange(length)
    lengths_t, starts_t = torch.from_numpy(lengths), torch.from_numpy(starts)
    src = (starts_t[:, None] + pos[None, :]).clamp(max=length - 1)          # (N, T) source index
    mask = pos[None, :] >= lengths_t[:, None]                                # True at padding
    gathered = torch.gather(x, 1, src.to(x.device)[..., None].expand(-1, -1, x.shape[2]))
    out = gathered.masked_fill(mask.to(x.device)[..., None], 0.0)
    return out, mask.to(x.device)


@dataclass
class TokenTask:
    """A classification task on tokens, with padding masks where sequences vary in length.

    ``kind`` is ``"image"`` (x: (N, C, H, W), read by `TinyViT` through patches) or
    ``"tokens"`` (x: (N, T, F) with ``train_mask`` / ``test_mask`` (N, T), True at padding,
    read by `TokenTransformer`).
    """

    name: str
    kind: str
    data: Any                                   # replibook.data.Dataset
    train_mask: torch.Tensor | None = None
    test_mask: torch.Tensor | None = None

    def card(self) -> dict[str, Any]:
        card = self.data.card()
        if self.train_mask is not None:
            lengths = (~self.train_mask).sum(1).float()
            card["info"]["var_len_tokens_mean"] = float(lengths.mean())
        return card


def load_token_data(name: str, seed: int = 0, var_len: tuple[int, int] = (6, 10),
                    device: Any = None) -> TokenTask:
    """The chapter's tasks.

    - ``digits``: sklearn 8x8 digits (1437/360, standardised), 16 patches of 2x2 (smoke, small).
    - ``mnist1d_varlen``: MNIST-1D (4000/1000) as 10 tokens of 4 steps, each sequence cut to a
      random crop of ``var_len`` tokens and zero-padded, with a padding mask (small): padding
      makes the number of valid tokens per batch vary, as sentence lengths do in NMT.
    - ``cifar10``: CIFAR-10 through `data.real.cifar10` (full; needs ``REPLIBOOK_DATA``).
    """
    from ..data import bundled
    if name == "digits":
        ds = bundled.digits(size=8, split=(1437, 360), seed=seed, standardize=True, device=device)
        return TokenTask(name, "image", ds)
    if name == "mnist1d_varlen":
        ds = bundled.mnist1d(n_train=4000, n_test=1000, seed=seed, patch=4, device=device)
        ds.train.x, train_mask = random_crops(ds.train.x, var_len, seed=seed)
        ds.test.x, test_mask = random_crops(ds.test.x, var_len, seed=seed + 10_000)
        ds.info["var_len"] = list(var_len)
        ds.info["crops"] = "one random crop per sequence, fixed by the seed, moved to the front"
        return TokenTask(name, "tokens", ds, train_mask, test_mask)
    if name == "cifar10":
        from ..data import real
        ds = real.cifar10(seed=seed, device=device)
        mean = ds.train.x.mean(dim=(0, 2, 3), keepdim=True)
        std = ds.train.x.std(dim=(0, 2, 3), keepdim=True)
        ds.train.x, ds.test.x = (ds.train.x - mean) / std, (ds.test.x - mean) / std
        ds.info["standardized"] = "per-channel train mean/std"
        return TokenTask(name, "image", ds)
    raise ValueError(f"unknown task {name!r} (digits, mnist1d_varlen, cifar10)")


def make_token_model(task: TokenTask, norm: str, dim: int, depth: int, heads: int,
                     mlp_ratio: float = 2.0, norm_kwargs: Mapping[str, Any] | None = None,
                     patch: int | None = None) -> nn.Module:
    """Pre-norm transformer for ``task`` with every norm (two per block and the final one)
    built by ``make_norm(norm, dim, **norm_kwargs)``; CLS-token classifier."""
    from ..models.vit import TinyViT, TokenTransformer
    x = task.data.train.x
    n_classes = len(task.data.classes) if task.data.classes else int(task.data.train.y.max()) + 1
    kw = dict(dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, attn="softmax", norm=norm,
              norm_kwargs=dict(norm_kwargs or {}))
    if task.kind == "image":
        side = x.shape[-1]
        return TinyViT(img_size=side, patch=patch or (2 if side <= 16 else 4), in_chans=x.shape[1],
                       num_classes=n_classes, cls=True, **kw)
    return TokenTransformer(in_dim=x.shape[-1], num_classes=n_classes, max_len=x.shape[1],
                            cls=True, **kw)


@torch.no_grad()
def task_logits(model: nn.Module, task: TokenTask, split: str = "test",
                batch_size: int = 1024) -> torch.Tensor:
    """Logits of ``model`` (eval mode) on a split of ``task``, with its padding mask."""
    part = task.data.test if split == "test" else task.data.train
    mask = task.test_mask if split == "test" else task.train_mask
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(part.x), batch_size):
        xb = part.x[i:i + batch_size]
        out.append(model(xb) if mask is None else model(xb, mask[i:i + batch_size]))
    model.train(was)
    return torch.cat(out)


def un_modules(model: nn.Module) -> list[UnifiedNorm]:
    """The model's UN layers in module order (norm1, norm2 of each block, then the final norm)."""
    return [m for m in model.modules() if isinstance(m, UnifiedNorm)]


def train_token_model(task: TokenTask, norm: str, norm_kwargs: Mapping[str, Any] | None, *,
                      dim: int, depth: int, heads: int, mlp_ratio: float, steps: int,
                      batch_size: int, lr: float, weight_decay: float, eval_every: int,
                      seed: int, device: Any = None, trace_layer: int | None = None,
                      progress: bool = False) -> tuple[nn.Module, Any]:
    """One arm: build the model (seeded), train it with AdamW for ``steps`` updates, evaluate
    test accuracy every ``eval_every`` updates. ``trace_layer=k`` records ``x2_t`` and
    ``var_t`` of the first norm of block ``k`` (UN arms; 0-based). Returns ``(model, History)``."""
    from ..metrics.classification import accuracy
    from ..train import fit
    torch.manual_seed(seed)
    model = make_token_model(task, norm, dim, depth, heads, mlp_ratio, norm_kwargs)
    if trace_layer is not None:
        layer = model.encoder.blocks[trace_layer].norm1
        if isinstance(layer, UnifiedNorm):
            layer.trace = []
    y_te = task.data.test.y

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"test_acc": accuracy(task_logits(m, task), y_te)}

    if task.train_mask is None:
        data = (task.data.train.x, task.data.train.y)
        loss_fn = None
    else:
        data = (task.data.train.x, task.train_mask, task.data.train.y)

        def loss_fn(m, x, mask, y):
            return nn.functional.cross_entropy(m(x, mask), y)

    # fused AdamW: the same update as torch's default AdamW, one kernel instead of a Python
    # loop over parameters (~10% of a step of these tiny models on a CPU)
    dev = torch.device(device) if device is not None else runtime.device()
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    hist = fit(model, data, steps=steps, batch_size=batch_size, opt=opt, loss_fn=loss_fn,
               eval_fn=evaluate, eval_every=eval_every, seed=seed, device=dev,
               progress=progress, desc=f"{task.name} {norm} s{seed}")
    return model, hist


def collapsed(hist: Any, chance_floor: float = 0.15) -> bool:
    """A run collapsed if any recorded training loss is not finite or its final test accuracy
    is below ``chance_floor`` (pre-registered: 15%, chance is 10%)."""
    losses = np.asarray(hist.train_loss[1:], dtype=float)   # entry 0 (step 0) has no loss yet
    return bool((~np.isfinite(losses)).any() or hist.last("test_acc") < chance_floor)


@torch.no_grad()
def latency(models: nn.Module | Mapping[str, nn.Module], x: torch.Tensor,
            mask: torch.Tensor | None = None, forwards: int = 10, repeats: int = 5,
            warmup: int = 1) -> dict[str, Any]:
    """Inference wall time per batch ``x`` (eval mode, no grad), via
    `metrics.efficiency.cpu_benchmark`; each timed repeat runs ``forwards`` forward passes.

    Several models (a mapping name -> model) are timed *interleaved*: repeat ``k`` of every
    model runs before repeat ``k + 1`` of any, so a burst of load from other processes on a
    shared machine hits all models alike instead of one model's block of repeats.

    Returns, per model (or the single model's dict), ``{"times_ms": per-repeat ms per batch,
    "ms_per_batch": their median, "threads", "forwards"}``.
    """
    from ..metrics.efficiency import cpu_benchmark
    single = isinstance(models, nn.Module)
    named = {"model": models} if single else dict(models)
    args = (x,) if mask is None else (x, mask)
    runners = {}
    for name, model in named.items():
        model.eval()

        def run(model=model) -> None:
            for _ in range(forwards):
                model(*args)

        runners[name] = run
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in named}
    threads = torch.get_num_threads()
    for _ in range(repeats):
        for name, run in runners.items():
            res = cpu_benchmark(run, repeats=1, warmup=0)
            times[name].append(1e3 * res["median_s"] / forwards)
            threads = res["threads"]
    out = {name: {"times_ms": t, "ms_per_batch": float(np.median(t)), "threads": threads,
                  "forwards": forwards} for name, t in times.items()}
    return out["model"] if single else out


# ------------------------------------------------------------------------ predicates
# Three rules the shared `claims` module lacks (spec of this chapter: a tolerance band,
# a condition that can only confirm, a disjunction, and a comparison of event counts).



# ----------------------------------------------------------------------------- arms

def arm_norms(warmup_iters: int, compensation_start: int, window: int = 4
              ) -> dict[str, tuple[str, dict[str, Any]]]:
    """The chapter's normalisation arms: name -> (registry name, factory kwargs).

    LN (pre-norm), BN over batch and tokens (padding excluded), UN with outlier filtration,
    UN without it, and UN without smoothing (``W = 1``; filtration is then inactive too).
    """
    un = dict(window_size=window, warmup_iters=warmup_iters, compensation_start=compensation_start)
    return {
        "LN": ("layer", {}),
        "BN": ("batch_seq", {}),
        "UN": ("unified", {**un, "outlier_filtration": True}),
        "UN-no-filter": ("unified", {**un, "outlier_filtration": False}),
        "UN-no-smoothing": ("unified", {**un, "window_size": 1, "outlier_filtration": True}),
    }


# --------------------------------------------------------------------------- figures

COLOURS = {"LN": plots.PALETTE[2], "BN": plots.PALETTE[1], "UN": plots.PALETTE[0],
           "UN-no-filter": plots.PALETTE[3], "UN-no-smoothing": plots.PALETTE[4],
           "UN (folded)": plots.PALETTE[0], "UN (unfolded)": plots.PALETTE[5]}


def plot_loss_panels(histories: Mapping[tuple[str, str], list], settings: Sequence[str],
                     titles: Mapping[str, str] | None = None, metric: str | None = None):
    """One panel per setting: mean ± std over seeds of the training loss (``metric=None``)
    or of an eval metric, against updates, one curve per arm (``histories[(arm, setting)]``)."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 3.4), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for (arm, s), runs in histories.items():
            if s != setting:
                continue
            if metric is None:        # the loss at step 0 is not defined (no update yet)
                x, ys = runs[0].steps[1:], [h.train_loss[1:] for h in runs]
            else:
                x, ys = runs[0].steps, [h.metrics[metric] for h in runs]
            plots.band(ax, x, ys, label=arm, color=COLOURS.get(arm))
        ax.set_xlabel("parameter updates")
        ax.set_ylabel("training loss (nats)" if metric is None else metric.replace("_", " "))
        if metric is None:
            ax.set_yscale("log")
        ax.set_title((titles or {}).get(setting, setting))
        ax.legend()
    fig.tight_layout()
    return fig


def plot_fluctuation(trace: Sequence[Mapping[str, Any]], warmup_iters: int, channels: int = 3,
                     title: str = ""):
    """The per-iteration statistic of one UN layer: the batch's quadratic mean ``x2_t`` (thin)
    and the variance UN divides by, ``var_t`` (thick: the window's geometric mean after
    warm-up), for the ``channels`` channels whose ``x2_t`` fluctuates most after warm-up;
    iterations flagged as outliers are marked."""
    import matplotlib.pyplot as plt
    it = np.array([r["iter"] for r in trace])
    x2 = torch.stack([r["x2"] for r in trace]).numpy()
    var = torch.stack([r["var"] for r in trace]).numpy()
    skip = np.array([r["skip"] for r in trace])
    after = it > warmup_iters
    ref = x2[after] if after.sum() > 2 else x2
    cv = ref.std(0) / np.maximum(ref.mean(0), 1e-12)
    picked = np.argsort(-cv)[:channels]
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    for i, c in enumerate(picked):
        col = plots.PALETTE[i % len(plots.PALETTE)]
        ax.plot(it, x2[:, c], color=col, lw=0.7, alpha=0.55)
        ax.plot(it, var[:, c], color=col, lw=1.8, label=f"channel {c}")
    if skip.any():
        for t in it[skip]:
            ax.axvline(t, color="k", lw=0.5, alpha=0.3)
    ax.axvspan(it.min(), min(warmup_iters, it.max()), color="0.85", alpha=0.5, lw=0,
               label="warm-up (batch statistic)")
    ax.set_yscale("log")
    ax.set_xlabel("training iteration")
    ax.set_ylabel("quadratic mean of the channel")
    ax.set_title(title or "thin: batch statistic x2_t; thick: var_t used by UN")
    ax.legend(ncol=2)
    fig.tight_layout()
    return fig


def plot_latency(labels: Sequence[str], per_seed_ms: Sequence[Sequence[float]], title: str = ""):
    """Inference latency per batch, one bar per model (mean over seeds, dots = seeds)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    plots.bar_with_seeds(ax, labels, per_seed_ms, "CPU inference (ms per batch)",
                         colors=[COLOURS.get(lbl, plots.PALETTE[6]) for lbl in labels])
    ax.set_title(title)
    fig.tight_layout()
    return fig


def results_table(ch: Any, rows: Sequence[tuple[str, str]],
                  paper: Mapping[str, str]) -> pd.DataFrame:
    """Test accuracy (%), collapsed runs and UN outlier skips per (arm, setting), mean ± std
    over seeds, with the paper's evidence for the setting alongside."""
    from ..chapter import format_mean_std
    from ..errors import ReplibookError
    out = []
    for arm, setting in rows:
        row = {"arm": arm, "setting": setting,
               "test accuracy (%)": format_mean_std(ch.values("test_acc", arm, setting), 1, 100.0),
               "collapsed runs": f"{int(ch.values('collapsed', arm, setting).sum())}"
                                 f"/{len(ch.values('collapsed', arm, setting))}"}
        try:
            row["UN outlier skips"] = format_mean_std(ch.values("skips", arm, setting), 1)
        except ReplibookError:
            row["UN outlier skips"] = ""
        row["paper"] = paper.get(setting, "")
        out.append(row)
    return pd.DataFrame(out).set_index(["arm", "setting"])
