r"""Why the representation *before* the projection head is the better one
(Xue, Gan, Ni, Joshi & Mirzasoleiman, "Investigating the Benefits of Projection Head for
Representation Learning", ICLR 2024, arXiv:2403.11391).

Part A, the paper's theory model: a deep *linear* encoder :math:`f(x) = W_L \cdots W_1 x`
trained from a small initialisation by full-batch gradient descent on the spectral
contrastive loss (HaoChen et al., 2021),

.. math:: \mathcal L(f) = -2\,\mathbb E_{x,x^+}[f(x)^\top f(x^+)]
                        + \mathbb E_{x,x'}[(f(x)^\top f(x'))^2],

with :math:`x'` independent of :math:`x`. For a linear :math:`f = F x` both terms are functions
of second moments only,

.. math:: \mathcal L(F) = -2\,\mathrm{tr}(F C_+ F^\top) + \lVert F \Sigma F^\top\rVert_F^2,
          \quad C_+ = \mathbb E[x x^{+\top}],\ \Sigma = \mathbb E[x x^\top],

so one GD step costs :math:`O(d^2 h)` whatever the number of samples (`spectral_moments`).
Gradient descent from a small balanced start keeps the layers balanced
(:math:`W_{l+1}^\top W_{l+1} \approx W_l W_l^\top`), so a direction's gain in layer :math:`l` is
about the :math:`l/L`-th power of its gain at the top: the weights of the input features grow
*more unequal with depth* (the paper's "layer-wise progressive feature weighting").

Part B, supervised contrastive pretraining with a head (`SupConModel`, `supcon_pretrain`)
and the paper's Sec. 7 alternative to a learned head, a *fixed* diagonal re-weighting
(`FixedReweightHead`). One run of it is `head_experiment`: an MLP on digits at the small
tier, the paper's CIFAR ResNet-18 (`cifar_encoder`) on CIFAR-100 superclasses -> classes and
SimCLR on CIFAR-10 at the full tier (`load_supcon_data`), probed layer by layer
(`representations`) with sklearn's logistic regression or the same estimator fitted by
L-BFGS on the GPU (`replibook.train.probes.linear_lbfgs`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .. import runtime
from ..losses.contrastive import nt_xent, supcon
from ..metrics.representation import feature_weights, weight_spread
from ..models.mlp import ProjectionHead
from ..models.resnet import resnet18_cifar
from ..train import fit
from ..train.ssl import EncoderWithHead

__all__ = ["pair_moments", "spectral_moments", "spectral_pairs", "balanced_init", "train_linear",
           "train_relu", "layer_outputs", "weight_profile", "FixedReweightHead", "make_head",
           "SupConModel", "supcon_pretrain", "digit_augment", "FeatureEncoder", "cifar_encoder",
           "representations", "HEAD_NAMES", "load_supcon_data", "head_experiment",
           "row_name"]


# ----------------------------------------------------------------------------- part A
def pair_moments(x: torch.Tensor, x_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample moments of the pairs: :math:`C_+` (symmetrised cross-view covariance) and
    :math:`\\Sigma` (second moment of all views), both ``(d, d)`` float64.

    ``x, x_pos``: ``(N, d)``, row i of ``x_pos`` the positive view of row i of ``x``.
    """
    x, xp = x.double(), x_pos.double()
    n = len(x)
    c = x.T @ xp / n
    c_pos = (c + c.T) / 2                                   # E[x x+^T], both orders of the pair
    sigma = (x.T @ x + xp.T @ xp) / (2 * n)                 # E[x x^T] over both views
    return c_pos, sigma


def _product(layers: Sequence[torch.Tensor]) -> torch.Tensor:
    f = layers[0]
    for w in layers[1:]:
        f = w @ f                                           # F = W_L ... W_1
    return f


