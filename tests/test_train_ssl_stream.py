"""Streaming paths of replibook.train.ssl: MoCo on a batch stream, the streamed linear evaluation."""
import pytest
import torch
from torch import nn

from conftest import four_blob_images

from replibook.train.fit import stream_fit
from replibook.train.ssl import extract_features, linear_eval_stream, moco_pretrain


def _images(n=64, seed=0):
    return four_blob_images(n, seed)


def _model(seed):
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten())
    return enc, nn.Linear(32, 16)


def _aug(b, g):
    return (b + 0.05 * torch.randn(b.shape, generator=g)).clamp(0, 1)


def test_streamed_moco_matches_in_memory_moco_on_the_same_minibatches():
    x, seed, bs, steps = _images(), 3, 16, 4
    enc_a, head_a = _model(0)
    a = moco_pretrain(enc_a, head_a, x, steps=steps, batch_size=bs, queue_size=64, momentum=0.9, lr=0.05,
                      augment=_aug, seed=seed, progress=False, device="cpu")
    # the minibatches fit draws: one seeded permutation per epoch
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    batches = [(x[order[i * bs:(i + 1) * bs]], torch.zeros(bs)) for i in range(steps)]
    enc_b, head_b = _model(0)
    b = moco_pretrain(enc_b, head_b, batches=batches, steps=steps, batch_size=bs, queue_size=64, momentum=0.9,
                      lr=0.05, augment=_aug, seed=seed, progress=False, device="cpu")
    for p, r in zip(enc_a.parameters(), enc_b.parameters()):
        assert torch.allclose(p, r, atol=1e-5)
    assert torch.allclose(a.queue.keys, b.queue.keys, atol=1e-5)
    assert torch.allclose(torch.tensor(a.scores.values), torch.tensor(b.scores.values), atol=1e-5)
    assert b.info["streamed"] and not a.info["streamed"]


def test_streamed_moco_with_uint8_pairs_reepochs_and_records_held_out_scores():
    x = (255 * _images(24)).to(torch.uint8)
    pairs = torch.stack([x, x.flip(-1)], 1)                     # (N, 2, 1, 12, 12): two "crops" per image
    epochs_seen = []

    def loader(epoch):                                            # 3 batches of 8 per epoch
        epochs_seen.append(epoch)
        return [(pairs[i:i + 8], torch.zeros(8)) for i in range(0, 24, 8)]

    enc, head = _model(1)
    seen = []

    def aug(b, g):
        seen.append((b.dtype, float(b.max())))
        return b
    run = moco_pretrain(enc, head, batches=loader, steps=7, batch_size=8, queue_size=32, momentum=0.9, lr=0.05,
                        augment=aug, eval_x=pairs[:8], eval_every=3, seed=0, progress=False, device="cpu")
    assert epochs_seen == [0, 1, 2]                               # 7 updates of 3 per epoch: a third epoch
    assert len(run.scores) == 7 and run.history.steps == [0, 3, 6, 7]
    assert set(run.history.metrics) == {"pos", "neg_mean", "neg_var", "loss"}
    assert all(d == torch.float32 and m <= 1.0 for d, m in seen)  # uint8 scaled to [0, 1] before augment
    assert torch.allclose(run.queue.keys.norm(dim=1), torch.ones(32), atol=1e-5)


def test_moco_needs_exactly_one_data_source():
    enc, head = _model(0)
    with pytest.raises(ValueError):
        moco_pretrain(enc, head, steps=1)
    with pytest.raises(ValueError):
        moco_pretrain(enc, head, _images(8), batches=[_images(8)], steps=1, batch_size=4, queue_size=8)
    with pytest.raises(ValueError):                               # an empty stream
        stream_fit(nn.Linear(2, 1), [], steps=1, loss_fn=lambda m, b: m(b).sum(), device="cpu")


def _blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    return centres[y] + torch.randn(n, 4, generator=g), y


def test_linear_eval_stream_learns_separable_features_and_decays_lr():
    x_tr, y_tr = _blobs(300, 0)
    x_te, y_te = _blobs(150, 1)
    train = lambda epoch: [(x_tr[i:i + 50], y_tr[i:i + 50]) for i in range(0, 300, 50)]  # noqa: E731
    val = [(x_te[i:i + 64], y_te[i:i + 64]) for i in range(0, 150, 64)]
    scaled = []
    out = linear_eval_stream(nn.Identity(), train, val, num_classes=3, epochs=6, lr=0.5, milestones=(2, 4),
                             prepare_eval=lambda v: scaled.append(1) or v, device="cpu", progress=False)
    assert out["acc"] > 0.9 and out["top5"] == 1.0 and out["train_acc"] > 0.9 and scaled
    clf = out["classifier"]
    assert isinstance(clf, nn.Linear) and clf.out_features == 3
    # chance level for an encoder that throws the input away
    out0 = linear_eval_stream(nn.Sequential(nn.Flatten(), nn.Linear(4, 4, bias=False)).requires_grad_(False)
                              .apply(lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Linear) else None),
                              train, val, num_classes=3, epochs=2, lr=0.5, device="cpu", progress=False)
    assert out0["acc"] < 0.5


def test_extract_features_keeps_order_and_scales_uint8():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.uint8).view(2 * 3, 1, 2, 2) * 10
    y = torch.arange(6)
    f, labels = extract_features(nn.Flatten(), [(x[:4], y[:4]), (x[4:], y[4:])], device="cpu")
    assert torch.equal(labels, y) and f.shape == (6, 4)
    assert torch.allclose(f, x.view(6, 4).float() / 255)
