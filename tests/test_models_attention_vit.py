"""Attention variants (equivalences with torch and known answers), the registry, TinyViT and
TokenTransformer (shapes, gradients, determinism, masks, swapping attention and norm by name)."""
import math

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from replibook.errors import UnknownName
from replibook.models import attention as A
from replibook.models.norm import LayerNorm, register as register_norm, unregister as unregister_norm
from replibook.models.vit import TinyViT, TokenTransformer, TransformerBlock

VARIANTS = {
    "softmax": {},
    "nystrom": {"num_landmarks": 4},
    "performer": {"num_features": 16},
    "linformer": {"k": 6, "seq_len": 12},
    "linear": {},
}


def _x(b=2, n=12, dim=16, seed=0, dtype=torch.float32):
    return torch.randn(b, n, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _mask(b=2, n=12):
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[0, -3:] = True                      # three padded tokens in the first sequence
    return mask


# ----------------------------------------------------------------------- softmax attention

@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_softmax_attention_equals_torch_sdpa_on_the_same_projections(use_mask, causal):
    torch.manual_seed(0)
    attn = A.SoftmaxAttention(16, 4, causal=causal).double().eval()
    x, mask = _x(dtype=torch.float64), (_mask() if use_mask else None)
    out, maps = attn(x, mask)
    assert maps is None
    q, k, v = (t.reshape(2, 12, 4, 4).transpose(1, 2) for t in attn.qkv(x).chunk(3, -1))
    keep = None
    if use_mask or causal:
        keep = torch.ones(2, 1, 12, 12, dtype=torch.bool)
        if use_mask:
            keep &= ~mask[:, None, None, :]
        if causal:
            keep &= torch.ones(12, 12, dtype=torch.bool).tril()
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    ref = attn.proj(ref.transpose(1, 2).reshape(2, 12, 16))
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    # the explicit path (which also returns the maps) computes the same function
    out2, maps2 = attn(x, mask, return_maps=True)
    torch.testing.assert_close(out2, ref, atol=1e-12, rtol=0)
    assert maps2.shape == (2, 4, 12, 12)
    torch.testing.assert_close(maps2.sum(-1), torch.ones(2, 4, 12, dtype=torch.float64))
    if use_mask:
        assert maps2[0, :, :, -3:].abs().max() == 0
    if causal:
        assert maps2[..., torch.ones(12, 12, dtype=torch.bool).triu(1)].abs().max() == 0


def test_softmax_attention_loads_nn_multihead_attention_weights():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).double().eval()
    ours = A.SoftmaxAttention(16, 4).double().eval()
    with torch.no_grad():
        ours.qkv.weight.copy_(mha.in_proj_weight)
        ours.qkv.bias.copy_(mha.in_proj_bias)
        ours.proj.weight.copy_(mha.out_proj.weight)
        ours.proj.bias.copy_(mha.out_proj.bias)
    x, mask = _x(dtype=torch.float64), _mask()
    ref, ref_maps = mha(x, x, x, key_padding_mask=mask, average_attn_weights=False)
    out, maps = ours(x, mask, return_maps=True)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(maps, ref_maps, atol=1e-12, rtol=0)


def _copy_qkv(src: nn.Module, dst: nn.Module) -> None:
    with torch.no_grad():
        for name in ("qkv", "proj"):
            getattr(dst, name).load_state_dict(getattr(src, name).state_dict())


# ----------------------------------------------------------------------- Nystromformer

def test_nystrom_with_as_many_landmarks_as_tokens_and_exact_pinv_is_exact_attention():
    # landmarks = the tokens themselves, so A_hat = A A^+ A = A
    torch.manual_seed(0)
    soft = A.SoftmaxAttention(16, 2).double()
    nys = A.NystromAttention(16, 2, num_landmarks=12, pinv="exact").double()
    _copy_qkv(soft, nys)
    x, mask = _x(dtype=torch.float64), _mask()
    for m in (None, mask):
        ref, ref_maps = soft(x, m, return_maps=True)
        out, maps = nys(x, m, return_maps=True)
        torch.testing.assert_close(out[1], ref[1], atol=1e-8, rtol=0)
        torch.testing.assert_close(maps[1], ref_maps[1], atol=1e-8, rtol=0)
    ref, _ = soft(x)
    out, _ = nys(x)
    torch.testing.assert_close(out, ref, atol=1e-8, rtol=0)


