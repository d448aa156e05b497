r"""MEAL V2 (Shen & Savvides, 2020): distil an ensemble's averaged softmax into a pretrained student.

The recipe, as the official code runs it (``train.py``, ``loss.py``, ``models/discriminator.py``,
``extensions/teacher_wrapper.py``):

- the target of every training image is the teachers' *averaged softmax*
  :math:`p_T = \frac1M\sum_m \mathrm{softmax}(z_m)` (no temperature, no one-hot label);
- the similarity loss is the cross-entropy :math:`-\sum_c p_{T,c}\log \mathrm{softmax}(z_S)_c`;
- a small *output discriminator* (1x1 convolutions = an MLP, ReLU after every layer, the last
  included) reads the student's logits and the teachers' averaged logits, and is trained with
  binary cross-entropy to tell them apart;
- the code adds the discriminator's BCE to the similarity loss and takes one SGD step on the
  student and the discriminator *together* — so the student descends the same BCE as the
  discriminator (no gradient reversal). The paper calls the term adversarial; the joint form is
  what produced its numbers, so it is the default here, with ``grl=True`` as the
  gradient-reversed (adversarial) variant;
- the student starts from its standard pretrained checkpoint; no weight decay, no mixup/cutmix.

`train_student` implements one arm of the chapter's ablation; `OutputDiscriminator`,
`ensemble_targets` and `discriminator_loss` are the paper's pieces.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..losses.distill import soft_ce
from ..metrics.classification import accuracy, expected_calibration_error, predict
from ..models.mlp import MLP
from ..train import fit

__all__ = ["OutputDiscriminator", "ensemble_targets", "discriminator_loss", "GradReverse", "StudentWithD",
           "Arm", "ARMS", "train_student", "make_student", "bootstrap_gain", "Setting",
           "mnist1d_setting", "cifar10_setting", "arm_targets", "cifar_premise", "evaluate", "copy_state"]


class OutputDiscriminator(nn.Module):
    r"""MEAL V2's discriminator on logits: :math:`C \to C/K \to C/K^2 \to 2`, ReLU after *every* layer.

    The official module uses 1x1 convolutions on ``(B, C, 1, 1)``, which equal linear layers; it is
    built with ``K = 8`` for ImageNet (1000 -> 125 -> 15 -> 2). With 10 classes ``K = 8`` leaves no
    unit, so widths are ``max(C // K**i, 2)``. The final ReLU is kept as in the code (the BCE then
    sees non-negative logits). Shapes: ``(B, C) -> (B, 2)``.
    """

    def __init__(self, num_classes: int, k: int = 2):
        super().__init__()
        w1, w2 = max(num_classes // k, 2), max(num_classes // k ** 2, 2)
        self.net = nn.Sequential(nn.Linear(num_classes, w1), nn.ReLU(), nn.Linear(w1, w2), nn.ReLU(),
                                 nn.Linear(w2, 2), nn.ReLU())
        self.widths = (num_classes, w1, w2, 2)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.net(logits)


def ensemble_targets(teacher_logits: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(p_T, z_T)``: the averaged softmax :math:`\frac1M\sum_m \mathrm{softmax}(z_m)` (the soft label)
    and the averaged logits :math:`\frac1M\sum_m z_m` (what the discriminator sees), each ``(N, C)``."""
    if not teacher_logits:
        raise ValueError("ensemble_targets needs at least one teacher")
    stack = torch.stack([z.float() for z in teacher_logits])
    return torch.softmax(stack, dim=-1).mean(0), stack.mean(0)


