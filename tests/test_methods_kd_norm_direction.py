"""KD with the ND loss: class means and directions, the ND loss (known values, the official
per-sample loop, its minimiser), the arms' objectives, the KD warm-up and the measurements."""
import math

import numpy as np
import pytest
import torch

from replibook.methods import kd_norm_direction as K


def reference_nd(s, t, y, means):
    """The official DirectNormLoss written as its per-sample loop (CIFAR/utils.py)."""
    total = 0.0
    for s_i, t_i, k in zip(s, t, y):
        e = means[int(k)] / means[int(k)].norm()
        total = total + 1 - torch.dot(s_i, e) / max(s_i.norm(), t_i.norm())
    return total / len(y)


# --------------------------------------------------------------------------- class means

def test_class_means_and_directions_known_values():
    f = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1, 2])
    means = K.class_means(f, y, 3)
    torch.testing.assert_close(means, torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]]))
    e = K.class_directions(means)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(e[2], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    with pytest.raises(ValueError, match="no sample"):
        K.class_means(f, y, 4)                                   # class 3 is empty


# --------------------------------------------------------------------------- ND loss

def test_nd_loss_matches_the_official_per_sample_loop():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(9, 5, generator=g), torch.randn(9, 5, generator=g) * 2
    y = torch.arange(9) % 3
    means = torch.randn(3, 5, generator=g)
    ours = K.nd_loss(s, t, y, K.class_directions(means))
    assert float(ours) == pytest.approx(float(reference_nd(s, t, y, means)), rel=1e-6)


def test_nd_loss_known_values_norm_and_direction():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0])
    t = torch.tensor([[0.0, 4.0]])                                # teacher norm 4
    # aligned with e_0 but half the teacher's norm: 1 - 2/4
    assert float(K.nd_loss(torch.tensor([[2.0, 0.0]]), t, y, e)) == pytest.approx(0.5)
    # aligned and at the teacher's norm or beyond: 0 (the ratio becomes the cosine)
    assert float(K.nd_loss(torch.tensor([[4.0, 0.0]]), t, y, e)) == pytest.approx(0.0, abs=1e-7)
    assert float(K.nd_loss(torch.tensor([[9.0, 0.0]]), t, y, e)) == pytest.approx(0.0, abs=1e-7)
    # orthogonal: 1; opposite at the teacher's norm: 2
    assert float(K.nd_loss(torch.tensor([[0.0, 3.0]]), t, y, e)) == pytest.approx(1.0)
    assert float(K.nd_loss(torch.tensor([[-4.0, 0.0]]), t, y, e)) == pytest.approx(2.0)


def test_nd_gradient_grows_the_norm_along_the_class_direction():
    e = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[5.0, 5.0]])                                # |t| ~ 7.07
    s = torch.tensor([[1.0, 0.0]], requires_grad=True)            # aligned, small norm
    K.nd_loss(s, t, torch.tensor([0]), e).backward()
    assert s.grad[0, 0] < 0 and s.grad[0, 1] == 0                 # descent increases s along e
    # whereas the pure cosine term is already at its minimum there: no push on the norm
    s2 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    K.direction_loss(s2, torch.tensor([0]), e).backward()
    assert s2.grad.abs().max() < 1e-6
    # descent on ND drives a random feature to the teacher's norm along e
    s3 = torch.tensor([[0.3, -0.8]], requires_grad=True)
    opt = torch.optim.SGD([s3], lr=2.0)
    for _ in range(400):
        opt.zero_grad()
        K.nd_loss(s3, t, torch.tensor([0]), e).backward()
        opt.step()
    assert float(K.nd_loss(s3.detach(), t, torch.tensor([0]), e)) < 0.01
    assert s3.detach()[0, 0] > 0.95 * float(t.norm()) and abs(float(s3.detach()[0, 1])) < 0.2 * float(t.norm())


