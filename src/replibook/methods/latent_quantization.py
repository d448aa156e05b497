r"""Chapter `latent-quantization`: Hsu, Dorrell, Whittington, Wu & Finn (2023),
*Disentanglement via Latent Quantization*, NeurIPS 2023, arXiv:2305.18378
(official code: https://github.com/kylehkhsu/latent_quantization, JAX/equinox).

Why it exists. An autoencoder with a continuous latent space can reconstruct its data
with any invertible mixture of the true factors, so nothing pushes it to put one factor
in one latent. QLAE adds two inductive biases:

1. **latent quantization**: each latent dimension :math:`j` can take only the
   :math:`n_v = 10` values of its own learnable scalar codebook :math:`V_j`
   (`replibook.models.quantizers.ScalarLatentQuantizer`); a code is a point of the grid
   :math:`V_1 \times \dots \times V_{n_z}`, so the decoder must give each value of each
   latent one consistent meaning that combines with the others;
2. **strong weight decay** (AdamW, 0.1 on the encoder and decoder weights), which drives
   the networks towards the simplest encoder/decoder that uses this grid.

The training objective, per example, with the official loss scaling (every term is a mean
over its elements: pixels for the reconstruction, latent dimensions for the others):

.. math::
    \mathcal L = \underbrace{\overline{\mathrm{BCE}(x, \mathrm{dec}(\hat z))}}_{\text{mean over pixels}}
    + 0.01\, \overline{(\operatorname{sg}(z_c) - z_q)^2} + 0.01\, \overline{(z_c - \operatorname{sg}(z_q))^2},
    \qquad \hat z = z_c + \operatorname{sg}(z_q - z_c),\; z_c = \mathrm{enc}(x).

The baselines use the same pixel-mean scaling: the AE minimises the mean BCE; the
beta-VAE minimises :math:`(\sum \mathrm{BCE} + \beta\, \mathrm{KL}) / \dim(x)`, which is the
official ``mean BCE + (n_z / dim x) * beta * mean KL``.

Optimiser (official ``AE.construct_optimizer``): the *regularised* group (every weight
matrix and convolution kernel) gets element-wise gradient clipping at 1 (``optax.clip``)
followed by AdamW with the weight decay; the *unregularised* group (biases and the
codebook values) gets plain Adam. `make_optimizer` builds that as one torch AdamW with two
parameter groups (`ClippedAdamW`).

Evaluation follows the official script: the representation of QLAE is its quantized code
(scored on InfoMEC's discrete path), of the AE its continuous code and of the VAE its
posterior mean (continuous path); reconstructions decode that same representation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..losses.vae import elbo_loss
from ..metrics import disentanglement as dis
from ..metrics.image import psnr
from ..models.quantizers import ScalarLatentQuantizer, usage
from ..models.vae import AE, VAE, ConvDecoder, ConvEncoder

__all__ = ["QLAE", "QLAEOutput", "mean_bce", "qlae_loss", "ae_loss", "beta_vae_loss",
           "is_regularized", "ClippedAdamW", "make_optimizer", "build_model", "loss_for",
           "representation", "evaluate", "codebook_traversals", "METHODS", "weight_norm", "arm_settings",
           "train_arm", "inactive_latent_check", "load_data", "load_shapes3d_file", "nmi_order",
           "beta_tcvae_loss"]


@dataclass
class QLAEOutput:
    """A QLAE forward pass: raw decoder logits and every stage of the latent."""

    out: torch.Tensor          # (B, C, H, W) logits of dec(z_hat)
    z_c: torch.Tensor          # (B, D) continuous encoder output
    z_q: torch.Tensor          # (B, D) quantized values
    z_hat: torch.Tensor        # (B, D) straight-through code (= z_q in value)
    indices: torch.Tensor      # (B, D) codebook indices
    losses: dict[str, torch.Tensor]


class QLAE(nn.Module):
    """Quantized-latent autoencoder: ConvEncoder -> ScalarLatentQuantizer -> ConvDecoder.

    ``n_latents`` is "twice the number of sources" in the paper (12 for Shapes3D).
    """

    def __init__(self, in_ch: int, size: int, n_latents: int, n_values: int = 10,
                 widths: Sequence[int] = (32, 32, 64, 64), fc: int = 128):
        super().__init__()
        self.latent_dim = n_latents
        self.encoder = ConvEncoder(in_ch, size, n_latents, widths, fc)
        self.latent = ScalarLatentQuantizer(n_latents, n_values)
        self.decoder = ConvDecoder(in_ch, size, n_latents, tuple(reversed(tuple(widths))), fc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The continuous code z_c (B, D)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> QLAEOutput:
        z_c = self.encoder(x)                                   # z_c = enc(x)
        z_hat, z_q, idx, losses = self.latent(z_c)              # z_hat = z_c + sg(z_q - z_c)
        return QLAEOutput(self.decoder(z_hat), z_c, z_q, z_hat, idx, losses)


# ------------------------------------------------------------------------------ losses

def mean_bce(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits averaged over pixels and batch (official scaling)."""
    return F.binary_cross_entropy_with_logits(logits, x)