class GradReverse(torch.autograd.Function):
    """Identity forward, negated gradient backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


def discriminator_loss(disc: nn.Module, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       grl: bool = False) -> torch.Tensor:
    r"""BCE-with-logits of the discriminator on ``[student; teacher]`` rows (official ``discriminatorLoss``).

    Targets are ``[1, 0]`` for student rows and ``[0, 1]`` for teacher rows (a two-unit output
    with independent sigmoids, as in the code). The teacher rows are detached. ``grl=True``
    reverses the gradient reaching the student, which turns the joint descent into a minimax game.
    """
    s = GradReverse.apply(student_logits) if grl else student_logits
    inputs = torch.cat([s, teacher_logits.detach()])
    n_s, n_t = len(student_logits), len(teacher_logits)
    target = torch.cat([torch.tensor([[1.0, 0.0]]).expand(n_s, 2),
                        torch.tensor([[0.0, 1.0]]).expand(n_t, 2)]).to(inputs.device)
    return F.binary_cross_entropy_with_logits(disc(inputs), target)


class StudentWithD(nn.Module):
    """The student and (optionally) the discriminator in one module, so one optimiser steps both."""

    def __init__(self, student: nn.Module, disc: nn.Module | None):
        super().__init__()
        self.student, self.disc = student, disc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


@dataclass(frozen=True)
class Arm:
    """One row of the ablation: where the student starts and which terms it trains with."""

    name: str
    init: str = "pretrained"           # "pretrained" | "random"
    target: str = "ensemble"           # "ensemble" | "single" | "labels" (plain CE, no teacher)
    hard_ce: bool = False              # add the one-hot cross-entropy
    discriminator: bool = False
    weight_decay: float = 0.0
    epochs_factor: float = 1.0
    description: str = ""


ARMS = (
    Arm("a: CE", target="labels", description="continue training the pretrained student with one-hot CE"),
    Arm("b: MEAL (no D)", description="averaged-teacher soft labels only, wd 0, pretrained init"),
    Arm("c: b + hard CE", hard_ce=True, description="b plus the one-hot cross-entropy"),
    Arm("d: b + D", discriminator=True, description="b plus the output discriminator (the official recipe)"),
    Arm("e: b + wd", weight_decay=5e-4, description="b with weight decay 5e-4"),
    Arm("f: b, random init", init="random", description="b from a random initialisation"),
    Arm("f2: f, 2x epochs", init="random", epochs_factor=2.0, description="f trained twice as long"),
    Arm("g: single teacher", target="single", description="b with the wide CNN teacher alone"),
)


def make_student(init_state: dict | None, sizes: Sequence[int], seed: int) -> nn.Module:
    """A trainable MLP student: the pretrained weights ``init_state`` or a seeded random init."""
    torch.manual_seed(seed)
    student = MLP(list(sizes))
    if init_state is not None:
        student.load_state_dict(init_state)
    return student.requires_grad_(True).train()


def train_student(student: nn.Module, x: torch.Tensor, y: torch.Tensor, p_target: torch.Tensor | None,
                  z_teacher: torch.Tensor | None, *, epochs: float, batch_size: int = 128, lr: float = 0.01,
                  momentum: float = 0.9, weight_decay: float = 0.0, hard_ce: bool = False,
                  discriminator: bool = False, d_lr: float = 1e-4, d_k: int = 2, grl: bool = False,
                  seed: int = 0, eval_fn: Callable[[nn.Module], dict] | None = None, eval_every: int | None = None,
                  progress: bool = False, desc: str | None = None):
    r"""Train ``student`` in place; returns fit's `History`.

    Loss per batch: ``soft_ce(student(x), p_target)`` (when ``p_target`` is given), plus the
    one-hot CE when ``hard_ce`` (or instead, when ``p_target`` is None), plus the discriminator
    BCE on (student logits, teacher logits ``z_teacher``) when ``discriminator``. One SGD
    optimiser (momentum, cosine decay over the run) steps the student at ``lr`` and the
    discriminator at ``d_lr``; weight decay applies to the student only.
    """
    steps = max(1, int(round(epochs * len(x) / batch_size)))
    num_classes = int(y.max()) + 1
    torch.manual_seed(seed + 101)
    disc = OutputDiscriminator(num_classes, k=d_k) if discriminator else None
    model = StudentWithD(student, disc)
    groups = [{"params": list(student.parameters()), "lr": lr, "weight_decay": weight_decay}]
    if disc is not None:
        groups.append({"params": list(disc.parameters()), "lr": d_lr, "weight_decay": 0.0})
    opt = torch.optim.SGD(groups, lr=lr, momentum=momentum)
    tensors = [x, y]
    if p_target is not None:
        tensors.append(p_target)
    if discriminator:
        if z_teacher is None:
            raise ValueError("the discriminator needs the teachers' logits")
        tensors.append(z_teacher)

    def loss_fn(m: StudentWithD, xb, yb, *rest):
        logits = m.student(xb)
        loss = logits.new_zeros(())
        i = 0
        if p_target is not None:
            loss = loss + soft_ce(logits, rest[0])
            i = 1
        if hard_ce or p_target is None:
            loss = loss + F.cross_entropy(logits, yb)
        if discriminator:
            loss = loss + discriminator_loss(m.disc, logits, rest[i], grl=grl)
        return loss

    wrapped_eval = (lambda m: eval_fn(m.student)) if eval_fn is not None else None
    history = fit(model, tensors, steps=steps, batch_size=batch_size, opt=opt, loss_fn=loss_fn,
                  schedule="cosine", seed=seed, eval_fn=wrapped_eval, eval_every=eval_every,
                  progress=progress, desc=desc)
    student.eval()
    return history


def evaluate(student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Test accuracy and expected calibration error (15 bins)."""
    logits = predict(student, x)
    return {"acc": accuracy(logits, y), "ece": expected_calibration_error(logits, y)}


