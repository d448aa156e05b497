"""methods.meal_v2: the discriminator, ensemble targets, the joint/GRL loss and the student trainer."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from replibook.methods import meal_v2 as MV
from replibook.models.resnet import ResNetCIFAR


def test_discriminator_widths_and_non_negative_outputs():
    assert MV.OutputDiscriminator(1000, k=8).widths == (1000, 125, 15, 2)      # the official ImageNet D
    d = MV.OutputDiscriminator(10)
    assert d.widths == (10, 5, 2, 2)
    out = d(torch.randn(7, 10))
    assert out.shape == (7, 2) and (out >= 0).all()                            # ReLU after the last layer


def test_ensemble_targets_average_softmaxes_and_logits():
    z1, z2 = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    p, z = MV.ensemble_targets([z1, z2])
    expected = (torch.softmax(z1, 1) + torch.softmax(z2, 1)) / 2
    assert torch.allclose(p, expected) and torch.allclose(z, torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(p.sum(1), torch.ones(1))
    with pytest.raises(ValueError):
        MV.ensemble_targets([])


def test_discriminator_loss_matches_bce_and_grl_flips_the_student_gradient():
    torch.manual_seed(0)
    d = MV.OutputDiscriminator(4)
    s, t = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4)
    loss = MV.discriminator_loss(d, s, t)
    target = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)
    assert loss.item() == pytest.approx(F.binary_cross_entropy_with_logits(d(torch.cat([s, t])), target).item())
    g_joint, = torch.autograd.grad(loss, s)
    g_rev, = torch.autograd.grad(MV.discriminator_loss(d, s, t, grl=True), s)
    assert torch.allclose(g_rev, -g_joint) and g_joint.abs().sum() > 0


def _blobs(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    centres = torch.randn(4, 8, generator=torch.Generator().manual_seed(99)) * 3
    return centres[y] + torch.randn(n, 8, generator=g), y


def test_soft_label_student_learns_from_a_good_teacher_and_is_deterministic():
    x, y = _blobs()
    xt, yt = _blobs(seed=1)
    p = F.one_hot(y, 4).float() * 0.9 + 0.025                                  # a confident, correct teacher
    runs = []
    for _ in range(2):
        s = MV.make_student(None, [8, 16, 4], seed=3)
        MV.train_student(s, x, y, p, None, epochs=5, batch_size=64, lr=0.05, seed=3)
        runs.append(s)
    assert MV.evaluate(runs[0], xt, yt)["acc"] > 0.9
    for a, b in zip(runs[0].parameters(), runs[1].parameters()):
        assert torch.equal(a, b)
    # soft labels that carry no information about y leave the student at chance
    s = MV.make_student(None, [8, 16, 4], seed=3)
    MV.train_student(s, x, y, torch.full((600, 4), 0.25), None, epochs=5, batch_size=64, lr=0.05, seed=3)
    assert MV.evaluate(s, xt, yt)["acc"] < 0.5


def test_discriminator_arm_trains_the_discriminator_and_needs_teacher_logits():
    x, y = _blobs(n=128)
    p, z = MV.ensemble_targets([F.one_hot(y, 4).float() * 3])
    s = MV.make_student(None, [8, 16, 4], seed=0)
    before = {k: v.clone() for k, v in s.state_dict().items()}
    MV.train_student(s, x, y, p, z, epochs=2, batch_size=32, discriminator=True, seed=0)
    assert any(not torch.equal(before[k], v) for k, v in s.state_dict().items())
    with pytest.raises(ValueError):
        MV.train_student(s, x, y, p, None, epochs=1, discriminator=True)


def test_pretrained_init_is_copied_and_resnet_students_train():
    src = MV.make_student(None, [8, 16, 4], seed=5)
    state = MV.copy_state(src)
    s = MV.make_student(state, [8, 16, 4], seed=0)
    for a, b in zip(s.parameters(), src.parameters()):
        assert torch.equal(a, b) and a.requires_grad
    net = ResNetCIFAR(depth=8)
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    p, z = MV.ensemble_targets([torch.randn(16, 10), torch.randn(16, 10)])
    MV.train_student(net, x, y, p, z, epochs=1, batch_size=8, discriminator=True)
    assert not net.training


def test_bootstrap_gain_known_answers():
    a, b = np.ones(50), np.zeros(50)
    out = MV.bootstrap_gain(a, b)
    assert out == {"gain": 1.0, "lo": 1.0, "hi": 1.0}
    rng = np.random.default_rng(0)
    same = rng.integers(0, 2, 400)
    out = MV.bootstrap_gain(same, same)
    assert out["gain"] == 0.0 and out["lo"] == 0.0 and out["hi"] == 0.0
    noisy = MV.bootstrap_gain(rng.integers(0, 2, 400), rng.integers(0, 2, 400))
    assert noisy["lo"] < noisy["gain"] < noisy["hi"]


def test_cifar10_setting_reads_fake_mirror_and_checkpoints(tmp_path, monkeypatch):
    """The full tier's loader path on tiny fake copies: torchvision CIFAR pickles + publisher checkpoints."""
    from fakes import write_cifar10_pickles
    from test_zoo import _fake_resnet_checkpoint
    from replibook import zoo

    write_cifar10_pickles(tmp_path, per_batch=4, n_test=10)
    (tmp_path / "resnet-cifar10").mkdir()
    files = {20: "resnet20-12fca82f.th", 32: "resnet32-d509ac18.th", 44: "resnet44-014dd654.th",
             56: "resnet56-4bfd9763.th"}
    nets = {}
    for depth, fname in files.items():
        nets[depth], blob = _fake_resnet_checkpoint(depth, seed=depth)
        torch.save(blob, tmp_path / "resnet-cifar10" / fname)
    monkeypatch.setenv("REPLIBOOK_DATA", str(tmp_path))
    monkeypatch.setenv("REPLIBOOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REPLIBOOK_DEVICE", "cpu")
    setting = MV.cifar10_setting([0, 1], device="cpu")
    assert setting.x_train.shape == (20, 3, 32, 32) and setting.x_test.shape == (10, 3, 32, 32)
    assert set(setting.teacher_train) == set(MV.CIFAR_TEACHERS)
    # the teachers' logits are those of the published models on the normalised images
    with torch.no_grad():
        ref = nets[56].eval()(setting.x_test)
    torch.testing.assert_close(setting.teacher_test["resnet56_cifar10"], ref)
    student = setting.student(1, pretrained=True)
    for k, v in nets[20].state_dict().items():
        assert torch.equal(student.state_dict()[k], v), k
    arm_g = next(a for a in MV.ARMS if a.target == "single")
    p, z = MV.arm_targets(setting, arm_g)               # the single ResNet-56 teacher
    assert torch.allclose(p, torch.softmax(setting.teacher_train["resnet56_cifar10"], 1))
    MV.train_student(student, setting.x_train, setting.y_train, p, z, epochs=1, batch_size=10)
    zoo.reset_used()