def test_nd_loss_rejects_mismatched_widths():
    with pytest.raises(ValueError, match="differ in shape"):
        K.nd_loss(torch.randn(2, 3), torch.randn(2, 4), torch.tensor([0, 1]), torch.eye(4)[:2])


def test_l2_feature_loss_is_the_relative_squared_distance():
    s, t = torch.tensor([[1.0, 1.0], [0.0, 0.0]]), torch.tensor([[1.0, 3.0], [3.0, 4.0]])
    # |s-t|^2 = 4 and 25, mean 14.5; divided by the given mean |t|^2 = 10
    assert float(K.l2_feature_loss(s, t, 10.0)) == pytest.approx(1.45)


# --------------------------------------------------------------------------- objectives

class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.f = torch.nn.Linear(4, 3)
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x, return_features=False):
        h = self.f(x)
        return (self.head(h), h) if return_features else self.head(h)


def test_kd_warmup_schedule():
    assert K.kd_warmup_factor(0, 20) == 0.0
    assert K.kd_warmup_factor(10, 20) == 0.5
    assert K.kd_warmup_factor(25, 20) == 1.0
    assert K.kd_warmup_factor(0, 0) == 1.0


def test_arms_add_the_right_terms_and_kd_is_off_in_epoch_zero():
    torch.manual_seed(0)
    model, x, y = Toy(), torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1])
    t_logits, t_feats = torch.randn(6, 2) * 3, torch.randn(6, 3)
    e = K.class_directions(torch.randn(2, 3))
    with torch.no_grad():
        logits, s = model(x, return_features=True)
    ce = torch.nn.functional.cross_entropy(logits, y)
    kd = K.kd_kl(logits, t_logits, T=4.0)
    common = dict(directions=e, T=4.0, beta=2.0, warmup_epochs=2, steps_per_epoch=1, t_sq_norm=3.0)
    expected = {"CE": ce, "KD": ce + kd, "KD+L2": ce + kd + 2 * K.l2_feature_loss(s, t_feats, 3.0),
                "KD+cos": ce + kd + 2 * K.direction_loss(s, y, e),
                "KD+ND": ce + kd + 2 * K.nd_loss(s, t_feats, y, e)}
    for arm in K.ARMS:
        fn = K.distill_loss_fn(arm, **common)
        first = fn(model, x, y, t_logits, t_feats).detach()     # epoch 0: KD weight 0
        second = fn(model, x, y, t_logits, t_feats).detach()    # epoch 1: 0.5
        third = fn(model, x, y, t_logits, t_feats).detach()     # epoch 2: 1
        kd_part = 0.0 if arm == "CE" else float(kd)
        assert float(third) == pytest.approx(float(expected[arm]), rel=1e-5), arm
        assert float(first) == pytest.approx(float(expected[arm]) - kd_part, rel=1e-5), arm
        assert float(second) == pytest.approx(float(expected[arm]) - 0.5 * kd_part, rel=1e-5), arm
    with pytest.raises(ValueError, match="unknown arm"):
        K.distill_loss_fn("FitNet")
    with pytest.raises(ValueError, match="directions"):
        K.distill_loss_fn("KD+ND")


# --------------------------------------------------------------------------- measurements

def test_norms_ratio_cosine_and_bootstrap():
    s = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    t = torch.tensor([[6.0, 8.0], [0.0, 2.0]])
    torch.testing.assert_close(K.feature_norms(s), torch.tensor([5.0, 1.0]))
    assert K.norm_ratio(s, t) == pytest.approx(0.5)
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert K.cos_to_class_direction(s, torch.tensor([1, 1]), e) == pytest.approx((0.8 + 1.0) / 2)
    rng = np.random.default_rng(0)
    b = rng.uniform(1, 2, 500)
    a = 0.8 * b + rng.normal(0, 0.05, 500)
    ratio, lo, hi = K.bootstrap_ratio_ci(a, b, n_boot=500)
    assert lo < ratio < hi and hi < 0.85 and lo > 0.75
    chunks = K.chunk_ratios(a, b, 5)
    assert len(chunks) == 5 and all(0.75 < c < 0.85 for c in chunks)
    with pytest.raises(ValueError):
        K.chunk_ratios(a, b, 0)