def bootstrap_gain(correct_a: np.ndarray, correct_b: np.ndarray, n_boot: int = 2000, seed: int = 0,
                   level: float = 0.95) -> dict[str, float]:
    """Paired bootstrap over test images of ``acc(a) - acc(b)`` from per-image 0/1 correctness.

    Returns ``{"gain", "lo", "hi"}`` (percentile interval at ``level``).
    """
    a, b = np.asarray(correct_a, float), np.asarray(correct_b, float)
    if a.shape != b.shape:
        raise ValueError("paired bootstrap needs equal-length correctness vectors")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    diffs = a[idx].mean(1) - b[idx].mean(1)
    alpha = (1 - level) / 2
    return {"gain": float(a.mean() - b.mean()), "lo": float(np.quantile(diffs, alpha)),
            "hi": float(np.quantile(diffs, 1 - alpha))}


def copy_state(model: nn.Module) -> dict:
    """A detached copy of a (possibly frozen zoo) model's state dict, for re-initialising students."""
    return copy.deepcopy({k: v.detach().clone() for k, v in model.state_dict().items()})


# --------------------------------------------------------------------------- chapter settings

TEACHERS_MNIST1D = ("cnn1d_mnist1d", "cnn1d_wide_mnist1d")
STUDENT_MNIST1D = "mlp_mnist1d"
CIFAR_TEACHERS = ("resnet32_cifar10", "resnet44_cifar10", "resnet56_cifar10")
CIFAR_STUDENT = "resnet20_cifar10"


@dataclass
class Setting:
    """Everything an arm needs: data, the teachers' logits on it, and a student factory."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    teacher_train: dict[str, torch.Tensor]          # name -> (N_train, C) logits
    teacher_test: dict[str, torch.Tensor]
    single_teacher: str                             # arm g's teacher, fixed before any run
    init_states: dict[int, dict] = field(default_factory=dict)
    build: Callable[[], nn.Module] | None = None    # the student architecture, untrained
    data_card: dict = field(default_factory=dict)

    def student(self, seed: int, pretrained: bool) -> nn.Module:
        """A trainable student: seed ``seed``'s pretrained weights, or a random init drawn with ``seed``."""
        torch.manual_seed(seed)
        model = self.build()
        if pretrained:
            model.load_state_dict(self.init_states[seed])
        return model.requires_grad_(True).train().to(self.x_train.device)


def _teacher_logits(names, x_train, x_test, pretrained: bool) -> tuple[dict, dict]:
    from ..models.backbones import teacher_outputs
    t_tr, t_te = {}, {}
    for name in names:
        torch.manual_seed(0)
        t_tr[name] = teacher_outputs(name, x_train, features=False, pretrained=pretrained)["logits"]
        torch.manual_seed(0)
        t_te[name] = teacher_outputs(name, x_test, features=False, pretrained=pretrained)["logits"]
    return t_tr, t_te


