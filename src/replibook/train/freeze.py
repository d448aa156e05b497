r"""Train a chosen subset of a model's parameters and keep every other one at its value.

Several chapters train only part of a network: BatchNorm's affine parameters on
top of frozen random features (ch. 21, Frankle et al. 2021), the output layer
alone (a linear probe), or a random sample of weights of the same size as a
control. Three ways to choose the subset:

- :func:`freeze_all_but` ``(model, keep)``: parameters whose *name* matches
  ``keep`` (a regular expression, a list of them, or a predicate) stay
  trainable, everything else gets ``requires_grad = False``;
- :func:`freeze_all_but_bn` ``(model)``: only the affine parameters
  :math:`\gamma` (``weight``) and :math:`\beta` (``bias``) of every BatchNorm
  layer train; ``gamma=False`` / ``beta=False`` keep one of them frozen too;
- :func:`random_k_per_channel` ``(model, k)``: for every output channel of every
  convolution, ``k`` weights chosen at random train and all other parameters
  (including the rest of that kernel) stay frozen.

Frozen means ``requires_grad = False``: the book's `train.fit` hands only
trainable parameters to the optimiser, so neither momentum nor weight decay can
move a frozen value (tested: frozen tensors are bit-identical after `fit`).
The random-k subset is a *parametrization* (``torch.nn.utils.parametrize``):
the convolution's full weight is a frozen tensor and a small trainable tensor
``values (C_out, k)`` is scattered into it at every forward pass, so the
trainable-parameter count is exactly ``k`` times the number of output channels,
and weight decay acts on those ``k`` weights only (their actual values, as it
would in the unmasked network).
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "freeze_all_but", "freeze_all_but_bn", "random_k_per_channel", "RandomKPerChannel",
    "bn_parameter_names", "count_parameters", "trainable_names", "trainable_mask", "frozen_tensors",
]

KeepSpec = str | Sequence[str] | Callable[[str, nn.Parameter], bool]
_BATCH_NORMS = (nn.modules.batchnorm._BatchNorm,)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _predicate(keep: KeepSpec) -> Callable[[str, nn.Parameter], bool]:
    if callable(keep):
        return keep
    patterns = [keep] if isinstance(keep, str) else list(keep)
    compiled = [re.compile(p) for p in patterns]
    return lambda name, _p: any(c.search(name) for c in compiled)


def count_parameters(model: nn.Module, trainable: bool = True) -> int:
    """Number of scalar parameters: trainable ones only (default) or all of them."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters with ``requires_grad = True``, in registration order."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def freeze_all_but(model: nn.Module, keep: KeepSpec, *, allow_empty: bool = False) -> list[str]:
    """Make only the parameters named by ``keep`` trainable; freeze all the others.

    Args:
        keep: a regular expression searched in each parameter name (``r"^linear\\."``),
            a list of them (any match keeps), or ``keep(name, param) -> bool``.
        allow_empty: accept a ``keep`` that selects nothing (else ``ValueError``:
            a typo in a pattern would silently train nothing).
    Returns: the names of the trainable parameters.
    """
    pred = _predicate(keep)
    kept = []
    for name, p in model.named_parameters():
        p.requires_grad_(bool(pred(name, p)))
        if p.requires_grad:
            kept.append(name)
    if not kept and not allow_empty:
        raise ValueError(f"freeze_all_but: {keep!r} matches no parameter of {type(model).__name__}")
    return kept


def bn_parameter_names(model: nn.Module, gamma: bool = True, beta: bool = True,
                       types: tuple[type, ...] = _BATCH_NORMS) -> list[str]:
    """Names of the affine parameters of the BatchNorm layers (``types``) of ``model``.

    ``gamma`` is a layer's ``weight``, ``beta`` its ``bias``.
    """
    names = []
    for mod_name, mod in model.named_modules():
        if not isinstance(mod, types):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        if gamma and getattr(mod, "weight", None) is not None:
            names.append(prefix + "weight")
        if beta and getattr(mod, "bias", None) is not None:
            names.append(prefix + "bias")
    return names


