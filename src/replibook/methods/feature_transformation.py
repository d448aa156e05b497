r"""Feature transformation for contrastive learning (Zhu et al., ICCV 2021; chapter ``feature-transformation``).

The paper looks at the scores a MoCo model sees during training, the positive score
:math:`q\cdot k` and the negative scores :math:`q\cdot n` against the queue, and changes the
normalised features just before the InfoNCE logits:

- **positive extrapolation**: :math:`\lambda \sim \mathrm{Beta}(a_p, a_p) + 1 \in [1, 2]`,
  :math:`q' = \lambda q + (1-\lambda) k`, :math:`k' = \lambda k + (1-\lambda) q`. For unit
  vectors with :math:`s = q\cdot k` and :math:`a = \lambda(\lambda-1) \ge 0`,
  :math:`q'\cdot k' = s - 2a(1-s) \le s`: a harder positive.
- **negative interpolation**: :math:`\mu \sim \mathrm{Beta}(a_n, a_n)`,
  :math:`\text{queue}' = \mu\,\text{queue} + (1-\mu)\,\text{queue}[\pi]` for a random
  permutation :math:`\pi` of the queue: new, more diverse negatives.

The mixed vectors are not re-normalised (the official default). With ``per_element=False``
(the official command: ``--dim_mask`` left at ``none``) one scalar :math:`\lambda` and one
scalar :math:`\mu` are drawn per update; ``per_element=True`` draws a coefficient per entry of
``q`` and of the queue (``--dim_mask both``). ``positive="interpolate"`` draws
:math:`\lambda \in [0, 1]` instead (the paper's positive-interpolation ablation).

`FeatureTransform` is the hook `replibook.train.ssl.moco_pretrain` calls on
``(q, k, queue)``; `score_stats` and `score_samples` are the visualisation tools.

The full tier (the paper's ImageNet-100 setting) streams the images: `ImageNetStream` builds
the loaders (two random resized crops per image on the CPU workers, `mocov2_view_augment` on
the device for the rest of MoCo-v2's augmentation: flip, colour jitter, grayscale, Gaussian
blur, normalisation) and runs the linear evaluation of the official code
(`replibook.train.ssl.linear_eval_stream`) plus a kNN read-out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.augment import color_jitter, gaussian_blur, random_flip, random_grayscale, simclr_augment

__all__ = ["positive_extrapolation", "negative_interpolation", "FeatureTransform", "score_stats",
           "score_samples", "embed", "load_images", "make_augment", "paired_diffs",
           "mocov2_view_augment", "ImageNetStream"]


def positive_extrapolation(q: torch.Tensor, k: torch.Tensor, lam: float | torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(lam q + (1 - lam) k, lam k + (1 - lam) q)``; ``lam`` a scalar or a tensor broadcastable to ``q``.

    ``lam`` in [1, 2] extrapolates (lowers :math:`q'\cdot k'`), in [0, 1] interpolates.
    """
    return lam * q + (1 - lam) * k, lam * k + (1 - lam) * q