def test_iterative_pinv_converges_to_the_moore_penrose_inverse():
    torch.manual_seed(0)
    a = (torch.randn(3, 8, 8, dtype=torch.float64) / 3).softmax(-1)      # softmax kernel matrices
    torch.testing.assert_close(A.iterative_pinv(a, 30), torch.linalg.pinv(a), atol=1e-8, rtol=1e-8)
    # the residual |Z A - I| falls at every step count (Nystromformer's default is 6)
    errs = [float((A.iterative_pinv(a, i) @ a - torch.eye(8, dtype=torch.float64)).abs().max())
            for i in (2, 6, 12, 20)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-6


def test_landmark_means_segment_means_and_masked_means():
    t = torch.arange(12.).reshape(1, 1, 12, 1)
    torch.testing.assert_close(A.landmark_means(t, 3).flatten(), torch.tensor([1.5, 5.5, 9.5]))
    torch.testing.assert_close(A.landmark_means(t, 12), t)
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, 10:] = True                           # last segment keeps tokens 8 and 9
    torch.testing.assert_close(A.landmark_means(t, 3, mask).flatten(), torch.tensor([1.5, 5.5, 8.5]))
    with pytest.raises(ValueError):
        A.landmark_means(t, 13)


def test_nystrom_error_falls_with_landmarks():
    torch.manual_seed(0)
    soft = A.SoftmaxAttention(16, 1).double()
    x = _x(1, 64, 16, dtype=torch.float64) * 0.5
    with torch.no_grad():
        _, ref = soft(x, return_maps=True)
    errs = []
    for m in (4, 16, 64):
        nys = A.NystromAttention(16, 1, num_landmarks=m, pinv="exact").double()
        _copy_qkv(soft, nys)
        with torch.no_grad():
            _, maps = nys(x, return_maps=True)
        errs.append(float((maps - ref).norm() / ref.norm()))
    assert errs[2] < 1e-8 and errs[0] > errs[2]


# ----------------------------------------------------------------------- Performer

def test_favor_features_are_an_unbiased_estimate_of_the_softmax_kernel():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 3, 4, generator=gen, dtype=torch.float64) * 0.5
    k = torch.randn(1, 1, 5, 4, generator=gen, dtype=torch.float64) * 0.5
    w = A.orthogonal_gaussian(200_000, 4, gen, orthogonal=False).double()
    # undo the stabilisers: compute exp(w x - |x|^2/2) / sqrt(m) without them
    phi = lambda t: torch.exp(t @ w.T - 0.5 * (t * t).sum(-1, keepdim=True)) / math.sqrt(w.shape[0])
    est = phi(q) @ phi(k).transpose(-1, -2)
    exact = torch.exp(q @ k.transpose(-1, -2))
    assert ((est - exact).abs() / exact).max() < 0.03


def test_orthogonal_features_have_orthogonal_directions_in_each_block():
    w = A.orthogonal_gaussian(8, 4, torch.Generator().manual_seed(0))
    block = w[:4] / w[:4].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(4), atol=1e-5, rtol=0)


def test_performer_approaches_softmax_attention_as_features_grow():
    torch.manual_seed(0)
    soft = A.SoftmaxAttention(16, 1).double()
    x = _x(1, 32, 16, dtype=torch.float64) * 0.5
    ref, _ = soft(x)
    errs = {}
    for m in (8, 4096):
        torch.manual_seed(1)
        perf = A.PerformerAttention(16, 1, num_features=m).double()
        _copy_qkv(soft, perf)
        out, _ = perf(x)
        errs[m] = float((out - ref).detach().norm() / ref.detach().norm())
    assert errs[4096] < 0.05 and errs[4096] < errs[8] / 3


def test_performer_features_are_fixed_until_redrawn():
    torch.manual_seed(0)
    perf = A.PerformerAttention(16, 2, num_features=8)
    x = _x()
    torch.testing.assert_close(perf(x)[0], perf(x)[0])
    before = perf.features.clone()
    perf.redraw_features(torch.Generator().manual_seed(5))
    assert not torch.equal(before, perf.features)
    assert "features" not in dict(perf.named_parameters())