def spectral_moments(layers: Sequence[torch.Tensor], c_pos: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Population spectral loss of the linear map ``F = W_L ... W_1`` (``layers`` in the order
    they act): :math:`-2\\,\\mathrm{tr}(F C_+ F^\\top) + \\lVert F\\Sigma F^\\top\\rVert_F^2`."""
    f = _product(layers)
    attract = torch.trace(f @ c_pos @ f.T)                  # E[f(x)^T f(x+)]
    repel = (f @ sigma @ f.T).pow(2).sum()                  # E[(f(x)^T f(x'))^2], x' independent
    return -2.0 * attract + repel


def spectral_pairs(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """The same value as `replibook.losses.contrastive.spectral` (negatives i != j) in
    :math:`O(N D^2)` instead of :math:`O(N^2 D)`, using
    :math:`\\sum_{i,j} (a_i^\\top b_j)^2 = \\langle A^\\top A, B^\\top B\\rangle_F`; for full-batch
    training on thousands of pairs."""
    n = len(z1)
    if z1.shape != z2.shape or n < 2:
        raise ValueError("z1 and z2 must have the same shape (N >= 2, D)")
    diag = (z1 * z2).sum(1)                                 # a_i^T b_i
    all_pairs = ((z1.T @ z1) * (z2.T @ z2)).sum()           # sum_{i,j} (a_i^T b_j)^2
    return -2.0 * diag.mean() + (all_pairs - diag.pow(2).sum()) / (n * (n - 1))


def balanced_init(widths: Sequence[int], scale: float, seed: int) -> list[torch.Tensor]:
    """Gaussian layers ``widths[l+1] x widths[l]`` with entries of std ``scale / sqrt(fan_in)``
    (float64, seeded)."""
    g = torch.Generator().manual_seed(int(seed))
    return [torch.randn(o, i, generator=g, dtype=torch.float64) * scale / i ** 0.5
            for i, o in zip(widths[:-1], widths[1:])]


def train_linear(x: torch.Tensor, x_pos: torch.Tensor, widths: Sequence[int], *, steps: int,
                 lr: float = 1e-2, init: float = 1e-2, seed: int = 0,
                 record_every: int = 0) -> dict:
    """Full-batch GD (no momentum, no weight decay) of a deep linear encoder on the spectral loss.

    ``widths = [d, h_1, ..., h_L]``. Returns ``{"layers": [W_1, ..., W_L] (float64),
    "loss": final loss, "trace": [(step, loss), ...] every ``record_every`` steps}``.
    """
    c_pos, sigma = pair_moments(x, x_pos)
    layers = [w.requires_grad_() for w in balanced_init(widths, init, seed)]
    trace = []
    for t in range(steps + 1):
        loss = spectral_moments(layers, c_pos, sigma)
        if record_every and t % record_every == 0:
            trace.append((t, float(loss.detach())))
        if t == steps:
            break
        grads = torch.autograd.grad(loss, layers)
        with torch.no_grad():
            for w, g in zip(layers, grads):
                w -= lr * g                                 # W <- W - lr dL/dW
    return {"layers": [w.detach() for w in layers], "loss": float(loss.detach()), "trace": trace}


def train_relu(x: torch.Tensor, x_pos: torch.Tensor, widths: Sequence[int], *, steps: int,
               lr: float = 1e-2, init: float = 1e-2, seed: int = 0) -> dict:
    """Full-batch GD of :math:`f(x) = W_2\\,\\mathrm{relu}(W_1 x)` on the spectral loss
    (`spectral_pairs` over all N pairs). ``widths = [d, h, out]``."""
    if len(widths) != 3:
        raise ValueError("train_relu expects widths [d, hidden, out]")
    w1, w2 = (w.float().requires_grad_() for w in balanced_init(widths, init, seed))
    x, xp = x.float(), x_pos.float()
    for _ in range(steps):
        loss = spectral_pairs(torch.relu(x @ w1.T) @ w2.T, torch.relu(xp @ w1.T) @ w2.T)
        g1, g2 = torch.autograd.grad(loss, [w1, w2])
        with torch.no_grad():
            w1 -= lr * g1
            w2 -= lr * g2
    with torch.no_grad():
        loss = spectral_pairs(torch.relu(x @ w1.T) @ w2.T, torch.relu(xp @ w1.T) @ w2.T)
    return {"layers": [w1.detach(), w2.detach()], "loss": float(loss)}


def layer_outputs(layers: Sequence[torch.Tensor], x: torch.Tensor, relu: bool = False) -> list[torch.Tensor]:
    """Representations after each layer, ``[W_1 x, W_2 W_1 x, ...]`` (with ``relu``: the ReLU
    after every layer but the last, i.e. ``[relu(W_1 x), W_2 relu(W_1 x)]``)."""
    outs, h = [], x.to(layers[0].dtype)
    for i, w in enumerate(layers):
        h = h @ w.T
        if relu and i < len(layers) - 1:
            h = torch.relu(h)
        outs.append(h)
    return outs


def weight_profile(layers: Sequence[torch.Tensor], directions: torch.Tensor) -> list[dict]:
    """Per layer l: the feature weights :math:`\\lVert W_l\\cdots W_1 u_k\\rVert` and their spread."""
    out = []
    for depth in range(1, len(layers) + 1):
        w = feature_weights(list(layers[:depth]), directions)
        out.append({"layer": depth, "weights": w, "spread": weight_spread(w)})
    return out


# ----------------------------------------------------------------------------- part B
class FixedReweightHead(nn.Module):
    r"""A non-trainable diagonal head :math:`g(h) = \mathrm{diag}(1, \kappa^{-1}, \dots,
    \kappa^{-(p-1)})\, h` (paper Sec. 7 as we read it; the form could not be checked
    against the paper's text, see the chapter). :math:`\kappa = 1` is no head; a larger
    :math:`\kappa` lets the loss lean on the first coordinates and leaves the others of the
    pre-head representation less specialised. Shapes: ``(B, p) -> (B, p)``."""

    def __init__(self, dim: int, kappa: float):
        super().__init__()
        if kappa < 1:
            raise ValueError(f"kappa must be >= 1, got {kappa}")
        self.kappa = float(kappa)
        self.register_buffer("scales", torch.tensor(float(kappa)) ** -torch.arange(dim, dtype=torch.float32))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.scales


def make_head(kind: str, dim: int, kappa: float = 1.02, norm: str | None = "bn") -> nn.Module:
    """``"mlp"`` (Linear-norm-ReLU-Linear, output as wide as the input, as in the co-author
    code), ``"none"``, or ``"fixed_diag"`` (`FixedReweightHead`)."""
    if kind == "fixed_diag":
        return FixedReweightHead(dim, kappa)
    return ProjectionHead(dim, hidden=dim, out_dim=dim, kind=kind, norm=norm if kind == "mlp" else None)


SupConModel = EncoderWithHead      # encoder + head; forward returns the head output (what the loss sees)


def supcon_pretrain(model: SupConModel, x: torch.Tensor, y: torch.Tensor | None, *, steps: int,
                    batch_size: int = 256, lr: float = 1e-3, tau: float = 0.1,
                    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                    weight_decay: float = 1e-5, opt: str = "adamw", schedule: str | None = None,
                    seed: int = 0, device=None, progress: bool = False, desc: str = "SupCon"):
    """Train ``model`` in place on `supcon` over two augmented views of each minibatch
    (labels ``y``: the coarse classes), or on SimCLR's `nt_xent` when ``y`` is None.
    Returns fit's History; the model ends in eval mode.

    The same loop serves the MLP on small images and a ResNet on CIFAR: ``x`` may be float in
    [0, 1] or uint8 (converted per batch, so a full dataset can sit on the GPU as bytes);
    ``fit`` runs the forward pass under bf16 autocast on CUDA, and the loss itself is computed
    in float32. ``opt`` / ``schedule`` are fit's (e.g. ``"sgd"``, ``"cosine"``).
    """
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    aug = augment or (lambda b, g: b)

    def views_of(xb):
        if xb.dtype == torch.uint8:
            xb = xb.float().div_(255.0)
        return torch.cat([aug(xb, gen), aug(xb, gen)])     # 2B views, labels repeated

    def loss_fn(m, xb, yb=None):
        z = m(views_of(xb))
        with torch.autocast(z.device.type, enabled=False):  # the loss in float32
            z = z.float()
            if yb is None:
                return nt_xent(z[:len(xb)], z[len(xb):], tau=tau)
            return supcon(z, torch.cat([yb, yb]), tau=tau)

    data = (x,) if y is None else (x, y)
    hist = fit(model, data, steps=steps, batch_size=batch_size, lr=lr, opt=opt, schedule=schedule,
               weight_decay=weight_decay, loss_fn=loss_fn, seed=seed, device=device, progress=progress, desc=desc)
    model.eval()
    return hist


class FeatureEncoder(nn.Module):
    """A classifier network used as an encoder: ``forward(x) = net.features(x)`` (pooled features)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.num_features = int(getattr(net, "num_features"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


def cifar_encoder(width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2)) -> FeatureEncoder:
    """The CIFAR ResNet-18 encoder (3x3 stride-1 stem, no max-pool; ``8 * width``-d output,
    512 at the default width). ``width`` / ``blocks`` shrink it for tests."""
    net = resnet18_cifar(num_classes=1, width=width, blocks=blocks)
    net.linear = nn.Identity()                               # no classifier: the encoder ends at the pooling
    return FeatureEncoder(net)


@torch.no_grad()
def representations(model: SupConModel, x: torch.Tensor, batch_size: int = 1024, device=None) -> dict:
    """Frozen representations at every layer the chapter probes, computed in batches (eval mode,
    bf16 autocast on CUDA, returned as float32 on ``x``'s device):

    ``"pre"`` the encoder output; for an MLP head also ``"hidden"`` (after its Linear-norm-ReLU)
    and ``"post"`` (the head output); for the fixed head ``"post"``; for no head only ``"pre"``.
    ``x`` may be uint8 (divided by 255).
    """
    model.eval()
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    head = model.projector
    mlp = getattr(head, "net", None) if getattr(head, "kind", None) == "mlp" else None
    outs: dict[str, list] = {}
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev)
        if xb.dtype == torch.uint8:
            xb = xb.float().div_(255.0)
        with runtime.autocast(dev):
            h = model.encoder(xb)
            got = {"pre": h}
            if mlp is not None:
                hid = mlp.features(h)
                got["hidden"] = hid
                got["post"] = mlp.out_norm(mlp.out(hid))
            elif isinstance(head, FixedReweightHead):
                got["post"] = head(h)
        for k, v in got.items():
            outs.setdefault(k, []).append(v.float().to(x.device))
    return {k: torch.cat(v) for k, v in outs.items()}


HEAD_NAMES = {"mlp": "learned head", "none": "no head", "fixed_diag": "fixed head"}


def load_supcon_data(name: str, *, img: int = 16, split=None, root=None, device=None) -> dict:
    """Images with fine and coarse labels for part B, on ``device``:
    ``{"ds", "x_tr", "x_te", "fine_tr", "fine_te", "coarse_tr", "coarse_te"}``.

    ``"digits"`` / ``"mnist5k"`` (bundled, ``img`` pixels, ``split``) and ``"mnist"`` (full,
    from ``$REPLIBOOK_DATA``): coarse = digit >= 5. ``"cifar100"``: the 20 superclasses of
    the 100 fine classes (``real.cifar100``'s ``fine_to_coarse``). ``"cifar10"``: no coarse
    labels (None; for SimCLR). ``root``: the data folder of the full datasets (default
    ``$REPLIBOOK_DATA``); a missing dataset raises `DatasetMissing`.
    """
    from ..data import bundled, real
    dev = torch.device(device) if device is not None else runtime.device()
    coarse_of = None
    if name == "digits":
        ds = bundled.digits(size=img, split=split)
    elif name == "mnist5k":
        ds = bundled.mnist5k(size=img, split=split)
    elif name == "mnist":
        ds = real.mnist(root=root)
    elif name == "cifar100":
        ds = real.cifar100(root=root, labels="fine", device="cpu")
        f2c = torch.tensor(ds.info["fine_to_coarse"])
        coarse_of = lambda y: f2c.to(y.device)[y]                      # noqa: E731
    elif name == "cifar10":
        ds = real.cifar10(root=root, device="cpu")
        coarse_of = lambda y: None                                     # noqa: E731
    else:
        raise ValueError(f"unknown part-B dataset {name!r} (digits, mnist5k, mnist, cifar100, cifar10)")
    coarse_of = coarse_of or (lambda y: (y >= 5).long())
    out = {"ds": ds, "x_tr": ds.train.x.to(dev), "fine_tr": ds.train.y.to(dev),
           "x_te": ds.test.x.to(dev), "fine_te": ds.test.y.to(dev)}
    out["coarse_tr"], out["coarse_te"] = coarse_of(out["fine_tr"]), coarse_of(out["fine_te"])
    return out


def head_experiment(kind: str, x_tr: torch.Tensor, x_te: torch.Tensor, *, labels: torch.Tensor | None,
                    targets: dict, encoder_fn: Callable[[], nn.Module], dim: int, kappa: float = 1.02,
                    layers: Sequence[str] = ("pre", "post"), steps: int, batch_size: int, lr: float,
                    tau: float, augment=None, opt: str = "adamw", schedule: str | None = None,
                    weight_decay: float = 1e-5, probe: str = "sklearn", eval_batch: int = 8192,
                    seed: int = 0, device=None) -> dict:
    """One run of part B: seed, build ``encoder_fn()`` + the head ``kind``, pretrain with
    `supcon_pretrain` (SupCon on ``labels``, or SimCLR when ``labels`` is None), freeze, and
    fit a linear probe for every target at every layer in ``layers`` that the head has
    (`representations`; only the learned MLP head has layers above ``"pre"`` worth probing: the
    fixed head's output is a per-coordinate rescaling of ``"pre"``, which the probe's
    standardisation undoes, so it and the no-head model are probed at ``"pre"``). ``targets``: ``{name: (y_train, y_test)}``. ``probe``: ``"sklearn"``
    (`replibook.train.probes.linear`) or ``"lbfgs"`` (`probes.linear_lbfgs`, the same estimator in torch).

    Returns ``{layer: {target: test accuracy}}`` and, under ``"_wall_s"``, the pretraining time.
    """
    from ..train import probes
    dev = torch.device(device) if device is not None else runtime.device()
    runtime.seed_everything(seed)
    model = SupConModel(encoder_fn(), make_head(kind, dim, kappa=kappa)).to(dev)
    hist = supcon_pretrain(model, x_tr, labels, steps=steps, batch_size=batch_size, lr=lr, tau=tau,
                           augment=augment, opt=opt, schedule=schedule, weight_decay=weight_decay,
                           seed=seed, device=dev)
    rep_tr = representations(model, x_tr, batch_size=eval_batch, device=dev)
    rep_te = representations(model, x_te, batch_size=eval_batch, device=dev)
    fit_probe = {"sklearn": probes.linear, "lbfgs": probes.linear_lbfgs}[probe]
    out: dict = {layer: {name: fit_probe(rep_tr[layer], ytr, rep_te[layer], yte)["acc"]
                         for name, (ytr, yte) in targets.items()}
                 for layer in (layers if kind == "mlp" else ("pre",)) if layer in rep_tr}
    out["_wall_s"] = hist.wall_s
    return out


def row_name(kind: str, layer: str) -> str:
    """The ledger's method name of a probe: ``"learned head: pre"``, ``"no head"``, ..."""
    return HEAD_NAMES[kind] + ("" if kind == "none" else f": {layer}")


def digit_augment(x: torch.Tensor, generator: torch.Generator | None = None, shift: int = 2,
                  noise: float = 0.1, erase: int = 4) -> torch.Tensor:
    """Small-image views for digits ``(B, 1, H, W)`` in [0, 1]: a random translation by up to
    ``shift`` pixels (zero fill; no flips, digits are not mirror-symmetric), Gaussian pixel noise
    of std ``noise`` and one ``erase`` x ``erase`` square set to 0 at a random place."""
    b, _, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (shift, shift, shift, shift))
    dy = torch.randint(0, 2 * shift + 1, (b,), generator=generator).to(dev)
    dx = torch.randint(0, 2 * shift + 1, (b,), generator=generator).to(dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    out = padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(x.shape[1], device=dev)[None, :, None, None], rows, cols]
    out = out + noise * torch.randn(out.shape, generator=generator).to(dev)
    if erase:
        ey = torch.randint(0, h - erase + 1, (b,), generator=generator).to(dev)
        ex = torch.randint(0, w - erase + 1, (b,), generator=generator).to(dev)
        r = torch.arange(h, device=dev)[None, :, None]
        c = torch.arange(w, device=dev)[None, None, :]
        hole = ((r >= ey[:, None, None]) & (r < ey[:, None, None] + erase)
                & (c >= ex[:, None, None]) & (c < ex[:, None, None] + erase))
        out = out.masked_fill(hole[:, None], 0.0)
    return out
