"""The CIFAR ResNet-18 (3x3 stride-1 stem, no max-pool) of replibook.models.resnet."""
import torch
from torch import nn

from replibook.models.resnet import StageResNet, resnet18_cifar


def test_resnet18_shapes_and_parameter_count():
    torch.manual_seed(0)
    m = resnet18_cifar(num_classes=10)
    # the CIFAR ResNet-18 of the SimCLR / SupCon code bases: 11,173,962 parameters with 10 classes
    assert sum(p.numel() for p in m.parameters()) == 11_173_962
    x = torch.randn(2, 3, 32, 32)
    logits, feats = m(x, return_features=True)
    assert logits.shape == (2, 10) and feats.shape == (2, 512) and m.num_features == 512
    maps = m.stage_outputs(x)
    assert list(maps) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert maps["stem"].shape == (2, 64, 32, 32)          # stride-1 stem, no max-pool
    assert maps["layer4"].shape == (2, 512, 4, 4)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert not any(isinstance(mod, nn.MaxPool2d) for mod in m.modules())
    assert sum(len(getattr(m, f"layer{i}")) for i in range(1, 5)) == 8     # 2 blocks x 4 stages


def test_small_variant_trains_every_parameter():
    torch.manual_seed(0)
    m = resnet18_cifar(num_classes=3, width=4, blocks=(1, 1))
    assert isinstance(m, StageResNet) and m.num_features == 8
    x, y = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    nn.functional.cross_entropy(m(x), y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    assert all(float(p.grad.abs().sum()) > 0 for n, p in m.named_parameters() if n.endswith("weight"))
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    first = None
    for _ in range(15):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first


def test_features_match_the_pooled_last_stage_and_eval_is_deterministic():
    torch.manual_seed(1)
    m = resnet18_cifar(width=4, blocks=(1, 1, 1)).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        f = m.features(x)
        assert torch.allclose(f, m.stage_outputs(x)["layer3"].mean(dim=(2, 3)))
        assert torch.equal(f, m.features(x))
    assert f.shape == (3, 16)
