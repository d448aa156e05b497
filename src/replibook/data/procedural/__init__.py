"""The book's own data generators, one module per generator (components.md, section 2).

Every generator is deterministic given its seed, draws from a private NumPy generator
(never the global random state a chapter has seeded) and returns float tensors on the
requested device. Modules are imported directly::

    from replibook.data.procedural import masks, dsprites
    holes = masks.free_form(100, ratio_bin=(0.2, 0.3), size=32, seed=0)   # (100, 1, 32, 32)
    shapes = dsprites.make(1000, seed=0, size=32)                          # a Bundle

Factor-labelled generators (``make(n, seed, size=..., **opts)``) return a `Bundle`:
the samples, their exact ground-truth factors (integer level indices) and the names
and level counts of those factors, so every disentanglement metric of the book reads
the same structure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ...serialize import to_jsonable


@dataclass
class Bundle:
    """Samples with exact generative factors.

    Attributes:
        x: samples, e.g. float images in [0, 1] of shape (N, C, H, W) or series (N, C, T).
        factors: long tensor (N, F) of level indices, ``0 <= factors[:, k] < levels[k]``.
        factor_names: F names, in column order.
        levels: F level counts.
        y: optional labels (N,).
        masks: optional per-sample masks (e.g. object masks, (N, 1, H, W)).
        name: the generator's name, for the ledger.
        info: generator options (size, noise levels, ...), for the ledger.
        extra: other per-sample tensors (N, ...) a generator exposes (continuous factor
            values, clean signals, participant ids, ...).
    """

    x: torch.Tensor
    factors: torch.Tensor
    factor_names: list[str]
    levels: list[int]
    y: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    name: str = "procedural"
    info: dict = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.x)
        if self.factors.ndim != 2 or len(self.factors) != n:
            raise ValueError(f"Bundle: factors must be (N={n}, F), got {tuple(self.factors.shape)}")
        if self.factors.shape[1] != len(self.factor_names) or len(self.factor_names) != len(self.levels):
            raise ValueError("Bundle: factor_names, levels and factors' columns disagree")
        for name, t in [("y", self.y), ("masks", self.masks), *self.extra.items()]:
            if t is not None and len(t) != n:
                raise ValueError(f"Bundle: {name} has {len(t)} rows, x has {n}")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> "Bundle":
        """The rows ``index`` of every per-sample tensor (a new Bundle)."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long, device=self.x.device)

        def take(t):
            return None if t is None else t[idx.to(t.device)]
        return Bundle(self.x[idx], take(self.factors), list(self.factor_names), list(self.levels),
                      take(self.y), take(self.masks), self.name, dict(self.info),
                      {k: take(v) for k, v in self.extra.items()})

    def split(self, n_train: int, seed: int = 0) -> tuple["Bundle", "Bundle"]:
        """A random (train, rest) partition: ``n_train`` rows, then the others."""
        if not 0 < n_train < len(self):
            raise ValueError(f"n_train={n_train} must lie in (0, {len(self)})")
        order = np.random.default_rng(seed).permutation(len(self))
        return self.subset(order[:n_train]), self.subset(order[n_train:])

    def to(self, device: torch.device | str) -> "Bundle":
        """A copy with every tensor on ``device``."""
        def mv(t):
            return None if t is None else t.to(device)
        return Bundle(mv(self.x), mv(self.factors), list(self.factor_names), list(self.levels),
                      mv(self.y), mv(self.masks), self.name, dict(self.info),
                      {k: mv(v) for k, v in self.extra.items()})

    def card(self) -> dict[str, Any]:
        """A JSON-able summary for the ledger (`Chapter.use_data`)."""
        return {
            "name": self.name,
            "source": f"replibook.data.procedural.{self.name}",
            "n": len(self),
            "x_shape": list(self.x.shape[1:]),
            "factors": dict(zip(self.factor_names, map(int, self.levels))),
            "info": to_jsonable(self.info),
        }


def sample_factor_grid(n: int, levels: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """``n`` factor combinations drawn uniformly from the full grid ``prod(levels)``.

    Without replacement while ``n`` fits in the grid (so a set of ``n`` images has no
    duplicates), with replacement beyond it. Returns int64 (n, F).
    """
    levels = [int(k) for k in levels]
    if any(k < 1 for k in levels):
        raise ValueError(f"every factor needs >= 1 level, got {levels}")
    total = int(np.prod(levels))
    flat = rng.choice(total, size=n, replace=n > total)
    return np.stack(np.unravel_index(flat, levels), axis=1).astype(np.int64)


def all_factor_combinations(levels: Sequence[int]) -> np.ndarray:
    """Every combination of the grid, in C order (last factor fastest): (prod(levels), F)."""
    grids = np.meshgrid(*[np.arange(int(k)) for k in levels], indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1).astype(np.int64)
from . import latent_features  # noqa: E402,F401
