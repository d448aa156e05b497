r"""Machine-unlearning metrics: accuracy on the remaining / forgotten / test data and a
membership-inference attack (MIA) on the forgotten data.

An unlearning method turns a model trained on :math:`D = D_r \cup D_f` into one that should
behave as if it had been trained on the remaining data :math:`D_r` alone. The usual report
(e.g. Shen et al. 2024, LAF, Tables 1-3) is

- accuracy on :math:`D_r` (train, kept), on :math:`D_f` (train, forgotten) and on the test
  set :math:`D_t` (for class removal also split into the remaining and the forgotten
  classes); the gold standard is a model *retrained* from scratch on :math:`D_r`, so an
  ideal method matches the retrained model's numbers, not zero;
- an MIA: an attacker learns to tell training members from non-members using only the
  model's outputs, then is asked about :math:`D_f`. After perfect unlearning the forgotten
  samples look like non-members as much as they do to the retrained model.

**Attack protocol** (after the LAF code's ``Train.train_attack_model`` / ``attack``):
features of ``members`` (a sample of :math:`D_r`, label 1) and ``nonmembers`` (test samples,
label 0) train a binary classifier; it then scores ``target`` (:math:`D_f`, the positives)
against ``reference`` (other test samples, never seen by the attacker, the negatives). We
report the attack's ROC AUC on target vs reference, its accuracy on that balanced pair at
the 0.5 threshold (the LAF code's "attack success rate" is this accuracy) and the fraction
of the target called "member". The LAF code uses an XGBoost attacker on sorted softmax
vectors; here the attacker is a logistic regression on standardised features (see
`attack_features` for the feature choices).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .classification import accuracy, predict

__all__ = ["accuracy_on", "unlearning_accuracies", "attack_features", "auc", "bootstrap_auc_ci",
           "membership_inference", "mia"]

FEATURE_KINDS = ("sorted_probs", "loss", "entropy", "loss_entropy", "confidence")


# --------------------------------------------------------------------------- accuracies

def accuracy_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> float:
    """Accuracy of ``model`` (eval mode, no grad) on ``(x, y)``; NaN for an empty set."""
    if len(y) == 0:
        return float("nan")
    return accuracy(predict(model, x, batch_size), y)


def unlearning_accuracies(model: nn.Module, retain: tuple[torch.Tensor, torch.Tensor],
                          forget: tuple[torch.Tensor, torch.Tensor],
                          test: tuple[torch.Tensor, torch.Tensor],
                          forget_classes: Iterable[int] | None = None,
                          batch_size: int = 2048) -> dict[str, float]:
    """Accuracy on :math:`D_r`, :math:`D_f` and :math:`D_t` (and per class group for class removal).

    Args:
        retain, forget, test: ``(x, y)`` pairs; ``y`` are the labels to score against (for
            noisy-label removal pass the *clean* labels of the forgotten samples if the
            question is whether the model now predicts them correctly, the noisy ones if it
            is whether it still reproduces the noise).
        forget_classes: for class removal, the removed classes; adds ``acc_t_remaining``
            (test samples of the other classes) and ``acc_t_forgotten``.
    Returns:
        ``{"acc_r", "acc_f", "acc_t"}`` (+ ``"acc_t_remaining"``, ``"acc_t_forgotten"``).
    """
    out = {"acc_r": accuracy_on(model, *retain, batch_size=batch_size),
           "acc_f": accuracy_on(model, *forget, batch_size=batch_size),
           "acc_t": accuracy_on(model, *test, batch_size=batch_size)}
    if forget_classes is not None:
        x_t, y_t = test
        gone = torch.isin(y_t, torch.as_tensor(list(forget_classes), device=y_t.device))
        out["acc_t_remaining"] = accuracy_on(model, x_t[~gone], y_t[~gone], batch_size)
        out["acc_t_forgotten"] = accuracy_on(model, x_t[gone], y_t[gone], batch_size)
    return out


# --------------------------------------------------------------------------- attack features

def attack_features(logits: torch.Tensor, y: torch.Tensor | None = None,
                    kind: str = "loss_entropy") -> np.ndarray:
    """Per-sample features an output-only attacker sees, ``(N, d)`` float64.

    Kinds:
        ``"sorted_probs"``: the softmax vector sorted in decreasing order (label-free; the
        LAF code's attack input), ``d = K``;
        ``"loss"``: cross-entropy of the label ``y`` (needs ``y``), ``d = 1``;
        ``"entropy"``: entropy of the softmax (label-free), ``d = 1``;
        ``"loss_entropy"``: both, ``d = 2``;
        ``"confidence"``: the largest softmax probability (label-free), ``d = 1``.
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown attack feature kind {kind!r} (choose from {', '.join(FEATURE_KINDS)})")
    logits = logits.detach().float()
    logp = F.log_softmax(logits, dim=-1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    if kind in ("loss", "loss_entropy"):
        if y is None:
            raise ValueError(f"attack feature kind {kind!r} needs the labels y")
        loss = F.nll_loss(logp, y.to(logits.device), reduction="none")
    if kind == "sorted_probs":
        feats = p.sort(dim=-1, descending=True).values
    elif kind == "loss":
        feats = loss[:, None]
    elif kind == "entropy":
        feats = entropy[:, None]
    elif kind == "loss_entropy":
        feats = torch.stack([loss, entropy], dim=1)
    else:
        feats = p.max(dim=-1).values[:, None]
    return feats.cpu().double().numpy()


# --------------------------------------------------------------------------- AUC

def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC = P(score of a positive > score of a negative) + 0.5 P(tie) (Mann-Whitney)."""
    pos, neg = np.asarray(pos, dtype=np.float64).ravel(), np.asarray(neg, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("auc needs at least one positive and one negative score")
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")
    below_or_equal = np.searchsorted(neg_sorted, pos, side="right")
    return float((below.sum() + 0.5 * (below_or_equal - below).sum()) / (pos.size * neg.size))


def bootstrap_auc_ci(pos: np.ndarray, neg: np.ndarray, n_boot: int = 1000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `auc`, resampling positives and negatives separately."""
    pos, neg = np.asarray(pos, dtype=np.float64).ravel(), np.asarray(neg, dtype=np.float64).ravel()
    rng = np.random.default_rng(seed)
    stats = np.array([auc(rng.choice(pos, pos.size), rng.choice(neg, neg.size)) for _ in range(n_boot)])
    tail = (1.0 - level) / 2.0
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1.0 - tail))