# ----------------------------------------------------------------------- Linformer / linear

def test_linformer_with_identity_projections_is_exact_attention():
    torch.manual_seed(0)
    soft = A.SoftmaxAttention(16, 2).double()
    lin = A.LinformerAttention(16, 2, seq_len=12, k=12).double()
    _copy_qkv(soft, lin)
    with torch.no_grad():
        lin.E.copy_(torch.eye(12))
        lin.F.copy_(torch.eye(12))
    x = _x(dtype=torch.float64)
    torch.testing.assert_close(lin(x)[0], soft(x)[0], atol=1e-10, rtol=0)
    assert lin(x, return_maps=True)[1].shape == (2, 2, 12, 12)
    with pytest.raises(ValueError, match="built for 12 tokens"):
        lin(_x(2, 13, 16, dtype=torch.float64))


def test_linear_attention_equals_its_quadratic_form():
    torch.manual_seed(0)
    lin = A.LinearAttention(16, 2).double()
    x = _x(dtype=torch.float64)
    q, k, v = lin.qkv_heads(x)
    scores = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-1, -2)
    ref = lin.proj(A.merge_heads((scores / scores.sum(-1, keepdim=True)) @ v))
    out, maps = lin(x, return_maps=True)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 12, dtype=torch.float64))


# ----------------------------------------------------------------------- every variant

@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_shapes_gradients_and_padding_invariance(name):
    torch.manual_seed(0)
    attn = A.make_attention(name, 16, 2, **VARIANTS[name]).double()
    x, mask = _x(dtype=torch.float64).requires_grad_(True), _mask()
    out, maps = attn(x, mask)
    assert out.shape == x.shape and maps is None
    out.pow(2).sum().backward()
    for pname, p in attn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    # changing the content of padded tokens leaves every valid token's output unchanged
    x2 = x.detach().clone()
    x2[0, -3:] = 100 * torch.randn(3, 16, dtype=torch.float64)
    out2, _ = attn(x2, mask)
    torch.testing.assert_close(out2[0, :-3], out[0, :-3].detach(), atol=1e-9, rtol=0)
    torch.testing.assert_close(out2[1], out[1].detach(), atol=1e-9, rtol=0)


def test_padding_mask_shape_is_checked():
    attn = A.SoftmaxAttention(16, 2)
    with pytest.raises(ValueError, match="padding mask"):
        attn(_x(), torch.zeros(2, 5, dtype=torch.bool))


# ----------------------------------------------------------------------- registry

def test_registry_names_aliases_and_errors():
    assert {"softmax", "nystrom", "performer", "linformer", "linear"} <= set(A.available_attentions())
    assert isinstance(A.make_attention("MHA", 16, 2), A.SoftmaxAttention)
    assert isinstance(A.make_attention("nystromformer", 16, 2), A.NystromAttention)
    assert isinstance(A.make_attention(A.LinearAttention, 16, 2), A.LinearAttention)
    with pytest.raises(UnknownName, match="unknown attention 'flash'"):
        A.make_attention("flash", 16, 2)
    with pytest.raises(TypeError):
        A.make_attention("softmax", 16, 2, num_landmarks=4)          # a real typo is an error
    with pytest.raises(TypeError):
        A.make_attention(3, 16, 2)


def test_make_attention_passes_context_only_to_factories_that_take_it():
    soft = A.make_attention("softmax", 16, 2, seq_len=12, grid=(3, 4), num_prefix_tokens=0)
    assert isinstance(soft, A.SoftmaxAttention)
    lin = A.make_attention("linformer", 16, 2, seq_len=12, grid=(3, 4), k=4)
    assert lin.seq_len == 12 and lin.k == 4
    seen = {}

    def anything(dim, heads, **kw):
        seen.update(kw)
        return A.SoftmaxAttention(dim, heads)

    A.make_attention(anything, 16, 2, grid=(3, 4))
    assert seen == {"grid": (3, 4)}


