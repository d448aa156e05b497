"""Tests of the MRDD method module (masked cross-view prediction, distilled disentangling)."""
import pytest
import torch

from replibook.losses.vae import kl_normal
from replibook.methods import mrdd_distilled_disentangling as T


def views(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 16, 16, generator=g)
    return [base, (base > 0.5).float()]


def test_consistency_ae_shapes_and_shared_encoder():
    m = T.ConsistencyAE(2, 1, 16, c_dim=6, widths=(8, 16, 32), fc=32)
    xs = views()
    mu, logvar = m.encode(xs)
    assert mu.shape == (32, 6) and logvar.shape == (32, 6)
    outs = m.decode(mu)
    assert len(outs) == 2 and all(o.shape == (32, 1, 16, 16) for o in outs)
    # one conv stack serves every view; the linear layer sees the views concatenated
    assert m.to_c.in_features == 2 * 32 * 2 * 2
    swapped = m.encode([xs[1], xs[0]])[0]
    assert not torch.allclose(swapped, mu)          # view order matters (concatenation)


def test_mcp_loss_without_masking_is_the_multiview_elbo():
    m = T.ConsistencyAE(2, 1, 16, c_dim=4, widths=(8, 16, 32), fc=32)
    xs = views()
    torch.manual_seed(0)
    loss = T.mcp_loss(m, xs, ratio=0.0, generator=torch.Generator())
    torch.manual_seed(0)
    mu, logvar = m.encode(xs)
    c = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape)
    ref = sum(((o - x) ** 2).flatten(1).sum(1) for o, x in zip(m.decode(c), xs)) + kl_normal(mu, logvar)
    assert loss.item() == pytest.approx(ref.mean().item(), rel=1e-5)


def test_mcp_masks_each_view_independently_and_targets_the_full_views(monkeypatch):
    seen = []
    real = T.patch_mask

    def spy(x, ratio, patch, generator=None):
        out, mask = real(x, ratio, patch, generator=generator)
        seen.append(mask)
        return out, mask
    monkeypatch.setattr(T, "patch_mask", spy)
    m = T.ConsistencyAE(2, 1, 16, c_dim=4, widths=(8, 16, 32), fc=32)
    same = torch.rand(8, 1, 16, 16)
    T.mcp_loss(m, [same, same.clone()], ratio=0.7, patch=2, generator=torch.Generator().manual_seed(0))
    assert len(seen) == 2 and not torch.equal(seen[0], seen[1])
    assert (seen[0].flatten(1).sum(1) == int(0.7 * 64)).all()
    # fully masked inputs: the code no longer depends on the images, the loss still does
    torch.manual_seed(1)
    a = T.mcp_loss(m, [same, same], ratio=1.0)
    torch.manual_seed(1)
    b = T.mcp_loss(m, [same * 0.5, same * 0.5], ratio=1.0)
    assert a.item() != pytest.approx(b.item())
    with torch.no_grad():
        assert torch.equal(m.encode([torch.zeros_like(same)] * 2)[0],
                           m.encode([real(same, 1.0, 2)[0]] * 2)[0])


def test_frozen_club_bound_reaches_the_code_only():
    club = T.CLUB(3, 2, hidden=8)
    v = torch.randn(16, 3, requires_grad=True)
    c = torch.randn(16, 2)
    T.frozen_club_bound(club, v, c, torch.Generator().manual_seed(0)).backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert all(p.grad is None for p in club.parameters())
    ref = club.upper_bound(v.detach(), c, generator=torch.Generator().manual_seed(0))
    again = T.frozen_club_bound(club, v.detach(), c, torch.Generator().manual_seed(0))
    assert again.item() == pytest.approx(ref.item(), abs=1e-6)


