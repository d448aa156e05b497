"""Autoencoders for images and series: AE, VAE, conditional VAE and a sequence VAE.

One encoder/decoder pair serves 2-D images and 1-D signals (``dim=2`` or ``dim=1``)::

    ConvEncoder:  x (B, C, S[, S]) --[conv k4 s2, ReLU] x L--> flatten --FC--> ReLU --FC--> (B, out_dim)
    ConvDecoder:  z (B, in_dim) --FC--> ReLU --FC--> (B, w, S/2^L[, S/2^L]) --[deconv k4 s2] x L--> (B, C, S[, S])

Every stride-2 stage halves the side, so ``size`` must be divisible by ``2**len(widths)``.
The decoder returns *raw* outputs: logits for a Bernoulli likelihood, means for a
unit-variance Gaussian one (`to_image` maps either to the data range). The losses that
go with these models (ELBO, KL, the beta-TCVAE decomposition) live in
`replibook.losses.vae`.

Variational models follow Kingma & Welling (2014): the encoder outputs the mean and
log-variance of a diagonal Gaussian q(z|x) and ``z = mu + sigma * eps`` keeps the sample
differentiable (the reparameterisation trick, their Eq. 10).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

LIKELIHOODS = ("bernoulli", "gaussian")

__all__ = ["ConvEncoder", "ConvDecoder", "AE", "VAE", "CVAE", "SeqVAE", "VAEOutput",
           "likelihood_of", "to_image", "reparameterize"]


@dataclass
class VAEOutput:
    """What a forward pass returns.

    ``out``: raw decoder output, shaped like the input. ``z``: the latent that was decoded
    (a posterior sample for variational models, the code for an AE). ``mu``/``logvar``:
    the posterior's parameters (``logvar`` is None for a deterministic AE). ``mu_p``/
    ``logvar_p``: a conditional prior's parameters (CVAE only).
    """

    out: torch.Tensor
    z: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor | None = None
    mu_p: torch.Tensor | None = None
    logvar_p: torch.Tensor | None = None


def _check_likelihood(likelihood: str) -> str:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood '{likelihood}' (choose from {', '.join(LIKELIHOODS)})")
    return likelihood


def _conv(dim: int, transposed: bool = False) -> type[nn.Module]:
    if dim not in (1, 2):
        raise ValueError(f"dim must be 1 or 2, got {dim}")
    if transposed:
        return nn.ConvTranspose1d if dim == 1 else nn.ConvTranspose2d
    return nn.Conv1d if dim == 1 else nn.Conv2d


def _check_size(size: int, n_stages: int) -> int:
    side = size // 2 ** n_stages
    if side < 1 or side * 2 ** n_stages != size:
        raise ValueError(f"size {size} is not divisible by 2**{n_stages} (one halving per width)")
    return side


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``z = mu + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)`` (differentiable in mu, logvar)."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def to_image(out: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Decoder output in data space: sigmoid of the logits (Bernoulli) or the means (Gaussian)."""
    return torch.sigmoid(out) if _check_likelihood(likelihood) == "bernoulli" else out


class ConvEncoder(nn.Module):
    """Strided conv stack + 2-layer MLP head: (B, in_ch, size[, size]) -> (B, out_dim).

    ``extra_dim`` > 0 concatenates a side input (e.g. a CVAE's condition) to the
    flattened features before the head: ``forward(x, extra)``.
    """

    def __init__(self, in_ch: int, size: int, out_dim: int, widths: Sequence[int] = (32, 32, 64, 64),
                 fc: int = 128, dim: int = 2, extra_dim: int = 0):
        super().__init__()
        side = _check_size(size, len(widths))
        conv = _conv(dim)
        layers: list[nn.Module] = []
        prev = in_ch
        for w in widths:
            layers += [conv(prev, w, 4, stride=2, padding=1), nn.ReLU()]
            prev = w
        self.features = nn.Sequential(*layers)
        self.flat_dim = prev * side ** dim
        self.extra_dim = extra_dim
        self.head = nn.Sequential(nn.Linear(self.flat_dim + extra_dim, fc), nn.ReLU(), nn.Linear(fc, out_dim))
        self.dim, self.size, self.in_ch = dim, size, in_ch

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x).flatten(1)
        if self.extra_dim:
            if extra is None:
                raise ValueError("this encoder was built with extra_dim > 0: pass forward(x, extra)")
            h = torch.cat([h, extra.to(h.dtype)], dim=1)
        return self.head(h)


