"""Mutual-information estimators: the CLUB upper bound.

**CLUB** (Contrastive Log-ratio Upper Bound; Cheng et al., *CLUB: A Contrastive
Log-ratio Upper Bound of Mutual Information*, ICML 2020,
[arXiv:2006.12013](https://arxiv.org/abs/2006.12013)). For a conditional density
:math:`p(y \\mid x)`,

.. math::
    I(x; y) \\le I_{\\mathrm{CLUB}} = \\mathbb{E}_{p(x, y)}[\\log p(y \\mid x)]
        - \\mathbb{E}_{p(x)}\\mathbb{E}_{p(y)}[\\log p(y \\mid x)],

with equality when x and y are independent (both terms coincide, the bound is 0).
The true conditional is unknown, so CLUB replaces it by a variational Gaussian
:math:`q_\\theta(y \\mid x) = \\mathcal N(\\mu_\\theta(x), \\mathrm{diag}\\,\\sigma^2_\\theta(x))`
fitted by maximum likelihood on joint samples. It stays an upper bound as long as
``q`` is close to the true conditional (Cheng et al., Thm. 3.2); a poorly fitted
``q`` can under- or over-shoot, so it is an *estimate*, not a guarantee.

Estimators on a batch of N joint pairs :math:`(x_i, y_i)`:

- full:    :math:`\\frac1N\\sum_i \\log q(y_i|x_i) - \\frac1{N^2}\\sum_{i,j}\\log q(y_j|x_i)` (O(N^2));
- sampled: :math:`\\frac1N\\sum_i [\\log q(y_i|x_i) - \\log q(y_{\\pi(i)}|x_i)]` with a random
  permutation :math:`\\pi` of the batch (CLUB-S, unbiased for the full one; what training uses).

Minimising the bound with respect to the *representations* x (or y) pushes them
towards independence; the variational net is trained in alternation to maximise its
log-likelihood. The variational net here is the one of the CLUB reference code, as
used by MRDD (ch. 03): two MLPs ``x -> hidden -> y_dim`` for the mean and for a
``tanh``-bounded log-variance.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["CLUB", "fit_club", "club_estimate"]

_LOG_2PI = math.log(2.0 * math.pi)


class CLUB(nn.Module):
    """CLUB estimator of I(x; y) with a Gaussian variational net q(y | x).

    Args:
        x_dim: dimension of the conditioning variable x (MRDD: a view-specific code v_i).
        y_dim: dimension of the predicted variable y (MRDD: the consistent code c).
        hidden: width of the hidden layer of each of the two MLPs (mean, log-variance).
    """

    def __init__(self, x_dim: int, y_dim: int, hidden: int = 50) -> None:
        super().__init__()
        self.x_dim, self.y_dim = int(x_dim), int(y_dim)
        self.mu = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim))
        self.logvar = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim),
                                    nn.Tanh())

    def mu_logvar(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(y | x), each (N, y_dim); log-variance in (-1, 1)."""
        return self.mu(x), self.logvar(x)

    @staticmethod
    def _log_density(y: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """log N(y; mu, exp(logvar)) summed over the last dim (broadcasting)."""
        return -0.5 * (((y - mu) ** 2) / logvar.exp() + logvar + _LOG_2PI).sum(-1)

    def loglik(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean log q(y_i | x_i) over the batch (nats; the variational net maximises it)."""
        mu, logvar = self.mu_logvar(x)
        return self._log_density(y, mu, logvar).mean()

    def learning_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood, the variational net's training loss."""
        return -self.loglik(x, y)

    def upper_bound(self, x: torch.Tensor, y: torch.Tensor, sampled: bool = True,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """The CLUB estimate of I(x; y) on a batch (nats), differentiable in x and y.

        Args:
            x: (N, x_dim), y: (N, y_dim) joint samples (row i of x pairs with row i of y).
            sampled: one random negative per sample (CLUB-S, O(N)); else all N^2 pairs.
            generator: CPU generator for the permutation (default: torch's global one).
        """
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows, y has {len(y)}")
        mu, logvar = self.mu_logvar(x)
        positive = self._log_density(y, mu, logvar)                          # (N,)
        if sampled:
            perm = torch.randperm(len(y), generator=generator).to(y.device)
            negative = self._log_density(y[perm], mu, logvar)                # (N,)
        else:
            # log q(y_j | x_i) for all pairs: (N, 1, D) against (1, N, D), mean over j
            negative = self._log_density(y[None, :, :], mu[:, None, :], logvar[:, None, :]).mean(1)
        return (positive - negative).mean()

    def forward(self, x: torch.Tensor, y: torch.Tensor, sampled: bool = True,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """`upper_bound` (so ``torch.func.functional_call`` can evaluate it with other parameters)."""
        return self.upper_bound(x, y, sampled=sampled, generator=generator)


def fit_club(x: torch.Tensor, y: torch.Tensor, *, hidden: int = 50, steps: int = 500,
             batch_size: int = 256, lr: float = 3e-3, seed: int = 0) -> CLUB:
    """A fresh `CLUB` whose q(y | x) is fitted by maximum likelihood on frozen samples.

    Used to *measure* I(x; y) between fixed representations (not to train them):
    ``x`` and ``y`` are detached. Deterministic on CPU given ``seed``.
    """
    x, y = x.detach().float(), y.detach().float()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        club = CLUB(x.shape[1], y.shape[1], hidden=hidden).to(x.device)
    opt = torch.optim.Adam(club.parameters(), lr=lr)
    n = len(x)
    bs = min(batch_size, n)
    for _ in range(steps):
        idx = torch.randint(0, n, (bs,), generator=gen).to(x.device)
        loss = club.learning_loss(x[idx], y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return club.eval()


@torch.no_grad()
def club_estimate(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor | None = None,
                  y_test: torch.Tensor | None = None, **fit_kwargs: Any) -> dict[str, float]:
    """Fit q(y | x) on the train pairs and return the full CLUB bound on the test pairs.

    Returns ``{"club": bound (nats), "loglik": mean test log q(y|x)}``; without test pairs
    the train pairs are scored (optimistic).
    """
    with torch.enable_grad():
        club = fit_club(x_train, y_train, **fit_kwargs)
    xt = (x_test if x_test is not None else x_train).detach().float()
    yt = (y_test if y_test is not None else y_train).detach().float()
    return {"club": float(club.upper_bound(xt, yt, sampled=False)),
            "loglik": float(club.loglik(xt, yt))}
