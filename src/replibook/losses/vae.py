"""VAE objectives: reconstruction, KL, the ELBO and the beta-TCVAE decomposition.

All per-sample terms are *sums* over data and latent dimensions (the log-likelihood of
one example), averaged over the batch only at the end — the convention of Kingma &
Welling (2014) and of beta-VAE (Higgins et al. 2017), so beta keeps its meaning across
image sizes.

The decomposition (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs",
Eq. 2) splits the aggregate KL term of the ELBO in three::

    E_p(x) KL(q(z|x) || p(z)) = I_q(x; z)                     (index-code mutual information)
                              + KL(q(z) || prod_j q(z_j))      (total correlation, TC)
                              + sum_j KL(q(z_j) || p(z_j))     (dimension-wise KL)

where q(z) = E_p(x) q(z|x) is the aggregate posterior. `tc_decomposition` estimates the
three terms on a minibatch with minibatch-weighted sampling (MWS, their Sec. 3.1): the
aggregate density at a sample z_i of a batch of M drawn from a dataset of N is a
weighted sum over the batch's posteriors::

    q(z_i) ~= (1/N) q(z_i | x_i) + (N - 1) / (N (M - 1)) * sum_{j != i} q(z_i | x_j)

The weights make the sum an unbiased estimate of q(z_i) = (1/N) sum_n q(z_i | x_n): x_i's
own posterior is 1 of the N components, the other M - 1 stand for the remaining N - 1.
(The reference beta-TCVAE code uses 1/(N M) for every term instead. That differs from
the batch-as-dataset estimate by the constant log N per density, so its TC is offset by
(D - 1) log N — same gradients, but values that cannot be read on their own.) The log of
an unbiased density estimate is still biased at small M; chapters compare these
estimates across methods at equal M and N, never as absolute values.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..models.vae import VAEOutput

_LOG_2PI = math.log(2 * math.pi)

__all__ = ["reconstruction_nll", "kl_normal", "elbo_loss", "log_density_gaussian",
           "tc_decomposition", "mws_log_weights", "beta_tcvae_loss"]


def reconstruction_nll(out: torch.Tensor, x: torch.Tensor, likelihood: str = "bernoulli") -> torch.Tensor:
    """-log p(x|z) per sample, summed over every data dimension: (B,).

    Bernoulli: binary cross-entropy with logits ``out`` (valid for targets in [0, 1]).
    Gaussian: unit variance, ``0.5 * ||x - out||^2`` (the constant 0.5 log 2 pi per
    dimension is dropped: it changes no gradient and no comparison).
    """
    if likelihood == "bernoulli":
        per = F.binary_cross_entropy_with_logits(out, x, reduction="none")
    elif likelihood == "gaussian":
        per = 0.5 * (out - x) ** 2
    else:
        raise ValueError(f"unknown likelihood '{likelihood}' (bernoulli, gaussian)")
    return per.flatten(1).sum(1)


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor, mu_p: torch.Tensor | None = None,
              logvar_p: torch.Tensor | None = None) -> torch.Tensor:
    """KL(N(mu, diag e^logvar) || N(mu_p, diag e^logvar_p)) per sample, summed over dims: (B,).

    With ``mu_p = None`` the prior is N(0, I) and this is Kingma & Welling's closed form
    ``-0.5 * sum(1 + logvar - mu^2 - e^logvar)`` (their Appendix B).
    """
    if mu_p is None:
        return -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)
    logvar_p = torch.zeros_like(mu_p) if logvar_p is None else logvar_p
    return 0.5 * (logvar_p - logvar + (logvar.exp() + (mu - mu_p) ** 2) / logvar_p.exp() - 1).sum(1)


def elbo_loss(output: VAEOutput, x: torch.Tensor, beta: float = 1.0,
              likelihood: str = "bernoulli") -> torch.Tensor:
    """Negative (beta-weighted) ELBO, batch mean: ``E[-log p(x|z)] + beta * KL(q(z|x) || p(z))``.

    The prior is the model's conditional prior when ``output`` carries one (CVAE), else
    N(0, I). ``beta = 1`` is the ELBO; ``beta > 1`` is beta-VAE (Higgins et al. 2017, Eq. 4).
    A deterministic output (``logvar is None``) gives the reconstruction term alone.
    """
    rec = reconstruction_nll(output.out, x, likelihood)
    if output.logvar is None:
        return rec.mean()
    kl = kl_normal(output.mu, output.logvar, output.mu_p, output.logvar_p)
    return (rec + beta * kl).mean()


def log_density_gaussian(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; mu, e^logvar) (broadcasting)."""
    return -0.5 * (_LOG_2PI + logvar + (z - mu) ** 2 / logvar.exp())