def grads_after(alpha, seed=0):
    torch.manual_seed(seed)
    model = T.ViewSpecificModel(2, 1, 16, v_dim=3, c_dim=4, widths=(8, 16, 32), fc=32, club_hidden=8)
    xs = views(16)
    c = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    T.dd_loss(model, xs, c, alpha=alpha, generator=torch.Generator().manual_seed(2)).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def test_dd_loss_separates_the_two_objectives():
    with_dd, without = grads_after(0.5), grads_after(0.0)
    club_keys = [k for k in with_dd if k.startswith("clubs.")]
    enc_keys = [k for k in with_dd if ".encoder." in k]
    dec_keys = [k for k in with_dd if ".decoder." in k]
    assert club_keys and enc_keys and dec_keys
    # the CLUB nets see only their likelihood: same gradient whatever alpha
    assert all(torch.allclose(with_dd[k], without[k]) for k in club_keys)
    # the encoders see the bound; the decoders (given the same samples) do not
    assert any(not torch.allclose(with_dd[k], without[k]) for k in enc_keys)
    assert all(torch.allclose(with_dd[k], without[k], atol=1e-6) for k in dec_keys)


def test_decoder_reads_the_consistent_code():
    torch.manual_seed(0)
    model = T.ViewSpecificModel(2, 1, 16, v_dim=3, c_dim=4, widths=(8, 16, 32), fc=32)
    xs = views(16)
    c = torch.randn(16, 4)
    torch.manual_seed(3)
    a = T.dd_loss(model, xs, c, alpha=0.0)
    torch.manual_seed(3)
    b = T.dd_loss(model, xs, c + 1.0, alpha=0.0)
    assert a.item() != pytest.approx(b.item())


def test_training_is_deterministic_and_reduces_the_losses():
    xs = views(64, seed=1)
    kw = dict(c_dim=4, ratio=0.5, steps=12, batch_size=32, widths=(8, 16, 32), fc=32, seed=3,
              device="cpu", lr=3e-3)
    m1, m2 = T.train_consistency(xs, **kw), T.train_consistency(xs, **kw)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    fresh = T.ConsistencyAE(2, 1, 16, 4, (8, 16, 32), 32)
    torch.manual_seed(0)
    before = T.mcp_loss(fresh, xs, 0.0).item()
    torch.manual_seed(0)
    after = T.mcp_loss(m1, xs, 0.0).item()
    assert after < before
    c = T.consistent_code(m1, xs)
    assert c.shape == (64, 4) and torch.equal(c, T.consistent_code(m1, xs))     # posterior mean
    s = T.train_disentangling(xs, c, v_dim=3, alpha=0.05, steps=6, batch_size=32,
                              widths=(8, 16, 32), fc=32, club_hidden=8, seed=0, device="cpu")
    v = T.specific_codes(s, xs)
    assert len(v) == 2 and v[0].shape == (64, 3) and torch.isfinite(v[1]).all()


def test_evaluation_helpers_known_answers():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 4
    f = torch.nn.functional.one_hot(y, 4).float() * 5 + 0.1 * torch.randn(400, 4, generator=g)
    out = T.evaluate_features(f[:300], y[:300], f[300:], y[300:])
    assert out["probe_acc"] == 1.0 and out["cluster_acc"] == 1.0 and out["nmi"] == pytest.approx(1.0)
    c = torch.randn(2000, 3, generator=g)
    assert T.redundancy(c[:1500], c[:1500], c[1500:], c[1500:], steps=200) > 1.0   # v = c
    other = torch.randn(2000, 3, generator=g)
    assert abs(T.redundancy(other[:1500], c[:1500], other[1500:], c[1500:], steps=200)) < 0.1
    nuis = {"a": c[:, 0], "b": 2 * c[:, 1]}
    r2 = T.nuisance_r2(c[:1500], {k: v[:1500] for k, v in nuis.items()}, c[1500:],
                       {k: v[1500:] for k, v in nuis.items()}, ["a", "b"])
    assert r2 == pytest.approx(1.0, abs=1e-3)
