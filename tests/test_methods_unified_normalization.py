"""Tests of `replibook.methods.unified_normalization` (chapter unified-normalization)."""
import numpy as np
import pytest
import torch
from torch import nn

from replibook.claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, M, Greater
from replibook.methods import unified_normalization as U
from replibook.models import norm as N


# ----------------------------------------------------------------- a direct computation

def reference_un(xs, gys, gamma, beta, W, warmup, filt, comp_start, eps=1e-5, m=0.9):
    """UN written out per step in float64 NumPy, from the paper's Sec. 4 and the official
    UN2dFunction: returns per-step outputs, input gradients, running variance, skip flags."""
    C = xs[0].shape[-1]
    run_var, ema = np.ones(C), np.zeros(C)
    bx2, bgz = np.zeros((W, C)), np.zeros((W, C))
    outs, grads, run_vars, skips = [], [], [], []
    for t, (x, gy) in enumerate(zip(xs, gys), start=1):
        x2 = (x ** 2).reshape(-1, C).mean(0)
        recorded = np.var(np.sqrt(bx2), ddof=1)
        bx2[t % W] = x2
        skip = False
        if filt and t >= warmup:
            am = bx2.mean(0)
            gm = np.exp(np.log(bx2).mean(0))
            if np.any(am - gm > W * recorded):
                bx2[t % W] = run_var
                skip = True
        var = x2 if (t <= W or t < warmup or skip) else np.exp(np.log(bx2).mean(0))
        if t <= max(comp_start, warmup) or skip:
            r = np.ones(C)
        else:
            r = np.clip(np.sqrt(var + eps) / np.sqrt(run_var + eps), 0.2, 5.0)
        z = x / np.sqrt(var + eps)
        outs.append(gamma * z + beta)
        run_var = m * run_var + (1 - m) * var
        g = gy * gamma * r
        gz = (g * z).reshape(-1, C).mean(0)
        bgz[t % W] = ema if skip else gz
        mean_gz = gz if (t <= W or t < warmup or skip) else bgz.mean(0)
        ema = m * ema + (1 - m) * mean_gz
        grads.append((g - (mean_gz if skip else ema) * z) / np.sqrt(var + eps))
        run_vars.append(run_var.copy())
        skips.append(skip)
    return outs, grads, run_vars, skips


def _batches(steps, outlier_at=None, seed=0, shape=(16, 16, 6)):
    rng = np.random.default_rng(seed)
    scales = 1.0 + 0.5 * rng.random(shape[-1])
    xs, gys = [], []
    for t in range(1, steps + 1):
        x = rng.standard_normal(shape) * scales
        if t == outlier_at:
            x = x * 30.0
        xs.append(x)
        gys.append(rng.standard_normal(shape))
    return xs, gys


