"""Image augmentations as batched tensor ops that run on the device."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["random_crop_flip", "patch_mask", "random_resized_crop", "color_jitter", "random_grayscale",
           "simclr_augment", "rotate_batch",
           "gaussian_blur", "random_flip"]


def random_crop_flip(x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None,
                     mode: str = "reflect") -> torch.Tensor:
    """The standard CIFAR augmentation on a batch ``(B, C, H, W)``: pad by ``pad``, crop back
    to the original size at a random offset per image, and flip half of the images
    left-right. ``mode="reflect"`` mirrors the border; ``mode="constant"`` pads with zeros,
    as torchvision's ``RandomCrop(32, padding=4)`` in most official CIFAR pipelines (apply it
    before normalising, so the padding is black). Random numbers come from ``generator``
    (CPU) or torch's global generator; 1-D signals ``(B, C, L)`` are returned unchanged.
    """
    if mode not in ("reflect", "constant"):
        raise ValueError(f"random_crop_flip: mode must be 'reflect' or 'constant', got {mode!r}")
    if x.dim() != 4:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode) if pad else x
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    flip = torch.rand(b, generator=generator).to(x.device) < 0.5
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]        # (B, 1, H, 1)
    cols = dx[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]         # (B, 1, 1, W)
    idx = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[idx, chans, rows, cols]


def patch_mask(x: torch.Tensor, ratio: float, patch: int, generator: torch.Generator | None = None,
               fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random patch masking (MAE-style) of a batch of images, independently per image.

    The image is cut into non-overlapping ``patch`` x ``patch`` squares; in every image
    exactly ``floor(ratio * n_patches)`` of them, drawn uniformly without replacement, are
    set to ``fill`` in all channels (the masking of MRDD's masked cross-view prediction,
    ch. 03, and of masked-image modelling).

    Args:
        x: ``(B, C, H, W)`` with ``H`` and ``W`` divisible by ``patch``.
        ratio: fraction of patches to mask, in [0, 1].
        patch: side of a square patch in pixels.
        generator: CPU generator for the draw (default: torch's global one).
        fill: value written into masked patches.
    Returns:
        ``(masked x (B, C, H, W), mask (B, H // patch, W // patch) bool, True = masked)``.
        ``mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2)`` is the pixel mask.
    """
    if x.dim() != 4:
        raise ValueError(f"patch_mask expects (B, C, H, W), got shape {tuple(x.shape)}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    b, _, h, w = x.shape
    if patch < 1 or h % patch or w % patch:
        raise ValueError(f"patch {patch} does not tile a {h}x{w} image")
    gh, gw = h // patch, w // patch
    n = gh * gw
    k = int(math.floor(ratio * n + 1e-9))               # exact count per image
    order = torch.rand(b, n, generator=generator).argsort(dim=1)   # a random permutation per row
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask.scatter_(1, order[:, :k], True)
    mask = mask.view(b, gh, gw).to(x.device)
    pixels = mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, None]   # (B, 1, H, W)
    return torch.where(pixels, torch.as_tensor(fill, dtype=x.dtype, device=x.device), x), mask


def _uniform(b: int, lo: float, hi: float, generator: torch.Generator | None, device) -> torch.Tensor:
    return (lo + (hi - lo) * torch.rand(b, generator=generator)).to(device)


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float] = (0.2, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random resized crop (and optional left-right flip) of ``(B, C, H, W)``, same size out.

    Each image gets a crop covering a fraction ``U(scale)`` of its area with aspect ratio
    log-uniform in ``ratio`` (clipped to the image), at a uniform position, resampled
    bilinearly to ``H x W`` — torchvision's ``RandomResizedCrop`` done as one batched
    ``affine_grid``/``grid_sample`` (no rejection sampling: a crop that would exceed the image
    is clipped to it).
    """
    b = x.shape[0]
    dev = x.device
    area = _uniform(b, scale[0], scale[1], generator, dev)
    log_r = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), generator, dev)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)                      # crop size as a fraction of the side
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (2 * torch.rand(b, generator=generator).to(dev) - 1) * (1 - w)   # centre in [-1+w, 1-w]
    cy = (2 * torch.rand(b, generator=generator).to(dev) - 1) * (1 - h)
    sign = torch.ones(b, device=dev)
    if flip:
        sign = torch.where(torch.rand(b, generator=generator).to(dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of RGB ``(B, 3, H, W)`` -> ``(B, 1, H, W)``; the image itself if 1-channel."""
    if x.shape[1] == 1:
        return x
    wts = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * wts).sum(1, keepdim=True)


def _rotate_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Hue rotation by ``turns`` (fraction of a full turn, per image) in YIQ space (luma kept)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          device=x.device, dtype=x.dtype)
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
    ang = 2 * math.pi * turns.view(-1, 1, 1)
    c, s = torch.cos(ang), torch.sin(ang)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], c * i - s * q, s * i + c * q], 1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq)


