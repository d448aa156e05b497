r"""Chapter `fod-intra-inter-correlation-ad`: Yao, Li, Qian, Luo & Zhang (ICCV 2023), *Focus the
Discrepancy: Intra- and Inter-Correlation Learning for Image Anomaly Detection* (FOD), arXiv:2308.02983.

A frozen ImageNet CNN maps an image to an :math:`h \times w` grid of patch features
:math:`x_i` (3x3 average-pooled). A small transformer reconstructs them; its self-attention
is replaced by **I2Correlation**, two attention branches per layer:

- **intra**: self-attention :math:`A^{intra}` among the patches of the image;
- **inter**: cross-attention :math:`A^{inter}` from the image's patches (queries) to
  **reference features** :math:`r_j` (keys and values), the per-position mean of the
  normal training features.

Each branch also predicts, per head and query patch, two bandwidths
:math:`\sigma = 3^{\mathrm{sigmoid}(5a) + 10^{-5}} - 1` and builds a *target correlation*
over patch positions, a row-normalised 2-D Gaussian (RBF) kernel
:math:`T_{ij} \propto \exp(-\Delta y_{ij}^2 / 2\sigma_{y,i}^2 - \Delta x_{ij}^2 / 2\sigma_{x,i}^2)`
(the official ``Attention2D``). The two residual branches are fused by their difference,
:math:`(x + \mathrm{intra}) - (x + \mathrm{inter})`, then LayerNorm and an MLP.

Training on normal images minimises the reconstruction loss (MSE + cosine distance) plus
symmetric KL "association" terms between :math:`A` and :math:`T` with an entropy
constraint, with signs that push the intra attention *away* from its local prior (and
towards high entropy) and pull the inter attention *towards* its prior (and low entropy);
see `fod_loss`. The patch score is the reconstruction error weighted by how far the inter
attention of a patch is from its prior (`patch_scores`).

This module holds the paper's pieces (`Correlation2D`, `I2CorrelationLayer`, `FOD`,
`association_kl`, `entropy`, `association_losses`, `fod_loss`, `train_fod`,
`patch_scores`) and the chapter's glue (patch features from Lite0, reference features,
anomaly maps and their AUROCs, the per-position Gaussian baseline `padim_scores`).
Shared pieces: `models.backbones`, `models.attention.SoftmaxAttention`,
`models.gaussian.MVG`, `metrics.anomaly`, `data.procedural.defect_textures`,
`data.real.mvtec_ad`.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from ..models import backbones
from ..models.attention import SoftmaxAttention, merge_heads, split_heads
from ..models.gaussian import MVG

__all__ = ["VARIANTS", "EPS", "grid_distances", "sigma_from_logits", "positional_target", "Correlation2D",
           "I2CorrelationLayer", "FOD", "sincos_2d", "association_kl", "entropy", "association_losses",
           "reconstruction_error", "fod_loss", "train_fod", "patch_scores", "anomaly_maps",
           "evaluate_maps", "patch_features", "reference_features", "padim_scores", "category_data"]

EPS = 1e-4                      # the official kl_loss / entropy_loss offset inside the logs
# variant name -> (intra branch, inter branch, entropy constraint)
VARIANTS = {
    "FOD": dict(intra=True, inter=True, entropy=True),
    "recon-only": dict(intra=False, inter=False, entropy=False),
    "w/o inter": dict(intra=True, inter=False, entropy=True),
    "w/o intra": dict(intra=False, inter=True, entropy=True),
    "w/o entropy": dict(intra=True, inter=True, entropy=False),
}


# ----------------------------------------------------------------------------- targets

def grid_distances(h: int, w: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Squared row and column offsets between the ``h*w`` patches (row-major):
    ``(dy2, dx2)``, each ``(h*w, h*w)`` with ``dy2[i, j] = (row_i - row_j)^2``."""
    rows = torch.arange(h, device=device).repeat_interleave(w).float()
    cols = torch.arange(w, device=device).repeat(h).float()
    return (rows[:, None] - rows[None]) ** 2, (cols[:, None] - cols[None]) ** 2


def sigma_from_logits(a: torch.Tensor) -> torch.Tensor:
    r"""The official bandwidth map :math:`\sigma = 3^{\mathrm{sigmoid}(5a) + 10^{-5}} - 1`, in (0, 2)."""
    return torch.pow(3.0, torch.sigmoid(5 * a) + 1e-5) - 1


