"""ConR (Keramati et al., ICLR 2024): the loss, its masks, the views and the training arm."""
import math

import numpy as np
import pytest
import torch

from replibook.methods import conr as C


def _reference(f, y, p, w=1.0, t=0.07, eta=0.01, weights=None, code=False):
    """Per-anchor loop transcription of the loss (module docstring), float64."""
    f, y, p = f.double(), y.double(), p.double()
    n = len(y)
    om = torch.ones(n, dtype=torch.float64) if weights is None else weights.double()
    z = f / f.norm(dim=1, keepdim=True)
    s = z @ z.T / t
    total = 0.0
    for i in range(n):
        P = [j for j in range(n) if j != i and abs(y[i] - y[j]) <= w]
        N = [j for j in range(n) if abs(y[i] - y[j]) > w and abs(p[i] - p[j]) <= w]
        if not P or not N:
            continue
        denom = sum(math.exp(s[i, j]) for j in P)
        denom += sum(om[i] * math.exp(eta * abs(y[i] - y[j])) * math.exp(s[i, j]) for j in N)
        if code:
            denom += n - len(P)
        li = -sum(float(s[i, j]) - math.log(denom) for j in P) / len(P)
        total += float(om[i]) * float(li)
    return total / n


def test_known_answer_three_samples():
    # two anchors share a label window and face one far-label sample they are predicted close to
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0.0, 0.5, 5.0])
    p = torch.tensor([0.0, 0.0, 0.5])
    loss, st = C.conr_loss(f, y, p, temperature=1.0, eta=0.01, return_stats=True)
    # anchor 1: log(1 + exp(0.05 - 1)); anchor 2: log(1 + exp(0.045 - 1)); anchor 3: no positive -> 0
    expected = (math.log1p(math.exp(0.05 - 1)) + math.log1p(math.exp(0.045 - 1))) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert st["n_pos"] == pytest.approx(2 / 3) and st["n_neg"] == pytest.approx(4 / 3)
    assert st["active"] == pytest.approx(2 / 3)
    # the code's denominator adds exp(0) for each of the n - |P_i| = 2 non-positive columns
    code = C.conr_loss(f, y, p, temperature=1.0, code_denominator=True)
    exp_code = (math.log1p(math.exp(0.05 - 1) + 2 * math.exp(-1))
                + math.log1p(math.exp(0.045 - 1) + 2 * math.exp(-1))) / 3
    assert float(code) == pytest.approx(exp_code, rel=1e-6)


@pytest.mark.parametrize("code", [False, True])
def test_matches_loop_reference_on_random_batches(code):
    g = torch.Generator().manual_seed(0)
    for trial in range(3):
        n = 24
        f = torch.randn(n, 6, generator=g)
        y = torch.randint(0, 8, (n,), generator=g).float()
        p = y + 3 * torch.randn(n, generator=g)
        om = torch.rand(n, generator=g) + 0.5
        for weights in (None, om):
            got = C.conr_loss(f, y, p, weights=weights, window=1.0, temperature=0.2, eta=0.05,
                              code_denominator=code)
            ref = _reference(f, y, p, w=1.0, t=0.2, eta=0.05, weights=weights, code=code)
            assert float(got) == pytest.approx(ref, rel=1e-5, abs=1e-7)


def test_masks():
    y = torch.tensor([0.0, 1.0, 3.0, 10.0])
    p = torch.tensor([0.0, 0.5, 0.8, 20.0])
    pos, neg = C.conr_masks(y, p, window=1.0)
    assert pos.tolist() == [[False, True, False, False], [True, False, False, False],
                            [False, False, False, False], [False, False, False, False]]
    # far labels (|dy| > 1) predicted within 1: (0, 2) and (1, 2) only
    assert neg.tolist() == [[False, False, True, False], [False, False, True, False],
                            [True, True, False, False], [False, False, False, False]]


def test_no_negative_means_no_loss_and_no_gradient():
    f = torch.randn(6, 4, requires_grad=True)
    y = torch.tensor([0.0, 0.0, 5.0, 5.0, 10.0, 10.0])
    loss = C.conr_loss(f, y, y.clone())            # perfect predictions: no confusion anywhere
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.all(f.grad == 0)