@pytest.mark.parametrize("filt", [True, False])
def test_un_matches_direct_computation(filt):
    W, warmup, comp = 3, 4, 6
    xs, gys = _batches(14, outlier_at=10)
    rng = np.random.default_rng(1)
    gamma, beta = 1 + 0.3 * rng.standard_normal(6), 0.1 * rng.standard_normal(6)
    ref_out, ref_grad, ref_rv, ref_skip = reference_un(xs, gys, gamma, beta, W, warmup, filt, comp)
    un = U.UnifiedNorm(6, window_size=W, warmup_iters=warmup, outlier_filtration=filt,
                       compensation_start=comp).double().train()
    with torch.no_grad():
        un.weight.copy_(torch.from_numpy(gamma))
        un.bias.copy_(torch.from_numpy(beta))
    for t, (x, gy) in enumerate(zip(xs, gys)):
        xt = torch.from_numpy(x).requires_grad_(True)
        y = un(xt)
        y.backward(torch.from_numpy(gy))
        np.testing.assert_allclose(y.detach().numpy(), ref_out[t], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(xt.grad.numpy(), ref_grad[t], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(un.running_var.numpy(), ref_rv[t], rtol=1e-10)
    assert int(un.skip_counter) == sum(ref_skip)
    # the x30 batch is flagged as an outlier only when filtration is on; nothing before it is
    assert ref_skip[9] is filt and not any(ref_skip[:9])
    assert filt or not any(ref_skip)


def test_un_uses_geometric_mean_of_window_after_warmup():
    un = U.UnifiedNorm(3, window_size=4, warmup_iters=0, compensation_start=0).double()
    stats = []
    for k in range(6):
        x = torch.randn(8, 7, 3, dtype=torch.float64) * (1 + k)
        stats.append((x ** 2).mean((0, 1)))
        y = un(x)
    gm = torch.exp(torch.log(torch.stack(stats[-4:])).mean(0))     # window of the last 4 x2_t
    torch.testing.assert_close(y, x / torch.sqrt(gm + un.eps) * un.weight + un.bias)


def test_gradcheck_exact_without_smoothing():
    # W = 1: no window, r = 1, backward uses the current gz -> the exact gradient
    torch.manual_seed(0)
    un = U.UnifiedNorm(4, window_size=1, warmup_iters=0).double()
    with torch.no_grad():
        un.weight.uniform_(0.5, 1.5)
        un.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 3:] = True
    mask[2, 1:] = True
    assert torch.autograd.gradcheck(lambda v: un(v), (x,))
    assert torch.autograd.gradcheck(lambda v: un(v, mask), (x,))
    # parameter gradients against autograd of the direct formula
    x_ = x.detach()
    y = un(x_, mask)
    gy = torch.randn_like(y)
    gw, gb = torch.autograd.grad(y, (un.weight, un.bias), gy)
    valid = (~mask).unsqueeze(-1).double()
    var = (x_ ** 2 * valid).sum((0, 1)) / valid.sum()
    w, b = un.weight.detach().requires_grad_(), un.bias.detach().requires_grad_()
    ref = x_ / torch.sqrt(var + un.eps) * w + b
    rw, rb = torch.autograd.grad(ref, (w, b), gy)
    torch.testing.assert_close(gw, rw)
    torch.testing.assert_close(gb, rb)


def test_padding_does_not_change_statistics():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 5)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, 4:] = True
    a = U.UnifiedNorm(5, warmup_iters=0)
    b = U.UnifiedNorm(5, warmup_iters=0)
    x_noisy = x.clone()
    x_noisy[mask] = 1e3                       # garbage in the padding
    for _ in range(3):
        ya, yb = a(x, mask), b(x_noisy, mask)
    torch.testing.assert_close(ya[~mask], yb[~mask])
    torch.testing.assert_close(a.running_var, b.running_var)
    # the same as normalising only the valid tokens
    c = U.UnifiedNorm(5, warmup_iters=0)
    for _ in range(3):
        yc = c(x[:, :4])
    torch.testing.assert_close(ya[:, :4], yc)


def test_eval_mode_is_affine_and_2d_input():
    un = U.UnifiedNorm(4, warmup_iters=0)
    for _ in range(5):
        un(torch.randn(2, 3, 4) * 3)
    un.eval()
    x = torch.randn(7, 4)
    expected = un.weight * x / torch.sqrt(un.running_var + un.eps) + un.bias
    torch.testing.assert_close(un(x), expected)
    assert un(torch.randn(2, 3, 4)).shape == (2, 3, 4)
    with pytest.raises(ValueError):
        un(torch.randn(2, 3, 5))


def test_registry_and_validation():
    layer = N.make_norm("unified", 8, window_size=2, warmup_iters=10)
    assert isinstance(layer, U.UnifiedNorm) and layer.fp_window == 2 and layer.warmup_iters == 10
    assert isinstance(N.make_norm("UN", 8), U.UnifiedNorm)
    assert N.is_channels_last("unified")
    import importlib
    importlib.reload(U)                       # re-registering on reload is allowed
    with pytest.raises(ValueError):
        U.UnifiedNorm(4, window_size=0)
    un = U.UnifiedNorm(4)
    with pytest.raises(ValueError):
        un(torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))   # all padding


def test_trace_records_statistics():
    un = U.UnifiedNorm(3, warmup_iters=2)
    un.trace = []
    for _ in range(4):
        un(torch.randn(2, 5, 3))
    assert [r["iter"] for r in un.trace] == [1, 2, 3, 4]
    assert un.trace[0]["x2"].shape == (3,) and not un.trace[0]["skip"]