def positional_target(sigma: torch.Tensor, dy2: torch.Tensor, dx2: torch.Tensor) -> torch.Tensor:
    r"""Row-normalised 2-D Gaussian target correlation.

    ``sigma (B, H, L, 2)`` (per head and query: :math:`\sigma_y, \sigma_x`), ``dy2, dx2 (L, S)``
    -> ``T (B, H, L, S)`` with :math:`T_{ij} \propto \exp(-dy2_{ij}/2\sigma_{y,i}^2 - dx2_{ij}/2\sigma_{x,i}^2)`,
    each row summing to 1 (the official code's :math:`1/2\pi\sigma_y\sigma_x` factor cancels).
    Computed as a softmax of the log-kernel, which is exact and cannot underflow to 0/0.
    """
    sy, sx = sigma[..., 0:1], sigma[..., 1:2]
    logits = -dy2 / (2 * sy ** 2) - dx2 / (2 * sx ** 2)
    return torch.softmax(logits, dim=-1)


class Correlation2D(nn.Module):
    r"""One attention branch with a learnable positional target (the official ``Attention2D``).

    ``forward(query_tokens (B, L, d), key_tokens (B, S, d))`` -> ``(out (B, L, d), A (B, H, L, S),
    T (B, H, L, S))``; values come from the key tokens. ``head_dim`` sets the width of
    queries, keys and values per head (the value bottleneck ``heads * head_dim``); an output
    projection maps back to ``d``. Queries and keys lie on the same ``grid`` (h, w).
    """

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], head_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim or dim // heads
        inner = heads * self.head_dim
        self.q, self.k, self.v = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.sigma = nn.Linear(dim, 2 * heads)
        self.proj = nn.Linear(inner, dim)
        dy2, dx2 = grid_distances(*grid)
        self.register_buffer("dy2", dy2, persistent=False)
        self.register_buffer("dx2", dx2, persistent=False)

    def forward(self, query: torch.Tensor, key: torch.Tensor):
        b, n, _ = query.shape
        q, k, v = (split_heads(f(t), self.heads) for f, t in ((self.q, query), (self.k, key), (self.v, key)))
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)      # (B, H, L, S)
        out = self.proj(merge_heads(attn @ v))
        sigma = sigma_from_logits(self.sigma(query).view(b, n, self.heads, 2).transpose(1, 2))  # (B, H, L, 2)
        return out, attn, positional_target(sigma, self.dy2, self.dx2)


class I2CorrelationLayer(nn.Module):
    r"""One encoder layer of FOD.

    - ``intra and inter`` (FOD): :math:`u = (x + \mathrm{intra}(x, x)) - (x + \mathrm{inter}(x, r))`,
      the official "residual input" fusion (the two residuals cancel, :math:`u = \mathrm{intra} - \mathrm{inter}`);
    - one branch only: :math:`u = x + \mathrm{branch}`;
    - neither (reconstruction-only transformer): :math:`u = x + \mathrm{SoftmaxAttention}(x)`.

    Then :math:`z = \mathrm{LN}_1(u)`, output :math:`\mathrm{LN}_2(z + \mathrm{MLP}(z))`.
    ``forward(x (B, L, d), ref (B, S, d) or None)`` -> ``(out, maps)`` with ``maps`` a dict
    holding ``intra_attn``, ``intra_target``, ``inter_attn``, ``inter_target`` for the active branches.
    """

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], intra: bool = True, inter: bool = True,
                 head_dim: int | None = None, mlp_ratio: int = 4):
        super().__init__()
        self.use_intra, self.use_inter = intra, inter
        self.intra = Correlation2D(dim, heads, grid, head_dim) if intra else None
        self.inter = Correlation2D(dim, heads, grid, head_dim) if inter else None
        self.attn = SoftmaxAttention(dim, heads, head_dim=head_dim) if not (intra or inter) else None
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None):
        maps = {}
        if self.attn is not None:
            u = x + self.attn(x)[0]
        else:
            if self.use_inter and ref is None:
                raise ValueError("the inter branch needs reference tokens `ref`")
            if self.use_intra:
                h_intra, maps["intra_attn"], maps["intra_target"] = self.intra(x, x)
            if self.use_inter:
                h_inter, maps["inter_attn"], maps["inter_target"] = self.inter(x, ref)
            if self.use_intra and self.use_inter:
                u = (x + h_intra) - (x + h_inter)
            else:
                u = x + (h_intra if self.use_intra else h_inter)
        z = self.norm1(u)
        return self.norm2(z + self.mlp(z)), maps


def sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """Fixed 2-D sine/cosine position code ``(h*w, dim)``: half the channels encode the column,
    half the row (as the official ``PositionalEmbedding``); ``dim`` divisible by 4."""
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}")
    half = dim // 2
    freq = torch.exp(torch.arange(0, half, 2).float() * -(math.log(1e4) / half))      # (half/2,)
    rows = torch.arange(h).float().repeat_interleave(w)[:, None] * freq
    cols = torch.arange(w).float().repeat(h)[:, None] * freq
    out = torch.zeros(h * w, dim)
    out[:, 0:half:2], out[:, 1:half:2] = torch.sin(cols), torch.cos(cols)
    out[:, half::2], out[:, half + 1::2] = torch.sin(rows), torch.cos(rows)
    return out


class FOD(nn.Module):
    r"""The FOD reconstruction transformer on one ``grid`` of ``in_dim``-d patch features.

    Linear embedding + fixed 2-D position code, ``layers`` `I2CorrelationLayer`, a final
    LayerNorm and a linear map back to ``in_dim``. ``reference`` ``(L, in_dim)`` are the
    reference features (embedded by their own linear map + position code, shared by all layers);
    required when ``inter``. ``forward(x (B, L, in_dim))`` -> ``(x_hat, maps)`` with ``maps`` a list
    (one dict per layer).
    """

    def __init__(self, in_dim: int, grid: tuple[int, int], dim: int = 64, heads: int = 4, layers: int = 2,
                 head_dim: int | None = 8, intra: bool = True, inter: bool = True,
                 reference: torch.Tensor | None = None):
        super().__init__()
        self.grid, self.use_intra, self.use_inter = tuple(grid), intra, inter
        self.embed = nn.Linear(in_dim, dim)
        self.register_buffer("pos", sincos_2d(dim, *grid), persistent=False)
        self.layers = nn.ModuleList([I2CorrelationLayer(dim, heads, grid, intra, inter, head_dim)
                                     for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, in_dim)
        if inter:
            if reference is None:
                raise ValueError("FOD with the inter branch needs reference features")
            self.ref_embed = nn.Linear(in_dim, dim)
            self.register_buffer("reference", torch.as_tensor(reference, dtype=torch.float32).clone())

    def forward(self, x: torch.Tensor):
        h = self.embed(x) + self.pos
        ref = None
        if self.use_inter:
            ref = (self.ref_embed(self.reference) + self.pos).expand(len(x), -1, -1)
        maps = []
        for layer in self.layers:
            h, m = layer(h, ref)
            maps.append(m)
        return self.out(self.norm(h)), maps


# ----------------------------------------------------------------------------- losses

def association_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r"""Row-wise :math:`\mathrm{KL}(p \| q) = \sum_j p_j (\log(p_j + \epsilon) - \log(q_j + \epsilon))`,
    averaged over heads: ``(B, H, L, S) -> (B, L)`` (the official ``kl_loss``, :math:`\epsilon = 10^{-4}`)."""
    return (p * (torch.log(p + EPS) - torch.log(q + EPS))).sum(-1).mean(1)


def entropy(p: torch.Tensor) -> torch.Tensor:
    r"""Row entropy :math:`-\sum_j p_j \log(p_j + \epsilon)`, averaged over heads: ``(B, H, L, S) -> (B, L)``."""
    return -(p * torch.log(p + EPS)).sum(-1).mean(1)


def association_losses(maps: Sequence[dict], branch: str) -> dict[str, torch.Tensor]:
    r"""The association terms of one branch (``"intra"`` or ``"inter"``), averaged over layers:

    - ``kl_attn``: :math:`\mathrm{KL}(T\|A) + \mathrm{KL}(A\|T)` with :math:`T` detached (gradient to :math:`A`);
    - ``kl_target``: the same with :math:`A` detached (gradient to :math:`T`, i.e. to :math:`\sigma`);
    - ``entropy``: row entropy of :math:`A`;
    - ``sym_kl``: the per-patch symmetric KL ``(B, L)`` (for scoring), no detaching.
    Batch and patch means are taken for the three scalars.
    """
    # KL(p||q) + KL(q||p) = sum_j (p_j - q_j)(log(p_j + eps) - log(q_j + eps)): one log per map
    kl_a, kl_t, ent, sym = 0.0, 0.0, 0.0, 0.0
    for m in maps:
        a, t = m[f"{branch}_attn"], m[f"{branch}_target"]
        la, lt = torch.log(a + EPS), torch.log(t + EPS)
        ad, td, lad, ltd = a.detach(), t.detach(), la.detach(), lt.detach()
        kl_a = kl_a + ((a - td) * (la - ltd)).sum(-1).mean()
        kl_t = kl_t + ((ad - t) * (lad - lt)).sum(-1).mean()
        ent = ent - (a * la).sum(-1).mean()
        sym = sym + ((a - t) * (la - lt)).sum(-1).mean(1)
    n = len(maps)
    return {"kl_attn": kl_a / n, "kl_target": kl_t / n, "entropy": ent / n, "sym_kl": sym / n}


def reconstruction_error(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""Per-patch :math:`\mathrm{mean}_c (\hat x - x)^2 + 1 - \cos(\hat x, x)`: ``(B, L, C) -> (B, L)``."""
    return ((x_hat - x) ** 2).mean(-1) + 1 - F.cosine_similarity(x_hat, x, dim=-1)


def fod_loss(model: FOD, x: torch.Tensor, lambda1: float = 0.5, lambda2: float = 0.5,
             use_entropy: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    r"""The training objective on a batch of normal patch features ``x (B, L, C)``.

    With :math:`L_{rec}` the batch mean of `reconstruction_error`, :math:`K^{b}_A` / :math:`K^{b}_T` the
    association KL of branch :math:`b` with gradient to the attention / to the target, and
    :math:`H^b` the attention entropy, the official code runs two backward passes per step,

    .. math::
        \mathcal L_1 &= L_{rec} + \lambda_1 K^{intra}_T - \lambda_1 K^{inter}_T, \\
        \mathcal L_2 &= L_{rec} - \lambda_1 K^{intra}_A - \lambda_2 H^{intra} + \lambda_1 K^{inter}_A + \lambda_2 H^{inter},

    whose gradients add up before one Adam step: we return :math:`\mathcal L_1 + \mathcal L_2` (same
    gradient). With one branch only, its terms alone (same signs); with neither, :math:`L_{rec}`
    (once). ``use_entropy=False`` sets :math:`\lambda_2 = 0` (the "w/o entropy" ablation).
    Returns ``(loss, logs)``.
    """
    x_hat, maps = model(x)
    rec = reconstruction_error(x_hat, x).mean()
    logs = {"rec": float(rec.detach())}
    if not (model.use_intra or model.use_inter):
        return rec, logs
    l2 = lambda2 if use_entropy else 0.0
    loss1, loss2 = rec, rec
    if model.use_intra:
        t = association_losses(maps, "intra")
        loss1 = loss1 + lambda1 * t["kl_target"]
        loss2 = loss2 - lambda1 * t["kl_attn"] - l2 * t["entropy"]
        logs.update(intra_kl=float(t["kl_attn"].detach()), intra_entropy=float(t["entropy"].detach()))
    if model.use_inter:
        t = association_losses(maps, "inter")
        loss1 = loss1 - lambda1 * t["kl_target"]
        loss2 = loss2 + lambda1 * t["kl_attn"] + l2 * t["entropy"]
        logs.update(inter_kl=float(t["kl_attn"].detach()), inter_entropy=float(t["entropy"].detach()))
    return loss1 + loss2, logs


def train_fod(train_tokens: torch.Tensor, grid: tuple[int, int], variant: str = "FOD", *, epochs: int = 10,
              batch_size: int = 8, lr: float = 1e-3, dim: int = 64, heads: int = 4, layers: int = 2,
              head_dim: int | None = 8, lambda1: float = 0.5, lambda2: float = 0.5, seed: int = 0,
              reference: torch.Tensor | None = None, progress: bool = False, device=None) -> tuple[FOD, list]:
    """Train one `VARIANTS` model on normal tokens ``(N, L, C)`` with Adam; ``epochs`` shuffled
    passes (seeded). ``reference`` defaults to `reference_features` of the training tokens.
    Returns ``(model in eval mode, per-epoch mean logs)``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
    spec = VARIANTS[variant]
    dev = torch.device(device) if device is not None else train_tokens.device
    x = train_tokens.to(dev, torch.float32)
    if reference is None and spec["inter"]:
        reference = reference_features(x)
    torch.manual_seed(seed)
    model = FOD(x.shape[-1], grid, dim, heads, layers, head_dim, spec["intra"], spec["inter"],
                reference=reference).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    history = []
    epoch_iter = range(epochs)
    if progress:
        from ..progress import track
        epoch_iter = track(epoch_iter, desc=f"{variant} (seed {seed})")
    model.train()
    for _ in epoch_iter:
        order = torch.randperm(len(x), generator=gen)
        logs = []
        for i in range(0, len(x), batch_size):
            loss, log = fod_loss(model, x[order[i:i + batch_size]], lambda1, lambda2, spec["entropy"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            logs.append(log)
        history.append({k: float(np.mean([l[k] for l in logs])) for k in logs[0]})
    model.eval()
    return model, history


# ----------------------------------------------------------------------------- scoring

@torch.no_grad()
def patch_scores(model: FOD, x: torch.Tensor, batch_size: int = 64, rec_only: bool = False) -> torch.Tensor:
    r"""Per-patch anomaly scores ``(B, L)`` as the official ``test``:

    rec = `reconstruction_error`; with the inter branch, :math:`s = \mathrm{softmax}_i(-\mathrm{symKL}^{inter}_i)`
    over the patches of an image and the score is :math:`\mathrm{rec} \cdot (\max_i s - s)`
    (FOD, w/o intra; the intra term is not used at test time); intra only:
    :math:`\mathrm{rec} \cdot \mathrm{softmax}_i(-\mathrm{symKL}^{intra}_i)`; neither: rec.
    The official code takes the max of the inter softmax over the whole test batch (batch size 1 there);
    here it is per image. ``rec_only=True`` returns rec for any model (a diagnostic of what the
    correlation weighting adds).
    """
    model.eval()
    outs = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        x_hat, maps = model(xb)
        rec = reconstruction_error(x_hat, xb)
        if rec_only:
            pass
        elif model.use_inter:
            s = torch.softmax(-association_losses(maps, "inter")["sym_kl"], dim=-1)
            rec = rec * (s.amax(-1, keepdim=True) - s)
        elif model.use_intra:
            rec = rec * torch.softmax(-association_losses(maps, "intra")["sym_kl"], dim=-1)
        outs.append(rec)
    return torch.cat(outs)


def anomaly_maps(scores: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """Patch scores ``(B, L)`` -> pixel maps ``(B, 1, size, size)`` (bilinear, ``align_corners=True``
    as the official code)."""
    maps = scores.reshape(len(scores), 1, *grid).float()
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=True)


def evaluate_maps(maps: torch.Tensor, labels, masks, sigma: float = 4.0) -> dict[str, float]:
    """Image and pixel AUROC of anomaly ``maps (B, 1, S, S)``: pixel AUROC on the raw maps against
    ``masks``; image score = max of each map after a Gaussian filter of ``sigma`` px."""
    from scipy.ndimage import gaussian_filter
    from ..metrics.anomaly import auroc, pixel_auroc
    raw = maps.detach().cpu().numpy()[:, 0]
    smooth = np.stack([gaussian_filter(m, sigma=sigma) for m in raw]) if sigma > 0 else raw
    return {"image_auroc": float(auroc(smooth.reshape(len(raw), -1).max(1), np.asarray(torch.as_tensor(labels).cpu()))),
            "pixel_auroc": float(pixel_auroc(raw, torch.as_tensor(masks).cpu().numpy()[:, 0]))}


# ----------------------------------------------------------------------------- features and baselines

def _timm_maps(model_name: str, images: torch.Tensor, size: int, stages: Sequence[int], cache: bool,
               device=None, batch_size: int = 16) -> dict[int, torch.Tensor]:
    """Feature maps ``{stage: (N, C, h, w)}`` of a timm ``features_only`` model with its ImageNet weights
    (downloaded by timm: `full` size only), inputs resized to ``size`` and normalised with the model's
    mean/std; cached with `models.backbones.cached_features`."""
    from .. import runtime

    def compute(x: torch.Tensor) -> dict[int, torch.Tensor]:
        import timm
        dev = runtime.device() if device is None else torch.device(device)
        model = timm.create_model(model_name, features_only=True, out_indices=list(stages), pretrained=True)
        model.to(dev).eval().requires_grad_(False)
        cfg = model.pretrained_cfg
        mean = torch.tensor(cfg["mean"], device=dev).view(1, -1, 1, 1)
        std = torch.tensor(cfg["std"], device=dev).view(1, -1, 1, 1)
        outs = {s: [] for s in stages}
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                h = F.interpolate(x[i:i + batch_size].to(dev, torch.float32), size=(size, size), mode="bilinear",
                                  align_corners=False)
                for s, f in zip(stages, model((h - mean) / std)):
                    outs[s].append(f.float().to(x.device))
        return {s: torch.cat(v) for s, v in outs.items()}

    key = {"model": f"timm:{model_name}", "size": size, "stages": list(stages), "torch": torch.__version__}
    out = backbones.cached_features(f"timm-{model_name}-maps", images, key, compute) if cache else compute(images)
    return {int(k): v for k, v in out.items()}


def patch_features(images: torch.Tensor, size: int = 128, stages: Sequence[int] = (3, 5),
                   pretrained: bool = True, cache: bool = True, backbone: str = "lite0",
                   device=None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch tokens from a frozen ImageNet CNN: the maps of ``stages`` at input ``size``, each 3x3
    average-pooled (stride 1, as the official code), the finer ones average-pooled down to the
    coarsest grid and concatenated. Returns ``(tokens (N, h*w, C), (h, w))``; maps are cached on disk.

    ``backbone="lite0"`` (zoo ``effnet_lite0_imagenet``; default stages 3 and 5, the stride-8 and
    stride-16 stages, 40 + 112 channels; ``pretrained=False`` its random init) or any timm
    ``features_only`` model name, e.g. ``"wide_resnet50_2"`` with ``stages=(2, 3)`` (the official
    code's backbone and ``out_indices``; `full` size).
    """
    if backbone == "lite0":
        feats = backbones.lite0_features(images, pretrained=pretrained, size=size, stages=list(stages),
                                         pooled=False, cache=cache, device=device)
    else:
        feats = _timm_maps(backbone, images, size, stages, cache, device)
    maps = [F.avg_pool2d(feats[s], 3, 1, 1) for s in sorted(feats)]
    h, w = maps[-1].shape[-2:]
    maps = [F.adaptive_avg_pool2d(m, (h, w)) for m in maps]
    tokens = torch.cat(maps, 1).flatten(2).transpose(1, 2).contiguous()
    return tokens, (int(h), int(w))


def reference_features(train_tokens: torch.Tensor) -> torch.Tensor:
    """Reference features of the inter branch: the per-position mean of the normal training
    tokens, ``(N, L, C) -> (L, C)`` (the official ``create_ref_features``, one reference)."""
    return train_tokens.float().mean(0)


def padim_scores(train_tokens: torch.Tensor, test_tokens: torch.Tensor) -> torch.Tensor:
    """PaDiM-lite: one Ledoit-Wolf Gaussian (`models.gaussian.MVG`) per patch position fitted on
    the normal training tokens; the score of a test patch is its Mahalanobis distance ``(B, L)``."""
    out = torch.empty(test_tokens.shape[:2])
    for j in range(train_tokens.shape[1]):
        out[:, j] = torch.as_tensor(MVG().fit(train_tokens[:, j].double()).mahalanobis(test_tokens[:, j].double()),
                                    dtype=torch.float32).cpu()
    return out


def category_data(category: str, *, n_train: int, n_test_normal: int, n_test_defective: int, seed: int,
                  contrast: float, size: int = 64, train_seed: int = 0, device=None):
    """One category of `data.procedural.defect_textures`: a fixed normal training draw
    (``train_seed``, white checkerboard tiles) and the test draw ``seed`` (black tiles), as the
    Gaussian-AD chapter (whose `category_data` this reuses)."""
    from .gaussian_ad_pretrained_features import category_data as _cd
    return _cd(category, n_train=n_train, n_test_normal=n_test_normal, n_test_defective=n_test_defective,
               seed=seed, contrast=contrast, size=size, train_seed=train_seed, device=device)