def freeze_all_but_bn(model: nn.Module, gamma: bool = True, beta: bool = True,
                      also: KeepSpec | None = None,
                      types: tuple[type, ...] = _BATCH_NORMS) -> list[str]:
    """Train only BatchNorm's affine parameters (and, optionally, those named by ``also``).

    With the default ``gamma=beta=True`` the number of trainable parameters is
    twice the total number of BatchNorm channels. Running statistics are buffers,
    not parameters: they still update in training mode, as in the paper.

    Args:
        gamma, beta: which of the two affine parameters train (the paper's ablation).
        also: extra parameters to train, as in :func:`freeze_all_but` (e.g.
            ``r"^linear\\."`` for "BatchNorm + output layer").
        types: module classes counted as BatchNorm.
    Returns: the names of the trainable parameters.
    """
    if not (gamma or beta or also):
        raise ValueError("freeze_all_but_bn: nothing left to train "
                         "(gamma=beta=False and no `also`)")
    bn = set(bn_parameter_names(model, gamma=gamma, beta=beta, types=types))
    if not bn and also is None:
        raise ValueError(f"freeze_all_but_bn: {type(model).__name__} has no BatchNorm "
                         "affine parameters")
    extra = _predicate(also) if also is not None else (lambda n, p: False)
    return freeze_all_but(model, lambda n, p: n in bn or extra(n, p))


class RandomKPerChannel(nn.Module):
    """Parametrization ``W -> W'``: ``k`` entries per output channel replaced by trainable values.

    ``weight: (C_out, *fan_in)``; ``index: (C_out, k)`` positions in the flattened
    fan-in of each channel, drawn without replacement; ``values: (C_out, k)`` start
    at the original weights there, so the network is unchanged at initialisation.
    """

    def __init__(self, weight: torch.Tensor, k: int, generator: torch.Generator):
        super().__init__()
        c_out, fan_in = weight.shape[0], weight[0].numel()
        if not 1 <= k <= fan_in:
            raise ValueError(f"k must be in [1, {fan_in}] for a weight of shape "
                             f"{tuple(weight.shape)}, got {k}")
        rows = [torch.randperm(fan_in, generator=generator)[:k] for _ in range(c_out)]
        index = torch.stack(rows).to(weight.device)
        self.register_buffer("index", index)
        self.values = nn.Parameter(weight.detach().reshape(c_out, -1).gather(1, index).clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # W'[c, index[c, j]] = values[c, j]; every other entry is the frozen W
        flat = weight.reshape(weight.shape[0], -1)
        return flat.scatter(1, self.index, self.values).reshape(weight.shape)


def _mask_of(p: RandomKPerChannel, weight_shape: torch.Size) -> torch.Tensor:
    flat = torch.zeros(weight_shape[0], int(torch.Size(weight_shape[1:]).numel()), dtype=torch.bool,
                       device=p.index.device)
    return flat.scatter(1, p.index, True).reshape(weight_shape)


def random_k_per_channel(model: nn.Module, k: int = 2, seed: int = 0,
                         layer_types: tuple[type, ...] = _CONVS) -> list[str]:
    """Train ``k`` random weights per output channel of each ``layer_types`` layer; freeze the rest.

    Every other parameter of ``model`` (BatchNorm, the output layer, biases) is frozen.
    With ``k = 2`` in a network where every convolution is followed by a BatchNorm,
    the trainable count equals that of :func:`freeze_all_but_bn` -- the paper's
    "2 random parameters per channel" control. The positions are drawn uniformly
    without replacement per channel from ``torch.Generator().manual_seed(seed)``, in
    module order, so a seed fixes the subset.

    Returns: the names of the trainable parameters (``<layer>.parametrizations.weight.0.values``).
    """
    gen = torch.Generator().manual_seed(seed)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, layer_types)]
    if not layers:
        raise ValueError(f"random_k_per_channel: {type(model).__name__} has no layer of "
                         f"{layer_types}")
    for _, mod in layers:
        if parametrize.is_parametrized(mod, "weight"):
            raise ValueError("random_k_per_channel: the model already has weight parametrizations")
        parametrize.register_parametrization(mod, "weight", RandomKPerChannel(mod.weight, k, gen))
    return freeze_all_but(model, lambda name, p: name.endswith("parametrizations.weight.0.values"))


def trainable_mask(module: nn.Module) -> torch.Tensor | None:
    """For a layer prepared by :func:`random_k_per_channel`: a boolean tensor of its weight's
    shape, True where the weight trains; None for a layer without that parametrization."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations.weight:
        if isinstance(p, RandomKPerChannel):
            return _mask_of(p, module.parametrizations.weight.original.shape)
    return None


def frozen_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every frozen parameter (for checking that training left them untouched)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
