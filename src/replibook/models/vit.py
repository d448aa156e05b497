r"""Small transformers with pluggable attention and normalization: `TinyViT`, `TokenTransformer`.

Both stack the same `TransformerBlock`. In the default pre-norm form (ViT, Dosovitskiy et al. 2021):

.. math::
    x \leftarrow x + \mathrm{Attn}(\mathrm{Norm}_1(x)), \qquad
    x \leftarrow x + \mathrm{MLP}(\mathrm{Norm}_2(x))

and with ``prenorm=False`` the post-norm form of the original Transformer (and of
the SOFT code): :math:`x \leftarrow \mathrm{Norm}_1(x + \mathrm{Attn}(x))`,
:math:`x \leftarrow \mathrm{Norm}_2(x + \mathrm{MLP}(x))`.

- ``attn`` is a name of :mod:`replibook.models.attention` (``"softmax"``,
  ``"nystrom"``, ``"performer"``, ``"linformer"``, ``"linear"``, or one a methods
  module registered, e.g. ``"soft"``), a class, or a callable ``(dim, heads, **kw)``;
  ``attn_kwargs`` go to it (e.g. ``{"num_landmarks": 16}``). The models pass the
  token layout (``seq_len``, ``grid``, ``num_prefix_tokens``) to variants that take it.
- ``norm`` is a *channels-last* name of :mod:`replibook.models.norm` (tokens are
  ``(B, N, C)``): ``"layer"``, ``"batch_seq"`` (batch norm over batch and tokens;
  plain ``"batch"`` would normalise over the token axis and is refused), ``"none"``,
  or a registered paper norm; or a class / callable ``(C, **kw)``. A norm whose
  ``forward`` takes ``padding_mask`` receives the padding mask.

`TinyViT` reads images ``(B, C, H, W)`` through non-overlapping patches;
`TokenTransformer` reads token sequences ``(B, N, F)`` with an optional padding mask.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .attention import check_padding_mask, make_attention
from .norm import make_act, make_norm, norm_entry

__all__ = ["TransformerBlock", "TransformerEncoder", "TinyViT", "TokenTransformer", "PatchEmbed", "drop_path",
           "set_drop_path"]

AttnSpec = str | Callable[..., nn.Module]
NormSpec = str | Callable[..., nn.Module] | None


def _token_norm(norm: NormSpec, dim: int, norm_kwargs: dict[str, Any] | None) -> nn.Module:
    """A norm over the channels of tokens ``(B, N, C)``; refuses channel-first registry names."""
    if isinstance(norm, str):
        entry = norm_entry(norm)
        if not entry.channels_last and entry.name not in ("none",):
            raise ValueError(
                f"norm {norm!r} is channel-first (normalises dim 1); tokens (B, N, C) need a "
                "channels-last norm such as 'layer' or 'batch_seq' (batch norm over batch and "
                "tokens); register paper norms for tokens with channels_last=True")
    return make_norm(norm, dim, **(norm_kwargs or {}))


def _takes_padding_mask(module: nn.Module) -> bool:
    try:
        return "padding_mask" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016) on a residual branch ``x (B, ...)``: in training, each
    sample's branch is dropped with probability ``rate`` and kept ones are scaled by ``1 / (1 - rate)``."""
    if rate <= 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


def set_drop_path(model: nn.Module, rate: float) -> None:
    """Stochastic depth rising linearly from 0 (first block) to ``rate`` (last block) over the
    `TransformerBlock`s of ``model`` (the timm/DeiT/MAE fine-tuning rule)."""
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    for i, block in enumerate(blocks):
        block.drop_path = rate * i / max(len(blocks) - 1, 1)