def test_register_and_unregister_an_attention():
    def custom(dim, heads):
        return A.LinearAttention(dim, heads)

    A.register_attention("test_custom", custom, aliases=("test-alias",))
    try:
        assert isinstance(A.make_attention("TEST_ALIAS", 16, 2), A.LinearAttention)
        A.register_attention("test_custom", custom)                   # re-registering is fine
        with pytest.raises(ValueError, match="already registered"):
            A.register_attention("test_custom", A.SoftmaxAttention)
    finally:
        A.unregister_attention("test_custom")
    assert "test_custom" not in A.available_attentions()
    with pytest.raises(UnknownName):
        A.unregister_attention("test_custom")


# ----------------------------------------------------------------------- TinyViT

def _images(b=3, size=16, seed=0):
    return torch.randn(b, 1, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cls", [True, False])
def test_tiny_vit_shapes_layers_and_maps(cls):
    torch.manual_seed(0)
    vit = TinyViT(16, 4, 1, 10, dim=16, depth=3, heads=2, cls=cls)
    x = _images()
    assert vit(x).shape == (3, 10)
    logits, aux = vit(x, return_layers=True, return_attn=True)
    n = 16 + (1 if cls else 0)
    assert logits.shape == (3, 10) and aux["tokens"].shape == (3, n, 16)
    assert len(aux["layers"]) == 3 and all(t.shape == (3, n, 16) for t in aux["layers"])
    assert len(aux["attn"]) == 3 and all(m.shape == (3, 2, n, n) for m in aux["attn"])
    torch.testing.assert_close(logits, vit(x))
    assert vit.features(x).shape == (3, 16)
    # defaults set at construction
    logits2, aux2 = TinyViT(16, 4, 1, 10, dim=16, depth=1, heads=2, return_attn=True)(x)
    assert set(aux2) == {"tokens", "attn"}


def test_tiny_vit_gradients_reach_every_parameter():
    torch.manual_seed(0)
    vit = TinyViT(16, 4, 1, 10, dim=16, depth=2, heads=2)
    F.cross_entropy(vit(_images()), torch.tensor([0, 1, 2])).backward()
    for name, p in vit.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_tiny_vit_is_deterministic_for_a_seed():
    def run():
        torch.manual_seed(3)
        vit = TinyViT(16, 4, 1, 10, dim=16, depth=2, heads=2, attn="performer",
                      attn_kwargs={"num_features": 8})
        opt = torch.optim.AdamW(vit.parameters(), 1e-3)
        for i in range(3):
            loss = F.cross_entropy(vit(_images(seed=i)), torch.tensor([0, 1, 2]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return vit(_images(seed=9))
    torch.testing.assert_close(run(), run(), atol=0, rtol=0)


@pytest.mark.parametrize("attn,kw", [(name, VARIANTS[name]) for name in sorted(VARIANTS)])
@pytest.mark.parametrize("norm", ["layer", "batch_seq", "none"])
def test_tiny_vit_swaps_attention_and_norm_by_name(attn, kw, norm):
    torch.manual_seed(0)
    kw = {k: v for k, v in kw.items() if k != "seq_len"}             # the model passes seq_len itself
    vit = TinyViT(16, 4, 1, 5, dim=16, depth=1, heads=2, attn=attn, norm=norm, attn_kwargs=kw)
    assert vit(_images()).shape == (3, 5)
    block = vit.encoder.blocks[0]
    assert type(block.attn) is type(A.make_attention(attn, 16, 2, seq_len=17, **kw))
    expected = {"layer": LayerNorm, "batch_seq": "BatchNormSeq", "none": nn.Identity}[norm]
    name = expected if isinstance(expected, str) else expected.__name__
    assert type(block.norm1).__name__ == name


def test_tiny_vit_refuses_a_channel_first_norm_and_bad_sizes():
    with pytest.raises(ValueError, match="batch_seq"):
        TinyViT(16, 4, 1, 10, dim=16, depth=1, heads=2, norm="batch")
    with pytest.raises(ValueError, match="not divisible"):
        TinyViT(18, 4, 1, 10, dim=16, depth=1, heads=2)
    with pytest.raises(ValueError, match="built for"):
        TinyViT(16, 4, 1, 10, dim=16, depth=1, heads=2)(_images(size=20))
    with pytest.raises(ValueError, match="pool='cls' needs cls"):
        TinyViT(16, 4, 1, 10, dim=16, depth=1, heads=2, cls=False, pool="cls")


def test_tiny_vit_takes_a_registered_paper_norm_and_a_callable_attention():
    class ScaleNorm(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.g = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)

    register_norm("test_scale_norm", ScaleNorm, channels_last=True)
    try:
        vit = TinyViT(16, 4, 1, 10, dim=16, depth=1, heads=2, norm="test_scale_norm",
                      attn=lambda dim, heads, **kw: A.LinearAttention(dim, heads))
        assert isinstance(vit.encoder.blocks[0].norm1, ScaleNorm)
        assert isinstance(vit.encoder.blocks[0].attn, A.LinearAttention)
        assert vit(_images()).shape == (3, 10)
    finally:
        unregister_norm("test_scale_norm")


def test_post_norm_block_matches_its_equations():
    torch.manual_seed(0)
    block = TransformerBlock(16, 2, prenorm=False).eval()
    x = _x(dtype=torch.float32)
    a, _ = block.attn(x)
    h = block.norm1(x + a)
    ref = block.norm2(h + block.mlp(h))
    torch.testing.assert_close(block(x)[0], ref)
    pre = TransformerBlock(16, 2, prenorm=True).eval()
    a, _ = pre.attn(pre.norm1(x))
    h = x + a
    torch.testing.assert_close(pre(x)[0], h + pre.mlp(pre.norm2(h)))


# ----------------------------------------------------------------------- TokenTransformer

@pytest.mark.parametrize("attn,kw", [(name, {k: v for k, v in VARIANTS[name].items() if k != "seq_len"})
                                     for name in sorted(VARIANTS)])
@pytest.mark.parametrize("norm", ["layer", "batch_seq"])
def test_token_transformer_ignores_padded_tokens(attn, kw, norm):
    torch.manual_seed(0)
    model = TokenTransformer(6, 4, dim=16, depth=2, heads=2, attn=attn, norm=norm, max_len=12,
                             attn_kwargs=kw).double()
    model.train()                                   # batch_seq uses batch statistics here
    x = torch.randn(2, 10, 6, dtype=torch.float64)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 7:] = True
    out = model(x, mask)
    assert out.shape == (2, 4)
    x2 = x.clone()
    x2[0, 7:] = 50 * torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(model(x2, mask), out, atol=1e-8, rtol=0)


def test_token_transformer_shapes_pooling_and_errors():
    torch.manual_seed(0)
    model = TokenTransformer(6, 3, dim=16, depth=2, heads=2, max_len=8, cls=False)
    x = torch.randn(4, 8, 6)
    logits, aux = model(x, return_layers=True, return_attn=True)
    assert logits.shape == (4, 3) and len(aux["layers"]) == 2 and aux["attn"][0].shape == (4, 2, 8, 8)
    assert model(x[:, :5]).shape == (4, 3)           # shorter sequences use the first positions
    with pytest.raises(ValueError, match="at most 8 tokens"):
        model(torch.randn(4, 9, 6))
    with pytest.raises(ValueError, match=r"\(B, N, F\)"):
        model(torch.randn(4, 6))


def test_tiny_vit_init_options():
    torch.manual_seed(0)
    vit = TinyViT(16, 4, 1, 10, dim=64, depth=1, heads=2, init="vit")
    w, b = vit.encoder.blocks[0].mlp[0].weight.detach(), vit.encoder.blocks[0].mlp[0].bias.detach()
    assert abs(float(w.std()) - 0.02) < 0.003 and float(b.abs().max()) == 0
    torch_init = TinyViT(16, 4, 1, 10, dim=64, depth=1, heads=2, init="torch")
    w = torch_init.encoder.blocks[0].mlp[0].weight.detach()      # kaiming-uniform, bound 1/sqrt(64)
    assert float(w.abs().max()) <= 1 / 8 and float(w.std()) > 0.05
    with pytest.raises(ValueError, match="init must be"):
        TinyViT(16, 4, 1, 10, dim=16, depth=1, heads=2, init="xavier")