def test_train_student_learns_and_nd_raises_the_norm_ratio():
    g = torch.Generator().manual_seed(0)
    n, d = 400, 16
    y = torch.arange(n) % 4
    centers = torch.randn(4, 10, generator=g) * 2
    x = centers[y] + torch.randn(n, 10, generator=g)
    # a "teacher" with large, class-aligned features
    t_feats = torch.relu(torch.randn(4, d, generator=g))[y] * 3 + 0.3 * torch.rand(n, d, generator=g)
    t_logits = torch.nn.functional.one_hot(y, 4).float() * 5
    tr, te = slice(0, 300), slice(300, None)
    dirs = K.class_directions(K.class_means(t_feats[tr], y[tr], 4))
    cfg = dict(student_hidden=[32, d], epochs=25, batch_size=50, lr=1e-2, T=4.0, beta=2.0, kd_warmup_epochs=1)
    runs = {arm: K.train_student(arm, (x[tr], y[tr]), (x[te], y[te]),
                                 {"logits": t_logits[tr], "features": t_feats[tr]},
                                 {"logits": t_logits[te], "features": t_feats[te]}, dirs, cfg, seed=0)
            for arm in ("KD", "KD+ND")}
    for run in runs.values():
        assert run.metrics["acc"] > 0.8 and run.test_features.shape == (100, d)
    assert runs["KD+ND"].metrics["norm_ratio"] > runs["KD"].metrics["norm_ratio"] + 0.2
    assert runs["KD+ND"].metrics["cos_dir"] > runs["KD"].metrics["cos_dir"]
    with pytest.raises(ValueError, match="penultimate width"):
        K.train_student("KD", (x[tr], y[tr]), (x[te], y[te]), {"logits": t_logits[tr], "features": t_feats[tr]},
                        {"logits": t_logits[te], "features": t_feats[te]}, dirs, {**cfg, "student_hidden": [8]}, 0)


# ======================================================================== full tier: CIFAR-100 ResNet-56 -> ResNet-20

import pickle

from replibook import zoo
from replibook.data.real import cifar100
from replibook.errors import DatasetMissing, ReplibookError


