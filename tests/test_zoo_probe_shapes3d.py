"""Zoo entry `probe_shapes3d`: card, untrained path, and a tiny build that learns the factors."""
import pytest
import torch

from replibook import zoo
from replibook.data.procedural import shapes3d

TINY = {"levels": [3, 3, 3, 2, 2, 3], "image_size": 16, "n_train": 1500, "n_test": 300, "widths": [16, 32],
        "feature_dim": 32, "steps": 150, "batch_size": 64, "lr": 3e-3}


def test_card_labels_a_stand_in_of_about_0_1m_parameters():
    c = zoo.card("probe_shapes3d")
    assert c["source"] == zoo.STAND_IN and "not the paper's model" in c["stand_in"]
    assert 80_000 < c["params"] < 160_000
    assert 41 in c["chapters"] and c["trained_on"] and c["cpu_time_estimate"]


def test_untrained_path_gives_shapes_for_any_levels_and_size(tmp_cache):
    probe = zoo.load("probe_shapes3d", cfg={"image_size": 16, "levels": [6, 6, 6, 4, 4, 5]}, pretrained=False)
    assert probe.zoo_record["source"] == zoo.UNTRAINED
    assert not any(p.requires_grad for p in probe.parameters()) and not probe.training
    x = torch.rand(7, 3, 16, 16)
    assert probe(x).shape == (7, 6 + 6 + 6 + 4 + 4 + 5)
    pred = probe.predict_factors(x)
    assert pred.shape == (7, 6) and pred.dtype == torch.long
    assert (pred < torch.tensor([6, 6, 6, 4, 4, 5])).all() and (pred >= 0).all()
    assert probe.embed_images(x).shape == (7, 64)
    assert not list(tmp_cache.glob("**/*.pt"))                     # nothing was trained or cached
    with pytest.raises(ValueError, match="divisible"):
        zoo.load("probe_shapes3d", cfg={"image_size": 20}, pretrained=False)


def test_tiny_build_learns_every_factor_well_above_chance_and_is_cached(tmp_cache):
    path = zoo.build("probe_shapes3d", cfg=TINY, progress=False)
    assert path.exists() and path.name.startswith("probe_shapes3d-")
    probe = zoo.load("probe_shapes3d", cfg=TINY, build_if_missing=False)
    metrics = probe.zoo_metrics
    # fresh test scenes, drawn here (not the recipe's own test split)
    test = shapes3d.make(400, seed=123, size=16, levels=TINY["levels"])
    acc = zoo.shapes3d_probe_accuracy(probe, test.x, test.factors)
    chance = [1 / k for k in TINY["levels"]]
    for name, a, c in zip(zoo.SHAPES3D_FACTORS, acc, chance):
        assert a > c + 0.25, f"{name}: accuracy {a:.2f} vs chance {c:.2f}"
    for hue in (0, 1, 2):                                          # colours are the easy factors
        assert acc[hue] > 0.9
    assert metrics["test_acc_mean"] == pytest.approx(sum(acc) / 6, abs=0.1)
    assert "test_acc_blur_mean" in metrics and metrics["train_seconds"] > 0
    # a second build is a cache hit: same file, untouched
    mtime = path.stat().st_mtime_ns
    assert zoo.build("probe_shapes3d", cfg=TINY, progress=False) == path
    assert path.stat().st_mtime_ns == mtime