def test_no_positive_anchor_is_guarded():
    # single-view use: an anchor alone in its label window must not give NaN (the code's 0/0)
    f = torch.randn(3, 4, requires_grad=True)
    y = torch.tensor([0.0, 5.0, 10.0])
    loss = C.conr_loss(f, y, torch.zeros(3))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(f.grad).all()


def test_gradcheck_and_predictions_get_no_gradient():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(10, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 4, 4, 6, 6, 9, 9], dtype=torch.float64)
    p = torch.full((10,), 3.0, dtype=torch.float64, requires_grad=True)   # everything confused
    assert torch.autograd.gradcheck(lambda a: C.conr_loss(a, y, p, temperature=0.5), (f,))
    C.conr_loss(f, y, p).backward()
    assert p.grad is None


def test_descent_pulls_positives_and_pushes_negatives():
    g = torch.Generator().manual_seed(2)
    y = torch.tensor([0.0, 0.0, 10.0, 10.0, 20.0, 20.0])
    f = torch.randn(6, 8, generator=g).requires_grad_()
    p = torch.zeros(6)                                   # all predicted close: all far pairs negative

    def cos(a):
        z = torch.nn.functional.normalize(a, dim=1)
        return z @ z.T
    c0 = cos(f.detach())
    C.conr_loss(f, y, p, temperature=0.5).backward()
    c1 = cos(f.detach() - 0.05 * f.grad)
    same = (y[:, None] == y[None, :]) & ~torch.eye(6, dtype=torch.bool)
    far = y[:, None] != y[None, :]
    assert (c1[same] - c0[same]).mean() > 0
    assert (c1[far] - c0[far]).mean() < 0


def test_farther_negatives_are_pushed_harder():
    # same geometry, one negative farther in label: its pushing weight exp(eta * dy) is larger
    f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    p = torch.zeros(3)
    near = C.conr_loss(f, torch.tensor([0.0, 0.5, 5.0]), p, temperature=1.0, eta=0.1)
    far = C.conr_loss(f, torch.tensor([0.0, 0.5, 50.0]), p, temperature=1.0, eta=0.1)
    assert float(far) > float(near)


def test_invariances():
    g = torch.Generator().manual_seed(3)
    n = 16
    f = torch.randn(n, 5, generator=g)
    y = torch.randint(0, 6, (n,), generator=g).float()
    p = y + 2 * torch.randn(n, generator=g)
    base = C.conr_loss(f, y, p)
    # feature norms do not matter
    assert torch.allclose(C.conr_loss(f * (torch.rand(n, 1, generator=g) + 0.1), y, p), base, atol=1e-6)
    # the batch order does not matter
    perm = torch.randperm(n, generator=g)
    assert torch.allclose(C.conr_loss(f[perm], y[perm], p[perm]), base, atol=1e-6)
    # shifting labels and predictions together changes nothing
    assert torch.allclose(C.conr_loss(f, y + 7, p + 7), base, atol=1e-6)
    # a wider window turns negatives into positives: the loss changes
    assert not torch.allclose(C.conr_loss(f, y, p, window=3.0), base)


def test_translate_noise_is_an_integer_shift():
    x = torch.zeros(5, 1, 16, 16)
    x[:, :, 6:10, 5:9] = torch.rand(5, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    v = C.translate_noise(x, gen, max_shift=2, noise=0.0)
    for i in range(5):
        matches = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)
                   if torch.equal(torch.roll(x[i], (dy, dx), dims=(1, 2)), v[i])]
        assert len(matches) == 1
    assert torch.allclose(v.sum((1, 2, 3)), x.sum((1, 2, 3)))
    noisy = C.translate_noise(x, torch.Generator().manual_seed(0), max_shift=2, noise=0.05)
    assert 0.04 < float((noisy - v).std()) < 0.06