class TransformerBlock(nn.Module):
    """Attention + MLP, each with a residual connection and a norm (pre- or post-norm).

    Shapes: ``x: (B, N, dim)``, ``mask: (B, N)`` bool (True = padding) ->
    ``(x: (B, N, dim), maps or None)``. ``drop_path``: stochastic-depth rate of both residual
    branches (pre-norm; 0 by default, see `set_drop_path`).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, attn: AttnSpec = "softmax",
                 norm: NormSpec = "layer", act: str = "gelu", dropout: float = 0.0,
                 prenorm: bool = True, attn_kwargs: dict[str, Any] | None = None,
                 norm_kwargs: dict[str, Any] | None = None, **context: Any):
        super().__init__()
        self.prenorm = prenorm
        self.norm1 = _token_norm(norm, dim, norm_kwargs)
        self.attn = make_attention(attn, dim, heads, **{**(attn_kwargs or {}), **context})
        self.norm2 = _token_norm(norm, dim, norm_kwargs)
        hidden = int(round(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), make_act(act), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)
        self.drop_path = 0.0
        self._mask_norm1 = _takes_padding_mask(self.norm1)
        self._mask_norm2 = _takes_padding_mask(self.norm2)

    def _norm(self, which: int, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if which == 1:
            layer, takes = self.norm1, self._mask_norm1
        else:
            layer, takes = self.norm2, self._mask_norm2
        return layer(x, padding_mask=mask) if takes and mask is not None else layer(x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                return_attn: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.prenorm:
            a, maps = self.attn(self._norm(1, x, mask), mask=mask, return_maps=return_attn)
            x = x + drop_path(self.drop(a), self.drop_path, self.training)              # x + Attn(Norm1(x))
            x = x + drop_path(self.mlp(self._norm(2, x, mask)), self.drop_path, self.training)  # x + MLP(Norm2(x))
        else:
            a, maps = self.attn(x, mask=mask, return_maps=return_attn)
            x = self._norm(1, x + self.drop(a), mask)                 # Norm1(x + Attn(x))
            x = self._norm(2, x + self.mlp(x), mask)                  # Norm2(x + MLP(x))
        return x, maps


class TransformerEncoder(nn.Module):
    """``depth`` `TransformerBlock`s and a final norm (pre-norm only), recording what is asked.

    ``forward(x, mask, return_layers, return_attn) -> (x, layers, maps)`` where
    ``layers`` is the list of block outputs (``depth`` tensors ``(B, N, dim)``, before
    the final norm) and ``maps`` the list of attention maps, or empty lists.
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 2.0,
                 attn: AttnSpec = "softmax", norm: NormSpec = "layer", act: str = "gelu",
                 dropout: float = 0.0, prenorm: bool = True, final_norm: bool | None = None,
                 attn_kwargs: dict[str, Any] | None = None,
                 norm_kwargs: dict[str, Any] | None = None, **context: Any):
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, mlp_ratio, attn, norm, act, dropout, prenorm,
                             attn_kwargs, norm_kwargs, **context) for _ in range(depth))
        final_norm = prenorm if final_norm is None else final_norm
        self.norm = _token_norm(norm, dim, norm_kwargs) if final_norm else nn.Identity()
        self._mask_norm = _takes_padding_mask(self.norm)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                return_layers: bool = False, return_attn: bool = False
                ) -> tuple[torch.Tensor, list[torch.Tensor], list]:
        layers, maps = [], []
        for block in self.blocks:
            x, m = block(x, mask, return_attn)
            if return_layers:
                layers.append(x)
            if return_attn:
                maps.append(m)
        if self._mask_norm and mask is not None:
            x = self.norm(x, padding_mask=mask)
        else:
            x = self.norm(x)
        return x, layers, maps


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _pool(tokens: torch.Tensor, pool: str, prefix: int, mask: torch.Tensor | None) -> torch.Tensor:
    """``(B, N, C) -> (B, C)``: the CLS token, or the mean of the (valid) non-prefix tokens."""
    if pool == "cls":
        return tokens[:, 0]
    body = tokens[:, prefix:]
    if mask is None:
        return body.mean(dim=1)
    valid = (~mask[:, prefix:]).to(body.dtype).unsqueeze(-1)
    return (body * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)


