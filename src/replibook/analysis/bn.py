r"""The affine parameters of normalization layers after training.

A BatchNorm channel computes :math:`y = \gamma\,\hat x + \beta`. A channel whose
:math:`|\gamma|` is close to 0 outputs (nearly) the constant :math:`\beta`: the
random feature it normalises is switched off. Frankle, Schwab & Morcos (2021,
Sec. 5, Figs. 6-7) count such channels after training only :math:`\gamma, \beta`.
The helpers here collect the values per layer and summarise them:

- :func:`affine_values`: ``{layer name: values}`` of one affine parameter
  (``"weight"`` = gamma, ``"bias"`` = beta, ``"v"`` for EvoNorm) of every norm layer;
- :func:`fraction_below`: the fraction of :math:`|\gamma|` below a threshold, over
  all channels of the network (each channel counts once);
- :func:`per_layer_fraction_below`: the same per layer (a table);
- :func:`gamma_histogram`: counts of :math:`|\gamma|` in fixed bins (numpy
  histogram), for a model or for values already collected.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

__all__ = ["NORM_TYPES", "norm_layers", "affine_values", "all_values", "fraction_below",
           "per_layer_fraction_below", "gamma_histogram"]

#: the module classes treated as normalization layers by default: torch's (and the book's)
#: BatchNorm, GroupNorm, LayerNorm and InstanceNorm.
NORM_TYPES: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)

Values = Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray | torch.Tensor


def norm_layers(model: nn.Module, types: tuple[type, ...] = NORM_TYPES) -> dict[str, nn.Module]:
    """``{name: module}`` of the normalization layers of ``model`` (instances of ``types``),
    in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, types)}


def affine_values(model: nn.Module, param: str = "weight", absolute: bool = False,
                  types: tuple[type, ...] = NORM_TYPES) -> dict[str, np.ndarray]:
    """``{layer name: values (C,)}`` of one affine parameter of every norm layer.

    ``param``: ``"weight"`` (gamma), ``"bias"`` (beta) or any other per-channel
    parameter name (EvoNorm's ``"v"``). Layers without it (``affine=False``) are skipped.
    """
    out = {}
    for name, mod in norm_layers(model, types).items():
        p = getattr(mod, param, None)
        if isinstance(p, torch.Tensor):
            vals = p.detach().float().cpu().reshape(-1).numpy()
            out[name] = np.abs(vals) if absolute else vals
    return out


def all_values(values: Values) -> np.ndarray:
    """One flat array from a ``{layer: values}`` mapping, a list of arrays, or an array."""
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().reshape(-1).numpy()
    if isinstance(values, Mapping):
        values = list(values.values())
    if isinstance(values, np.ndarray):
        return values.reshape(-1).astype(float)
    if len(values) == 0:
        return np.zeros(0)
    return np.concatenate([np.asarray(v, dtype=float).reshape(-1) for v in values])


def _values_of(source: nn.Module | Values, types: tuple[type, ...]) -> np.ndarray:
    if isinstance(source, nn.Module):
        return all_values(affine_values(source, "weight", types=types))
    return all_values(source)


def fraction_below(source: nn.Module | Values, threshold: float = 0.05,
                   types: tuple[type, ...] = NORM_TYPES) -> float:
    r"""Fraction of channels with :math:`|\gamma| <` ``threshold``, over all norm layers.

    ``source``: a model (its norm layers' ``weight``) or values already collected.
    """
    vals = np.abs(_values_of(source, types))
    if vals.size == 0:
        raise ValueError("fraction_below: no gamma values "
                         "(does the model have affine norm layers?)")
    return float((vals < threshold).mean())


def per_layer_fraction_below(model: nn.Module, threshold: float = 0.05,
                             types: tuple[type, ...] = NORM_TYPES) -> pd.DataFrame:
    r"""One row per norm layer: its channel count, the fraction of :math:`|\gamma| <` ``threshold``
    and the median :math:`|\gamma|`."""
    rows = [{"layer": name, "channels": v.size,
             "fraction_below": float((np.abs(v) < threshold).mean()),
             "median_abs_gamma": float(np.median(np.abs(v)))}
            for name, v in affine_values(model, "weight", types=types).items()]
    return pd.DataFrame(rows, columns=["layer", "channels", "fraction_below", "median_abs_gamma"]
                        ).set_index("layer")


def gamma_histogram(source: nn.Module | Values, bins: int | Sequence[float] = 40,
                    value_range: tuple[float, float] | None = None, absolute: bool = True,
                    density: bool = False,
                    types: tuple[type, ...] = NORM_TYPES) -> tuple[np.ndarray, np.ndarray]:
    r"""Histogram of the gammas of a model's norm layers (all channels pooled).

    Args:
        source: a model, or values already collected (e.g. pooled over seeds).
        bins: a count (with ``value_range``, default ``[0, max]``) or explicit edges.
        absolute: histogram :math:`|\gamma|` (the paper's Fig. 6 shows the values;
            for "switched-off" channels only the magnitude matters).
        density: normalise to a probability density (equal areas across models of
            different sizes).
    Returns: ``(counts, edges)`` as ``numpy.histogram``.
    """
    vals = _values_of(source, types)
    if absolute:
        vals = np.abs(vals)
    if value_range is None and np.isscalar(bins):
        hi = float(vals.max()) if vals.size else 1.0
        lo = 0.0 if absolute or not vals.size else float(vals.min())
        value_range = (lo, hi if hi > lo else lo + 1.0)
    counts, edges = np.histogram(vals, bins=bins, range=value_range, density=density)
    return counts, edges