def test_make_data_and_a_training_arm():
    d = C.make_data(300, 90, n_val=30, size=16, seed=0)
    assert d.y_train.max() < 90 and torch.equal(d.y_train, d.y_train.round())
    c = d.counts()
    assert c[:15].sum() > 3 * c[45:].sum()
    assert np.histogram(d.y_test.numpy(), bins=[0, 45, 90])[0].min() > 25
    cfg = dict(arch=dict(blocks=2, width=4, stem_stride=1), epochs=1, batch_size=64, lr=1e-3, window=1.0,
               temperature=0.07, eta=0.01, beta=1.0, max_shift=1, noise=0.05, lds=dict(sigma=2, ks=5))
    r = C.train_arm("LDS+ConR", d, cfg, seed=0, progress=False)
    assert len(r.stats) == r.steps_per_epoch == 5
    assert r.per_epoch("n_pos").min() >= 1.0                   # the other view is always a positive
    m, pred = C.evaluate(r.model, d)
    assert set(m) >= {"mae_all", "mae_many", "mae_medium", "mae_few", "gmean", "tail_head_cos"}
    assert np.isfinite(m["mae_all"]) and pred.shape == (90,)
    with pytest.raises(ValueError):
        C.train_arm("Nope", d, cfg, seed=0)


def test_ablation_all_far_pairs_are_negatives():
    f = torch.randn(5, 3)
    y = torch.tensor([0.0, 0.0, 4.0, 8.0, 8.0])
    p = torch.tensor([0.0, 0.0, 20.0, 40.0, 40.0])          # nothing confused
    assert float(C.conr_loss(f, y, p)) == 0.0
    pos, neg = C.conr_masks(y, p, select_by_prediction=False)
    assert int(neg.sum()) == 5 * 4 - int(pos.sum())
    assert float(C.conr_loss(f, y, p, select_by_prediction=False)) > 0


@pytest.mark.parametrize("arm", ["BalancedMSE+ConR", "Vanilla+ConR (eta=0)", "Vanilla+ConR (all negatives)", "Vanilla"])
def test_other_arms_train(arm):
    d = C.make_data(128, 30, size=16, seed=1)
    cfg = dict(arch=dict(blocks=1, width=4, stem_stride=2), epochs=1, batch_size=64, lr=1e-3, window=1.0,
               temperature=0.07, eta=0.01, beta=1.0, max_shift=1, noise=0.0, bmse_sigma=8.0)
    r = C.train_arm(arm, d, cfg, seed=0)
    assert len(r.stats) == (2 if "ConR" in arm else 0)
    if arm.startswith("BalancedMSE"):
        assert r.model.noise_sigma is not None and float(r.model.noise_sigma.detach()) != 8.0   # learnable
    m, _ = C.evaluate(r.model, d)
    assert np.isfinite(m["mae_all"])


def test_dir_benchmark_path_on_a_fake_agedb(tmp_path):
    from PIL import Image
    (tmp_path / "AgeDB").mkdir()
    rows, rng = [], np.random.default_rng(0)
    for i in range(40):
        name = f"AgeDB/{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / name)
        rows.append(f"{20 + i % 30},{name},{'train' if i < 28 else ('val' if i < 34 else 'test')}")
    (tmp_path / "agedb.csv").write_text("age,path,split\n" + "\n".join(rows) + "\n")
    d = C.make_dir_data("agedb", size=16, root=tmp_path)
    assert d.x_train.shape == (28, 3, 16, 16) and len(d.y_val) == 6 and len(d.y_test) == 6
    assert d.card()["name"] == "agedb-dir" and len(d.bin_edges) == 122
    cfg = dict(arch=dict(blocks=1, width=4, stem_stride=1, in_ch=3), epochs=1, batch_size=14, lr=1e-3,
               window=1.0, temperature=0.07, eta=0.01, beta=4.0, max_shift=2, noise=0.0, flip=True,
               schedule="cosine")
    r = C.train_arm("Vanilla+ConR", d, cfg, seed=0)
    m, pred = C.evaluate(r.model, d)
    assert pred.shape == (6,) and np.isfinite(m["mae_all"])


def test_flip_view_and_resnet50_backbone():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    seen = set()
    for s in range(8):
        v = C.translate_noise(x, torch.Generator().manual_seed(s), max_shift=0, noise=0.0, flip=True)
        for i in range(2):
            assert torch.equal(v[i], x[i]) or torch.equal(v[i], x[i].flip(-1))
            seen.add(torch.equal(v[i], x[i]))
    assert seen == {True, False}
    net = C.RegressionNet(backbone="resnet50", in_ch=3)
    pred, feat = net.eval()(torch.rand(2, 3, 32, 32))
    assert pred.shape == (2,) and feat.shape == (2, 2048)
    with pytest.raises(ValueError):
        C.RegressionNet(backbone="vgg")