def qlae_loss(model: QLAE, x: torch.Tensor, quantization: float = 0.01,
              commitment: float = 0.01) -> torch.Tensor:
    r"""Mean BCE + 0.01 quantization loss + 0.01 commitment loss (scalars, batch means)."""
    o = model(x)
    return (mean_bce(o.out, x)                                   # reconstruction
            + quantization * o.losses["quantization"]            # mean (sg(z_c) - z_q)^2
            + commitment * o.losses["commitment"])               # mean (z_c - sg(z_q))^2


def ae_loss(model: AE, x: torch.Tensor) -> torch.Tensor:
    """Mean BCE of a deterministic autoencoder."""
    return mean_bce(model(x).out, x)


def beta_vae_loss(model: VAE, x: torch.Tensor, beta: float = 4.0) -> torch.Tensor:
    r"""beta-VAE objective scaled per pixel: :math:`(\sum\mathrm{BCE} + \beta\,\mathrm{KL}) / \dim(x)`."""
    return elbo_loss(model(x), x, beta=beta, likelihood="bernoulli") / x[0].numel()


def beta_tcvae_loss(model: VAE, x: torch.Tensor, dataset_size: int, beta: float = 6.0) -> torch.Tensor:
    r"""beta-TCVAE objective (Chen et al. 2018, minibatch-weighted sampling) scaled per pixel like
    `beta_vae_loss`: :math:`(\sum\mathrm{BCE} + I + \beta\,\mathrm{TC} + \mathrm{dimKL}) / \dim(x)`."""
    from ..losses.vae import beta_tcvae_loss as tcvae

    loss, _ = tcvae(model(x), x, dataset_size, alpha=1.0, beta=beta, gamma=1.0, likelihood="bernoulli")
    return loss / x[0].numel()


# ------------------------------------------------------------------------------ optimiser

def is_regularized(name: str, p: nn.Parameter) -> bool:
    """Weight-decay group of the official code: weight tensors yes; biases and latent
    codebooks no."""
    return not (name.endswith("bias") or name.startswith("latent.") or ".latent." in name)


class ClippedAdamW(torch.optim.AdamW):
    """AdamW whose parameter groups may carry ``clip_value``: their gradients are clipped
    element-wise to ``[-clip_value, clip_value]`` before the update (``optax.clip``)."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            c = group.get("clip_value")
            if c is not None:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.clamp_(-c, c)
        return super().step(closure)


def make_optimizer(model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.1,
                   clip: float | None = 1.0) -> ClippedAdamW:
    """Two groups as in the official code: regularised weights (clip + AdamW with
    ``weight_decay``) and the rest (plain Adam: AdamW with decay 0, no clipping)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    reg = [p for n, p in named if is_regularized(n, p)]
    rest = [p for n, p in named if not is_regularized(n, p)]
    return ClippedAdamW([{"params": reg, "weight_decay": weight_decay, "clip_value": clip},
                         {"params": rest, "weight_decay": 0.0, "clip_value": None}], lr=lr)


