"""LAF: the UE and RA losses (values, signs), label-agnostic unlearning that leaves the head
alone, the VAEs, the tasks, the baselines and the claim rule."""
import math

import numpy as np
import pytest
import torch

from replibook.claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, AtLeast, M
from replibook.methods import laf_label_agnostic_forgetting as L

ARCH = dict(blocks=2, width=4, embed_dim=8, stem_stride=2)


def toy_data(n=120, n_test=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    # class-dependent blobs so a tiny net can learn something quickly
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.3
    x[torch.arange(n), 0, y % 8, (y * 3) % 8] += 1.0
    yt = torch.arange(n_test) % 10
    xt = torch.rand(n_test, 1, 8, 8, generator=g) * 0.3
    xt[torch.arange(n_test), 0, yt % 8, (yt * 3) % 8] += 1.0
    return x, y, xt, yt


def toy_task(kind="class", seed=0):
    x, y, xt, yt = toy_data()
    return L.make_task(kind, x, y, xt, yt, seed=seed, forget_class=3, fraction=0.1, noise=0.2,
                       mia_members=20)


# --------------------------------------------------------------------------- losses

def test_reconstruction_energy_values_and_bounds():
    e = torch.zeros(3, 4)
    recon = torch.tensor([[0.0] * 4, [1.0, 0, 0, 0], [100.0] * 4])
    g = L.reconstruction_energy(recon, e)
    # m = 0, 1, 40000 -> exp(0) = 1, exp(1/2), just below e
    torch.testing.assert_close(g[:2], torch.tensor([1.0, math.exp(0.5)]))
    assert math.exp(0.99) < g[2] < math.e


def test_ue_loss_is_remaining_energy_minus_forget_energy():
    torch.manual_seed(0)
    e_r, e_f = torch.randn(5, 3), torch.randn(7, 3)
    # perfect reconstructions: every energy is 1, so L_UE = B_r - B_f
    assert float(L.extractor_unlearning_loss(e_r, e_r, e_f, e_f)) == pytest.approx(5 - 7)
    rec_r, rec_f = e_r + 0.5, e_f + 2.0
    expected = (torch.exp((0.75 / 1.75) * torch.ones(5)).sum()          # m = 3 * 0.25
                - torch.exp((12.0 / 13.0) * torch.ones(7)).sum())      # m = 3 * 4
    torch.testing.assert_close(L.extractor_unlearning_loss(e_r, rec_r, e_f, rec_f), expected)


def test_ra_loss_value_at_the_teacher():
    torch.manual_seed(0)
    e_r, e_f = torch.randn(32, 6), torch.randn(32, 6)
    # identical to the teacher: d = 0, L_RA = -B_r log B_f (the LAF code's -110.9 for 32 / 32)
    val = L.representation_alignment_loss(e_r, e_r.clone(), e_f, e_f.clone(), tau=20.0)
    assert float(val) == pytest.approx(-32 * math.log(32), rel=1e-5)


def test_ra_loss_matches_cosine_embedding_loss_formula():
    torch.manual_seed(1)
    e_r, e0_r, e_f, e0_f = (torch.randn(4, 5) for _ in range(4))
    cel = torch.nn.CosineEmbeddingLoss(reduction="none")
    d_r, d_f = cel(e_r, e0_r, torch.ones(4)), cel(e_f, e0_f, torch.ones(4))
    expected = torch.log(torch.exp(d_r) / torch.exp(d_f / 5.0).sum()).sum()
    torch.testing.assert_close(L.representation_alignment_loss(e_r, e0_r, e_f, e0_f, tau=5.0), expected)


def test_ra_gradient_pulls_remaining_to_teacher_and_pushes_forgotten_away():
    torch.manual_seed(2)
    e0_r, e0_f = torch.randn(8, 6), torch.randn(8, 6)
    e_r = (e0_r + 0.3 * torch.randn(8, 6)).requires_grad_()
    e_f = (e0_f + 0.3 * torch.randn(8, 6)).requires_grad_()
    dist = lambda a, b: (1 - torch.cosine_similarity(a.detach(), b, dim=1)).sum()   # noqa: E731
    before_r, before_f = float(dist(e_r, e0_r)), float(dist(e_f, e0_f))
    L.representation_alignment_loss(e_r, e0_r, e_f, e0_f, tau=1.0).backward()
    with torch.no_grad():
        e_r -= 0.1 * e_r.grad
        e_f -= 0.1 * e_f.grad
    assert float(dist(e_r, e0_r)) < before_r      # remaining: closer to the original extractor
    assert float(dist(e_f, e0_f)) > before_f      # forgotten: farther away


def test_ue_gradient_direction():
    # descending L_UE shrinks the remaining reconstruction error and grows the forgotten one
    torch.manual_seed(3)
    rec_r, rec_f = torch.randn(4, 3), torch.randn(4, 3)
    e_r = (rec_r + 0.5 * torch.randn(4, 3)).requires_grad_()
    e_f = (rec_f + 0.5 * torch.randn(4, 3)).requires_grad_()
    err = lambda a, b: float((a.detach() - b).pow(2).sum())   # noqa: E731
    before_r, before_f = err(e_r, rec_r), err(e_f, rec_f)
    L.extractor_unlearning_loss(e_r, rec_r, e_f, rec_f).backward()
    with torch.no_grad():
        e_r -= 0.05 * e_r.grad
        e_f -= 0.05 * e_f.grad
    assert err(e_r, rec_r) < before_r and err(e_f, rec_f) > before_f


# --------------------------------------------------------------------------- tasks

def test_make_task_sets():
    for kind in L.TASKS:
        task = toy_task(kind)
        n = len(task.y_clean)
        f, r = task.forget.numpy(), task.retain.numpy()
        assert np.intersect1d(f, r).size == 0 and len(f) + len(r) == n
        assert np.isin(task.mia_members.numpy(), r).all()
        assert np.intersect1d(task.mia_nonmembers.numpy(), task.mia_reference.numpy()).size == 0
        changed = np.flatnonzero((task.y_train != task.y_clean).numpy())
        if kind == "class":
            assert np.array_equal(np.sort(f), np.flatnonzero(task.y_clean.numpy() == 3))
            assert task.forget_classes == [3] and changed.size == 0
        elif kind == "random":
            assert len(f) == round(0.1 * n) and changed.size == 0
        else:
            assert np.array_equal(np.sort(f), changed) and len(f) == round(0.2 * n)
    with pytest.raises(ValueError):
        toy_task("poison")
    a, b = toy_task("random", seed=4), toy_task("random", seed=4)
    assert torch.equal(a.forget, b.forget)


# --------------------------------------------------------------------------- unlearning

def trained_original(task, seed=0):
    model = L.build_model(seed, **ARCH)
    return L.train_classifier(model, task.x, task.y_train, epochs=3, batch_size=32, lr=3e-3, seed=seed)


def test_vae_training_lowers_its_loss_and_freezes():
    torch.manual_seed(0)
    e = torch.randn(200, 8) * 2 + 1
    vae, curve = L.train_embedding_vae(e, epochs=8, batch_size=32, hidden=16, latent=4, seed=0)
    assert curve[-1] < curve[0]
    assert not vae.training and all(not p.requires_grad for p in vae.parameters())
    recon, z, mu, logvar = vae(e)
    assert recon.shape == e.shape and z.shape == mu.shape == logvar.shape == (200, 4)


def test_laf_is_label_agnostic_leaves_head_and_original_alone():
    task = toy_task("class")
    original = trained_original(task)
    head_before = [p.detach().clone() for p in original.head.parameters()]
    ext_before = [p.detach().clone() for p in original.extractor.parameters()]
    e_r = L.embeddings(original, task.x[task.retain])
    e_f = L.embeddings(original, task.x[task.forget])
    s_vae, _ = L.train_embedding_vae(e_r, epochs=2, hidden=8, latent=2, seed=0)
    u_vae, _ = L.train_embedding_vae(e_f, epochs=2, hidden=8, latent=2, seed=1)
    # no label may be read: replace every label by an invalid one
    blind = L.UnlearningTask(**{**task.__dict__, "y_train": torch.full_like(task.y_train, -1),
                                "y_clean": torch.full_like(task.y_clean, -1)})
    model, curves = L.laf_unlearn(original, s_vae, u_vae, blind, epochs=3, lr_ue=1e-2, lr_ra=1e-2,
                                  tau=5.0, seed=0)
    assert all(len(curves[k]) == 3 for k in ("ue", "ra", "d_r", "d_f"))
    assert all(d > 0 for d in curves["d_f"])                  # the extractor moved
    for p, q in zip(model.head.parameters(), head_before):
        assert torch.equal(p, q)                              # the head is untouched
    assert any(not torch.equal(p, q) for p, q in zip(model.extractor.parameters(), ext_before))
    for p, q in zip(original.extractor.parameters(), ext_before):
        assert torch.equal(p, q)                              # works on a copy
    again, _ = L.laf_unlearn(original, s_vae, u_vae, blind, epochs=3, lr_ue=1e-2, lr_ra=1e-2,
                             tau=5.0, seed=0)
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)                              # deterministic given the seed
    only_ue, c = L.laf_unlearn(original, s_vae, u_vae, blind, epochs=1, use_ra=False, seed=0)
    assert math.isnan(c["ra"][0]) and not math.isnan(c["ue"][0])
    with pytest.raises(ValueError):
        L.laf_unlearn(original, s_vae, u_vae, blind, epochs=1, use_ue=False, use_ra=False)


