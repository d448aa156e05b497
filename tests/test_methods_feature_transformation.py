"""Feature transformation (Zhu et al. 2021): the operators, the hook, the score statistics."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from replibook.methods import feature_transformation as FT


def _unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_positive_extrapolation_known_answer_and_lower_score():
    q, k = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    q2, k2 = FT.positive_extrapolation(q, k, 1.5)
    assert torch.allclose(q2, torch.tensor([[1.5, -0.5]])) and torch.allclose(k2, torch.tensor([[-0.5, 1.5]]))
    # closed form for unit vectors: q'.k' = s - 2 a (1 - s), a = lam (lam - 1)
    q, k = _unit(50, 8, 0), _unit(50, 8, 1)
    s = (q * k).sum(1)
    for lam in (1.0, 1.3, 2.0):
        q2, k2 = FT.positive_extrapolation(q, k, lam)
        a = lam * (lam - 1)
        assert torch.allclose((q2 * k2).sum(1), s - 2 * a * (1 - s), atol=1e-5)
        if lam > 1:
            assert ((q2 * k2).sum(1) < s).all()
    # interpolation (lam in [0, 1]) raises it instead
    q2, k2 = FT.positive_extrapolation(q, k, 0.5)
    assert ((q2 * k2).sum(1) >= s - 1e-6).all()


def test_negative_interpolation_known_answer():
    queue = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    perm = torch.tensor([1, 2, 0])
    out = FT.negative_interpolation(queue, 0.25, perm)
    assert torch.allclose(out, torch.tensor([[0.25, 0.75], [0.75, 1.0], [1.0, 0.25]]))
    assert torch.equal(FT.negative_interpolation(queue, 1.0, perm), queue)


def test_hook_draws_in_range_and_is_reproducible():
    q, k, queue = _unit(16, 8, 0), _unit(16, 8, 1), _unit(64, 8, 2)
    ft = FT.FeatureTransform()
    lams, mus = [], []
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        ft(q, k, queue, generator=g)
        lams.append(ft.last["lam"])
        mus.append(ft.last["mu"])
    assert 1.0 <= min(lams) and max(lams) <= 2.0 and 0.0 <= min(mus) and max(mus) <= 1.0
    # Beta(2, 2) + 1 has mean 1.5; Beta(1.6, 1.6) has mean 0.5 (sd of the mean of 200 draws < 0.02)
    assert abs(np.mean(lams) - 1.5) < 0.06 and abs(np.mean(mus) - 0.5) < 0.06
    a = ft(q, k, queue, generator=torch.Generator().manual_seed(5))
    b = ft(q, k, queue, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # scalar form: one lambda for every entry, so q' - q is proportional to (k - q) with one factor
    q2, k2, queue2 = a
    ratio = (q2 - q) / (k - q)
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), atol=1e-4)
    assert not torch.equal(queue2, queue)


def test_hook_components_can_be_switched_off_and_per_element():
    q, k, queue = _unit(4, 6, 0), _unit(4, 6, 1), _unit(10, 6, 2)
    g = torch.Generator().manual_seed(0)
    q2, k2, queue2 = FT.FeatureTransform(positive=None, negative=True)(q, k, queue, generator=g)
    assert torch.equal(q2, q) and torch.equal(k2, k) and not torch.equal(queue2, queue)
    q2, k2, queue2 = FT.FeatureTransform(positive="extrapolate", negative=False)(q, k, queue, generator=g)
    assert torch.equal(queue2, queue) and ((q2 * k2).sum(1) <= (q * k).sum(1) + 1e-6).all()
    ft = FT.FeatureTransform(per_element=True)
    q2, _, _ = ft(q, k, queue, generator=g)
    ratio = (q2 - q) / (k - q)                                   # per-element lambdas differ
    assert ratio.std() > 0.05 and (ratio <= 0).all() and (ratio >= -1).all()
    with pytest.raises(ValueError):
        FT.FeatureTransform(positive="sideways")


def test_score_stats_known_answer():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    queue = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    s = FT.score_stats(q, k, queue)
    assert s["pos"] == pytest.approx((1.0 + 0.8) / 2)
    # scores: q1 -> [1, -1, 0], q2 -> [0, 0, 1]
    assert s["neg_mean"] == pytest.approx(1 / 6)
    assert s["neg_var"] == pytest.approx((1.0 + 1 / 3) / 2)
    pos, neg = FT.score_samples(q, k, queue)
    assert pos.shape == (2,) and neg.shape == (6,)


def test_paired_diffs_and_augment():
    assert FT.paired_diffs([1, 2], [0.5, 3]) == [0.5, -1.0]
    with pytest.raises(ValueError):
        FT.paired_diffs([1], [1, 2])
    x = torch.rand(4, 3, 8, 8)
    out = FT.make_augment("color")(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError):
        FT.make_augment("nope")


# ---------------------------------------------------------------------------
# Full tier (ImageNet-100, streamed) on a tiny fake copy in the real on-disk layout
# ---------------------------------------------------------------------------

def _fake_imagenet(root, classes, n_train=8, n_val=3):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, wnid in enumerate(classes):
            folder = root / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 60, size=(30 + 2 * i, 40, 3), dtype=np.uint8)
                arr[..., c] += 150                              # a class colour
                Image.fromarray(arr).save(folder / f"{wnid}_{i}.JPEG", quality=90)
    (root / "imagenet" / "train" / "n99999999").mkdir()         # a class outside the selection


def test_mocov2_view_augment_is_normalised():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16, generator=g)
    out = FT.mocov2_view_augment(x, g)                                   # normalised with the ImageNet stats
    assert out.shape == x.shape and out.min() < 0 and out.max() > 1


def test_imagenet_full_path_on_a_fake_imagenet100(tmp_path, monkeypatch):
    from replibook.data.real_imagenet import IMAGENET100_CLASSES
    from replibook.models.mlp import ProjectionHead
    from replibook.train.ssl import moco_pretrain
    classes = list(IMAGENET100_CLASSES[:3])
    _fake_imagenet(tmp_path, classes)
    monkeypatch.setenv("REPLIBOOK_DATA", str(tmp_path))
    stream = FT.ImageNetStream(classes=classes, size=24, batch=6, lin_batch=8, eval_batch=5, workers=0)
    assert stream.steps_per_epoch() == 4 and stream.n_classes == 3
    card = stream.card()
    assert card["n_train"] == 24 and card["n_test"] == 9 and card["x_shape"] == [3, 24, 24]
    pairs = stream.heldout_pairs(4)
    assert pairs.shape == (4, 2, 3, 24, 24) and pairs.dtype == torch.uint8
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    head = ProjectionHead(8, 16, 8)
    before = [p.detach().clone() for p in enc.parameters()]
    run = moco_pretrain(enc, head, batches=stream.pretrain_batches(seed=0), steps=5, batch_size=6, queue_size=12,
                        momentum=0.99, lr=0.05, augment=FT.mocov2_view_augment,
                        feature_transform=FT.FeatureTransform(), shuffle_bn_splits=2, eval_x=pairs, eval_every=2,
                        seed=0, device="cpu", progress=False)
    assert len(run.scores) == 5 and run.history.steps == [0, 2, 4, 5]
    assert (run.scores.pos_ft <= run.scores.pos + 1e-6).all()            # extrapolation lowers q.k
    assert any(not torch.equal(p, b) for p, b in zip(enc.parameters(), before))
    lin, knn = stream.probe(enc, epochs=2, lr=1.0, milestones=(1,), knn_k=3, device="cpu", progress=False)
    assert 0.0 <= lin <= 1.0 and 0.0 <= knn <= 1.0


def test_imagenet_stream_names_the_dataset_when_missing(tmp_path, monkeypatch):
    from replibook.errors import DatasetMissing
    monkeypatch.setenv("REPLIBOOK_DATA", str(tmp_path))
    with pytest.raises(DatasetMissing, match="ImageNet"):
        FT.ImageNetStream().steps_per_epoch()
    _fake_imagenet(tmp_path, ["n01558993"], n_train=2, n_val=1)        # one of the 100 classes only
    with pytest.raises(DatasetMissing, match="REPLIBOOK_DATA|missing"):
        FT.ImageNetStream().card()