def weight_norm(model: nn.Module) -> float:
    """L2 norm of the regularised (weight-decayed) parameters, the quantity weight decay shrinks."""
    sq = sum(float((p.detach().float() ** 2).sum()) for n, p in model.named_parameters() if is_regularized(n, p))
    return sq ** 0.5


# ------------------------------------------------------------------------------ the arms

METHODS = ("AE", "beta-VAE", "beta-TCVAE", "QLAE", "QLAE-low-wd")


def build_model(kind: str, in_ch: int, size: int, n_latents: int, widths: Sequence[int] = (32, 32, 64, 64),
                fc: int = 128, n_values: int = 10) -> nn.Module:
    """``"qlae"``, ``"ae"`` or ``"vae"`` with the shared conv encoder/decoder."""
    if kind == "qlae":
        return QLAE(in_ch, size, n_latents, n_values, widths, fc)
    if kind == "ae":
        return AE(in_ch, size, n_latents, widths, fc)
    if kind in ("vae", "tcvae"):
        return VAE(in_ch, size, n_latents, widths, fc)
    raise ValueError(f"unknown model kind '{kind}' (qlae, ae, vae, tcvae)")


def loss_for(kind: str, beta: float = 4.0, dataset_size: int | None = None
             ) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """The training loss ``loss_fn(model, x)`` of a model kind (``tcvae`` needs ``dataset_size``)."""
    if kind == "qlae":
        return qlae_loss
    if kind == "ae":
        return ae_loss
    if kind == "vae":
        return lambda model, x: beta_vae_loss(model, x, beta)
    if kind == "tcvae":
        if dataset_size is None:
            raise ValueError("the beta-TCVAE loss needs dataset_size")
        return lambda model, x: beta_tcvae_loss(model, x, dataset_size, beta)
    raise ValueError(f"unknown model kind '{kind}' (qlae, ae, vae, tcvae)")


# ------------------------------------------------------------------------------ evaluation