class RefBlock(torch.nn.Module):
    """The official CIFAR ResNet basic block, written from its description (ND Models/resnet_cifar.py,
    CRD models/resnet.py): parameter names conv1, bn1, conv2, bn2, downsample.{0,1}."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                           if stride != 1 or c_in != c_out else None)

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (self.downsample(x) if self.downsample is not None else x))


class RefResNet(torch.nn.Module):
    """Official CIFAR ResNet layout: conv1, bn1, layer1..3, avgpool(8), fc; forward -> (embedding, logits)."""

    def __init__(self, depth, num_classes=100):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = torch.nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(16)
        c = 16
        for i, (w, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            blocks = []
            for k in range(n):
                blocks.append(RefBlock(c, w, stride if k == 0 else 1))
                c = w
            setattr(self, f"layer{i}", torch.nn.Sequential(*blocks))
        self.fc = torch.nn.Linear(64, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        emb = torch.nn.functional.avg_pool2d(x, 8).flatten(1)
        return emb, self.fc(emb)


def ref_teacher(depth, num_classes=100, seed=0):
    torch.manual_seed(seed)
    ref = RefResNet(depth, num_classes)
    for m in ref.modules():                      # non-trivial BN statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return ref.eval()


def write_teacher(root, depth, blob_key="model", prefix="", seed=0, num_classes=100):
    ref = ref_teacher(depth, num_classes, seed)
    folder = root / K.TEACHER_DIR / f"resnet{depth}_vanilla"
    folder.mkdir(parents=True, exist_ok=True)
    state = {prefix + k: v for k, v in ref.state_dict().items()}
    torch.save({blob_key: state, "epoch": 240, "accuracy": torch.tensor(70.0)}, folder / "ckpt_epoch_240.pth")
    return ref


def write_fake_cifar100(root, n_train=200, n_test=100, seed=0):
    """torchvision's cifar-100-python/{train,test} pickles: uint8 rows of 3072 (R, G, B planes), fine labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             "fine_labels": [i % 100 for i in range(n)], "coarse_labels": [i % 20 for i in range(n)],
             "filenames": [f"{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(d, fh)
    return root


def test_official_resnet_key_renaming():
    assert K.official_resnet_key("module.layer2.0.downsample.1.running_var") == "layer2.0.shortcut.1.running_var"
    assert K.official_resnet_key("fc.weight") == "linear.weight"
    assert K.official_resnet_key("layer3.8.bn2.bias") == "layer3.8.bn2.bias"
    assert K.official_resnet_key("conv1.weight") == "conv1.weight"


def test_zoo_teacher_loads_the_official_checkpoint_and_equals_it(tmp_path, monkeypatch):
    ref = write_teacher(tmp_path, 56)
    monkeypatch.setenv("REPLIBOOK_DATA", str(tmp_path))
    assert K.TEACHER in zoo.discover()
    teacher = zoo.load(K.TEACHER, device="cpu")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        emb, logits = ref(K.normalise(x))
    out = K.image_outputs(teacher, x)
    torch.testing.assert_close(out["features"], emb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["logits"], logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(zoo.preprocess(K.TEACHER, x), K.normalise(x))
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_loader_accepts_the_nd_baseline_layout_and_rejects_a_wrong_depth(tmp_path):
    ref = write_teacher(tmp_path, 8, blob_key="model_state_dict", prefix="module.")
    blob = torch.load(tmp_path / K.TEACHER_DIR / "resnet8_vanilla" / "ckpt_epoch_240.pth", weights_only=True)
    model = K.ResNetCIFAR(depth=8, num_classes=100, shortcut="B").eval()
    assert K.load_official_resnet(model, blob) == "model_state_dict"
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x, return_features=True)[0], ref(x)[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ReplibookError, match="not an official CIFAR ResNet"):
        K.load_official_resnet(K.ResNetCIFAR(depth=14, num_classes=100, shortcut="B"), blob)


def test_zoo_teacher_reads_a_checkpoint_that_pickles_its_options(tmp_path, monkeypatch):
    """CRD's *_last.pth files also store the argparse options, which weights_only loading refuses."""
    import argparse
    ref = write_teacher(tmp_path, 8)
    path = tmp_path / K.TEACHER_DIR / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    torch.save({"opt": argparse.Namespace(model="resnet8"), "model": ref.state_dict()}, path)
    monkeypatch.setenv("REPLIBOOK_DATA", str(tmp_path))
    teacher = zoo.load(K.TEACHER, cfg={"depth": 8}, device="cpu")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(K.image_outputs(teacher, x)["logits"], ref(K.normalise(x))[1], rtol=1e-5, atol=1e-5)


def test_missing_teacher_or_data_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLIBOOK_DATA", str(tmp_path))
    with pytest.raises(DatasetMissing, match="REPLIBOOK_DATA.*resnet56_vanilla/ckpt_epoch_240.pth"):
        zoo.load(K.TEACHER, device="cpu")
    monkeypatch.delenv("REPLIBOOK_DATA")
    with pytest.raises(DatasetMissing, match="REPLIBOOK_DATA is not set"):
        zoo.load(K.TEACHER, device="cpu")
    with pytest.raises(DatasetMissing, match="CIFAR-100"):
        cifar100(root=tmp_path, device="cpu")


def test_recipe_schedule_and_official_init():
    cfg = K.CIFAR100_RECIPE
    assert (cfg["epochs"], cfg["batch_size"], cfg["T"], cfg["beta"]) == (240, 128, 4.0, 2.0)
    assert (cfg["kd_warmup_epochs"], cfg["momentum"], cfg["nesterov"], cfg["weight_decay"]) == (20, 0.9, True, 5e-4)
    assert [K.lr_at(e, cfg) for e in (0, 149, 150, 179, 180, 210, 239)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 1e-4, 1e-4])
    torch.manual_seed(0)
    m = K.official_init(K.ResNetCIFAR(depth=20, num_classes=100, shortcut="B")).requires_grad_(False)
    assert 0.007 < float(m.linear.weight.detach().std()) < 0.013
    assert float(m.layer1[0].bn1.weight.min()) == 1.0 and float(m.layer1[0].bn1.bias.abs().max()) == 0.0
    # fan-out Kaiming: std sqrt(2 / (out_channels * 9)) for the 3x3 convolutions
    w = m.layer3[1].conv1.weight.detach()
    assert float(w.std()) == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.1)


