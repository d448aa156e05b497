r"""Normalization layers, and a registry that picks one by name.

Why a registry
--------------
Four chapters (49 layer norm, 11 unified normalization, 21 BatchNorm-only
training, 28 EvoNorm) compare normalization layers inside the *same* network.
With a string-keyed factory the ablation is a string in the chapter's preset::

    norm = make_norm("ln", 256)            # our LayerNorm over the last dim
    norm = make_norm("bn", 64)             # BatchNorm for (B,C), (B,C,L), (B,C,H,W)
    norm = make_norm("gn", 64, num_groups=8)

Paper-specific layers live in ``replibook.methods.<slug>`` and register
themselves, after which every shared model can use them by name::

    register("unified", UnifiedNorm)                     # chapter 11
    register("evonorm_b0", EvoNormB0, includes_activation=True)  # chapter 28

Layout convention (which dimension is the channel)
--------------------------------------------------
- **Channel-first** feature maps ``(B, C)``, ``(B, C, L)``, ``(B, C, H, W)``: the
  channel is dim 1, as in ``torch.nn.Conv*d``. "batch", "group", "instance" and
  "layer2d" use this layout and work for every rank (one module, any number of
  spatial dims), so a 1-D and a 2-D ResNet take the same names.
- **Channels-last** tokens ``(B, N, C)`` (and plain ``(B, C)`` vectors): the channel is
  the *last* dim, as in ``torch.nn.LayerNorm``. "layer" and "batch_seq" use this
  layout. A conv network refuses channels-last norms (they would normalise the
  last spatial axis); use "layer2d" for a per-example layer norm of a feature map.

For ``(B, C)`` inputs both layouts coincide, so an MLP accepts every name.

Norm-activation layers
----------------------
Some layers replace a *norm + activation* pair (EvoNorm-B0/S0 have no separate
nonlinearity). They are registered with ``includes_activation=True`` and their
factory must accept ``apply_act: bool`` (timm's convention): the model then calls
``make_norm(name, C, apply_act=...)`` and drops its own activation there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UnknownName
from ..registry import Registry, registry_key as _key

__all__ = [
    "LayerNorm", "layer_norm_reference", "BatchNorm", "BatchNormSeq", "GroupNorm", "InstanceNorm",
    "LayerNorm2d", "DomainBatchNorm", "default_num_groups",
    "register", "unregister", "make_norm", "available", "norm_entry", "NormEntry",
    "is_norm_activation", "is_channels_last",
    "make_act", "register_act", "available_acts",
]


# --------------------------------------------------------------------------- layers

def layer_norm_reference(x: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None,
                         bias: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """Layer normalization written out step by step (eq. 3-4 of the paper).

    Shapes: ``x: (*, *normalized_shape)``; ``weight``/``bias``: ``normalized_shape`` or None.
    """
    dims = tuple(range(-len(normalized_shape), 0))
    # mu = (1/H) sum_i a_i, over the hidden units of each example
    mean = x.mean(dim=dims, keepdim=True)
    # sigma^2 = (1/H) sum_i (a_i - mu)^2: the two-pass form, more stable than E[a^2] - mu^2
    var = x.var(dim=dims, unbiased=False, keepdim=True)
    # (a - mu) / sqrt(sigma^2 + eps)
    x_hat = (x - mean) * torch.rsqrt(var + eps)
    # y = g * x_hat + b
    if weight is not None:
        x_hat = x_hat * weight
    if bias is not None:
        x_hat = x_hat + bias
    return x_hat


class LayerNorm(nn.Module):
    r"""Layer normalization (Ba, Kiros & Hinton 2016, arXiv:1607.06450, eq. 3-4).

    Batch norm estimates the statistics of a unit's summed input over a
    mini-batch, so it depends on the batch size and needs running averages at
    test time. Layer norm instead takes the statistics over the :math:`H` hidden
    units of *one* example (one time step of an RNN):

    .. math::
        \mu = \frac{1}{H}\sum_{i=1}^{H} a_i, \qquad
        \sigma = \sqrt{\frac{1}{H}\sum_{i=1}^{H}(a_i-\mu)^2 + \epsilon}, \qquad
        y_i = g_i\,\frac{a_i-\mu}{\sigma} + b_i

    with a per-unit gain :math:`g` (initialised to 1) and bias :math:`b`
    (initialised to 0). Training and evaluation compute the same function.

    Args mirror ``torch.nn.LayerNorm``:
        normalized_shape: the trailing shape to normalise over, e.g. ``H`` or ``(C, H, W)``.
        eps: added to the variance inside the square root.
        elementwise_affine: learn :math:`g` and :math:`b`.
        bias: learn :math:`b` (only with ``elementwise_affine``).
        fused: use torch's fused ``F.layer_norm`` kernel (default) instead of the
            step-by-step `layer_norm_reference`; both compute the same function (tested).

    Shapes: ``x: (*, *normalized_shape) -> y: same shape``.
    """

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, fused: bool = True):
        super().__init__()
        self.fused = fused
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(int(s) for s in normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(self.normalized_shape))   # gain g
            self.bias = nn.Parameter(torch.zeros(self.normalized_shape)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-len(self.normalized_shape):]) != self.normalized_shape:
            raise ValueError(f"LayerNorm expects trailing shape {self.normalized_shape}, got {tuple(x.shape)}")
        if self.fused:
            # one fused kernel; computes exactly `layer_norm_reference` (tested), 2-3x faster
            # on CPU for the small layers of the book, where per-op overhead dominates
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return layer_norm_reference(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"fused={self.fused}")


class BatchNorm(nn.modules.batchnorm._BatchNorm):
    r"""Batch normalization (Ioffe & Szegedy 2015) for any rank: ``(B,C)``, ``(B,C,L)``, ``(B,C,H,W)``, ...

    Per channel :math:`c`, over every non-channel position (batch and spatial):

    .. math::
        y = \gamma_c\,\frac{x - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}} + \beta_c

    Training uses the mini-batch statistics (biased variance) and updates the
    running averages ``r <- (1 - momentum) r + momentum * stat`` (the running
    variance uses the unbiased estimate); evaluation uses the running averages.
    One module for every rank, so a 1-D and a 2-D network share the name
    "batch". It inherits torch's fused kernel and state-dict keys (``weight``,
    ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``), which is
    what lets pretrained BatchNorm checkpoints load into our models; it is
    numerically the same function as ``torch.nn.BatchNorm1d``/``2d`` (tested).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"BatchNorm expects (B, C, *), got shape {tuple(input.shape)}")