def negative_interpolation(queue: torch.Tensor, mu: float | torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``mu queue + (1 - mu) queue[perm]``: each negative mixed with another row of the queue."""
    return mu * queue + (1 - mu) * queue[perm]


def _beta(alpha: float, shape: tuple[int, ...] | None, generator: torch.Generator | None) -> np.ndarray | float:
    """Beta(alpha, alpha) draws from a NumPy generator seeded off ``generator`` (reproducible)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    return float(rng.beta(alpha, alpha)) if shape is None else rng.beta(alpha, alpha, size=shape)


@dataclass
class FeatureTransform:
    """The FT hook: ``ft(q, k, queue, generator=g) -> (q', k', queue')``.

    Args:
        positive: ``"extrapolate"`` (lambda in [1, 2]), ``"interpolate"`` (lambda in [0, 1]) or None.
        negative: apply negative interpolation.
        pos_alpha, neg_alpha: Beta parameters (official command: 2.0 and 1.6).
        per_element: one coefficient per entry instead of one scalar per update.

    ``last`` holds the coefficients of the latest call (``lam``, ``mu`` as floats, or their
    means when per element).
    """

    positive: str | None = "extrapolate"
    negative: bool = True
    pos_alpha: float = 2.0
    neg_alpha: float = 1.6
    per_element: bool = False

    def __post_init__(self) -> None:
        if self.positive not in (None, "extrapolate", "interpolate"):
            raise ValueError(f"positive must be 'extrapolate', 'interpolate' or None, got {self.positive!r}")
        self.last: dict[str, float] = {}

    def __call__(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.positive is not None:
            lam = _beta(self.pos_alpha, tuple(q.shape) if self.per_element else None, generator)
            if self.positive == "extrapolate":
                lam = lam + 1.0
            lam_t = torch.as_tensor(lam, dtype=q.dtype, device=q.device) if self.per_element else lam
            q, k = positive_extrapolation(q, k, lam_t)
            self.last["lam"] = float(np.mean(lam))
        if self.negative:
            mu = _beta(self.neg_alpha, tuple(queue.shape) if self.per_element else None, generator)
            mu_t = torch.as_tensor(mu, dtype=queue.dtype, device=queue.device) if self.per_element else mu
            perm = torch.randperm(len(queue), generator=generator).to(queue.device)
            queue = negative_interpolation(queue, mu_t, perm)
            self.last["mu"] = float(np.mean(mu))
        return q, k, queue


def score_stats(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> dict[str, float]:
    """The paper's score statistics, on the vectors as given (no normalisation).

    ``pos``: mean of :math:`q_i\\cdot k_i`; ``neg_mean``: mean of :math:`q_i\\cdot n_j` over all
    pairs; ``neg_var``: the variance of :math:`q_i\\cdot n_j` over the queue, averaged over
    queries (the official code's ``score_neg_var``, unbiased over the K negatives).
    """
    with torch.no_grad():
        neg = q.float() @ queue.float().T
        return {"pos": float((q.float() * k.float()).sum(-1).mean()), "neg_mean": float(neg.mean()),
                "neg_var": float(neg.var(dim=1).mean())}


@torch.no_grad()
def embed(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """``model(x)`` in eval mode, in chunks, L2-normalised rows (CPU tensor)."""
    was = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])
    model.train(was)
    return F.normalize(out, dim=1).cpu()


def score_samples(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """All positive scores (N,) and all negative scores (N * K,) for a histogram."""
    with torch.no_grad():
        return ((q * k).sum(-1).cpu().numpy(), (q @ queue.T).flatten().cpu().numpy())


def paired_diffs(a: list[float], b: list[float]) -> list[float]:
    """Per-seed differences ``a_s - b_s`` (seeds aligned)."""
    if len(a) != len(b):
        raise ValueError(f"paired_diffs needs equal lengths, got {len(a)} and {len(b)}")
    return [float(x) - float(y) for x, y in zip(a, b)]


def make_augment(kind: str, crop_scale: tuple[float, float] = (0.3, 1.0)):
    """The two-view augmentation ``(batch, generator) -> batch``.

    ``"color"``: `simclr_augment` (crop, flip, colour jitter, grayscale) for RGB images;
    ``"gray"``: crop and brightness/contrast jitter without flips (digits are not mirror
    symmetric) for 1-channel images.
    """
    if kind == "color":
        return lambda b, g: simclr_augment(b, generator=g, crop_scale=crop_scale)
    if kind == "gray":
        return lambda b, g: simclr_augment(b, generator=g, crop_scale=crop_scale, flip=False, gray_p=0.0)
    raise ValueError(f"unknown augmentation kind {kind!r} (color, gray)")


def load_images(name: str, size: int, n_train: int, n_test: int, seed: int = 0, device=None):
    """``(dataset, x_tr, y_tr, x_te, y_te)`` in [0, 1]: ``"cifar10"`` (balanced subsets of the
    mirror, resized to ``size``), ``"mnist5k"`` or ``"digits"`` (bundled)."""
    from ..data import bundled, real
    if name == "cifar10":
        ds = real.cifar10(n_train=n_train, n_test=n_test, seed=seed, device=device)
    elif name == "mnist5k":
        ds = bundled.mnist5k(size=size, split=(n_train, n_test), seed=seed, device=device)
    elif name == "digits":
        ds = bundled.digits(size=size, split=(n_train, n_test), seed=seed, device=device)
    else:
        raise ValueError(f"unknown dataset {name!r} (cifar10, mnist5k, digits)")
    x_tr, x_te = ds.train.x, ds.test.x
    if x_tr.shape[-1] != size:
        x_tr = F.interpolate(x_tr, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x_te = F.interpolate(x_te, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    lo, hi = float(x_tr.min()), float(x_tr.max())
    if lo < -1e-6 or hi > 1 + 1e-6:                      # standardised bundled data: back to [0, 1]
        x_tr, x_te = (x_tr - lo) / (hi - lo), (x_te - lo) / (hi - lo)
    return ds, x_tr.clamp(0, 1), ds.train.y, x_te.clamp(0, 1), ds.test.y


# ---------------------------------------------------------------------------
# Full tier: ImageNet-100, streamed
# ---------------------------------------------------------------------------

def mocov2_view_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """MoCo-v2's augmentation after the random resized crop (which the loader made): flip, colour
    jitter (0.4, 0.4, 0.4, 0.1) with probability 0.8, grayscale with probability 0.2, Gaussian
    blur (sigma in [0.1, 2]) with probability 0.5, then the ImageNet normalisation (official
    ``dataset/util.py``, augmentation "B"). ``x`` in [0, 1], ``(B, 3, S, S)``."""
    from ..data.real_imagenet import normalize
    x = random_flip(x, generator)
    x = color_jitter(x, 0.4, 0.4, 0.4, 0.1, p=0.8, generator=generator)
    x = random_grayscale(x, 0.2, generator=generator)
    x = gaussian_blur(x, 0.5, (0.1, 2.0), generator=generator)
    return normalize(x)


@dataclass
class ImageNetStream:
    """ImageNet-100 (or any class list) for MoCo pretraining and evaluation, streamed from
    ``$REPLIBOOK_DATA/imagenet/{train,val}/<wnid>/*.JPEG`` (`replibook.data.real_imagenet`).

    ``batch`` images per MoCo update, each as two random resized crops of area ``crop`` at
    ``size`` pixels; ``lin_*`` the linear evaluation (random resized crop ``lin_crop`` + flip
    for training, resize + centre crop for validation, as the official code).
    ``max_per_class`` subsets each class (tests, pilots).
    """

    classes: Any = "imagenet100"
    size: int = 224
    batch: int = 256
    crop: tuple[float, float] = (0.2, 1.0)
    lin_batch: int = 256
    lin_crop: tuple[float, float] = (0.2, 1.0)
    eval_batch: int = 256
    max_per_class: int | None = None
    workers: int | None = None
    root: Any = None
    _files: dict = field(default_factory=dict, repr=False)

    def files(self, split: str) -> tuple[list, torch.Tensor, list[str]]:
        from ..data.real_imagenet import imagenet_files
        if split not in self._files:
            self._files[split] = imagenet_files(split, self.classes, root=self.root,
                                                max_per_class=self.max_per_class, seed=0)
        return self._files[split]

    @property
    def n_classes(self) -> int:
        return len(self.files("train")[2])

    def steps_per_epoch(self) -> int:
        """MoCo updates per epoch (the ragged last batch is dropped)."""
        n = len(self.files("train")[0])
        if n < self.batch:
            raise ValueError(f"{n} training images are fewer than one batch of {self.batch}")
        return n // self.batch

    def _loader(self, split: str, **kw):
        from ..data.real_imagenet import imagenet_loader
        return imagenet_loader(split, classes=self.classes, size=self.size, workers=self.workers,
                               max_per_class=self.max_per_class, root=self.root, **kw)

    def pretrain_batches(self, seed: int):
        """``epoch -> loader`` of ``(views uint8 (B, 2, 3, S, S), labels)`` for `moco_pretrain`."""
        return lambda epoch: self._loader("train", batch_size=self.batch, views=2, crop_scale=tuple(self.crop),
                                          shuffle=True, drop_last=True, seed=seed, epoch=epoch)

    def heldout_pairs(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` validation images as fixed pairs of crops, uint8 ``(n, 2, 3, S, S)`` (score curves)."""
        loader = self._loader("val", batch_size=n, views=2, crop_scale=tuple(self.crop), shuffle=True,
                              drop_last=False, seed=seed, epoch=0)
        return next(iter(loader))[0]

    def card(self) -> dict[str, Any]:
        name = "ImageNet-100" if self.classes == "imagenet100" else f"ImageNet ({self.n_classes} classes)"
        return {"name": name, "source": "ImageNet ILSVRC-2012 train/val folders; ImageNet-100 = CMC's class list",
                "n_train": len(self.files("train")[0]), "n_test": len(self.files("val")[0]),
                "x_shape": [3, self.size, self.size], "x_dtype": "uint8", "classes": self.n_classes,
                "info": {"max_per_class": self.max_per_class}}

    def probe(self, encoder: torch.nn.Module, *, epochs: int, lr: float, milestones: Sequence[int],
              weight_decay: float = 0.0, knn_k: int = 20, seed: int = 0, device=None,
              progress: bool = True) -> tuple[float, float]:
        """``(linear top-1, kNN top-1)`` on the validation split for a frozen ``encoder``.

        Linear: `linear_eval_stream` (official protocol: SGD momentum 0.9, ``lr``, decay 0.1 at
        ``milestones``, ``epochs`` over fresh random-resized-crop + flip views). kNN: ``knn_k``
        neighbours (`replibook.train.probes.knn`, cosine on standardised features) on
        centre-crop features of the train and validation images.
        """
        from ..data.real_imagenet import normalize
        from ..train import probes
        from ..train.ssl import extract_features, linear_eval_stream
        g = torch.Generator().manual_seed(seed + 2718)

        def prep_train(x):
            return normalize(random_flip(x, g))

        def train(epoch):
            return self._loader("train", batch_size=self.lin_batch, crop_scale=tuple(self.lin_crop), shuffle=True,
                                drop_last=False, seed=seed + 1, epoch=epoch)

        def val():
            return self._loader("val", batch_size=self.eval_batch, shuffle=False, drop_last=False)

        lin = linear_eval_stream(encoder, train, val, num_classes=self.n_classes, epochs=epochs, lr=lr,
                                 milestones=tuple(milestones), weight_decay=weight_decay, prepare_train=prep_train,
                                 prepare_eval=normalize, device=device, seed=seed, progress=progress)
        f_tr, y_tr = extract_features(encoder, self._loader("train", batch_size=self.eval_batch, shuffle=False,
                                                            drop_last=False), prepare=normalize, device=device)
        f_te, y_te = extract_features(encoder, val(), prepare=normalize, device=device)
        return lin["acc"], probes.knn(f_tr, y_tr, f_te, y_te, k=knn_k)["acc"]
