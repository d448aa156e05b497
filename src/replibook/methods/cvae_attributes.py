r"""Chapter `cvae-attributes`: Debbagh (2023), *Learning Structured Output Representations from
Attributes using Deep Conditional Generative Models*, arXiv:2305.00980 -- a reproduction and extension
of Sohn, Lee & Yan (2015), *Learning Structured Output Representation using Deep Conditional Generative
Models* (NeurIPS 2015), to attribute-conditioned image generation.

The models are the book's shared ones (`models.vae.CVAE` with a learned or a standard prior,
`models.vae.VAE`, `models.vae.ConvDecoder`) and so are the ELBO terms (`losses.vae`). What is specific
to the paper lives here:

- the (beta-weighted) CVAE objective with Sohn et al.'s conditional prior network,

  .. math:: \mathcal L_\text{CVAE}(x, y) = -\mathbb E_{q(z|x,y)} \log p(x|z,y)
            + \beta\, \mathrm{KL}\big(q(z|x,y)\,\Vert\, p(z|y)\big);

- Sohn et al.'s Gaussian stochastic neural network (GSNN) term, which trains the generator on
  latents drawn from the *prior* network, the way it is used at test time, and their hybrid
  objective, a convex combination (their hybrid objective; weights alpha and 1 - alpha):

  .. math:: \mathcal L_\text{GSNN}(x, y) = -\log p(x | z_p, y),\quad z_p \sim p(z|y);\qquad
            \mathcal L_\text{hybrid} = \alpha\, \mathcal L_\text{CVAE} + (1 - \alpha)\, \mathcal L_\text{GSNN};

- the deterministic baseline, a CNN mapping attributes straight to an image (MSE), which can only
  output one image per condition;
- the chapter's protocol on procedural shapes3d scenes: one-hot conditions on (shape, object hue,
  floor hue), a compositional split of (shape, object hue) pairs, and the probe-based metrics
  (conditional accuracy, diversity of the nuisance factors, FID-lite, test ELBO).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.procedural import Bundle, all_factor_combinations
from ..losses.vae import kl_normal, reconstruction_nll
from ..metrics.image import fid_lite
from ..models.vae import CVAE, VAE, ConvDecoder, reparameterize, to_image
from ..train import History, fit

__all__ = [
    "CONDITION", "NUISANCE", "ARMS", "AttributeCNN",
    "cvae_loss", "gsnn_loss", "hybrid_loss", "vae_loss", "deterministic_loss",
    "factor_index", "one_hot_condition", "compositional_holdout", "held_out_mask", "condition_grid",
    "expand_grid", "make_data", "build_model", "train_arm", "generate", "negative_elbo",
    "conditional_accuracy", "nuisance_diversity", "evaluate_samples", "evaluate_arm", "real_reference",
    "sample_rows", "plot_sample_grid",
]

CONDITION = ("shape", "object_hue", "floor_hue")        # what the generator is told
NUISANCE = ("wall_hue", "scale", "orientation")         # what it must invent: the source of multimodality
ARMS = ("CNN", "VAE", "CVAE-std", "CVAE-learned")


# --------------------------------------------------------------------------- models

class AttributeCNN(nn.Module):
    """Deterministic baseline: attributes ``y (B, cond_dim)`` -> one image (raw logits ``(B, C, S, S)``).

    The generator half of the CVAE without a latent: `models.vae.ConvDecoder` fed ``y`` alone.
    Trained with MSE, it converges to the conditional mean E[x | y], one image per condition.
    """

    def __init__(self, out_ch: int, size: int, cond_dim: int, widths: Sequence[int] = (64, 64, 32, 32),
                 fc: int = 128):
        super().__init__()
        self.cond_dim = cond_dim
        self.likelihood = "bernoulli"           # outputs are logits; to_image applies the sigmoid
        self.decoder = ConvDecoder(out_ch, size, cond_dim, widths, fc)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.decoder(y.float())

    def generate(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The same output for every call: there is nothing to sample."""
        return self(y)


# --------------------------------------------------------------------------- objectives

