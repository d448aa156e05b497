"""MLP (norm placement, batch dependence), projection heads, LN-LSTM (equivalence with torch, LN invariance)."""
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from replibook.errors import UnknownName
from replibook.models.mlp import MLP, ProjectionHead
from replibook.models.norm import BatchNorm, LayerNorm
from replibook.models.rnn import LNLSTMCell, LSTMSeq


# --------------------------------------------------------------------------- MLP

def test_mlp_layer_order_norm_before_activation_last_linear_plain():
    mlp = MLP([8, 16, 12, 3], norm="ln", act="relu")
    kinds = [type(m) for m in mlp.hidden]
    assert kinds == [nn.Linear, LayerNorm, nn.ReLU, nn.Linear, LayerNorm, nn.ReLU]
    assert isinstance(mlp.out, nn.Linear) and mlp.out.out_features == 3
    assert isinstance(mlp.out_norm, nn.Identity)
    assert [m.normalized_shape for m in mlp.hidden if isinstance(m, LayerNorm)] == [(16,), (12,)]


@pytest.mark.parametrize("norm", [None, "none", "bn", "ln", "gn", "layer2d"])
def test_mlp_shapes_and_gradients(norm):
    torch.manual_seed(0)
    mlp = MLP([10, 16, 16, 4], norm=norm, dropout=0.1)
    x = torch.randn(5, 10)
    out, feats = mlp(x, return_features=True)
    assert out.shape == (5, 4) and feats.shape == (5, 16)
    out.sum().backward()
    for name, p in mlp.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_mlp_flattens_images_and_norm_last():
    mlp = MLP([784, 32, 10], norm="bn", norm_last=True)
    assert isinstance(mlp.out_norm, BatchNorm)
    assert mlp(torch.rand(4, 1, 28, 28)).shape == (4, 10)
    assert len(MLP([6, 2]).hidden) == 0 and MLP([6, 2])(torch.randn(3, 6)).shape == (3, 2)
    with pytest.raises(ValueError):
        MLP([5])


def test_ln_mlp_is_batch_independent_and_bn_mlp_is_not():
    torch.manual_seed(0)
    x = torch.randn(6, 12)
    ln_mlp, bn_mlp = MLP([12, 20, 3], norm="ln"), MLP([12, 20, 3], norm="bn")
    torch.testing.assert_close(ln_mlp(x[:2]), ln_mlp(x)[:2], atol=1e-6, rtol=0)   # train mode, too
    assert (bn_mlp(x[:2]) - bn_mlp(x)[:2]).abs().max() > 1e-3


def test_mlp_deterministic_given_seed():
    torch.manual_seed(3)
    a = MLP([4, 8, 2], norm="ln")
    torch.manual_seed(3)
    b = MLP([4, 8, 2], norm="ln")
    x = torch.randn(3, 4)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("kind,out_shape", [("mlp", (3, 8)), ("linear", (3, 8)), ("none", (3, 16))])
def test_projection_head_kinds(kind, out_shape):
    head = ProjectionHead(16, 32, 8, kind=kind)
    assert head(torch.randn(3, 16)).shape == out_shape
    if kind == "none":
        assert sum(p.numel() for p in head.parameters()) == 0


def test_projection_head_unknown_kind():
    with pytest.raises(UnknownName, match="mlp"):
        ProjectionHead(4, 4, 4, kind="fancy")


# --------------------------------------------------------------------------- LN-LSTM