class ConvDecoder(nn.Module):
    """MLP + transposed-conv stack, the mirror of `ConvEncoder`: (B, in_dim) -> (B, out_ch, size[, size]).

    ``widths`` are listed from the deepest stage outwards (e.g. (64, 64, 32, 32)); the last
    transposed conv maps to ``out_ch`` without an activation (raw output).
    """

    def __init__(self, out_ch: int, size: int, in_dim: int, widths: Sequence[int] = (64, 64, 32, 32),
                 fc: int = 128, dim: int = 2):
        super().__init__()
        self.side = _check_size(size, len(widths))
        self.dim, self.widths = dim, tuple(widths)
        self.head = nn.Sequential(nn.Linear(in_dim, fc), nn.ReLU(),
                                  nn.Linear(fc, widths[0] * self.side ** dim), nn.ReLU())
        deconv = _conv(dim, transposed=True)
        layers: list[nn.Module] = []
        chans = list(widths[1:]) + [out_ch]
        prev = widths[0]
        for i, w in enumerate(chans):
            layers.append(deconv(prev, w, 4, stride=2, padding=1))
            if i < len(chans) - 1:
                layers.append(nn.ReLU())
            prev = w
        self.features = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.head(z).view(z.shape[0], self.widths[0], *([self.side] * self.dim))
        return self.features(h)


def _mirror(widths: Sequence[int]) -> tuple[int, ...]:
    return tuple(reversed(tuple(widths)))