def test_teacher_class_means_use_the_teacher_features(tmp_path):
    ref = write_teacher(tmp_path, 8)
    teacher = K.ResNetCIFAR(depth=8, num_classes=100, shortcut="B")
    K.load_official_resnet(teacher, torch.load(tmp_path / K.TEACHER_DIR / "resnet8_vanilla" / "ckpt_epoch_240.pth",
                                               weights_only=True))
    teacher.eval()
    x, y = torch.rand(20, 3, 32, 32), torch.arange(20) % 4
    means, t_sq = K.teacher_class_means(teacher, x, y, 4, augment=False, batch_size=7)
    with torch.no_grad():
        emb = ref(K.normalise(x))[0]
    torch.testing.assert_close(means, K.class_means(emb, y, 4), rtol=1e-5, atol=1e-5)
    assert t_sq == pytest.approx(float(emb.pow(2).sum(1).mean()), rel=1e-5)
    aug, _ = K.teacher_class_means(teacher, x, y, 4, augment=True, seed=0)   # one augmented pass: differs
    assert not torch.allclose(aug, means)


def test_full_code_path_runs_on_a_fake_cifar100_folder(tmp_path, monkeypatch):
    """1-2 updates of every arm through the full preset's code: the CIFAR-100 pickles, the zoo teacher from
    its official checkpoint, augmented class means, the SGD recipe and the measurements."""
    write_fake_cifar100(tmp_path, n_train=200, n_test=100)
    write_teacher(tmp_path, 8)
    monkeypatch.setenv("REPLIBOOK_DATA", str(tmp_path))
    data = cifar100(device="cpu")
    teacher = zoo.load(K.TEACHER, cfg={"depth": 8}, device="cpu")
    means, t_sq = K.teacher_class_means(teacher, data.train.x, data.train.y, 100)
    directions = K.class_directions(means)
    t_test = K.image_outputs(teacher, data.test.x)
    cfg = {**K.CIFAR100_RECIPE, "epochs": 1, "student_depth": 8, "amp": True, "eval_every": 1}
    runs = {}
    for arm in K.ARMS:
        runs[arm] = K.train_image_student(arm, data, teacher, directions, t_sq, t_test, cfg, seed=0)
        m = runs[arm].metrics
        assert 0.0 <= m["acc"] <= 1.0 and m["acc_best"] >= m["acc"]
        assert all(math.isfinite(v) for v in m.values()) and m["s_norm"] > 0
        assert runs[arm].test_features.shape == (100, 64) and runs[arm].curve[-1][0] == 1
    # same seed: same initialisation and batches, so CE and KD differ only through the KD term, which the
    # warm-up switches off in epoch 0 -> identical students
    assert runs["CE"].metrics["acc"] == runs["KD"].metrics["acc"]
    torch.testing.assert_close(runs["CE"].test_features, runs["KD"].test_features)
    assert not torch.allclose(runs["KD"].test_features, runs["KD+ND"].test_features)