def color_jitter(x: torch.Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1, p: float = 0.8, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness, contrast, saturation and hue changes, applied to each image with probability ``p``.

    Factors are drawn per image: brightness and contrast ``U(1 - s, 1 + s)``, saturation the same
    (RGB only), hue a rotation by ``U(-hue, hue)`` of a turn (RGB only). Applied in that fixed order
    (torchvision shuffles it), then clamped to [0, 1].
    """
    b, dev = x.shape[0], x.device
    on = (torch.rand(b, generator=generator) < p).to(dev).view(b, 1, 1, 1)
    bright = _uniform(b, 1 - brightness, 1 + brightness, generator, dev).view(b, 1, 1, 1)
    contr = _uniform(b, 1 - contrast, 1 + contrast, generator, dev).view(b, 1, 1, 1)
    sat = _uniform(b, 1 - saturation, 1 + saturation, generator, dev).view(b, 1, 1, 1)
    turns = _uniform(b, -hue, hue, generator, dev)
    out = (x * bright).clamp(0, 1)
    mean = _gray(out).mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contr + mean).clamp(0, 1)
    if x.shape[1] == 3:
        g = _gray(out)
        out = ((out - g) * sat + g).clamp(0, 1)
        if hue > 0:
            out = _rotate_hue(out, turns).clamp(0, 1)
    return torch.where(on, out, x)


def random_grayscale(x: torch.Tensor, p: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each RGB image by its luma (in all 3 channels) with probability ``p``; 1-channel input is returned."""
    if x.shape[1] != 3:
        return x
    on = (torch.rand(x.shape[0], generator=generator) < p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(on, _gray(x).expand_as(x), x)


def simclr_augment(x: torch.Tensor, generator: torch.Generator | None = None,
                   crop_scale: tuple[float, float] = (0.2, 1.0), flip: bool = True, jitter: float = 0.4,
                   jitter_p: float = 0.8, gray_p: float = 0.2) -> torch.Tensor:
    """SimCLR's augmentation for small images (Chen et al. 2020, App. A; the CIFAR variant without blur).

    Random resized crop (area ``crop_scale``) with a random left-right flip, then colour jitter
    of strength ``jitter`` (brightness, contrast and saturation ``jitter``, hue ``jitter / 4``)
    with probability ``jitter_p``, then random grayscale with probability ``gray_p``. Batched
    over ``(B, C, H, W)`` in [0, 1] on the tensor's device; every image draws its own parameters
    from ``generator`` (CPU) or torch's global generator. 1-channel images skip saturation, hue
    and grayscale.
    """
    if x.dim() != 4:
        raise ValueError(f"simclr_augment expects (B, C, H, W), got shape {tuple(x.shape)}")
    out = random_resized_crop(x, scale=crop_scale, flip=flip, generator=generator)
    if jitter > 0 and jitter_p > 0:
        out = color_jitter(out, jitter, jitter, jitter, jitter / 4, p=jitter_p, generator=generator)
    if gray_p > 0:
        out = random_grayscale(out, gray_p, generator=generator)
    return out


def rotate_batch(x: torch.Tensor, k_rot: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The RotNet pretext batch (Gidaris et al. 2018): every image at ``k_rot`` rotations, with the rotation index as label.

    Args:
        x: ``(N, C, H, W)`` square images.
        k_rot: 2 -> {0, 180}; 4 -> {0, 90, 180, 270} degrees (exact ``rot90``, no interpolation);
            8 -> multiples of 45 degrees (the diagonal ones by bilinear resampling with zero fill,
            so they carry corner artefacts the 90-degree ones do not).
    Returns:
        ``(x_rot (k_rot * N, C, H, W), labels (k_rot * N,))``, grouped by rotation: rows
        ``r * N .. (r + 1) * N - 1`` hold rotation ``r`` (angle ``r * 360 / k_rot`` degrees,
        counter-clockwise).
    """
    if k_rot not in (2, 4, 8):
        raise ValueError(f"k_rot must be 2, 4 or 8, got {k_rot}")
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotate_batch expects square (N, C, H, W) images, got shape {tuple(x.shape)}")
    n = x.shape[0]
    views = []
    for r in range(k_rot):
        angle = 360.0 * r / k_rot
        if angle % 90 == 0:
            views.append(torch.rot90(x, int(angle // 90), dims=(2, 3)))
        else:
            a = math.radians(angle)
            theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                                 dtype=x.dtype, device=x.device).expand(n, 2, 3)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            views.append(F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    labels = torch.arange(k_rot, device=x.device).repeat_interleave(n)
    return torch.cat(views), labels


def gaussian_blur(x: torch.Tensor, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0),
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Blur each image of ``(B, C, H, W)`` with probability ``p`` by a Gaussian of standard deviation
    ``U(sigma)`` pixels (MoCo-v2's ``GaussianBlur``, done batched on the tensor's device).

    Separable depthwise convolution, kernel half-width ``ceil(3 * sigma[1])`` (at most the
    image side minus one), reflection padding.
    """
    b, c, h, w = x.shape
    dev = x.device
    on = (torch.rand(b, generator=generator) < p).to(dev).view(b, 1, 1, 1)
    s = sigma[0] + (sigma[1] - sigma[0]) * torch.rand(b, generator=generator)
    r = max(1, min(int(math.ceil(3 * sigma[1])), h - 1, w - 1))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t[None] ** 2 / (2 * s[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0).to(dev, x.dtype)      # (B*C, 2r+1)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(b * c, 1, -1, 1), groups=b * c)
    return torch.where(on, y.view(b, c, h, w), x)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    on = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(on, x.flip(-1), x)