# --------------------------------------------------------------------------- the attack

def membership_inference(members: np.ndarray, nonmembers: np.ndarray, target: np.ndarray,
                         reference: np.ndarray, C: float = 1.0, n_boot: int = 0,
                         seed: int = 0) -> dict[str, float]:
    """Train a logistic-regression attacker on members vs non-members, score target vs reference.

    Args:
        members, nonmembers: attack features ``(n, d)`` of known training / non-training
            samples (the attacker's training set; labels 1 / 0).
        target: features of the samples under attack (the forgotten data), scored as
            positives.
        reference: features of non-members the attacker never saw, scored as negatives.
        C: inverse L2 strength of the logistic regression (features are standardised on the
            attacker's training set).
        n_boot: if > 0, also a bootstrap 95% interval of the AUC (``auc_lo``, ``auc_hi``).
    Returns:
        ``auc`` (target vs reference), ``accuracy`` (on target + reference at threshold 0.5,
        each half weighted by its size), ``member_rate`` (fraction of target called member),
        ``train_auc`` (the attacker's AUC on its own training pair: how much membership
        signal there is at all).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    members, nonmembers = np.atleast_2d(members), np.atleast_2d(nonmembers)
    target, reference = np.atleast_2d(target), np.atleast_2d(reference)
    x = np.concatenate([members, nonmembers])
    y = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    attacker = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))
    attacker.fit(x, y)
    s_target = attacker.predict_proba(target)[:, 1]
    s_reference = attacker.predict_proba(reference)[:, 1]
    s_members = attacker.predict_proba(members)[:, 1]
    s_nonmembers = attacker.predict_proba(nonmembers)[:, 1]
    hits = np.concatenate([s_target >= 0.5, s_reference < 0.5])
    out = {"auc": auc(s_target, s_reference), "accuracy": float(hits.mean()),
           "member_rate": float((s_target >= 0.5).mean()),
           "train_auc": auc(s_members, s_nonmembers)}
    if n_boot:
        out["auc_lo"], out["auc_hi"] = bootstrap_auc_ci(s_target, s_reference, n_boot=n_boot, seed=seed)
    return out


def mia(model: nn.Module, members: tuple[torch.Tensor, torch.Tensor],
        nonmembers: tuple[torch.Tensor, torch.Tensor], target: tuple[torch.Tensor, torch.Tensor],
        reference: tuple[torch.Tensor, torch.Tensor], kind: str = "loss_entropy", C: float = 1.0,
        n_boot: int = 0, seed: int = 0, batch_size: int = 2048) -> dict[str, float]:
    """`membership_inference` on the outputs of ``model`` for four ``(x, y)`` sets.

    ``y`` are the labels the loss features use (for the training sets: the labels the model
    was trained on); label-free kinds ignore them.
    """
    def feats(pair: tuple[torch.Tensor, torch.Tensor]) -> np.ndarray:
        x, y = pair
        return attack_features(predict(model, x, batch_size), y, kind)

    return membership_inference(feats(members), feats(nonmembers), feats(target), feats(reference),
                                C=C, n_boot=n_boot, seed=seed)