def mnist1d_setting(seeds: Sequence[int], pretrained: bool = True, n_train: int = 4000, n_test: int = 1000,
                    device=None) -> Setting:
    """MNIST-1D with the zoo's CNN teachers and per-seed CE-pretrained MLP students (the small tier).

    ``pretrained=False`` (smoke) uses untrained teachers and students: the code path without
    the zoo builds.
    """
    from .. import zoo
    from ..data.bundled import mnist1d

    data = mnist1d(n_train=n_train, n_test=n_test, seed=0, device=device)
    t_tr, t_te = _teacher_logits(TEACHERS_MNIST1D, data.train.x, data.test.x, pretrained)
    inits = {}
    for s in seeds:
        torch.manual_seed(s)
        model = zoo.load(STUDENT_MNIST1D, cfg={"seed": int(s)}, pretrained=pretrained, device="cpu")
        inits[int(s)] = copy_state(model)
    sizes = [data.train.x.shape[1], *zoo.config(STUDENT_MNIST1D)["hidden"], 10]
    return Setting(data.train.x, data.train.y, data.test.x, data.test.y, t_tr, t_te, "cnn1d_wide_mnist1d",
                   inits, lambda: MLP(sizes), data.card())


def cifar10_setting(seeds: Sequence[int], pretrained: bool = True, n_train: int | None = None,
                    n_test: int | None = None, device=None) -> Setting:
    """CIFAR-10 with the published ResNet-32/44/56 as teachers and the published ResNet-20 as the
    student init (the full tier). Images are normalised as the publisher trained (the zoo card);
    the teachers' logits are computed once on the un-augmented images and cached, as MEAL V2's
    FKD variant precomputes soft labels. Every seed starts from the same published ResNet-20."""
    from .. import zoo
    from ..data.real import cifar10
    from ..models.resnet import ResNetCIFAR

    data = cifar10(n_train=n_train, n_test=n_test, seed=0, device=device)
    t_tr, t_te = _teacher_logits(CIFAR_TEACHERS, data.train.x, data.test.x, pretrained)
    student = zoo.load(CIFAR_STUDENT, pretrained=pretrained, device="cpu")
    inits = {int(s): copy_state(student) for s in seeds}
    x_tr = zoo.preprocess(CIFAR_STUDENT, data.train.x, resize=False)
    x_te = zoo.preprocess(CIFAR_STUDENT, data.test.x, resize=False)
    return Setting(x_tr, data.train.y, x_te, data.test.y, t_tr, t_te, "resnet56_cifar10", inits,
                   lambda: ResNetCIFAR(depth=20, num_classes=10, width=16, dim=2, shortcut="A"), data.card())


def arm_targets(setting: Setting, arm: Arm):
    """``(p_target, z_teacher)`` on the training set for an arm (None, None for plain CE)."""
    if arm.target == "labels":
        return None, None
    names = list(setting.teacher_train) if arm.target == "ensemble" else [setting.single_teacher]
    return ensemble_targets([setting.teacher_train[n] for n in names])


def cifar_premise(n_test: int = 1000, seed: int = 0, n_boot: int = 2000, device=None) -> dict:
    """Inference-only check on real CIFAR-10 ResNets: accuracy of the ResNet-20 student init, each
    teacher, and the teachers' averaged softmax on ``n_test`` balanced test images of the mirror,
    with a paired bootstrap interval of (ensemble - best single teacher)."""
    from ..data.real import cifar10
    from ..models.backbones import teacher_outputs

    data = cifar10(n_train=10, n_test=n_test, seed=seed, device=device)
    y = data.test.y.cpu()
    logits = {name: teacher_outputs(name, data.test.x, features=False)["logits"].cpu()
              for name in (CIFAR_STUDENT, *CIFAR_TEACHERS)}
    correct = {name: (z.argmax(1) == y).numpy().astype(float) for name, z in logits.items()}
    p_ens, _ = ensemble_targets([logits[n] for n in CIFAR_TEACHERS])
    correct["ensemble"] = (p_ens.argmax(1) == y).numpy().astype(float)
    acc = {name: float(c.mean()) for name, c in correct.items()}
    best = max(CIFAR_TEACHERS, key=lambda n: acc[n])
    gain = bootstrap_gain(correct["ensemble"], correct[best], n_boot=n_boot, seed=seed)
    return {"acc": acc, "best_teacher": best, "gain": gain, "n_test": len(y), "data_card": data.card()}