def test_repair_head_trains_only_the_head():
    task = toy_task("random")
    original = trained_original(task)
    x, y = task.retain_set
    repaired = L.repair_head(original, x[:30], y[:30], epochs=3, lr=1e-2, seed=0)
    for p, q in zip(repaired.extractor.parameters(), original.extractor.parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(repaired.head.parameters(), original.head.parameters()))


def test_baselines_and_evaluate():
    task = toy_task("class")
    original = trained_original(task)
    x_f, y_f = task.forget_set
    loss = lambda m: float(torch.nn.functional.cross_entropy(m.eval()(x_f), y_f).detach())   # noqa: E731
    ascended = L.neggrad(original, task, epochs=2, batch_size=8, lr=1e-2, seed=0)
    assert loss(ascended) > loss(original)
    relabelled = L.random_label(original, task, epochs=1, batch_size=32, lr=1e-3, seed=0)
    assert relabelled is not original
    ref = (original(task.x).detach(), original(task.x_test).detach())
    metrics = L.evaluate(original, task, n_boot=20, reference=ref)
    assert set(metrics) == {"acc_r", "acc_f", "acc_t", "acc_t_remaining", "acc_t_forgotten", "mia_auc",
                            "mia_rate", "mia_train_auc", "mia_auc_lo", "mia_auc_hi", "changed_f", "changed_t"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["changed_f"] == 0.0 and metrics["changed_t"] == 0.0      # itself as the reference
    assert L.evaluate(ascended, task, reference=ref)["changed_f"] > 0


def test_run_seed_end_to_end_tiny():
    x, y, xt, yt = toy_data()
    data = type("D", (), {})()
    data.train = type("S", (), {"x": x, "y": y})()
    data.test = type("S", (), {"x": xt, "y": yt})()
    cfg = dict(arch=ARCH, train_epochs=1, batch_size=32, lr=3e-3, weight_decay=0.0, ft_epochs=1, ft_lr=1e-3,
               rl_epochs=1, ng_epochs=1, ng_lr=1e-4, vae_epochs=1, vae_latent=2, vae_hidden=8, laf_epochs=1,
               laf_batch=16, lr_ue=5e-5, lr_ra=1e-4, tau={"class": 20, "random": 5, "noisy": 20},
               repair_fraction=0.1, repair_epochs=1, repair_lr=1e-3, mia_kind="loss_entropy", mia_boot=0,
               forget_class=3, random_fraction=0.1, noise=0.2, s_vae_batch=64, ablation_tasks=["class"])
    runs = L.run_seed(data, cfg, seed=0, tasks=("class", "noisy"))
    assert set(runs) == {"class", "noisy"}
    assert set(runs["class"].metrics) == set(L.METHODS)
    assert set(runs["noisy"].metrics) == set(L.METHODS) - {"LAF w/o RA"}     # ablation on class only
    assert "acc_t_remaining" in runs["class"].metrics["LAF"]
    assert "acc_t_remaining" not in runs["noisy"].metrics["LAF"]
    assert set(runs["class"].curves) == {"LAF", "LAF w/o RA"}
    assert runs["class"].metrics["Original"]["changed_f"] == 0.0


# --------------------------------------------------------------------------- claim rule

def test_any_better_none_worse():
    vals = {"up": [1.0, 1.1, 0.9], "flat": [0.0, 0.1, -0.1], "down": [-1.0, -1.1, -0.9]}
    resolve = lambda ref: np.array(vals[ref.method])          # noqa: E731
    part = lambda name: AtLeast(M("d", name), 0.0)            # noqa: E731
    rule = L.AnyBetterNoneWorse
    assert rule([part("up"), part("flat")]).evaluate(resolve).verdict == REPRODUCED
    assert rule([part("flat"), part("flat")]).evaluate(resolve).verdict == INCONCLUSIVE
    assert rule([part("up"), part("down")]).evaluate(resolve).verdict == NOT_REPRODUCED
    assert "any reproduced" in rule([part("up")]).describe()
    assert len(rule([part("up"), part("down")]).refs()) == 2
