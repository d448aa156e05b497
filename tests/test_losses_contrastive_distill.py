"""losses.contrastive / distill / imbalanced: equal to naive per-sample loops and known answers."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from replibook.losses import contrastive as C
from replibook.losses import distill as D
from replibook.losses import imbalanced as I


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_info_nce_in_batch_and_queue_equal_a_naive_loop():
    q, k, queue = _rand(6, 4, seed=1), _rand(6, 4, seed=2), _rand(9, 4, seed=3)
    tau = 0.3
    qn, kn, un = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    batch = [-(qn[i] @ kn[i] / tau - torch.logsumexp(qn[i] @ kn.T / tau, 0)) for i in range(6)]
    assert C.info_nce(q, k, tau=tau).item() == pytest.approx(torch.stack(batch).mean().item(), rel=1e-5)
    moco = []
    for i in range(6):
        logits = torch.cat([(qn[i] @ kn[i]).view(1), un @ qn[i]]) / tau
        moco.append(-(logits[0] - torch.logsumexp(logits, 0)))
    assert C.info_nce(q, k, queue=queue, tau=tau).item() == pytest.approx(torch.stack(moco).mean().item(), rel=1e-5)


def test_info_nce_is_low_for_matching_keys_and_scale_invariant():
    q = _rand(16, 8)
    assert C.info_nce(q, 3.0 * q, tau=0.05).item() < 0.01
    assert C.info_nce(q, _rand(16, 8, seed=5), tau=0.05).item() > 1.0
    with pytest.raises(ValueError):
        C.info_nce(q, q[:3])


def test_nt_xent_equals_the_simclr_definition():
    z1, z2, tau = _rand(5, 3, seed=1), _rand(5, 3, seed=2), 0.5
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    losses = []
    for a in range(10):
        p = (a + 5) % 10
        denom = torch.logsumexp(torch.stack([z[a] @ z[j] / tau for j in range(10) if j != a]), 0)
        losses.append(-(z[a] @ z[p] / tau - denom))
    assert C.nt_xent(z1, z2, tau).item() == pytest.approx(torch.stack(losses).mean().item(), rel=1e-5)


def test_supcon_equals_naive_loop_and_skips_anchors_without_positives():
    z, y, tau = _rand(7, 4, seed=3), torch.tensor([0, 0, 1, 1, 1, 2, 3]), 0.2
    zn = F.normalize(z, dim=1)
    terms = []
    for i in range(7):
        pos = [p for p in range(7) if p != i and y[p] == y[i]]
        if not pos:
            continue
        denom = torch.logsumexp(torch.stack([zn[i] @ zn[a] / tau for a in range(7) if a != i]), 0)
        terms.append(-torch.stack([zn[i] @ zn[p] / tau - denom for p in pos]).mean())
    assert C.supcon(z, y, tau).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    zero = C.supcon(z[:3], torch.tensor([0, 1, 2]))
    assert zero.item() == 0.0


def test_supcon_prefers_label_clusters():
    y = torch.arange(4).repeat_interleave(5)
    centres = torch.eye(4) * 5
    clustered = centres[y] + 0.1 * _rand(20, 4)
    assert C.supcon(clustered, y).item() < C.supcon(_rand(20, 4, seed=9), y).item()


def test_spectral_equals_its_definition_and_rejects_one_pair():
    z1, z2 = _rand(4, 3, seed=1), _rand(4, 3, seed=2)
    pos = sum(z1[i] @ z2[i] for i in range(4)) / 4
    neg = sum((z1[i] @ z2[j]) ** 2 for i in range(4) for j in range(4) if i != j) / 12
    assert C.spectral(z1, z2).item() == pytest.approx((-2 * pos + neg).item(), rel=1e-5)
    with pytest.raises(ValueError):
        C.spectral(z1[:1], z2[:1])


def test_pair_masks_window_and_diagonal():
    pos, neg = C.pair_masks(torch.tensor([0.0, 0.5, 2.0]), window=0.5)
    assert pos.tolist() == [[False, True, False], [True, False, False], [False, False, False]]
    assert neg.tolist() == [[False, False, True], [False, False, True], [True, True, False]]
    pos0, _ = C.pair_masks(torch.tensor([1, 1, 2]))
    assert pos0.sum().item() == 2 and not pos0.diagonal().any()


def test_kd_kl_equals_t_squared_kl_and_vanishes_for_equal_logits():
    s, t, T = _rand(8, 5, seed=1), _rand(8, 5, seed=2), 3.0
    pt, ps = torch.softmax(t / T, 1), torch.softmax(s / T, 1)
    ref = (pt * (pt.log() - ps.log())).sum(1).mean() * T * T
    assert D.kd_kl(s, t, T).item() == pytest.approx(ref.item(), rel=1e-5)
    assert D.kd_kl(t, t, T).item() == pytest.approx(0.0, abs=1e-6)
    s.requires_grad_(True)
    t.requires_grad_(True)
    D.kd_kl(s, t, T).backward()
    assert s.grad is not None and t.grad is None
    with pytest.raises(ValueError):
        D.kd_kl(s, t, 0.0)


def test_soft_ce_reduces_to_cross_entropy_for_one_hot_targets():
    s, y = _rand(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    assert D.soft_ce(s, F.one_hot(y, 4).float()).item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)


def test_feature_kinds():
    s, t = torch.zeros(2, 3), torch.ones(2, 3)
    assert D.feature(s, t, "l2").item() == pytest.approx(1.0)
    assert D.feature(s, 3 * t, "l1").item() == pytest.approx(3.0)
    assert D.feature(s, 3 * t, "smoothl1").item() == pytest.approx(2.5)
    assert D.feature(t, 2 * t, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert D.feature(t, -t, "cosine").item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        D.feature(s, t[:, :2])
    with pytest.raises(ValueError):
        D.feature(s, t, "l3")


def test_logit_adjust_shifts_by_the_log_prior_both_ways():
    logits, counts = torch.zeros(2, 3), [10, 30, 60]
    out = I.logit_adjust(logits, counts, tau=2.0)
    assert torch.allclose(out[0], 2.0 * torch.log(torch.tensor([0.1, 0.3, 0.6])))
    assert torch.allclose(I.logit_adjust(out, counts, tau=2.0, posthoc=True), logits, atol=1e-6)
    with pytest.raises(ValueError):
        I.logit_adjust(logits, [1, 2])


def test_lds_weights_flat_for_uniform_labels_and_larger_in_sparse_bins():
    edges = np.arange(0, 21)
    uniform = torch.arange(20).repeat(10).float() + 0.5
    w = I.lds_weights(uniform, edges, ks=5, sigma=2)
    inner = w[(uniform > 3) & (uniform < 17)]
    assert torch.allclose(inner, inner[0].expand_as(inner), atol=1e-6)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
    skew = torch.cat([torch.full((200,), 2.5), torch.full((10,), 15.5)])
    ws = I.lds_weights(skew, edges)
    assert ws[-1] > ws[0] * 3
    # power 1 on a 4:1 split with no smoothing overlap gives a 4:1 weight ratio
    w1 = I.lds_weights(torch.tensor([0.5] * 4 + [10.5]), edges, ks=1, power=1.0)
    assert (w1[-1] / w1[0]).item() == pytest.approx(4.0)


def test_balanced_mse_equals_its_definition_and_grows_with_error():
    p, t, var = _rand(6, seed=1), _rand(6, seed=2), 0.7
    terms = []
    for i in range(6):
        logits = torch.stack([-(p[i] - t[j]) ** 2 / (2 * var) for j in range(6)])
        terms.append(-(logits[i] - torch.logsumexp(logits, 0)))
    assert I.balanced_mse(p, t, var).item() == pytest.approx((torch.stack(terms).mean() * 2 * var).item(), rel=1e-5)
    assert I.balanced_mse(t, t, 0.1).item() < I.balanced_mse(t + 1.0, t, 0.1).item()
    assert math.isfinite(I.balanced_mse(p.view(-1, 1), t.view(-1, 1), torch.tensor(0.5)).item())


def test_lds_weights_follow_the_dir_code_order_sqrt_then_smooth_then_invert():
    edges = np.arange(0, 11)
    y = torch.tensor([0.5] * 16 + [1.5] * 4 + [5.5] * 9)
    k = I._kernel("gaussian", 3, 1.0)
    counts = np.histogram(y.numpy(), bins=edges)[0].astype(float)
    smooth = np.convolve(np.sqrt(counts), k, mode="same")
    expected = 1.0 / smooth[np.searchsorted(edges, y.numpy(), side="right") - 1]
    expected = expected * len(expected) / expected.sum()
    got = I.lds_weights(y, edges, sigma=1.0, ks=3)
    assert np.allclose(got.numpy(), expected, rtol=1e-6)
