"""Chapter `layer-norm`: Ba, Kiros & Hinton (2016), *Layer Normalization*, arXiv:1607.06450.

The method itself lives in the shared blocks (`models.norm.LayerNorm`,
`models.rnn.LNLSTMCell`, `models.mlp.MLP`). This module holds the chapter's
experiment glue: the data per size, one training run per arm, the invariance
measurements of the paper's Sec. 5.1 / Table 1, and the figures.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import plots
from ..data import Dataset, bundled
from ..errors import ReplibookError
from ..metrics.classification import accuracy, nll, predict
from ..metrics.curves import updates_to_target
from ..models.mlp import MLP
from ..models.norm import make_norm
from ..models.rnn import LSTMSeq
from ..train import History, fit

# ---------------------------------------------------------------------------- data

def load_mlp_data(name: str, seed: int = 0, device: Any = None) -> Dataset:
    """Permutation-invariant classification data: images flattened to vectors, standardised
    with training-set statistics.

    ``digits``: sklearn 8x8 digits (64-d, smoke). ``mnist5k``: 5,000 real MNIST digits
    (784-d, small). ``mnist``: full MNIST through torchvision's layout (full).
    """
    if name == "digits":
        return bundled.digits(size=8, split=(1437, 360), seed=seed, flatten=True, standardize=True, device=device)
    if name == "mnist5k":
        return bundled.mnist5k(size=28, split=(4000, 1000), seed=seed, flatten=True, standardize=True, device=device)
    if name == "mnist":
        from ..data import real
        ds = real.mnist(flatten=True, device=device)
        mean, std = ds.train.x.mean(), ds.train.x.std()
        ds.train.x, ds.test.x = (ds.train.x - mean) / std, (ds.test.x - mean) / std
        ds.info["standardized"] = "scalar train mean/std"
        return ds
    raise ValueError(f"unknown MLP dataset '{name}' (digits, mnist5k, mnist)")


def load_sequence_data(name: str, seed: int = 0, device: Any = None) -> Dataset:
    """Sequences for the recurrent panel, ``x: (N, T, F)``.

    - ``rowdigits``: sklearn 8x8 digits read row by row (8 steps of 8 values; smoke).
    - ``rowmnist5k``: the 5,000 real MNIST digits read row by row (28 steps of 28; small).
    - ``rowmnist``: full MNIST read row by row (full).
    - ``seqmnist``: full MNIST pixel by pixel (784 steps of 1 value).
    - ``mnist1d``: MNIST-1D, 40 steps of 1 value.

    Why rows and not single values at small size: the LN-LSTM normalises the input
    projection ``W_x x_t`` over its 4H units, and for a 1-value input that projection is
    ``x_t w``, whose normalised form keeps only the *sign* of ``x_t``. One-value-per-step
    sequences therefore test an artefact of the input width, not the paper's claim
    (its recurrent tasks feed word embeddings or image glimpses, hundreds of values).
    """
    if name == "rowdigits":
        ds = bundled.digits(size=8, split=(1437, 360), seed=seed, standardize=True, device=device)
        side = 8
    elif name == "rowmnist5k":
        ds = bundled.mnist5k(size=28, split=(4000, 1000), seed=seed, standardize=True, device=device)
        side = 28
    elif name in ("rowmnist", "seqmnist"):
        from ..data import real
        ds = real.mnist(device=device)
        mean, std = ds.train.x.mean(), ds.train.x.std()
        ds.train.x, ds.test.x = (ds.train.x - mean) / std, (ds.test.x - mean) / std
        side = 28
    elif name == "mnist1d":
        return bundled.mnist1d(n_train=4000, n_test=1000, seed=seed, seq=True, device=device)
    else:
        raise ValueError(f"unknown sequence dataset '{name}' (rowdigits, rowmnist5k, rowmnist, seqmnist, mnist1d)")
    steps, width = (side * side, 1) if name == "seqmnist" else (side, side)
    ds.train.x = ds.train.x.reshape(-1, steps, width)
    ds.test.x = ds.test.x.reshape(-1, steps, width)
    ds.info["sequence"] = f"{steps} steps x {width} values"
    return ds


# ---------------------------------------------------------------------- training

@torch.no_grad()
def batch_statistics_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Accuracy with BatchNorm using the statistics of each test minibatch (train mode),
    on a copy of the model so its running statistics are not touched.

    Beside the usual eval-mode accuracy (running statistics) this separates the two
    ways small batches hurt BN: noisy training, and a train/test mismatch.
    """
    twin = copy.deepcopy(model).train()
    correct = 0
    n = (len(x) // batch_size) * batch_size
    for i in range(0, n, batch_size):
        correct += int((twin(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
    return correct / max(n, 1)


def train_mlp(data: Dataset, norm: str | None, hidden: list[int], batch_size: int, steps: int,
              eval_every: int, seed: int, lr: float = 1e-3, device: Any = None,
              progress: bool = True) -> tuple[nn.Module, History]:
    """One arm of the permutation-invariant MNIST panel (paper Fig. 6).

    Norm placement: on the summed inputs of each hidden layer, before the ReLU.
    Adam, constant lr, no weight decay, the same for every arm.
    """
    torch.manual_seed(seed)
    model = MLP([data.train.x.shape[1], *hidden, 10], norm=norm)
    x_te, y_te = data.test.x, data.test.y

    def evaluate(m: nn.Module) -> dict[str, float]:
        logits = predict(m, x_te)
        return {"test_acc": accuracy(logits, y_te), "test_nll": nll(logits, y_te)}

    hist = fit(model, (data.train.x, data.train.y), steps=steps, batch_size=batch_size, lr=lr, opt="adam",
               eval_fn=evaluate, eval_every=eval_every, seed=seed, device=device, progress=progress,
               desc=f"MLP {norm or 'none'} bs{batch_size} s{seed}")
    return model, hist


def train_lstm(data: Dataset, ln: bool, hidden: int, batch_size: int, steps: int, eval_every: int,
               seed: int, lr: float = 1e-3, clip: float = 1.0, device: Any = None,
               progress: bool = True) -> tuple[nn.Module, History]:
    """One arm of the recurrent panel: (LN-)LSTM classifying from its last hidden state."""
    torch.manual_seed(seed)
    model = LSTMSeq(data.train.x.shape[-1], hidden, 10, ln=ln)
    x_te, y_te = data.test.x, data.test.y

    def evaluate(m: nn.Module) -> dict[str, float]:
        logits = predict(m, x_te, batch_size=1024)
        return {"test_acc": accuracy(logits, y_te), "test_nll": nll(logits, y_te)}

    hist = fit(model, (data.train.x, data.train.y), steps=steps, batch_size=batch_size, lr=lr, opt="adam",
               clip=clip, eval_fn=evaluate, eval_every=eval_every, seed=seed, device=device, progress=progress,
               desc=f"{'LN-LSTM' if ln else 'LSTM'} s{seed}")
    return model, hist


def panel_target(final_accuracy: Mapping[str, float], fraction: float = 0.9) -> float:
    """The pre-registered convergence target of a panel: ``fraction`` of the best arm's
    mean final test accuracy."""
    return fraction * max(final_accuracy.values())


def convergence_updates(hist: History, target: float, eval_every: int) -> float:
    """Updates until test accuracy first reaches ``target``; a run that never does is
    censored at the budget plus one eval interval (so it counts as the slowest)."""
    budget = hist.steps[-1]
    return updates_to_target(hist.steps, hist.metrics["test_acc"], target, never=budget + eval_every)


# ----------------------------------------------------------- invariance (Table 1)

TRANSFORMS = ("weight matrix re-scaling", "weight matrix re-centring", "weight vector re-scaling",
              "dataset re-scaling", "dataset re-centring", "single case re-scaling", "train vs eval mode")


def invariance_deviations(norm: str, in_dim: int = 784, hidden: int = 256, batch: int = 64,
                          seed: int = 0, scale: float = 2.5) -> dict[str, float]:
    """Max |change| of the normalised summed inputs ``N(W x)`` under each transformation.

    ``W: (hidden, in_dim)`` has no bias (the paper's Sec. 5.1 setting: the bias would
    absorb what re-centring does). Inputs are standard normal, a batch of ``batch``.
    The normaliser is in training mode (BN uses the batch statistics), with its
    gain at 1 and bias at 0, except for the last row, which compares train and eval
    mode after one forward pass has set BN's running statistics.

    Returns ``{transform: max abs deviation}``; ~1e-6 means invariant (only the
    eps inside the square root breaks it), ~1e-1 means not.
    """
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(hidden, in_dim, generator=g) / in_dim ** 0.5
    X = torch.randn(batch, in_dim, generator=g)
    layer = make_norm(norm, hidden).train()

    def out(W_: torch.Tensor, X_: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return layer(X_ @ W_.t())

    base = out(W, X)
    row_scale = torch.ones(hidden, 1)
    row_scale[0] = scale
    X_case = X.clone()
    X_case[0] *= scale
    dev = {
        "weight matrix re-scaling": (out(scale * W, X) - base).abs().max(),
        # the same vector added to every row of W
        "weight matrix re-centring": (out(W + torch.randn(1, in_dim, generator=g), X) - base).abs().max(),
        # one row (one unit's incoming weights) re-scaled
        "weight vector re-scaling": (out(row_scale * W, X) - base).abs().max(),
        "dataset re-scaling": (out(W, scale * X) - base).abs().max(),
        # the same vector added to every example
        "dataset re-centring": (out(W, X + torch.randn(1, in_dim, generator=g)) - base).abs().max(),
        # only example 0 re-scaled; compare that example's output
        "single case re-scaling": (out(W, X_case)[0] - base[0]).abs().max(),
    }
    with torch.no_grad():
        layer.train()
        train_out = layer(X @ W.t())
        layer.eval()
        eval_out = layer(X @ W.t())
    dev["train vs eval mode"] = (train_out - eval_out).abs().max()
    return {k: float(v) for k, v in dev.items()}


# LayerNorm's rows of the paper's Table 1 / Sec. 5.1 (the chapter's claim C3).
LN_INVARIANT = ("weight matrix re-scaling", "weight matrix re-centring", "dataset re-scaling",
                "single case re-scaling", "train vs eval mode")
LN_NOT_INVARIANT = ("weight vector re-scaling", "dataset re-centring")


def invariance_table(deviations: Mapping[str, Mapping[int, Mapping[str, float]]], tol: float = 1e-3) -> pd.DataFrame:
    """``deviations[norm][seed][transform]`` -> a table of worst deviations with a
    measured invariant / not-invariant label per cell."""
    rows = {}
    for norm, per_seed in deviations.items():
        worst = {t: max(d[t] for d in per_seed.values()) for t in TRANSFORMS}
        rows[norm] = {t: f"{'invariant' if v <= tol else 'changes'} ({v:.1e})" for t, v in worst.items()}
    return pd.DataFrame(rows).T


# ----------------------------------------------------------------------- figures

# one colour per normalisation across the chapter's figures: LN variants green, BN red, none blue
COLOURS = {"none": plots.PALETTE[0], "LSTM": plots.PALETTE[0], "BN": plots.PALETTE[1],
           "LN": plots.PALETTE[2], "LN-LSTM": plots.PALETTE[2]}


def plot_panels(histories: Mapping[tuple[str, str], list[History]], settings: list[str], metric: str,
                ylabel: str, logy: bool = False, titles: Mapping[str, str] | None = None):
    """One panel per setting, one mean ± std curve per method (``histories[(method, setting)]``)."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 3.4), sharey=True, squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for method, s in histories:
            if s != setting:
                continue
            runs = histories[(method, s)]
            plots.band(ax, runs[0].steps, [h.metrics[metric] for h in runs], label=method,
                       color=COLOURS.get(method))
        ax.set_xlabel("parameter updates")
        ax.set_ylabel(ylabel)
        ax.set_title((titles or {}).get(setting, setting))
        if logy:
            ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    return fig


def final_table(ch, rows: list[tuple[str, str]], scale: float = 100.0) -> pd.DataFrame:
    """Final test accuracy (%) and updates-to-target, mean ± std over seeds, per arm."""
    from ..chapter import format_mean_std
    out = []
    for method, setting in rows:
        row = {"method": method, "setting": setting,
               "test accuracy (%)": format_mean_std(ch.values("test_acc", method, setting), 1, scale),
               "test NLL": format_mean_std(ch.values("test_nll", method, setting), 3),
               "updates to target": format_mean_std(ch.values("updates_to_target", method, setting), 0)}
        try:
            row["BN acc. with batch stats (%)"] = format_mean_std(
                ch.values("batch_stat_acc", method, setting), 1, scale)
        except ReplibookError:
            row["BN acc. with batch stats (%)"] = ""
        out.append(row)
    return pd.DataFrame(out).set_index(["method", "setting"])
