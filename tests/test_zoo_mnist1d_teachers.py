"""Zoo entries `cnn1d_mnist1d`, `cnn1d_wide_mnist1d`, `mlp_mnist1d`: cards, the untrained path,
shapes of logits and features, and a tiny build that learns MNIST-1D and is cached."""
import pytest
import torch

from replibook import zoo
from replibook.errors import UnknownName

TINY = {"n_train": 1000, "n_test": 300, "steps": 150, "batch_size": 64, "lr": 3e-3}


@pytest.mark.parametrize("name, lo, hi", [("cnn1d_mnist1d", 80_000, 160_000),
                                          ("cnn1d_wide_mnist1d", 200_000, 400_000),
                                          ("mlp_mnist1d", 15_000, 40_000)])
def test_cards_label_stand_ins(name, lo, hi):
    c = zoo.card(name)
    assert name in zoo.available() and c["source"] == zoo.STAND_IN
    assert "not the paper's model" in c["stand_in"] and "MNIST-1D" in c["trained_on"]
    assert lo < c["params"] < hi, c["params"]
    assert 65 in c["chapters"] and c["cpu_time_estimate"] and c["training"]


@pytest.mark.parametrize("name", zoo.MNIST1D_ENTRIES)
def test_untrained_models_give_logits_and_128_d_features(tmp_cache, name):
    model = zoo.load(name, pretrained=False)
    assert model.zoo_record["source"] == zoo.UNTRAINED and not model.training
    x = torch.randn(5, 40)
    logits, feats = model(x, return_features=True)
    assert logits.shape == (5, 10) and feats.shape == (5, 128)
    assert (feats >= 0).all()                                     # post-ReLU, like a ResNet's pooled features
    torch.testing.assert_close(model(x), logits)
    assert not list(tmp_cache.glob("**/*.pt"))


def test_cnn_accepts_channel_dim_and_rejects_bad_length():
    net = zoo.Cnn1dClassifier(channels=8, feature_dim=16)
    x = torch.randn(3, 40)
    net.eval()
    torch.testing.assert_close(net(x), net(x[:, None, :]))
    with pytest.raises(ValueError, match="divisible by 4"):
        zoo.Cnn1dClassifier(length=42)
    with pytest.raises(UnknownName, match="no config key"):
        zoo.load("cnn1d_mnist1d", cfg={"width": 3}, pretrained=False)


@pytest.mark.parametrize("name, cfg", [("cnn1d_mnist1d", {**TINY, "channels": 16}), ("mlp_mnist1d", TINY)])
def test_tiny_build_learns_mnist1d_and_is_cached(tmp_cache, name, cfg):
    path = zoo.build(name, cfg=cfg, progress=False)
    assert path.exists() and path.name.startswith(f"{name}-")
    model = zoo.load(name, cfg=cfg, build_if_missing=False)
    m = model.zoo_metrics
    assert m["test_acc"] > 0.3 and m["train_acc"] > 0.3, m       # chance is 0.1
    assert m["data_source"] == "mnist1d.make_dataset" and m["train_seconds"] > 0
    mtime = path.stat().st_mtime_ns
    assert zoo.build(name, cfg=cfg, progress=False) == path and path.stat().st_mtime_ns == mtime