class BatchNormSeq(nn.Module):
    r"""Batch normalization of tokens ``(B, N, C)`` over batch *and* tokens, with an optional padding mask.

    The statistics of channel :math:`c` are taken over the set :math:`V` of valid
    (non-padded) tokens of the whole batch:

    .. math::
        \mu_c = \frac{1}{|V|}\sum_{(b,n)\in V} x_{bnc}, \qquad
        \sigma_c^2 = \frac{1}{|V|}\sum_{(b,n)\in V} (x_{bnc}-\mu_c)^2, \qquad
        y = \gamma_c\frac{x-\mu_c}{\sqrt{\sigma_c^2+\epsilon}} + \beta_c

    Padded tokens are excluded from the statistics (so padding cannot shift them,
    the failure mode of BN in NLP Transformers) but are still transformed with the
    same per-channel affine map, so the output has no holes. Running averages as
    in :class:`BatchNorm` (momentum 0.1, unbiased running variance). Without a mask
    this equals ``BatchNorm1d`` applied to ``x.reshape(-1, C)``.

    Shapes: ``x: (B, N, C)``, ``padding_mask: (B, N)`` bool, True where a token is padding
    (PyTorch's ``key_padding_mask`` convention) -> ``y: (B, N, C)``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.num_features:
            raise ValueError(f"BatchNormSeq expects (B, N, {self.num_features}), got {tuple(x.shape)}")
        use_batch_stats = self.training or not self.track_running_stats
        if use_batch_stats:
            if padding_mask is None:
                tokens = x.reshape(-1, self.num_features)                  # (B*N, C)
                mean = tokens.mean(dim=0)
                var = tokens.var(dim=0, unbiased=False)
                count = tokens.shape[0]
            else:
                if padding_mask.shape != x.shape[:2]:
                    raise ValueError(f"padding_mask must be (B, N) = {tuple(x.shape[:2])}, "
                                     f"got {tuple(padding_mask.shape)}")
                valid = (~padding_mask.bool()).unsqueeze(-1).to(x.dtype)     # (B, N, 1)
                count_t = valid.sum()
                if count_t.item() == 0:
                    raise ValueError("BatchNormSeq: every token of the batch is padding")
                # mu_c = sum over valid tokens / |V|
                mean = (x * valid).sum(dim=(0, 1)) / count_t
                # sigma_c^2 = sum over valid tokens of (x - mu_c)^2 / |V|  (two-pass)
                var = (((x - mean) ** 2) * valid).sum(dim=(0, 1)) / count_t
                count = int(count_t.item())
            if self.training and self.track_running_stats:
                with torch.no_grad():
                    # running variance uses the unbiased estimate, as torch's BatchNorm does
                    unbiased = var * (count / max(count - 1, 1))
                    self.running_mean.lerp_(mean.detach(), self.momentum)
                    self.running_var.lerp_(unbiased.detach(), self.momentum)
                    self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


def default_num_groups(num_channels: int, max_groups: int = 8) -> int:
    """Group count for GroupNorm when none is given: the largest divisor of C that is <= min(8, C // 4).

    Small nets here have 16-64 channels; 32 groups (the GN paper's default) would leave
    1-2 channels per group. At least 4 channels per group keeps the statistics usable;
    C=16 -> 4 groups, C=32 or 64 -> 8 groups, C<8 -> 1 group.
    """
    upper = max(1, min(max_groups, num_channels // 4))
    for groups in range(upper, 0, -1):
        if num_channels % groups == 0:
            return groups
    return 1


class GroupNorm(nn.GroupNorm):
    r"""Group normalization (Wu & He 2018) for ``(B, C, *)``: per example, over the channels of a group and all positions.

    .. math:: y = \gamma_c\,\frac{x - \mu_{b,g}}{\sqrt{\sigma_{b,g}^2 + \epsilon}} + \beta_c

    Same as ``torch.nn.GroupNorm`` except that ``num_groups=None`` picks
    :func:`default_num_groups` (so a registry name works at any width).
    """

    def __init__(self, num_groups: int | None, num_channels: int, eps: float = 1e-5, affine: bool = True):
        num_groups = default_num_groups(num_channels) if num_groups is None else num_groups
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels are not divisible into {num_groups} groups")
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)


class InstanceNorm(nn.GroupNorm):
    r"""Instance normalization for ``(B, C, *)``: per example and channel, over all positions.

    GroupNorm with one channel per group; per-channel affine, no running
    statistics. Equals ``torch.nn.InstanceNorm{1,2}d(affine=True)`` at any rank.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__(num_features, num_features, eps=eps, affine=affine)


class LayerNorm2d(nn.GroupNorm):
    r"""Layer normalization of a channel-first map ``(B, C, *)``: per example over (C, H, W) together.

    This is what the LN paper means by "all hidden units of a layer" for a conv
    layer (Sec. 6.7). The gain and bias are per channel (not per unit), so the
    layer works at any spatial size; GroupNorm with a single group.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__(1, num_features, eps=eps, affine=affine)


class DomainBatchNorm(nn.Module):
    """One :class:`BatchNorm` (statistics and affine parameters) per domain, selected with :meth:`set_domain`.

    Used by domain-adaptation chapters that keep source and target statistics apart.
    Shapes as :class:`BatchNorm`.
    """

    def __init__(self, num_features: int, num_domains: int = 2, **bn_kwargs: Any):
        super().__init__()
        self.norms = nn.ModuleList(BatchNorm(num_features, **bn_kwargs) for _ in range(num_domains))
        self.active_domain = 0

    def set_domain(self, domain: int) -> None:
        if not 0 <= domain < len(self.norms):
            raise ValueError(f"domain must be in [0, {len(self.norms)}), got {domain}")
        self.active_domain = domain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norms[self.active_domain](x)


# --------------------------------------------------------------------------- registry

@dataclass
class NormEntry:
    """A registered normalization: how to build it and how models must place it."""
    name: str
    factory: Callable[..., nn.Module]
    aliases: tuple[str, ...] = ()
    includes_activation: bool = False   # replaces a norm + activation pair; factory takes apply_act
    channels_last: bool = False         # normalises the last dim (tokens); conv nets refuse it
    doc: str = field(default="", repr=False)


_REGISTRY: Registry[NormEntry] = Registry(
    "norm", hint="Paper-specific norms register themselves when their replibook.methods module is imported.")


def register(name: str, factory: Callable[..., nn.Module], *, aliases: Sequence[str] = (),
             includes_activation: bool = False, channels_last: bool = False,
             overwrite: bool = False) -> Callable[..., nn.Module]:
    """Register ``factory(num_features, **kw) -> nn.Module`` under ``name`` (and ``aliases``).

    Names are case-insensitive and ``-`` equals ``_``. Registering the same name again
    with the same factory (e.g. when a notebook reloads a methods module) replaces the
    entry; a *different* factory under a taken name raises unless ``overwrite=True``.
    Returns ``factory`` so it can be used as a decorator via ``functools.partial``.
    """
    doc = (getattr(factory, "__doc__", "") or "").strip().split("\n")[0]
    _REGISTRY.add(name, factory, aliases, overwrite=overwrite,
                  make_entry=lambda key, alias_keys: NormEntry(key, factory, alias_keys,
                                                               includes_activation, channels_last, doc))
    return factory


def unregister(name: str) -> None:
    """Remove a registered norm and its aliases (tests; replacing a layer in a notebook session)."""
    _REGISTRY.remove(name)


def available(with_aliases: bool = False) -> list[str]:
    """Registered norm names (canonical; plus aliases if asked)."""
    return _REGISTRY.names(with_aliases)


def norm_entry(name: str) -> NormEntry:
    """The registry entry for ``name`` (or an alias); ``UnknownName`` lists the known ones."""
    return _REGISTRY.get(name)


def _spec_entry(norm: Any) -> NormEntry | None:
    return norm_entry(norm) if isinstance(norm, str) else None


def is_norm_activation(norm: Any) -> bool:
    """True if ``norm`` (a name) replaces a norm + activation pair (its factory takes ``apply_act``)."""
    if norm is None:
        return False
    entry = _spec_entry(norm)
    if entry is not None:
        return entry.includes_activation
    return bool(getattr(norm, "includes_activation", False))


def is_channels_last(norm: Any) -> bool:
    """True if ``norm`` normalises the last dim (tokens/vectors) rather than dim 1."""
    entry = _spec_entry(norm) if norm is not None else None
    return bool(entry.channels_last) if entry is not None else bool(getattr(norm, "channels_last", False))


def make_norm(norm: str | Callable[..., nn.Module] | None, num_features: int, **kwargs: Any) -> nn.Module:
    """Build a normalization layer for ``num_features`` channels.

    ``norm`` is a registered name (see :func:`available`), a class, or a partial /
    callable taking ``(num_features, **kwargs)``; ``None``, "none" and "identity"
    give ``nn.Identity``. Extra keyword arguments go to the factory, e.g.
    ``make_norm("gn", 64, num_groups=4)`` or ``make_norm("bn", 64, momentum=0.01)``.
    """
    if norm is None:
        return nn.Identity()
    if isinstance(norm, str):
        return norm_entry(norm).factory(num_features, **kwargs)
    if callable(norm):
        return norm(num_features, **kwargs)
    raise TypeError(f"norm must be a name, a class or a callable, got {type(norm).__name__}")


def _identity(num_features: int, **_: Any) -> nn.Module:
    """No normalization."""
    return nn.Identity()


def _group(num_features: int, num_groups: int | None = None, eps: float = 1e-5, affine: bool = True) -> nn.Module:
    """GroupNorm; num_groups defaults to default_num_groups(C)."""
    return GroupNorm(num_groups, num_features, eps=eps, affine=affine)


register("none", _identity, aliases=("identity",))
register("batch", BatchNorm, aliases=("bn", "batchnorm", "batch_norm"))
register("batch_seq", BatchNormSeq, aliases=("bn_seq", "batchnorm_seq"), channels_last=True)
register("layer", LayerNorm, aliases=("ln", "layernorm", "layer_norm"), channels_last=True)
register("layer2d", LayerNorm2d, aliases=("ln2d", "layernorm2d"))
register("group", _group, aliases=("gn", "groupnorm", "group_norm"))
register("instance", InstanceNorm, aliases=("in", "instancenorm", "instance_norm"))
register("domain_batch", DomainBatchNorm, aliases=("dbn", "domain_bn"))


# --------------------------------------------------------------------------- activations
# Activations sit here because norm-activation layers (EvoNorm) blur the line: a model asks
# this module for "the norm and the activation after it" and gets a consistent pair.

_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "swish": nn.SiLU, "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU, "softplus": nn.Softplus,
    "mish": nn.Mish, "identity": nn.Identity, "none": nn.Identity, "linear": nn.Identity,
}


def register_act(name: str, factory: Callable[[], nn.Module]) -> None:
    """Register an activation factory (no arguments) under ``name``."""
    _ACTS[_key(name)] = factory


def available_acts() -> list[str]:
    return sorted(_ACTS)


def make_act(act: str | Callable[[], nn.Module] | nn.Module | None) -> nn.Module:
    """An activation module from a name ("relu", "gelu", ...), a class, a module, or None (identity)."""
    if act is None:
        return nn.Identity()
    if isinstance(act, nn.Module):
        return act
    if isinstance(act, str):
        key = _key(act)
        if key not in _ACTS:
            raise UnknownName(f"unknown activation {act!r}; known: {', '.join(available_acts())}")
        return _ACTS[key]()
    if callable(act):
        return act()
    raise TypeError(f"act must be a name, a class or a module, got {type(act).__name__}")
