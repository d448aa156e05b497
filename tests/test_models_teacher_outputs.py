"""models.backbones.teacher_outputs: equals the preprocessed teacher, and the teacher runs once per data."""
import torch

from replibook import zoo
from replibook.models import backbones
from test_zoo import _fake_resnet_checkpoint


def test_teacher_outputs_equal_the_model_and_are_cached(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "resnet-cifar10").mkdir(parents=True)
    monkeypatch.setenv("REPLIBOOK_DATA", str(data))
    monkeypatch.setenv("REPLIBOOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REPLIBOOK_DEVICE", "cpu")
    source, blob = _fake_resnet_checkpoint()
    torch.save(blob, data / "resnet-cifar10" / "resnet20-12fca82f.th")
    x = torch.rand(7, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    loads = []
    real_load = zoo.load
    monkeypatch.setattr(zoo, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    zoo.reset_used()
    out = backbones.teacher_outputs("resnet20_cifar10", x, batch_size=3)
    source.eval()
    with torch.no_grad():
        ref_logits, ref_feats = source(zoo.preprocess("resnet20_cifar10", x, resize=False), return_features=True)
    torch.testing.assert_close(out["logits"], ref_logits)
    torch.testing.assert_close(out["features"], ref_feats)
    assert len(loads) == 1

    again = backbones.teacher_outputs("resnet20_cifar10", x)
    assert len(loads) == 1 and torch.equal(again["logits"], out["logits"])       # cache hit: no teacher run
    assert [r["name"] for r in zoo.used()] == ["resnet20_cifar10"]
    other = backbones.teacher_outputs("resnet20_cifar10", x[:5])
    assert len(loads) == 2 and torch.equal(other["logits"], out["logits"][:5])
    only_logits = backbones.teacher_outputs("resnet20_cifar10", x, features=False)
    assert set(only_logits) == {"logits"}
    zoo.reset_used()


def test_untrained_teacher_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLIBOOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REPLIBOOK_DEVICE", "cpu")
    monkeypatch.delenv("REPLIBOOK_DATA", raising=False)          # no weights needed
    x = torch.rand(4, 3, 16, 16)
    out = backbones.teacher_outputs("resnet20_cifar10", x, pretrained=False)
    assert out["logits"].shape == (4, 10) and out["features"].shape == (4, 64)
    assert not (tmp_path / "cache" / "features").exists() or not any((tmp_path / "cache" / "features").iterdir())
    zoo.reset_used()
