"""Heads: linear, MLP and weight-normalised classifiers (shapes, equivalences, the WN invariance)."""
import torch
import torch.nn.functional as F
from torch import nn

from replibook.models.heads import LinearHead, MLPHead, WeightNormClassifier


def test_linear_head_is_an_affine_map_and_flattens():
    torch.manual_seed(0)
    head = LinearHead(12, 5)
    h = torch.randn(4, 12)
    torch.testing.assert_close(head(h), h @ head.fc.weight.T + head.fc.bias)
    assert head(torch.randn(4, 3, 2, 2)).shape == (4, 5)
    assert LinearHead(6, 2, bias=False).fc.bias is None


def test_mlp_head_layers_and_linear_special_case():
    head = MLPHead(8, 3, hidden=(16, 4), norm="bn", dropout=0.1)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 4), (4, 3)]
    assert head(torch.randn(5, 8)).shape == (5, 3)
    plain = MLPHead(8, 3, hidden=())
    assert len([m for m in plain.modules() if isinstance(m, nn.Linear)]) == 1


def test_weight_norm_rows_have_norm_g_and_match_linear():
    torch.manual_seed(0)
    head = WeightNormClassifier(7, 4)
    # initialisation: g = ||v|| so the weight equals v; bias zero
    torch.testing.assert_close(head.weight, head.weight_v)
    assert torch.equal(head.fc.bias, torch.zeros(4))
    with torch.no_grad():
        head.weight_g.copy_(torch.tensor([[0.5], [1.0], [2.0], [3.0]]))
    torch.testing.assert_close(head.weight.norm(dim=1), torch.tensor([0.5, 1.0, 2.0, 3.0]))
    h = torch.randn(6, 7)
    expected = F.linear(h, head.weight_g * head.weight_v / head.weight_v.norm(dim=1, keepdim=True),
                        head.fc.bias)
    torch.testing.assert_close(head(h), expected)


def test_weight_norm_output_invariant_to_scaling_v():
    torch.manual_seed(0)
    head = WeightNormClassifier(5, 3)
    h = torch.randn(4, 5)
    before = head(h).detach().clone()
    with torch.no_grad():
        head.weight_v.mul_(torch.tensor([[3.0], [0.1], [7.0]]))
    torch.testing.assert_close(head(h), before)


def test_weight_norm_gradients_reach_g_and_v():
    torch.manual_seed(0)
    head = WeightNormClassifier(5, 3)
    F.cross_entropy(head(torch.randn(8, 5)), torch.randint(0, 3, (8,))).backward()
    for p in (head.weight_g, head.weight_v, head.fc.bias):
        assert p.grad is not None and p.grad.abs().sum() > 0
    names = {n for n, _ in head.named_parameters()}
    assert any(n.endswith("original0") for n in names) and any(n.endswith("original1") for n in names)
