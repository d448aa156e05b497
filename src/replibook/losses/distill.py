r"""Knowledge-distillation objectives (components.md, section 6).

- `kd_kl` — Hinton et al. (2015): KL between temperature-softened teacher and student
  distributions, scaled by :math:`T^2` so its gradient magnitude does not shrink with
  :math:`T` (their Sec. 2).
- `soft_ce` — cross-entropy to given soft targets (MEAL-V2's averaged-teacher targets).
- `feature` — distances between feature tensors (FitNets-style hints, MAE distillation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["kd_kl", "soft_ce", "feature"]


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 4.0) -> torch.Tensor:
    r""":math:`T^2\,\mathrm{KL}(\mathrm{softmax}(t/T)\,\|\,\mathrm{softmax}(s/T))`, averaged over the batch.

    Args:
        student_logits, teacher_logits: ``(B, C)``. The teacher is detached.
        T: temperature (> 0).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits differ in shape: {tuple(student_logits.shape)} "
                         f"vs {tuple(teacher_logits.shape)}")
    if T <= 0:
        raise ValueError(f"temperature must be > 0, got {T}")
    log_p_s = F.log_softmax(student_logits.float() / T, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / T, dim=-1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * T * T


def soft_ce(student_logits: torch.Tensor, p_teacher: torch.Tensor) -> torch.Tensor:
    r""":math:`-\sum_c p_c \log \mathrm{softmax}(s)_c`, averaged over the batch.

    ``p_teacher`` ``(B, C)`` are probabilities (rows sum to 1; detached). Equals the KL to
    ``p_teacher`` plus the teacher's entropy, a constant for the student.
    """
    if student_logits.shape != p_teacher.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and targets "
                         f"{tuple(p_teacher.shape)} differ in shape")
    return -(p_teacher.detach().float() * F.log_softmax(student_logits.float(), dim=-1)).sum(-1).mean()


def feature(s: torch.Tensor, t: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Distance between student features ``s`` and (detached) teacher features ``t`` of equal shape.

    kind: ``"l2"`` mean squared error, ``"l1"`` mean absolute error, ``"smoothl1"`` Huber
    (beta 1), all averaged over every element; ``"cosine"`` mean of ``1 - cos`` between the
    rows flattened from dimension 1 on. Project the student first if the widths differ.
    """
    if s.shape != t.shape:
        raise ValueError(f"student {tuple(s.shape)} and teacher {tuple(t.shape)} features differ in shape; "
                         "project the student to the teacher's width first")
    t = t.detach()
    if kind == "l2":
        return F.mse_loss(s.float(), t.float())
    if kind == "l1":
        return F.l1_loss(s.float(), t.float())
    if kind == "smoothl1":
        return F.smooth_l1_loss(s.float(), t.float())
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(s.flatten(1).float(), t.flatten(1).float(), dim=1)).mean()
    raise ValueError(f"unknown feature loss kind {kind!r}; known: l2, l1, smoothl1, cosine")
