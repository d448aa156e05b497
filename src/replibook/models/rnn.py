r"""LSTM cells with and without layer normalization, and a sequence classifier.

Layer-normalized LSTM (Ba, Kiros & Hinton 2016, arXiv:1607.06450, Sec. 3.1 and
the appendix). With gate pre-activations stacked as :math:`(i, f, g, o)`:

.. math::
    \begin{pmatrix} i \\ f \\ g \\ o \end{pmatrix}
        = \mathrm{LN}(W_h h_{t-1};\, g_1, b_1) + \mathrm{LN}(W_x x_t;\, g_2, b_2) + b

    c_t = \sigma(f) \odot c_{t-1} + \sigma(i) \odot \tanh(g), \qquad
    h_t = \sigma(o) \odot \tanh\big(\mathrm{LN}(c_t;\, g_3, b_3)\big)

Each LN has its own gain and bias, shared over time steps; the statistics are
over the :math:`4H` (or :math:`H`) units of one example at one time step, so
nothing depends on the batch or on the sequence length.

``ln=False`` gives the plain LSTM through the *same* Python code (the three LNs
become identities), so both arms of chapter 49 pay the same per-step overhead
and differ only by the normalization. The gate order :math:`(i, f, g, o)` is
``torch.nn.LSTMCell``'s, so its weights copy over directly.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .norm import LayerNorm

__all__ = ["LNLSTMCell", "LSTMSeq"]


class LNLSTMCell(nn.Module):
    r"""One LSTM step with optional layer normalization of both projections and of the cell.

    Parameters (names follow ``torch.nn.LSTMCell``): ``weight_ih (4H, F)``,
    ``weight_hh (4H, H)``, a single gate bias ``bias (4H)`` (the paper's :math:`b`;
    torch splits it into ``bias_ih + bias_hh``), and with ``ln=True`` the
    LayerNorms ``ln_hh`` (:math:`g_1, b_1`), ``ln_ih`` (:math:`g_2, b_2`) and
    ``ln_cell`` (:math:`g_3, b_3`).

    Init: weights uniform in :math:`\pm 1/\sqrt{H}` (torch's default); bias 0 except
    the forget gate at 1, so the cell starts by remembering (Gers et al. 2000).

    Shapes: ``x: (B, F)``, ``state = (h, c)`` each ``(B, H)`` or None (zeros) -> ``(h, c)``.
    """

    def __init__(self, input_size: int, hidden_size: int, ln: bool = True, eps: float = 1e-5):
        super().__init__()
        self.input_size, self.hidden_size, self.ln = input_size, hidden_size, ln
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))
        if ln:
            self.ln_hh: nn.Module = LayerNorm(4 * hidden_size, eps=eps)
            self.ln_ih: nn.Module = LayerNorm(4 * hidden_size, eps=eps)
            self.ln_cell: nn.Module = LayerNorm(hidden_size, eps=eps)
        else:
            self.ln_hh = self.ln_ih = self.ln_cell = nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        nn.init.uniform_(self.weight_hh, -bound, bound)
        with torch.no_grad():
            self.bias.zero_()
            self.bias[self.hidden_size:2 * self.hidden_size] = 1.0   # forget gate f
        for m in (self.ln_hh, self.ln_ih, self.ln_cell):
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def input_projection(self, x: torch.Tensor) -> torch.Tensor:
        """LN(W_x x; g2, b2) for ``x: (..., F) -> (..., 4H)``.

        It does not depend on the recurrent state, so a sequence model computes it for
        all time steps in one call (one matmul instead of T) before the loop.
        """
        return self.ln_ih(x @ self.weight_ih.t())

    def step(self, x_proj: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step given the projected input ``x_proj = input_projection(x_t): (B, 4H)``."""
        if state is None:
            zeros = x_proj.new_zeros(x_proj.shape[0], self.hidden_size)
            state = (zeros, zeros)
        h_prev, c_prev = state
        # gates = LN(W_h h_{t-1}; g1, b1) + LN(W_x x_t; g2, b2) + b
        gates = self.ln_hh(h_prev @ self.weight_hh.t()) + x_proj + self.bias
        i, f, g, o = gates.chunk(4, dim=-1)
        # c_t = sigma(f) c_{t-1} + sigma(i) tanh(g)
        c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        # h_t = sigma(o) tanh(LN(c_t; g3, b3))
        h = torch.sigmoid(o) * torch.tanh(self.ln_cell(c))
        return h, c

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.step(self.input_projection(x), state)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, ln={self.ln}"


class LSTMSeq(nn.Module):
    """A one-layer (LN-)LSTM over a sequence, classifying from the last hidden state.

    Shapes: ``x: (B, T, F)`` (or ``(B, T)``, read as F = 1) -> logits ``(B, num_classes)``;
    ``return_hidden=True`` also returns all hidden states ``(B, T, H)``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, ln: bool = True,
                 eps: float = 1e-5):
        super().__init__()
        self.cell = LNLSTMCell(input_size, hidden_size, ln=ln, eps=eps)
        self.classifier = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        if x.dim() != 3 or x.shape[-1] != self.cell.input_size:
            raise ValueError(f"LSTMSeq expects (B, T, {self.cell.input_size}), got {tuple(x.shape)}")
        x_proj = self.cell.input_projection(x)          # (B, T, 4H), all steps at once
        state = None
        hidden = []
        for t in range(x.shape[1]):
            state = self.cell.step(x_proj[:, t], state)
            if return_hidden:
                hidden.append(state[0])
        logits = self.classifier(state[0])
        return (logits, torch.stack(hidden, dim=1)) if return_hidden else logits