def test_image_student_learns_a_colour_coded_task():
    """The loop itself learns: 4 classes coded by colour, ResNet-8, a few epochs on CPU."""
    g = torch.Generator().manual_seed(0)
    n = 256
    y = torch.arange(n) % 4
    palette = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.1]])
    x = (palette[y][:, :, None, None] + 0.15 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)

    class Data:
        class train:                                            # noqa: N801
            pass

        class test:                                             # noqa: N801
            pass
    Data.train.x, Data.train.y, Data.test.x, Data.test.y = x[:192], y[:192], x[192:], y[192:]
    teacher = K.official_init(K.ResNetCIFAR(depth=8, num_classes=4, shortcut="B")).eval()
    means, t_sq = K.teacher_class_means(teacher, Data.train.x, Data.train.y, 4)
    cfg = {**K.CIFAR100_RECIPE, "epochs": 6, "batch_size": 32, "lr": 0.05, "student_depth": 8, "num_classes": 4,
           "kd_warmup_epochs": 2, "lr_milestones": [4], "amp": False, "eval_every": 2}
    run = K.train_image_student("KD+ND", Data, teacher, K.class_directions(means), t_sq,
                                K.image_outputs(teacher, Data.test.x), cfg, seed=0)
    assert run.metrics["acc"] > 0.9, run.metrics
    assert [e for e, _ in run.curve] == [2, 4, 6]


@pytest.mark.slow
def test_notebook_full_preset_executes_on_fakes(tmp_path, monkeypatch):
    """The chapter notebook itself at size="full" (1 epoch, 3 seeds, 2 arms) on a fake CIFAR-100 folder and a
    fake official ResNet-56 checkpoint: every cell of the full path runs and the claims get verdicts."""
    import nbformat
    from nbclient import NotebookClient
    from pathlib import Path

    write_fake_cifar100(tmp_path, n_train=200, n_test=100)
    write_teacher(tmp_path, 56)
    monkeypatch.setenv("REPLIBOOK_DATA", str(tmp_path))
    monkeypatch.setenv("REPLIBOOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("REPLIBOOK_RUN_DIR", raising=False)
    repo = Path(__file__).resolve().parents[1]
    nb = nbformat.read(repo / "notebooks" / "kd-norm-direction.ipynb", 4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source += '\nsize = "full"\nseeds = 3\nepochs = 1\narms = ["KD", "KD+ND"]\ndevice = "cpu"\n'
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(repo)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "CIFAR-100: train (200, 3, 32, 32), test (100, 3, 32, 32)" in text
    assert "kd-norm-direction [full] 3 seeds" in text and "6 students" in text


def test_zoo_can_train_the_teacher_with_the_baseline_recipe(tmp_path, monkeypatch):
    """The stand-in teacher: the same loop with CE only, built by the zoo (1 epoch on fakes, ResNet-8)."""
    write_fake_cifar100(tmp_path, n_train=200, n_test=100)
    monkeypatch.setenv("REPLIBOOK_DATA", str(tmp_path))
    monkeypatch.setenv("REPLIBOOK_CACHE", str(tmp_path / "cache"))
    cfg = {"depth": 8, "epochs": 1}
    path = zoo.build(K.TEACHER_TRAINED, cfg, progress=False)
    assert path.is_file() and str(path).startswith(str(tmp_path / "cache"))
    teacher = zoo.load(K.TEACHER_TRAINED, cfg, device="cpu")
    torch.manual_seed(0)
    init = K.official_init(K.ResNetCIFAR(depth=8, num_classes=100, shortcut="B"))
    assert not torch.allclose(teacher.conv1.weight, init.conv1.weight)          # trained, not the initialisation
    assert 0.0 <= teacher.zoo_metrics["test_acc"] <= 1.0
    with pytest.raises(ValueError, match="needs the teacher"):
        K.train_image_student("KD", cifar100(device="cpu"), None, None, 1.0, None,
                              {**K.CIFAR100_RECIPE, "epochs": 1}, seed=0)