class _TokenModel(nn.Module):
    """What TinyViT and TokenTransformer share: CLS token, positions, encoder, pooling, head."""

    def _setup(self, *, num_tokens: int, num_classes: int, dim: int, depth: int, heads: int,
               mlp_ratio: float, attn: AttnSpec, norm: NormSpec, cls: bool, pool: str | None,
               return_layers: bool, return_attn: bool, attn_kwargs, norm_kwargs, act: str,
               dropout: float, prenorm: bool, final_norm: bool | None, grid: tuple[int, int] | None,
               pos_embed: bool, init: str, fc_norm: bool = False) -> None:
        pool = pool or ("cls" if cls else "mean")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        if pool == "cls" and not cls:
            raise ValueError("pool='cls' needs cls=True")
        self.dim, self.depth, self.heads = dim, depth, heads
        self.num_prefix_tokens = 1 if cls else 0
        self.pool, self.return_layers, self.return_attn = pool, return_layers, return_attn
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls else None
        total = num_tokens + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, total, dim)) if pos_embed else None
        self.encoder = TransformerEncoder(
            dim, depth, heads, mlp_ratio, attn, norm, act, dropout, prenorm, final_norm,
            attn_kwargs, norm_kwargs, seq_len=total, grid=grid,
            num_prefix_tokens=self.num_prefix_tokens)
        # a norm on the pooled vector (MAE/BEiT's global pooling: mean of the block outputs, then a norm)
        self.fc_norm = _token_norm(norm, dim, norm_kwargs) if fc_norm else nn.Identity()
        self.head = nn.Linear(dim, num_classes) if num_classes else nn.Identity()
        if init not in ("vit", "torch"):
            raise ValueError(f"init must be 'vit' or 'torch', got {init!r}")
        if init == "vit":
            self.apply(_init_weights)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def _encode(self, tokens: torch.Tensor, mask: torch.Tensor | None, return_layers: bool,
                return_attn: bool):
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
            if mask is not None:
                mask = torch.cat([mask.new_zeros(mask.shape[0], 1), mask], dim=1)
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed[:, :tokens.shape[1]]
        x, layers, maps = self.encoder(tokens, mask, return_layers, return_attn)
        return x, layers, maps, mask

    def _output(self, tokens: torch.Tensor, mask: torch.Tensor | None, return_layers: bool | None,
                return_attn: bool | None):
        rl = self.return_layers if return_layers is None else return_layers
        ra = self.return_attn if return_attn is None else return_attn
        x, layers, maps, mask = self._encode(tokens, mask, rl, ra)
        logits = self.head(self.fc_norm(_pool(x, self.pool, self.num_prefix_tokens, mask)))
        if not (rl or ra):
            return logits
        aux: dict[str, Any] = {"tokens": x}
        if rl:
            aux["layers"] = layers
        if ra:
            aux["attn"] = maps
        return logits, aux


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch`` x ``patch`` patches, linearly embedded (a strided conv).

    ``(B, C, H, W) -> (B, N, dim)`` with ``N = (H / patch) (W / patch)`` tokens in
    raster order (row by row), ``grid = (H / patch, W / patch)``.
    """

    def __init__(self, img_size: int | Sequence[int], patch: int, in_chans: int, dim: int):
        super().__init__()
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if h % patch or w % patch:
            raise ValueError(f"image size {(h, w)} is not divisible by the patch size {patch}")
        self.img_size, self.patch = (h, w), patch
        self.grid = (h // patch, w // patch)
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"TinyViT was built for {self.img_size} images, "
                             f"got {tuple(x.shape[-2:])}")
        return self.proj(x).flatten(2).transpose(1, 2)


class TinyViT(_TokenModel):
    """A small Vision Transformer with pluggable attention and normalization.

    Args:
        img_size: side (or ``(H, W)``) of the input images; patch: patch side.
        in_chans, num_classes: input channels and outputs (0 gives pooled features).
        dim, depth, heads, mlp_ratio: width, blocks, heads, MLP hidden = ``mlp_ratio * dim``.
        attn, norm: see the module docstring; attn_kwargs / norm_kwargs go to them.
        cls: prepend a learned CLS token. pool: ``"cls"`` (default with ``cls``) or
            ``"mean"`` (mean of the patch tokens; default without ``cls``).
        return_layers, return_attn: default for `forward` (see there).
        prenorm: pre-norm blocks (ViT) or post-norm (original Transformer, SOFT code).
        final_norm: norm after the last block (default: with pre-norm only).
        pos_embed: learned absolute position embeddings.
        init: ``"vit"`` (Linear weights truncated-normal, std 0.02, zero biases: the ViT/timm
            recipe) or ``"torch"`` (PyTorch's default Linear init, larger weights, which
            learns faster in runs of a few hundred updates). Position and CLS embeddings are
            truncated-normal (std 0.02) either way.
        fc_norm: a norm (``norm``, ``norm_kwargs``) on the pooled vector before the head. With
            ``pool="mean", final_norm=False`` this is the global pooling of MAE fine-tuning
            (timm's ``fc_norm``). Default off (no extra parameters).
        qkv_bias: biases in the attention's qkv projection (softmax attention; default on).

    ``forward(x)`` returns logits ``(B, num_classes)``; with ``return_layers`` or
    ``return_attn`` it returns ``(logits, aux)``, ``aux = {"tokens": final tokens
    (B, N, dim), "layers": [block outputs], "attn": [maps per block]}``.
    """

    def __init__(self, img_size: int | Sequence[int] = 32, patch: int = 4, in_chans: int = 1,
                 num_classes: int = 10, dim: int = 64, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 2.0, attn: AttnSpec = "softmax", norm: NormSpec = "layer",
                 cls: bool = True, return_layers: bool = False, return_attn: bool = False, *,
                 pool: str | None = None, attn_kwargs: dict[str, Any] | None = None,
                 norm_kwargs: dict[str, Any] | None = None, act: str = "gelu", dropout: float = 0.0,
                 prenorm: bool = True, final_norm: bool | None = None, pos_embed: bool = True,
                 init: str = "vit", fc_norm: bool = False, qkv_bias: bool | None = None):
        super().__init__()
        if qkv_bias is not None:
            attn_kwargs = {**(attn_kwargs or {}), "qkv_bias": qkv_bias}
        self.patch_embed = PatchEmbed(img_size, patch, in_chans, dim)
        self.grid = self.patch_embed.grid
        self._setup(num_tokens=self.grid[0] * self.grid[1], num_classes=num_classes, dim=dim,
                    depth=depth, heads=heads, mlp_ratio=mlp_ratio, attn=attn, norm=norm, cls=cls,
                    pool=pool, return_layers=return_layers, return_attn=return_attn,
                    attn_kwargs=attn_kwargs, norm_kwargs=norm_kwargs, act=act, dropout=dropout,
                    prenorm=prenorm, final_norm=final_norm, grid=self.grid, pos_embed=pos_embed,
                    init=init, fc_norm=fc_norm)

    def forward(self, x: torch.Tensor, return_layers: bool | None = None,
                return_attn: bool | None = None):
        return self._output(self.patch_embed(x), None, return_layers, return_attn)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before the head: ``(B, dim)``."""
        out, _, _, _ = self._encode(self.patch_embed(x), None, False, False)
        return self.fc_norm(_pool(out, self.pool, self.num_prefix_tokens, None))


class TokenTransformer(_TokenModel):
    """A transformer classifier over token sequences ``(B, N, in_dim)``, same blocks as `TinyViT`.

    Tokens are embedded by a Linear layer, get learned positions (up to ``max_len``)
    and an optional CLS token. ``forward(x, mask=None)`` takes a padding mask
    ``(B, N)`` bool, True where a token is padding: padded tokens are not attended
    to, excluded from mean pooling and passed to norms that take ``padding_mask``
    (e.g. ``"batch_seq"``). Returns as `TinyViT`.
    """

    def __init__(self, in_dim: int, num_classes: int, dim: int = 64, depth: int = 2, heads: int = 4,
                 attn: AttnSpec = "softmax", norm: NormSpec = "layer", max_len: int = 512,
                 mlp_ratio: float = 2.0, cls: bool = True, return_layers: bool = False,
                 return_attn: bool = False, *, pool: str | None = None,
                 attn_kwargs: dict[str, Any] | None = None,
                 norm_kwargs: dict[str, Any] | None = None, act: str = "gelu",
                 dropout: float = 0.0, prenorm: bool = True, final_norm: bool | None = None,
                 pos_embed: bool = True, init: str = "vit"):
        super().__init__()
        self.max_len = max_len
        self.embed = nn.Linear(in_dim, dim)
        self._setup(num_tokens=max_len, num_classes=num_classes, dim=dim, depth=depth, heads=heads,
                    mlp_ratio=mlp_ratio, attn=attn, norm=norm, cls=cls, pool=pool,
                    return_layers=return_layers, return_attn=return_attn, attn_kwargs=attn_kwargs,
                    norm_kwargs=norm_kwargs, act=act, dropout=dropout, prenorm=prenorm,
                    final_norm=final_norm, grid=None, pos_embed=pos_embed, init=init)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                return_layers: bool | None = None, return_attn: bool | None = None):
        if x.dim() != 3:
            raise ValueError(f"TokenTransformer expects (B, N, F) tokens, got {tuple(x.shape)}")
        if x.shape[1] > self.max_len:
            raise ValueError(f"TokenTransformer was built for at most {self.max_len} tokens, "
                             f"got {x.shape[1]}")
        mask = check_padding_mask(mask, x)
        return self._output(self.embed(x), mask, return_layers, return_attn)