def mws_log_weights(m: int, dataset_size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """log of the MWS weights (M, M): 1/N on the diagonal, (N-1)/(N(M-1)) elsewhere."""
    n = dataset_size
    w = torch.full((m, m), math.log((n - 1) / (n * (m - 1))) if n > 1 else -math.inf, device=device, dtype=dtype)
    w.fill_diagonal_(-math.log(n))
    return w


def tc_decomposition(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int,
                     groups: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
    """MWS estimates of I_q(x;z), TC(z) and the dimension-wise KL on one batch (Chen et al. 2018).

    Args:
        z: (M, D) posterior samples, z_i ~ q(z|x_i).
        mu, logvar: (M, D) the posterior parameters of the same batch.
        dataset_size: N, the number of training examples the batch was drawn from.
        groups: optional partition of the D latent indices; adds ``group_tc``, the total
            correlation between the group marginals, KL(q(z) || prod_g q(z_g)), with the
            same estimator (used by DTS, ch. 14).

    Returns: scalar tensors (batch means, differentiable): ``mi``, ``tc``, ``dim_kl``,
    ``log_qz``, ``log_prod_qzj``, ``log_pz``, ``log_qz_x`` and ``group_tc`` if asked.
    Their sum ``mi + tc + dim_kl`` equals ``log_qz_x - log_pz``, the batch's KL term.
    """
    m, d = z.shape
    if mu.shape != z.shape or logvar.shape != z.shape:
        raise ValueError("z, mu and logvar must all be (M, D)")
    if m < 2 or dataset_size < m:
        raise ValueError(f"need 2 <= batch size ({m}) <= dataset_size ({dataset_size})")
    log_w = mws_log_weights(m, dataset_size, z.device, z.dtype)             # (M, M)
    # pairwise[i, j, k] = log q(z_i[k] | x_j)
    pairwise = log_density_gaussian(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))
    log_qz_x = log_density_gaussian(z, mu, logvar).sum(1)
    log_pz = log_density_gaussian(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)
    log_qz = torch.logsumexp(pairwise.sum(2) + log_w, dim=1)
    log_prod_qzj = torch.logsumexp(pairwise + log_w.unsqueeze(2), dim=1).sum(1)
    parts = {
        "mi": (log_qz_x - log_qz).mean(),
        "tc": (log_qz - log_prod_qzj).mean(),
        "dim_kl": (log_prod_qzj - log_pz).mean(),
        "log_qz": log_qz.mean(),
        "log_prod_qzj": log_prod_qzj.mean(),
        "log_pz": log_pz.mean(),
        "log_qz_x": log_qz_x.mean(),
    }
    if groups is not None:
        flat = sorted(i for g in groups for i in g)
        if flat != list(range(d)):
            raise ValueError(f"groups must partition the {d} latent indices, got {groups}")
        log_prod_qzg = sum(torch.logsumexp(pairwise[:, :, list(g)].sum(2) + log_w, dim=1) for g in groups)
        parts["group_tc"] = (log_qz - log_prod_qzg).mean()
    return parts


def beta_tcvae_loss(output: VAEOutput, x: torch.Tensor, dataset_size: int, alpha: float = 1.0,
                    beta: float = 6.0, gamma: float = 1.0,
                    likelihood: str = "bernoulli") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """beta-TCVAE objective (Chen et al. 2018, Eq. 4), to minimise:

    ``E[-log p(x|z)] + alpha * I_q(x;z) + beta * TC(z) + gamma * sum_j KL(q(z_j) || p(z_j))``

    with MWS estimates of the three terms. ``alpha = beta = gamma = 1`` recovers the
    ELBO (up to the estimator's bias). Returns (loss, parts) where parts holds the
    detached ``recon`` and decomposition terms for logging.
    """
    rec = reconstruction_nll(output.out, x, likelihood).mean()
    parts = tc_decomposition(output.z, output.mu, output.logvar, dataset_size)
    loss = rec + alpha * parts["mi"] + beta * parts["tc"] + gamma * parts["dim_kl"]
    logged = {k: v.detach() for k, v in parts.items()}
    logged["recon"] = rec.detach()
    return loss, logged