# ------------------------------------------------------------------------------ folding

def test_fold_affine_into_linear():
    torch.manual_seed(0)
    lin = nn.Linear(6, 3)
    scale, shift = torch.rand(6) + 0.5, torch.randn(6)
    folded = U.fold_affine_into_linear(scale, shift, lin)
    x = torch.randn(10, 4, 6)
    torch.testing.assert_close(folded(x), lin(scale * x + shift), atol=1e-5, rtol=0)
    nobias = nn.Linear(6, 3, bias=False)
    torch.testing.assert_close(U.fold_affine_into_linear(scale, shift, nobias)(x),
                               nobias(scale * x + shift), atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        U.fold_affine_into_linear(torch.ones(5), torch.zeros(5), lin)


class _PreNormNet(nn.Module):
    """A minimal pre-norm token classifier: attention-free mixing, MLP, final norm + CLS head."""

    def __init__(self, norm="unified", dim=8, **kw):
        super().__init__()
        self.embed = nn.Linear(3, dim)
        self.norm1 = N.make_norm(norm, dim, **kw)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = N.make_norm(norm, dim, **kw)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.norm = N.make_norm(norm, dim, **kw)
        self.head = nn.Linear(dim, 4)

    def forward(self, x, padding_mask=None):
        h = self.embed(x)
        q, k, v = self.qkv(self.norm1(h, padding_mask)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(1, 2) / 8 ** 0.5, dim=-1)
        h = h + self.proj(att @ v)
        h = h + self.fc2(torch.relu(self.fc1(self.norm2(h, padding_mask))))
        return self.head(self.norm(h, padding_mask)[:, 0])


@pytest.mark.parametrize("norm", ["unified", "batch_seq"])
def test_fold_norms_agrees_with_unfolded(norm):
    torch.manual_seed(0)
    kw = dict(warmup_iters=2) if norm == "unified" else {}
    net = _PreNormNet(norm, **kw)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(8):                                    # non-trivial running statistics
        loss = net(torch.randn(16, 5, 3) * 2 + 0.5).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    example = torch.randn(4, 5, 3)
    folded, report = U.fold_norms(net, example)
    assert report["folded"] == {"norm1": ["qkv"], "norm2": ["fc1"]}
    assert report["affine_only"] == ["norm"]
    assert isinstance(folded.norm1, U.FoldedAway) and isinstance(folded.norm, U.ChannelAffine)
    assert not any(isinstance(m, (U.UnifiedNorm, N.BatchNormSeq)) for m in folded.modules())
    x = torch.randn(32, 5, 3) * 3
    mask = torch.zeros(32, 5, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(folded(x, mask), net(x, mask), atol=1e-5, rtol=0)
    assert not isinstance(net.norm1, U.FoldedAway)                       # original untouched


def test_fold_norms_refuses_when_outputs_would_change():
    class Bad(nn.Module):                 # the norm output also feeds the residual stream
        def __init__(self):
            super().__init__()
            self.norm = U.UnifiedNorm(4)
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = self.norm(x)
            return h + self.fc(h)

    net = Bad()
    with torch.no_grad():
        net.norm.running_var.fill_(4.0)
    with pytest.raises(RuntimeError):
        U.fold_norms(net, torch.randn(2, 3, 4))
    with pytest.raises(TypeError):
        U.norm_affine(nn.LayerNorm(4))


def test_fold_tinyvit_if_available():
    vit = pytest.importorskip("replibook.models.vit")
    torch.manual_seed(0)
    try:
        model = vit.TinyViT(img_size=8, patch=2, in_chans=1, num_classes=10, dim=16, depth=2,
                            heads=2, norm="unified")
    except TypeError as exc:                                     # pragma: no cover
        pytest.skip(f"TinyViT signature differs: {exc}")
    for m in model.modules():
        if isinstance(m, U.UnifiedNorm):
            with torch.no_grad():
                m.running_var.uniform_(0.5, 3.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.randn(6, 1, 8, 8)
    folded, report = U.fold_norms(model, x)
    assert len(report["folded"]) >= 2
    with torch.no_grad():
        x_new = torch.randn(5, 1, 8, 8)
        torch.testing.assert_close(folded(x_new), model(x_new), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------- data

def test_random_crops():
    x = torch.arange(2 * 10 * 4, dtype=torch.float32).reshape(2, 10, 4).repeat(50, 1, 1)
    out, mask = U.random_crops(x, (6, 10), seed=3)
    lengths = (~mask).sum(1)
    assert lengths.min() >= 6 and lengths.max() <= 10 and len(set(lengths.tolist())) > 2
    for i in range(len(x)):
        n = int(lengths[i])
        assert torch.all(out[i, n:] == 0) and torch.all(mask[i, n:]) and not mask[i, :n].any()
        start = int((out[i, 0, 0] - x[i, 0, 0]) // 4)          # tokens step by 4 in this x
        torch.testing.assert_close(out[i, :n], x[i, start:start + n])
    out2, mask2 = U.random_crops(x, (6, 10), seed=3)
    assert torch.equal(out, out2) and torch.equal(mask, mask2)
    with pytest.raises(ValueError):
        U.random_crops(x, (0, 11))


# ------------------------------------------------------------------- experiment glue

def test_token_transformer_un_ignores_padding_content():
    from replibook.models.vit import TokenTransformer
    torch.manual_seed(0)
    model = TokenTransformer(in_dim=4, num_classes=3, dim=16, depth=2, heads=2, norm="unified",
                             max_len=6, norm_kwargs=dict(warmup_iters=0, window_size=2))
    twin = TokenTransformer(in_dim=4, num_classes=3, dim=16, depth=2, heads=2, norm="unified",
                            max_len=6, norm_kwargs=dict(warmup_iters=0, window_size=2))
    twin.load_state_dict(model.state_dict())
    x = torch.randn(8, 6, 4)
    mask = torch.zeros(8, 6, dtype=torch.bool)
    mask[::2, 4:] = True
    x_garbage = x.clone()
    x_garbage[mask] = 50.0
    for _ in range(3):                                  # training mode: batch statistics
        a, b = model(x, mask), twin(x_garbage, mask)
        torch.testing.assert_close(a, b)
    assert len(U.un_modules(model)) == 5 and int(U.un_modules(model)[0].iters) == 3
    folded, report = U.fold_norms(model, x, mask)
    assert len(report["folded"]) == 4 and report["max_abs_err"] < 1e-5


def test_train_token_model_is_deterministic_and_collapse_rule():
    task = U.load_token_data("digits", device="cpu")
    assert task.kind == "image" and task.data.train.x.shape[1:] == (1, 8, 8)
    arms = U.arm_norms(warmup_iters=2, compensation_start=3)
    norm, kw = arms["UN"]
    kw_small = dict(dim=16, depth=1, heads=2, mlp_ratio=2.0, steps=6, batch_size=32, lr=1e-3,
                    weight_decay=0.05, eval_every=3, seed=1, device="cpu", trace_layer=0)
    m1, h1 = U.train_token_model(task, norm, kw, **kw_small)
    m2, h2 = U.train_token_model(task, norm, kw, **kw_small)
    assert h1.metrics["test_acc"] == h2.metrics["test_acc"] and h1.steps == [0, 3, 6]
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    trace = m1.encoder.blocks[0].norm1.trace
    assert [r["iter"] for r in trace] == list(range(1, 7))
    assert not U.collapsed(h1, chance_floor=0.0)
    h1.train_loss[-1] = float("nan")
    assert U.collapsed(h1, chance_floor=0.0)
    h2.metrics["test_acc"][-1] = 0.1
    assert U.collapsed(h2)
    res = U.latency(m1, task.data.test.x[:16], forwards=2, repeats=2, warmup=0)
    assert len(res["times_ms"]) == 2 and res["ms_per_batch"] > 0
    both = U.latency({"a": m1, "b": m2}, task.data.test.x[:16], forwards=1, repeats=3)
    assert set(both) == {"a", "b"} and all(len(v["times_ms"]) == 3 for v in both.values())
    assert both["a"]["ms_per_batch"] == float(np.median(both["a"]["times_ms"]))
    with pytest.raises(ValueError):
        U.load_token_data("imagenet")
