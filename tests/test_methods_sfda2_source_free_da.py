"""SF(DA)^2: SNC / IFA / FD / SHOT-IM losses against direct (loop) forms of the official code,
the feature bank, the adaptation loop (which parameters move) and the calibration rule."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from replibook.methods import sfda2_source_free_da as S


def probs(b, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g).mul(2).softmax(1)


# --------------------------------------------------------------------------- SNC

def test_snc_pos_equals_official_kl_div_on_probabilities():
    p, s = probs(6, 5), probs(6 * 3, 5, seed=1).view(6, 3, 5)
    official = F.kl_div(p[:, None, :].expand(-1, 3, -1), s, reduction="none").sum(-1).sum(1).mean()
    torch.testing.assert_close(S.snc_pos(p, s), official)


def test_snc_pos_gradient_is_minus_neighbour_scores():
    p = probs(4, 3).requires_grad_(True)
    s = probs(8, 3, seed=2).view(4, 2, 3)
    S.snc_pos(p, s).backward()
    torch.testing.assert_close(p.grad, -s.sum(1) / 4)


def test_snc_neg_equals_loop():
    p = probs(5, 4)
    ref = sum(float(p[i] @ p[j]) ** 2 for i in range(5) for j in range(5) if i != j) / 5
    assert S.snc_neg(p).item() == pytest.approx(ref, rel=1e-5)
    onehot = torch.eye(4)                      # orthogonal predictions: no repulsion
    assert S.snc_neg(onehot).item() == 0.0


# --------------------------------------------------------------------------- IFA

def ifa_loop(w, logits, cov, ratio):
    """The official per-class loop (tar_adaptation.py IFA), written out sample by sample."""
    n, c = logits.shape
    pseudo = logits.argmax(1)
    total = torch.zeros(n, dtype=logits.dtype)
    for i in range(n):
        sig = cov[pseudo[i]]
        for k in range(c):
            aug = torch.stack([logits[i, j] + 0.5 * ratio * (w[j] - w[k]) @ sig @ (w[j] - w[k])
                               for j in range(c)])
            total[i] += 2 * F.cross_entropy(aug[None], torch.tensor([k]))
    return total.mean()


def test_ifa_matches_loop_and_reduces_to_plain_ce_without_covariance():
    g = torch.Generator().manual_seed(0)
    n, c, d = 5, 4, 3
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64)
    a = torch.randn(c, d, d, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(1, 2)
    torch.testing.assert_close(S.ifa_loss(w, logits, cov, 0.7), ifa_loop(w, logits, cov, 0.7))
    plain = sum(2 * F.cross_entropy(logits, torch.full((n,), k)) for k in range(c))
    torch.testing.assert_close(S.ifa_loss(w, logits, torch.zeros(c, d, d, dtype=torch.float64), 3.0), plain)


def test_ifa_grows_with_ratio():
    g = torch.Generator().manual_seed(1)
    w, logits = torch.randn(3, 4, generator=g), torch.randn(6, 3, generator=g)
    cov = torch.eye(4).expand(3, 4, 4)
    vals = [S.ifa_loss(w, logits, cov, r).item() for r in (0.0, 1.0, 5.0)]
    assert vals[0] < vals[1] < vals[2]


# --------------------------------------------------------------------------- FD

def test_fd_zero_for_identical_covariances_and_matches_formula():
    c, d = 3, 2
    cov = torch.eye(d).expand(c, d, d).clone()
    scores, pseudo = probs(12, c), torch.arange(12) % c
    assert S.fd_loss(cov, scores, pseudo).item() == pytest.approx(0.0, abs=1e-6)
    cov = torch.stack([torch.diag(torch.tensor([1.0, 0.0])), torch.diag(torch.tensor([0.0, 1.0])),
                       torch.diag(torch.tensor([1.0, 1.0]))])
    m = torch.stack([scores[pseudo == k].mean(0) for k in range(c)])
    wts = m @ m.t()
    cosd = torch.tensor([[0.0, 1.0, 1 - 1 / math.sqrt(2)], [1.0, 0.0, 1 - 1 / math.sqrt(2)],
                         [1 - 1 / math.sqrt(2), 1 - 1 / math.sqrt(2), 0.0]])
    ref = -(wts * cosd).sum() / 2
    torch.testing.assert_close(S.fd_loss(cov, scores, pseudo), ref)


def test_fd_handles_empty_class_and_only_covariances_get_gradient():
    cov = torch.rand(3, 2, 2).requires_grad_(True)
    scores = probs(6, 3).requires_grad_(True)
    pseudo = torch.tensor([0, 0, 1, 1, 0, 1])      # class 2 empty
    loss = S.fd_loss(cov, scores, pseudo)
    assert torch.isfinite(loss)
    loss.backward()
    assert cov.grad is not None and cov.grad.abs().sum() > 0
    assert scores.grad is None or scores.grad.abs().sum() == 0


# --------------------------------------------------------------------------- SHOT-IM

def test_shot_im_extremes():
    c = 5
    confident_diverse = torch.eye(c) * 50
    assert S.shot_im(confident_diverse).item() == pytest.approx(-math.log(c), abs=1e-3)
    uniform = torch.zeros(4, c)
    assert S.shot_im(uniform).item() == pytest.approx(0.0, abs=1e-4)
    collapsed = torch.zeros(4, c)
    collapsed[:, 0] = 50                          # confident but all one class
    assert S.shot_im(collapsed).item() == pytest.approx(0.0, abs=1e-3)


# --------------------------------------------------------------------------- bank, model, loop

def test_feature_bank_neighbours_exclude_self():
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    bank = S.FeatureBank(feats, probs(4, 2))
    near = bank.neighbours(feats, k=1)
    assert near.flatten().tolist() == [1, 0, 3, 2]
    bank.update(torch.tensor([0]), torch.tensor([[0.0, 5.0]]), torch.tensor([[0.2, 0.8]]))
    torch.testing.assert_close(bank.feats[0], torch.tensor([0.0, 1.0]))
    assert bank.pseudo[0].item() == 1


def toy_task(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.2      # GAP features: classes differ by pattern
    x[y == 0, 0, 3:5, 1:7] += 1.0                          # horizontal bar
    x[y == 1, 0, 1:7, 3:5] += 1.0                          # vertical bar
    x[y == 2, 0, 1:7:2, 1:7:2] += 1.0                      # dot grid
    return x.clamp(0, 1), y


def test_source_model_shapes_and_training_reduces_loss():
    x, y = toy_task()
    torch.manual_seed(0)
    m = S.SourceModel(num_classes=3, width=4, bottleneck=8)
    logits, z = m(x[:5], return_features=True)
    assert logits.shape == (5, 3) and z.shape == (5, 8)
    before = F.cross_entropy(m.eval()(x), y).item()
    S.train_source(m, x, y, epochs=8, batch_size=16, lr=1e-2)
    assert F.cross_entropy(m.eval()(x), y).item() < before


@pytest.mark.parametrize("method", list(S.METHODS))
def test_adapt_runs_and_moves_the_right_parameters(method):
    x, y = toy_task()
    torch.manual_seed(0)
    src = S.SourceModel(num_classes=3, width=4, bottleneck=8)
    S.train_source(src, x, y, epochs=3, batch_size=16, lr=1e-2)
    m = copy.deepcopy(src)
    cfg = S.AdaptConfig(epochs=2, batch_size=16, k=3, lr=1e-2)
    res = S.adapt(m, x + 0.1, method, cfg, seed=0, eval_fn=lambda mm: S.evaluate(mm, x, y))
    assert len(res.history.metrics["per-class acc"]) == cfg.epochs + 1
    moved = lambda part: any(not torch.equal(a, b) for a, b in
                             zip(getattr(src, part).parameters(), getattr(m, part).parameters()))
    assert moved("backbone") and moved("bottleneck")
    assert moved("classifier") == (method != "SHOT-IM")
    expected = {"SHOT-IM": {"SHOT-IM"}, "SNC": {"SNC pos", "SNC neg"},
                "SNC+IFA": {"SNC pos", "SNC neg", "IFA"}, "SF(DA)^2": {"SNC pos", "SNC neg", "IFA", "FD"}}
    assert set(res.loss_terms) == expected[method]
    assert all(math.isfinite(v) for v in res.loss_terms.values())


def test_adapt_is_deterministic():
    x, y = toy_task()
    torch.manual_seed(0)
    src = S.SourceModel(num_classes=3, width=4, bottleneck=8)
    outs = []
    for _ in range(2):
        m = copy.deepcopy(src)
        S.adapt(m, x, "SF(DA)^2", S.AdaptConfig(epochs=1, batch_size=16, k=3), seed=1)
        outs.append(m.eval()(x))
    torch.testing.assert_close(outs[0], outs[1])
    with pytest.raises(ValueError):
        S.adapt(copy.deepcopy(src), x, "NRC++", S.AdaptConfig(epochs=1))


def test_neighbour_purity_and_evaluate():
    x, y = toy_task(n=60)
    torch.manual_seed(0)
    m = S.SourceModel(num_classes=3, width=4, bottleneck=8)
    S.train_source(m, x, y, epochs=10, batch_size=16, lr=1e-2)
    ev = S.evaluate(m, x, y)
    assert 0 <= ev["per-class acc"] <= 100 and ev["acc"] > 80      # a trivially separable toy
    assert S.neighbour_purity(m, x, y, k=3) > 0.8
    assert 0 <= S.neighbour_purity(m, x, torch.randint(0, 3, (60,)), k=3) <= 1


def test_pick_strength_rule():
    accs = {0.2: 90.0, 0.4: 62.0, 0.6: 45.0, 0.8: 30.0}
    assert S.pick_strength(accs) == 0.6                  # largest strength inside the band
    assert S.pick_strength({0.2: 90.0, 0.4: 70.0, 0.6: 20.0}) == 0.4     # none inside: closest
    assert S.pick_strength({0.1: 80.0, 0.2: 25.0}) == 0.2                 # tie (15 each): larger


def test_with_target_bn_only_changes_running_statistics():
    x, y = toy_task()
    torch.manual_seed(0)
    src = S.SourceModel(num_classes=3, width=4, bottleneck=8)
    S.train_source(src, x, y, epochs=2, batch_size=16, lr=1e-2)
    shifted = 1.0 - x
    m = S.with_target_bn(src, shifted, batch_size=32)
    for (n, a), (_, b) in zip(src.named_parameters(), m.named_parameters()):
        assert torch.equal(a, b), n
    assert not torch.allclose(m.bottleneck[1].running_mean, src.bottleneck[1].running_mean)
    assert not m.training and src.bottleneck[1].momentum == 0.1
    # one batch holding all of x: the running mean is exactly that batch's mean
    whole = S.with_target_bn(src, shifted, batch_size=len(shifted))
    ref = copy.deepcopy(src).train()
    with torch.no_grad():
        expected = ref.bottleneck[0](ref.backbone(shifted)).mean(0)
    torch.testing.assert_close(whole.bottleneck[1].running_mean, expected, rtol=1e-4, atol=1e-5)