def test_plain_cell_matches_torch_lstm_cell_after_copying_weights():
    torch.manual_seed(0)
    ours = LNLSTMCell(5, 7, ln=False).double()
    ref = nn.LSTMCell(5, 7).double()
    with torch.no_grad():
        ours.weight_ih.copy_(ref.weight_ih)           # both use the gate order (i, f, g, o)
        ours.weight_hh.copy_(ref.weight_hh)
        ours.bias.copy_(ref.bias_ih + ref.bias_hh)    # torch splits the gate bias in two
    xs = torch.randn(6, 3, 5, dtype=torch.float64)
    state_ours = state_ref = None
    outs_ours, outs_ref = [], []
    for x in xs:
        state_ours = ours(x, state_ours)
        state_ref = ref(x, state_ref)
        outs_ours.append(state_ours[0]), outs_ref.append(state_ref[0])
        torch.testing.assert_close(state_ours[0], state_ref[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(state_ours[1], state_ref[1], atol=1e-6, rtol=0)
    (torch.stack(outs_ours) ** 2).sum().backward()
    (torch.stack(outs_ref) ** 2).sum().backward()
    torch.testing.assert_close(ours.weight_ih.grad, ref.weight_ih.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.weight_hh.grad, ref.weight_hh.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.bias.grad, ref.bias_ih.grad, atol=1e-6, rtol=0)


def test_cell_init_forget_bias_one_and_separate_layer_norms():
    cell = LNLSTMCell(3, 4, ln=True)
    expected = torch.zeros(16)
    expected[4:8] = 1.0
    assert torch.equal(cell.bias.detach(), expected)
    lns = [cell.ln_hh, cell.ln_ih, cell.ln_cell]
    assert all(isinstance(m, LayerNorm) for m in lns)
    assert [m.normalized_shape for m in lns] == [(16,), (16,), (4,)]
    assert len({id(m.weight) for m in lns}) == 3     # separate gains g1, g2, g3
    plain = LNLSTMCell(3, 4, ln=False)
    assert sum(p.numel() for p in cell.parameters()) - sum(p.numel() for p in plain.parameters()) == 2 * (16 + 16 + 4)


def test_ln_cell_matches_the_paper_equations():
    torch.manual_seed(0)
    cell = LNLSTMCell(3, 4, ln=True).double()
    with torch.no_grad():
        for ln in (cell.ln_hh, cell.ln_ih, cell.ln_cell):
            ln.weight.normal_(), ln.bias.normal_()
    x = torch.randn(2, 3, dtype=torch.float64)
    h0, c0 = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)

    def ln(a, m):
        return F.layer_norm(a, a.shape[-1:], m.weight, m.bias, eps=1e-5)

    gates = ln(h0 @ cell.weight_hh.t(), cell.ln_hh) + ln(x @ cell.weight_ih.t(), cell.ln_ih) + cell.bias
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c0 + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(ln(c, cell.ln_cell))
    h_ours, c_ours = cell(x, (h0, c0))
    torch.testing.assert_close(h_ours, h, atol=1e-10, rtol=0)
    torch.testing.assert_close(c_ours, c, atol=1e-10, rtol=0)


def test_ln_lstm_invariant_to_scaling_the_weight_matrices():
    torch.manual_seed(0)
    x = torch.randn(4, 9, 3, dtype=torch.float64)
    for ln, invariant in ((True, True), (False, False)):
        torch.manual_seed(1)
        model = LSTMSeq(3, 8, 5, ln=ln).double()
        before = model(x)
        with torch.no_grad():
            model.cell.weight_hh.mul_(4.0)
            model.cell.weight_ih.mul_(4.0)
        after = model(x)
        diff = (after - before).abs().max().item()
        if invariant:
            assert diff < 1e-4, diff          # exact up to eps / c^2 inside the square root
        else:
            assert diff > 1e-2, diff          # negative control: the plain LSTM changes


@pytest.mark.parametrize("ln", [True, False])
def test_lstm_seq_shapes_gradients_and_determinism(ln):
    torch.manual_seed(0)
    model = LSTMSeq(2, 6, 10, ln=ln)
    x = torch.randn(4, 12, 2)
    logits, hidden = model(x, return_hidden=True)
    assert logits.shape == (4, 10) and hidden.shape == (4, 12, 6)
    torch.testing.assert_close(model.classifier(hidden[:, -1]), logits)
    F.cross_entropy(logits, torch.arange(4)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    torch.manual_seed(0)
    again = LSTMSeq(2, 6, 10, ln=ln)
    assert torch.equal(again(x), model(x))


def test_lstm_seq_accepts_scalar_sequences_and_rejects_wrong_features():
    model = LSTMSeq(1, 4, 3)
    assert model(torch.randn(5, 40)).shape == (5, 3)
    with pytest.raises(ValueError):
        model(torch.randn(5, 40, 2))