def cvae_loss(model: CVAE, x: torch.Tensor, y: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    r"""Batch mean of :math:`-\log p(x|z,y) + \beta\,\mathrm{KL}(q(z|x,y) \Vert p(z|y))`, z ~ q(z|x,y)."""
    mu, logvar = model.encode(x, y)                                  # q(z | x, y)
    mu_p, logvar_p = model.prior(y)                                  # p(z | y): prior network or N(0, I)
    z = reparameterize(mu, logvar)                                   # z = mu + sigma * eps
    rec = reconstruction_nll(model.decode(z, y), x, model.likelihood)       # -log p(x | z, y)
    kl = kl_normal(mu, logvar, mu_p, logvar_p)                       # KL(q(z|x,y) || p(z|y))
    return (rec + beta * kl).mean()


def gsnn_loss(model: CVAE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Sohn et al.'s GSNN term: batch mean of :math:`-\log p(x | z_p, y)` with :math:`z_p \sim p(z|y)`.

    The latent comes from the prior network (reparameterised, so the prior network gets
    gradients), as at test time; the recognition network is not used.
    """
    mu_p, logvar_p = model.prior(y)
    z_p = reparameterize(mu_p, logvar_p)                             # z_p ~ p(z | y)
    return reconstruction_nll(model.decode(z_p, y), x, model.likelihood).mean()


def hybrid_loss(model: CVAE, x: torch.Tensor, y: torch.Tensor, beta: float = 1.0,
                alpha: float = 1.0) -> torch.Tensor:
    r""":math:`\alpha\,\mathcal L_\text{CVAE} + (1-\alpha)\,\mathcal L_\text{GSNN}`, Sohn et al. (2015)'s hybrid.

    ``alpha = 1`` is the plain (beta-weighted) CVAE objective and skips the GSNN pass;
    ``alpha = 0`` is the GSNN alone.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (a convex combination), got {alpha}")
    loss = cvae_loss(model, x, y, beta) * alpha if alpha > 0 else x.new_zeros(())
    if alpha < 1:
        loss = loss + (1.0 - alpha) * gsnn_loss(model, x, y)
    return loss


def vae_loss(model: VAE, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Unconditional baseline: batch mean of ``-log p(x|z) + beta * KL(q(z|x) || N(0, I))``."""
    mu, logvar = model.encode(x)
    z = reparameterize(mu, logvar)
    return (reconstruction_nll(model.decode(z), x, model.likelihood) + beta * kl_normal(mu, logvar)).mean()


def deterministic_loss(model: AttributeCNN, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error between ``sigmoid(CNN(y))`` and ``x`` (per pixel, batch mean)."""
    return F.mse_loss(torch.sigmoid(model(y)), x)


# --------------------------------------------------------------------------- conditions and splits

def factor_index(factor_names: Sequence[str], names: Sequence[str]) -> list[int]:
    """Column of each of ``names`` in ``factor_names`` (raises on an unknown name)."""
    missing = [n for n in names if n not in factor_names]
    if missing:
        raise ValueError(f"factors {missing} not among {list(factor_names)}")
    return [list(factor_names).index(n) for n in names]


def one_hot_condition(levels_of_condition: torch.Tensor, condition_levels: Sequence[int]) -> torch.Tensor:
    """Concatenated one-hot codes: ``(N, K)`` level indices -> ``(N, sum(condition_levels))`` float.

    E.g. (shape 4, object hue 6, floor hue 6) -> 16-d, exactly three ones per row.
    """
    if levels_of_condition.shape[1] != len(condition_levels):
        raise ValueError(f"{levels_of_condition.shape[1]} columns for {len(condition_levels)} condition factors")
    return torch.cat([F.one_hot(levels_of_condition[:, k].long(), int(n)).float()
                      for k, n in enumerate(condition_levels)], dim=1)


def compositional_holdout(n_shapes: int, n_hues: int, frac: float = 0.2, seed: int = 0) -> np.ndarray:
    """``round(frac * n_shapes * n_hues)`` (shape, object hue) pairs to hold out of training: ``(K, 2)``.

    Drawn at random under the constraint that every shape and every hue keeps at least one
    training pair, so a held-out pair combines two values each seen in training (a test of
    composition, not of an unseen value).
    """
    n_pairs, k = n_shapes * n_hues, int(round(frac * n_shapes * n_hues))
    if not 0 <= k < n_pairs:
        raise ValueError(f"cannot hold out {k} of {n_pairs} pairs")
    rng = np.random.default_rng(seed)
    pairs = [(s, h) for s in range(n_shapes) for h in range(n_hues)]
    for _ in range(1000):
        chosen: list[tuple[int, int]] = []
        for i in rng.permutation(n_pairs):
            s, h = pairs[i]
            left_s = sum(1 for (a, b) in pairs if a == s and (a, b) not in chosen) - 1
            left_h = sum(1 for (a, b) in pairs if b == h and (a, b) not in chosen) - 1
            if left_s >= 1 and left_h >= 1:
                chosen.append((s, h))
            if len(chosen) == k:
                return np.array(sorted(chosen), dtype=np.int64).reshape(-1, 2)
    raise ValueError(f"no split holds out {k} pairs and keeps every shape and hue in training")


def held_out_mask(factors: torch.Tensor, factor_names: Sequence[str], pairs: np.ndarray) -> torch.Tensor:
    """Bool ``(N,)``: rows whose (shape, object hue) is one of the held-out ``pairs``."""
    s, h = factor_index(factor_names, ("shape", "object_hue"))
    mask = torch.zeros(len(factors), dtype=torch.bool, device=factors.device)
    for a, b in np.asarray(pairs).reshape(-1, 2):
        mask |= (factors[:, s] == int(a)) & (factors[:, h] == int(b))
    return mask


def condition_grid(condition_levels: Sequence[int], pairs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Every condition (shape, object hue, floor hue), split into (held-in, held-out) ``(C, 3)`` grids."""
    grid = torch.as_tensor(all_factor_combinations(condition_levels))
    out = torch.zeros(len(grid), dtype=torch.bool)
    for a, b in np.asarray(pairs).reshape(-1, 2):
        out |= (grid[:, 0] == int(a)) & (grid[:, 1] == int(b))
    return grid[~out], grid[out]


def make_data(make_fn, n_train: int, n_test: int, *, size: int, levels: Sequence[int], pairs: np.ndarray,
              seed: int = 0, device=None) -> dict[str, Bundle]:
    """Training and test scenes without the held-out (shape, object hue) pairs, plus held-out test scenes.

    ``make_fn`` is ``shapes3d.make``. Scenes are drawn until each split is full; the
    held-out scenes (``n_test`` of them) are used only to evaluate composition.
    Returns ``{"train", "test", "heldout"}`` Bundles.
    """
    need_in, need_out = n_train + n_test, n_test
    got_in: list[Bundle] = []
    got_out: list[Bundle] = []
    n_in = n_out = 0
    draw = 0
    while n_in < need_in or n_out < need_out:
        n = int(1.3 * max(need_in - n_in, 0) + 6 * max(need_out - n_out, 0)) + 64
        b = make_fn(n, seed=seed + 7919 * draw, size=size, levels=list(levels), device=device)
        mask = held_out_mask(b.factors, b.factor_names, pairs).cpu().numpy()
        got_in.append(b.subset(np.flatnonzero(~mask)))
        got_out.append(b.subset(np.flatnonzero(mask)))
        n_in, n_out = n_in + int((~mask).sum()), n_out + int(mask.sum())
        draw += 1
    inside, outside = _concat(got_in), _concat(got_out)
    return {"train": inside.subset(np.arange(n_train)),
            "test": inside.subset(np.arange(n_train, n_train + n_test)),
            "heldout": outside.subset(np.arange(n_test))}


def _concat(parts: list[Bundle]) -> Bundle:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]

    def cat(name):
        ts = [getattr(p, name) for p in parts]
        return None if ts[0] is None else torch.cat(ts)
    return Bundle(cat("x"), cat("factors"), list(first.factor_names), list(first.levels), cat("y"),
                  cat("masks"), first.name, dict(first.info),
                  {k: torch.cat([p.extra[k] for p in parts]) for k in first.extra})


# --------------------------------------------------------------------------- build, train, sample

def build_model(arm: str, *, size: int, cond_dim: int, latent_dim: int, widths: Sequence[int],
                fc: int, prior_hidden: int = 64, channels: int = 3) -> nn.Module:
    """The model of an arm: ``CNN`` (deterministic), ``VAE`` (ignores y), ``CVAE-std``, ``CVAE-learned``."""
    dec_widths = tuple(reversed(tuple(widths)))
    if arm == "CNN":
        return AttributeCNN(channels, size, cond_dim, dec_widths, fc)
    if arm == "VAE":
        return VAE(channels, size, latent_dim, widths=widths, fc=fc, likelihood="bernoulli")
    if arm in ("CVAE-std", "CVAE-learned"):
        return CVAE(channels, size, latent_dim, cond_dim, prior="standard" if arm == "CVAE-std" else "learned",
                    widths=widths, fc=fc, likelihood="bernoulli", prior_hidden=prior_hidden)
    raise ValueError(f"unknown arm {arm!r} (choose from {', '.join(ARMS)})")


def train_arm(arm: str, x: torch.Tensor, y: torch.Tensor, *, beta: float = 1.0, alpha: float = 1.0,
              steps: int, batch_size: int, lr: float, seed: int, model_kw: Mapping, device=None,
              progress: bool = True) -> tuple[nn.Module, History]:
    """Initialise the arm's model from ``seed`` and train it for ``steps`` updates of Adam.

    ``x``: images ``(N, C, S, S)`` in [0, 1]; ``y``: one-hot conditions ``(N, cond_dim)``.
    CVAE arms use `hybrid_loss` (``alpha = 1``: the plain beta-weighted CVAE objective).
    """
    torch.manual_seed(seed)
    model = build_model(arm, size=x.shape[-1], cond_dim=y.shape[1], **model_kw)
    if arm == "CNN":
        def loss_fn(m, xb, yb):
            return deterministic_loss(m, xb, yb)
    elif arm == "VAE":
        def loss_fn(m, xb, yb):
            return vae_loss(m, xb, beta)
    else:
        def loss_fn(m, xb, yb):
            return hybrid_loss(m, xb, yb, beta=beta, alpha=alpha)
    hist = fit(model, (x, y), steps=steps, batch_size=batch_size, lr=lr, loss_fn=loss_fn, seed=seed,
               device=device, progress=progress, desc=f"{arm} b={beta:g}")
    return model, hist


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate(model: nn.Module, y: torch.Tensor, seed: int = 0, batch_size: int = 1024) -> torch.Tensor:
    """One image in [0, 1] per row of ``y`` (one-hot conditions): ``z ~ p(z|y)``, ``x = sigmoid(G(z, y))``.

    The unconditional VAE ignores ``y`` and decodes ``z ~ N(0, I)``; the CNN has no ``z``.
    """
    model.eval()
    dev = _model_device(model)
    gen = torch.Generator(device=dev).manual_seed(seed)
    out = []
    for i in range(0, len(y), batch_size):
        yb = y[i:i + batch_size].to(dev)
        if isinstance(model, VAE):
            z = torch.randn(len(yb), model.latent_dim, generator=gen, device=dev)
            raw = model.decode(z)
        else:
            raw = model.generate(yb, generator=gen)
        out.append(to_image(raw, "bernoulli"))
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def negative_elbo(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0,
                  batch_size: int = 1024) -> float:
    """Test -ELBO in nats per image (beta = 1, one posterior sample per image).

    For a CVAE it bounds ``-log p(x | y)`` (its own prior p(z|y)); for the VAE ``-log p(x)``.
    """
    model.eval()
    dev = _model_device(model)
    gen = torch.Generator(device=dev).manual_seed(seed)
    total = 0.0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        if isinstance(model, CVAE):
            mu, logvar = model.encode(xb, yb)
            mu_p, logvar_p = model.prior(yb)
            z = reparameterize(mu, logvar, gen)
            rec = reconstruction_nll(model.decode(z, yb), xb, model.likelihood)
            kl = kl_normal(mu, logvar, mu_p, logvar_p)
        elif isinstance(model, VAE):
            mu, logvar = model.encode(xb)
            z = reparameterize(mu, logvar, gen)
            rec = reconstruction_nll(model.decode(z), xb, model.likelihood)
            kl = kl_normal(mu, logvar)
        else:
            raise TypeError(f"{type(model).__name__} has no ELBO")
        total += float((rec + kl).sum())
    return total / len(x)


# --------------------------------------------------------------------------- probe-based metrics

def conditional_accuracy(pred_factors: torch.Tensor, target: torch.Tensor, cond_cols: Sequence[int]) -> float:
    """Fraction of samples whose predicted (shape, object hue, floor hue) all equal the requested ones.

    ``pred_factors``: ``(N, F)`` probe predictions; ``target``: ``(N, K)`` requested levels of the
    ``K`` condition factors, in the order of ``cond_cols``.
    """
    pred = pred_factors[:, list(cond_cols)].to(target.device)
    return float((pred == target).all(1).float().mean())


def nuisance_diversity(pred_factors: torch.Tensor, n_per: int, nuisance_cols: Sequence[int]) -> dict[str, float]:
    """Distinct predicted nuisance values among the ``n_per`` samples of each condition.

    ``pred_factors`` holds ``n_per`` consecutive rows per condition. Returns ``diversity``: the
    number of distinct predicted levels per nuisance factor, averaged over the factors and the
    conditions (1 = every sample the same; at most ``min(n_per, levels)``), ``distinct_tuples``: the
    number of distinct (wall hue, scale, orientation) triples, averaged over conditions, and
    ``per_factor``: the per-factor averages.
    """
    if len(pred_factors) % n_per:
        raise ValueError(f"{len(pred_factors)} rows are not a whole number of groups of {n_per}")
    groups = pred_factors[:, list(nuisance_cols)].reshape(-1, n_per, len(nuisance_cols)).cpu().numpy()
    per_factor = np.array([[len(np.unique(g[:, j])) for j in range(g.shape[1])] for g in groups], dtype=float)
    tuples = np.array([len({tuple(r) for r in g}) for g in groups], dtype=float)
    return {"diversity": float(per_factor.mean()), "distinct_tuples": float(tuples.mean()),
            "per_factor": [float(v) for v in per_factor.mean(0)]}


@torch.no_grad()
def evaluate_samples(images: torch.Tensor, targets: torch.Tensor, probe: nn.Module, *, n_per: int,
                     cond_cols: Sequence[int], nuisance_cols: Sequence[int],
                     real_features: torch.Tensor | None = None,
                     cond_names: Sequence[str] = CONDITION) -> dict[str, float]:
    """Probe metrics of generated ``images`` (``n_per`` consecutive samples per condition).

    ``targets``: ``(N, K)`` requested condition levels per image. Returns ``cond_acc``,
    ``acc_<name>`` (the accuracy of each condition factor alone, named by ``cond_names``),
    ``diversity``, ``distinct_tuples`` and, with ``real_features``, ``fid_lite`` (probe features of the
    samples vs those of real images).
    """
    pred = probe.predict_factors(images)
    targets = targets.to(pred.device)
    out = {"cond_acc": conditional_accuracy(pred, targets, cond_cols)}
    for k, (col, name) in enumerate(zip(cond_cols, cond_names)):   # which requested attribute is missed
        out[f"acc_{name}"] = float((pred[:, col] == targets[:, k]).float().mean())
    div = nuisance_diversity(pred, n_per, nuisance_cols)
    out.update(diversity=div["diversity"], distinct_tuples=div["distinct_tuples"])
    if real_features is not None:
        out["fid_lite"] = fid_lite(probe.embed_images(images), real_features)
    return out


@torch.no_grad()
def evaluate_arm(model: nn.Module, probe: nn.Module, *, grid_in: torch.Tensor, grid_out: torch.Tensor,
                 condition_levels: Sequence[int], n_per: int, cond_cols: Sequence[int],
                 nuisance_cols: Sequence[int], real_features: torch.Tensor, test: Bundle,
                 seed: int = 0) -> dict[str, float]:
    """Every metric of one trained arm.

    ``n_per`` samples for each held-in condition (``grid_in``) give ``cond_acc``, ``diversity``,
    ``distinct_tuples`` and ``fid_lite`` (vs ``real_features``, the probe features of real held-in
    test scenes); ``n_per`` samples for each held-out condition give ``cond_acc_heldout``; latent
    models also get ``neg_elbo`` on the held-in ``test`` scenes (nats per image, beta = 1).
    """
    dev = _model_device(model)
    targets = grid_in.repeat_interleave(n_per, 0).to(dev)
    images = generate(model, one_hot_condition(targets, condition_levels), seed=seed)
    out = evaluate_samples(images, targets, probe, n_per=n_per, cond_cols=cond_cols,
                           nuisance_cols=nuisance_cols, real_features=real_features)
    if len(grid_out):
        t_out = grid_out.repeat_interleave(n_per, 0).to(dev)
        held = generate(model, one_hot_condition(t_out, condition_levels), seed=seed + 1)
        out["cond_acc_heldout"] = conditional_accuracy(probe.predict_factors(held), t_out, cond_cols)
    if isinstance(model, (CVAE, VAE)):
        y = one_hot_condition(test.factors[:, list(cond_cols)], condition_levels)
        out["neg_elbo"] = negative_elbo(model, test.x, y, seed=seed)
    return out


@torch.no_grad()
def real_reference(render_fn, grid: torch.Tensor, probe: nn.Module, *, n_per: int, factor_names: Sequence[str],
                   levels: Sequence[int], size: int, seed: int, device=None,
                   real_features: torch.Tensor | None = None) -> dict[str, float]:
    """The metrics of *real* scenes: ``n_per`` renders per condition of ``grid`` with random nuisance factors.

    The ceiling of conditional accuracy and diversity the probe can report, and (vs
    ``real_features`` of other real scenes) the FID-lite floor at this sample size.
    """
    factors = expand_grid(grid, n_per, factor_names, levels, seed)
    images = render_fn(factors, size=size, levels=list(levels))
    images = images.to(device) if device is not None else images
    cond_cols = factor_index(factor_names, CONDITION)
    nuis_cols = factor_index(factor_names, NUISANCE)
    targets = factors[:, cond_cols].to(images.device)
    return evaluate_samples(images, targets, probe, n_per=n_per, cond_cols=cond_cols,
                            nuisance_cols=nuis_cols, real_features=real_features)


def expand_grid(grid: torch.Tensor, n_per: int, factor_names: Sequence[str], levels: Sequence[int],
                seed: int) -> torch.Tensor:
    """Full factor rows ``(C * n_per, F)``: each condition of ``grid`` repeated ``n_per`` times, the
    nuisance factors drawn uniformly at random."""
    rng = np.random.default_rng(seed)
    n = len(grid) * n_per
    factors = np.zeros((n, len(factor_names)), dtype=np.int64)
    for j, name in enumerate(factor_names):
        factors[:, j] = rng.integers(0, int(levels[j]), size=n)
    cond = np.repeat(grid.cpu().numpy(), n_per, axis=0)
    factors[:, factor_index(factor_names, CONDITION)] = cond
    return torch.as_tensor(factors)


# --------------------------------------------------------------------------- figures

@torch.no_grad()
def sample_rows(model: nn.Module, rows: torch.Tensor, condition_levels: Sequence[int], n_cols: int,
                seed: int = 0) -> torch.Tensor:
    """``(R, n_cols, C, S, S)``: ``n_cols`` samples for each condition (row of ``rows``, level indices)."""
    y = one_hot_condition(rows.repeat_interleave(n_cols, 0), condition_levels)
    imgs = generate(model, y, seed=seed)
    return imgs.reshape(len(rows), n_cols, *imgs.shape[1:]).cpu()


def plot_sample_grid(ax, images: torch.Tensor, row_labels: Sequence[str] | None = None,
                     title: str | None = None, pad: int = 1) -> None:
    """Draw ``(R, K, C, S, S)`` images as an R x K mosaic on one axis."""
    r, k, c, s, _ = images.shape
    canvas = np.ones((r * (s + pad) - pad, k * (s + pad) - pad, 3))
    arr = images.clamp(0, 1).permute(0, 1, 3, 4, 2).numpy()
    if c == 1:
        arr = np.repeat(arr, 3, axis=-1)
    for i in range(r):
        for j in range(k):
            canvas[i * (s + pad):i * (s + pad) + s, j * (s + pad):j * (s + pad) + s] = arr[i, j]
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([])
    ax.grid(False)
    if row_labels is not None:
        ax.set_yticks([i * (s + pad) + s / 2 for i in range(r)])
        ax.set_yticklabels(row_labels, fontsize=7)
    else:
        ax.set_yticks([])
    for side in ("left", "bottom", "top", "right"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