@torch.no_grad()
def representation(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> dict[str, Any]:
    """The representation that is scored, and the reconstruction decoded from it.

    Returns ``{"z": (N, D) numpy code, "discrete": bool, "recon": (N, C, H, W) images in
    [0, 1], "indices": (N, D) codebook indices or None}``: QLAE -> quantized values
    (discrete); VAE -> posterior means; AE -> its code.
    """
    was = model.training
    model.eval()
    zs, recons, idxs = [], [], []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        if isinstance(model, QLAE):
            o = model(xb)
            z, logits = o.z_q, o.out
            idxs.append(o.indices.cpu())
        elif isinstance(model, VAE):
            z, _ = model.encode(xb)
            logits = model.decode(z)
        else:
            z = model.encode(xb)
            logits = model.decode(z)
        zs.append(z.float().cpu())
        recons.append(torch.sigmoid(logits.float()).cpu())
    model.train(was)
    return {"z": torch.cat(zs).numpy(), "discrete": isinstance(model, QLAE), "recon": torch.cat(recons),
            "indices": torch.cat(idxs) if idxs else None}


def evaluate(model: nn.Module, x: torch.Tensor, factors: torch.Tensor, extra: bool = True,
             n_bins: int = 10) -> dict[str, Any]:
    """InfoM/E/C (+ MIG, DCI-D, active latents, reconstruction MSE and PSNR when ``extra``;
    without ``extra`` only InfoM and InfoC, the cheap part, for training curves).

    With ``extra`` also ``infom_binned``: InfoM with one estimator for every model, the
    discrete (plug-in) path on codes with at most ``n_bins`` values (a continuous code is
    cut into ``n_bins`` equal-width bins per latent, a quantized code is used as it is), a
    control for the two MI estimators the official InfoM uses for the two kinds of code.

    ``x`` (N, C, H, W) held-out images, ``factors`` (N, F) their levels. The reconstruction
    error is the per-pixel mean squared error of the decoded representation in [0, 1].
    Also returns the NMI matrix (key ``"nmi_all"``) and the active mask for the figures.
    """
    rep = representation(model, x)
    f = factors.cpu().numpy()
    info = dis.infomec(f, rep["z"], discrete_z=rep["discrete"], explicitness=extra)
    out: dict[str, Any] = {"infom": info["infom"], "infoe": info["infoe"], "infoc": info["infoc"],
                           "n_active": info["n_active"], "nmi_all": info["nmi_all"], "active": info["active"]}
    if extra:
        xc = x.detach().float().cpu()
        out["mse"] = float(((rep["recon"] - xc) ** 2).mean())
        out["psnr"] = float(psnr(rep["recon"].clamp(0, 1), xc))
        out["mig"] = dis.mig(f, rep["z"])
        out["dci_d"] = dis.dci(f, rep["z"])["disentanglement"]
        z_bin = rep["z"] if rep["discrete"] else dis.histogram_discretize(rep["z"], n_bins)
        out["infom_binned"] = dis.infomec(f, z_bin, discrete_z=True, explicitness=False)["infom"]
        if rep["indices"] is not None:
            freq = usage(rep["indices"], model.latent.values.shape[1])
            out["values_used"] = float((freq > 0).float().sum(-1).mean())
    return out


@torch.no_grad()
def codebook_traversals(model: QLAE, z0: torch.Tensor, dims: Sequence[int] | None = None) -> torch.Tensor:
    """Decoded images of ``z0`` (D,) with latent j set to each of its codebook values in turn.

    Returns (len(dims), n_values, C, H, W) images in [0, 1] (QLAE only: the values of a
    latent are its learned codebook, sorted).
    """
    from ..analysis.latents import traversal

    dims = list(range(model.latent_dim)) if dims is None else list(dims)
    was = model.training
    model.eval()
    rows = []
    for j in dims:
        vals = torch.sort(model.latent.codebook(j)).values
        rows.append(traversal(lambda z: torch.sigmoid(model.decode(z)), z0.to(vals.device), j, vals).cpu())
    model.train(was)
    return torch.stack(rows)


def nmi_order(nmi: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Latent order for an NMI heat-map: active latents sorted by the factor they share the
    most information with, then the inactive ones."""
    act = np.flatnonzero(active)
    key = np.argmax(nmi[:, act], axis=0) if len(act) else np.array([], int)
    strength = nmi[:, act].max(axis=0) if len(act) else np.array([])
    order = act[np.lexsort((-strength, key))]
    return np.concatenate([order, np.flatnonzero(~active)])


# ------------------------------------------------------------------------------ chapter glue

def arm_settings(arm: str, wd_qlae: float = 0.1, wd_low: float = 1e-3, wd_ae: float = 1e-3,
                 wd_vae: float = 0.0, beta: float = 4.0, beta_tc: float = 6.0) -> dict[str, Any]:
    """Model kind, weight decay and beta of one arm of the chapter (`METHODS`)."""
    table = {"QLAE": dict(kind="qlae", weight_decay=wd_qlae),
             "QLAE-low-wd": dict(kind="qlae", weight_decay=wd_low),
             "AE": dict(kind="ae", weight_decay=wd_ae),
             "beta-VAE": dict(kind="vae", weight_decay=wd_vae, beta=beta),
             "beta-TCVAE": dict(kind="tcvae", weight_decay=wd_vae, beta=beta_tc)}
    if arm not in table:
        raise ValueError(f"unknown arm '{arm}' ({', '.join(table)})")
    return {"beta": beta, **table[arm]}


def train_arm(arm: str, x_train: torch.Tensor, x_eval: torch.Tensor, f_eval: torch.Tensor, *,
              steps: int, batch_size: int, n_latents: int, seed: int, lr: float = 1e-3,
              clip: float | None = 1.0, widths: Sequence[int] = (32, 32, 64, 64), fc: int = 128,
              n_values: int = 10, curve_every: int | None = None, device=None, progress: bool = True,
              **settings: Any):
    """Train one arm from seed ``seed`` and return ``(model, history)``.

    ``history`` holds the cheap InfoM/InfoC curve on ``(x_eval, f_eval)`` every
    ``curve_every`` updates (and at step 0 and the end). ``settings`` go to `arm_settings`.
    """
    from .. import runtime
    from ..train import fit

    spec = arm_settings(arm, **settings)
    runtime.seed_everything(seed)
    model = build_model(spec["kind"], x_train.shape[1], x_train.shape[-1], n_latents, widths, fc, n_values)
    opt = make_optimizer(model, lr=lr, weight_decay=spec["weight_decay"], clip=clip)

    def curve(m: nn.Module) -> dict[str, float]:
        r = evaluate(m, x_eval, f_eval, extra=False)
        return {"infom": r["infom"], "infoc": r["infoc"]}

    hist = fit(model, (x_train,), steps=steps, batch_size=batch_size, opt=opt,
               loss_fn=loss_for(spec["kind"], spec["beta"], len(x_train)),
               eval_fn=curve if curve_every else None,
               eval_every=curve_every, seed=seed, device=device, progress=progress, desc=f"{arm} s{seed}")
    return model, hist


def inactive_latent_check(levels: Sequence[int], n: int = 1000, n_inactive: int = 6,
                          seed: int = 0) -> dict[str, float]:
    """How InfoMEC treats inactive latents (claim C4).

    A continuous code copies each factor into one latent (level plus jitter); ``n_inactive``
    collapsed latents (noise with 1% of the active range, like a VAE's posterior means
    that stopped varying) are appended. Returns the absolute change of InfoM and InfoC caused
    by appending them, with InfoMEC's pruning (``*_shift``) and with the same formulas over
    all latents (``*_shift_unpruned``), plus MIG and DCI-D with and without them.
    """
    rng = np.random.default_rng(seed)
    f = np.stack([rng.integers(0, k, n) for k in levels], 1)
    code = (f + rng.uniform(0, 0.8, f.shape))[:, rng.permutation(len(levels))]
    span = float(code.max() - code.min())
    padded = np.concatenate([code, 0.01 * span * rng.uniform(size=(n, n_inactive))], 1)

    def unpruned(r: dict) -> tuple[float, float]:
        nmi = r["nmi_all"]
        n_s, d = nmi.shape
        m = (dis._normalised_peak(nmi, 0).mean() - 1 / n_s) / (1 - 1 / n_s)
        c = (dis._normalised_peak(nmi, 1).mean() - 1 / d) / (1 - 1 / d)
        return float(m), float(c)

    a = dis.infomec(f, code, explicitness=False, seed=seed)
    b = dis.infomec(f, padded, explicitness=False, seed=seed)
    (am, ac), (bm, bc) = unpruned(a), unpruned(b)
    return {"infom_shift": abs(a["infom"] - b["infom"]), "infoc_shift": abs(a["infoc"] - b["infoc"]),
            "infom_shift_unpruned": abs(am - bm), "infoc_shift_unpruned": abs(ac - bc),
            "n_active": b["n_active"], "infom": b["infom"],
            "mig_shift": abs(dis.mig(f, padded) - dis.mig(f, code)),
            "dci_d_shift": abs(dis.dci(f, padded, seed=seed)["disentanglement"]
                               - dis.dci(f, code, seed=seed)["disentanglement"])}


# ------------------------------------------------------------------------------ data

def load_data(name: str, n: int, size: int, levels: Sequence[int] | None = None,
              data_path: str | None = None, seed: int = 0, device=None):
    """The chapter's images with factors, as a `Bundle` of ``n`` samples.

    ``"shapes3d"`` / ``"dsprites"``: the book's procedural generators (levels per call);
    ``"shapes3d-deepmind"``: the real 3D Shapes file at ``data_path`` (absolute, or relative to
    ``$REPLIBOOK_DATA``), see `load_shapes3d_file`.
    """
    from pathlib import Path

    from .. import runtime
    from ..data.procedural import dsprites, shapes3d

    if name == "shapes3d":
        return shapes3d.make(n, seed=seed, size=size, levels=levels or shapes3d.DEFAULT_LEVELS, device=device)
    if name == "dsprites":
        return dsprites.make(n, seed=seed, size=size, levels=levels or dsprites.DEFAULT_LEVELS, device=device)
    if name == "shapes3d-deepmind":
        path = Path(data_path or "3dshapes/3dshapes.h5").expanduser()
        if not path.is_absolute():
            root = runtime.data_dir()
            path = (root / path) if root is not None else path
        return load_shapes3d_file(path, n=n, seed=seed, device=device)
    raise ValueError(f"unknown data '{name}' (shapes3d, dsprites, shapes3d-deepmind)")


def load_shapes3d_file(path, n: int | None = None, seed: int = 0, device=None):
    """DeepMind's 3D Shapes (Burgess & Kim 2018) from its file, as a `Bundle`.

    ``path``: ``3dshapes.h5`` (the official file, datasets ``images`` (480000, 64, 64, 3)
    uint8 and ``labels`` (480000, 6) float factor values; needs ``h5py``) or an ``.npz``
    with the same two arrays. Factor values become level indices per column (sorted unique
    values). ``n`` draws a random subset (seed ``seed``).
    """
    from pathlib import Path

    from ..data.procedural import Bundle
    from ..errors import DatasetMissing, ReplibookError

    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetMissing(f"3D Shapes not found at {path}: download 3dshapes.h5 from "
                             "https://console.cloud.google.com/storage/browser/3d-shapes and point "
                             "the chapter's `data_path` (or $REPLIBOOK_DATA/3dshapes/) at it")
    if path.suffix == ".npz":
        with np.load(path) as z:
            images, labels = z["images"], z["labels"]
    elif path.suffix in (".h5", ".hdf5"):
        try:
            import h5py
        except ImportError as e:
            raise ReplibookError("reading 3dshapes.h5 needs h5py: pip install h5py") from e
        with h5py.File(path, "r") as h:
            total = h["labels"].shape[0]
            idx = (np.sort(np.random.default_rng(seed).choice(total, n, replace=False))
                   if n is not None and n < total else np.arange(total))
            images, labels = h["images"][idx], h["labels"][idx]
            n = None
    else:
        raise ReplibookError(f"unknown 3D Shapes file type '{path.suffix}' (.h5 or .npz)")
    if images.ndim != 4 or images.shape[-1] != 3 or labels.ndim != 2 or labels.shape[1] != 6:
        raise ReplibookError(f"{path.name}: expected images (N, H, W, 3) and labels (N, 6), got "
                             f"{images.shape} and {labels.shape}")
    if n is not None and n < len(images):
        idx = np.random.default_rng(seed).choice(len(images), n, replace=False)
        images, labels = images[idx], labels[idx]
    factors = np.stack([np.unique(labels[:, k], return_inverse=True)[1].ravel() for k in range(6)], 1)
    levels = [int(factors[:, k].max()) + 1 for k in range(6)]
    dev = torch.device(device) if device is not None else torch.device("cpu")
    x = torch.as_tensor(images, device=dev).permute(0, 3, 1, 2).float().div_(255.0)
    return Bundle(x=x, factors=torch.as_tensor(factors, dtype=torch.long, device=dev),
                  factor_names=["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"],
                  levels=levels, name="shapes3d-deepmind", info={"file": path.name, "n": len(x)},
                  extra={"values": torch.as_tensor(labels, dtype=torch.float32, device=dev)})