class AE(nn.Module):
    """Deterministic autoencoder: ``z = enc(x)``, ``out = dec(z)``."""

    def __init__(self, in_ch: int, size: int, latent_dim: int, widths: Sequence[int] = (32, 32, 64, 64),
                 fc: int = 128, dim: int = 2, likelihood: str = "bernoulli"):
        super().__init__()
        self.likelihood = _check_likelihood(likelihood)
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(in_ch, size, latent_dim, widths, fc, dim)
        self.decoder = ConvDecoder(in_ch, size, latent_dim, _mirror(widths), fc, dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> VAEOutput:
        z = self.encode(x)
        return VAEOutput(self.decode(z), z, z)


class VAE(nn.Module):
    """Gaussian-posterior VAE: the encoder emits ``[mu, logvar]`` (2 x latent_dim values)."""

    def __init__(self, in_ch: int, size: int, latent_dim: int, widths: Sequence[int] = (32, 32, 64, 64),
                 fc: int = 128, dim: int = 2, likelihood: str = "bernoulli"):
        super().__init__()
        self.likelihood = _check_likelihood(likelihood)
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(in_ch, size, 2 * latent_dim, widths, fc, dim)
        self.decoder = ConvDecoder(in_ch, size, latent_dim, _mirror(widths), fc, dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def sample_posterior(self, mu: torch.Tensor, logvar: torch.Tensor,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        return reparameterize(mu, logvar, generator)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> VAEOutput:
        # A posterior sample is decoded in train and eval mode alike, so a test ELBO
        # is an ELBO; `encode` gives the mean representation.
        mu, logvar = self.encode(x)
        z = self.sample_posterior(mu, logvar)
        return VAEOutput(self.decode(z), z, mu, logvar)


class CVAE(nn.Module):
    """Conditional VAE (Sohn, Lee & Yan 2015): q(z|x,y), p(z|y), p(x|z,y).

    ``prior="learned"`` is Sohn et al.'s prior network, an MLP y -> (mu_p, logvar_p);
    ``prior="standard"`` fixes p(z|y) = N(0, I). The condition ``y`` (B, cond_dim), e.g.
    concatenated one-hot attributes, enters the recognition net before its MLP head and
    the generator as ``[z, y]``.
    """

    def __init__(self, in_ch: int, size: int, latent_dim: int, cond_dim: int, prior: str = "learned",
                 widths: Sequence[int] = (32, 32, 64, 64), fc: int = 128, dim: int = 2,
                 likelihood: str = "bernoulli", prior_hidden: int = 64):
        super().__init__()
        if prior not in ("learned", "standard"):
            raise ValueError(f"prior must be 'learned' or 'standard', got '{prior}'")
        self.likelihood = _check_likelihood(likelihood)
        self.latent_dim, self.cond_dim, self.prior_kind = latent_dim, cond_dim, prior
        self.encoder = ConvEncoder(in_ch, size, 2 * latent_dim, widths, fc, dim, extra_dim=cond_dim)
        self.decoder = ConvDecoder(in_ch, size, latent_dim + cond_dim, _mirror(widths), fc, dim)
        self.prior_net = (nn.Sequential(nn.Linear(cond_dim, prior_hidden), nn.ReLU(),
                                        nn.Linear(prior_hidden, 2 * latent_dim))
                          if prior == "learned" else None)

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x, y).chunk(2, dim=1)
        return mu, logvar

    def prior(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prior_net is None:
            zeros = torch.zeros(y.shape[0], self.latent_dim, device=y.device, dtype=torch.float32)
            return zeros, zeros.clone()
        mu_p, logvar_p = self.prior_net(y.float()).chunk(2, dim=1)
        return mu_p, logvar_p

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, y.to(z.dtype)], dim=1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> VAEOutput:
        mu, logvar = self.encode(x, y)
        mu_p, logvar_p = self.prior(y)
        z = reparameterize(mu, logvar)
        return VAEOutput(self.decode(z, y), z, mu, logvar, mu_p, logvar_p)

    def generate(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Raw decoder outputs for ``z ~ p(z|y)``, one sample per row of ``y``."""
        mu_p, logvar_p = self.prior(y)
        return self.decode(reparameterize(mu_p, logvar_p, generator), y)


class SeqVAE(nn.Module):
    """Sequence VAE for (B, C, T) series: bi-LSTM encoder, LSTM decoder that sees only z.

    The encoder reads the series step by step in both directions; the final hidden states
    of the two directions give ``[mu, logvar]``. The decoder gets ``z`` as its input at
    every step (no teacher forcing), so every bit of the reconstruction must pass
    through ``z`` — the setting in which KL vanishing is measurable (DTS, ch. 14).
    """

    def __init__(self, channels: int, length: int, latent_dim: int, hidden: int = 32,
                 likelihood: str = "gaussian"):
        super().__init__()
        self.likelihood = _check_likelihood(likelihood)
        self.channels, self.length, self.latent_dim, self.hidden = channels, length, latent_dim, hidden
        self.encoder = nn.LSTM(channels, hidden, batch_first=True, bidirectional=True)
        self.to_posterior = nn.Linear(2 * hidden, 2 * latent_dim)
        self.init_state = nn.Linear(latent_dim, 2 * hidden)
        self.decoder = nn.LSTM(latent_dim, hidden, batch_first=True)
        self.readout = nn.Linear(hidden, channels)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, (h, _) = self.encoder(x.transpose(1, 2))          # h: (2, B, hidden)
        mu, logvar = self.to_posterior(torch.cat([h[0], h[1]], dim=1)).chunk(2, dim=1)
        return mu, logvar

    def sample_posterior(self, mu: torch.Tensor, logvar: torch.Tensor,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        return reparameterize(mu, logvar, generator)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h0, c0 = torch.tanh(self.init_state(z)).unsqueeze(0).chunk(2, dim=2)
        steps = z.unsqueeze(1).expand(-1, self.length, -1)
        out, _ = self.decoder(steps, (h0.contiguous(), c0.contiguous()))
        return self.readout(out).transpose(1, 2)               # (B, C, T)

    def forward(self, x: torch.Tensor) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = self.sample_posterior(mu, logvar)
        return VAEOutput(self.decode(z), z, mu, logvar)


def likelihood_of(model: nn.Module) -> str:
    """The likelihood a model of this module was built with."""
    try:
        return model.likelihood
    except AttributeError:
        raise ValueError(f"{type(model).__name__} has no likelihood attribute") from None
