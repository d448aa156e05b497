"""Probes: how much of a label (or a continuous target) a frozen representation holds.

Every probe standardises the features with the *training* split's mean and standard
deviation (a constant feature stays 0 rather than dividing by zero), fits on the training
split only and reports on the test split. They wrap scikit-learn estimators, whose
numerics are well tested, so the book's probes agree with anyone else's to the last digit
given the same features; the wrappers fix the settings a chapter would otherwise have to
repeat and make them visible in one place.

Features may be torch tensors (any device) or NumPy arrays, shape (N, D).

The fits run with one BLAS thread: these problems are small, and on a 2-core machine a
multi-threaded BLAS under load was measured 30x slower than a single thread (its threads
spin against torch's).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import functools

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

__all__ = ["as_numpy", "standardize", "linear", "linear_lbfgs", "linear_head", "logreg_auroc", "ridge", "knn", "mlp", "per_class_subset",
           "label_efficiency"]


def _one_blas_thread(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)
    return wrapper


def as_numpy(a: Any) -> np.ndarray:
    """A NumPy copy of a tensor (detached, on the CPU) or array-like."""
    if hasattr(a, "detach"):
        a = a.detach().float().cpu().numpy()
    return np.asarray(a)


def standardize(f_tr: Any, f_te: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both splits scaled by the training split's mean and std (std 0 -> 1)."""
    tr, te = as_numpy(f_tr).astype(np.float64), as_numpy(f_te).astype(np.float64)
    if tr.ndim != 2 or te.ndim != 2 or tr.shape[1] != te.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tr.shape} and {te.shape}")
    mean, std = tr.mean(0), tr.std(0)
    std[std == 0] = 1.0
    return (tr - mean) / std, (te - mean) / std


def _labels(y: Any) -> np.ndarray:
    return as_numpy(y).astype(np.int64).ravel()


@_one_blas_thread
def linear(f_tr: Any, y_tr: Any, f_te: Any, y_te: Any, C: float = 1.0,
           max_iter: int = 1000) -> dict[str, Any]:
    """Multinomial logistic regression (L2, inverse strength ``C``) on standardised features.

    Returns ``{"acc": test accuracy, "train_acc": ..., "model": the fitted estimator}``.
    """
    tr, te = standardize(f_tr, f_te)
    ytr, yte = _labels(y_tr), _labels(y_te)
    clf = LogisticRegression(C=C, max_iter=max_iter).fit(tr, ytr)
    return {"acc": float((clf.predict(te) == yte).mean()),
            "train_acc": float((clf.predict(tr) == ytr).mean()), "model": clf}


def linear_lbfgs(f_tr: Any, y_tr: Any, f_te: Any, y_te: Any,
                 C: float = 1.0, max_iter: int = 500) -> dict[str, float]:
    """The estimator of `linear` (multinomial logistic regression on
    features standardised with the train statistics, L2 penalty ``||W||^2 / 2`` against ``C`` times
    the summed cross-entropy, bias not penalised), fitted with full-batch L-BFGS in torch on the
    features' device: the GPU route for 50,000 x 512 features and 100 classes.

    Returns ``{"acc": test accuracy, "train_acc": ...}``.
    """
    import torch
    from torch import nn

    f_tr, f_te = f_tr.float(), f_te.float().to(f_tr.device)
    y_tr, y_te = y_tr.long().to(f_tr.device), y_te.long().to(f_tr.device)
    mu, sd = f_tr.mean(0), f_tr.std(0, unbiased=False)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))
    tr, te = (f_tr - mu) / sd, (f_te - mu) / sd
    k = int(max(int(y_tr.max()), int(y_te.max())) + 1)
    w = torch.zeros(tr.shape[1], k, device=tr.device, requires_grad=True)
    b = torch.zeros(k, device=tr.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")
    n = len(tr)

    def closure():
        opt.zero_grad()
        # sklearn's objective divided by C N: mean CE + ||W||^2 / (2 C N)
        loss = nn.functional.cross_entropy(tr @ w + b, y_tr) + w.pow(2).sum() / (2 * C * n)
        loss.backward()
        return loss

    with torch.autocast(tr.device.type, enabled=False):
        opt.step(closure)
    with torch.no_grad():
        acc = float(((te @ w + b).argmax(1) == y_te).float().mean())
        train_acc = float(((tr @ w + b).argmax(1) == y_tr).float().mean())
    return {"acc": acc, "train_acc": train_acc}


@_one_blas_thread
def logreg_auroc(f_tr: Any, y_tr: Any, f_te: Any, y_te: Any, Cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0),
                 cv: int = 5, seed: int = 0, max_iter: int = 2000) -> dict[str, Any]:
    """Binary L2 logistic regression with ``C`` chosen by stratified k-fold CV (by AUROC on
    the training split), refit on the whole training split; test AUROC.

    Returns ``{"auroc": test AUROC, "C": chosen C, "cv_auroc": {C: mean CV AUROC}, "scores": test scores}``.
    """
    tr, te = standardize(f_tr, f_te)
    ytr, yte = _labels(y_tr), _labels(y_te)
    if set(np.unique(ytr)) - {0, 1} or len(np.unique(ytr)) < 2:
        raise ValueError("logreg_auroc needs binary 0/1 training labels with both classes present")
    folds = min(cv, int(np.bincount(ytr).min()))
    cv_auc: dict[float, float] = {}
    if folds >= 2:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
        for C in Cs:
            aucs = []
            for a, b in splitter.split(tr, ytr):
                clf = LogisticRegression(C=C, max_iter=max_iter).fit(tr[a], ytr[a])
                aucs.append(roc_auc_score(ytr[b], clf.decision_function(tr[b])))
            cv_auc[float(C)] = float(np.mean(aucs))
        best = max(cv_auc, key=lambda c: (cv_auc[c], -c))   # ties -> the stronger penalty
    else:
        best = float(Cs[len(Cs) // 2])
    clf = LogisticRegression(C=best, max_iter=max_iter).fit(tr, ytr)
    scores = clf.decision_function(te)
    auc = float(roc_auc_score(yte, scores)) if len(np.unique(yte)) == 2 else float("nan")
    return {"auroc": auc, "C": best, "cv_auroc": cv_auc, "scores": scores}


@_one_blas_thread
def ridge(f_tr: Any, t_tr: Any, f_te: Any, t_te: Any, alpha: float = 1.0) -> dict[str, Any]:
    """Ridge regression of continuous targets (N,) or (N, K); test R^2 (mean over targets)."""
    tr, te = standardize(f_tr, f_te)
    ttr, tte = as_numpy(t_tr).astype(np.float64), as_numpy(t_te).astype(np.float64)
    squeeze = ttr.ndim == 1
    ttr, tte = ttr.reshape(len(ttr), -1), tte.reshape(len(tte), -1)
    model = Ridge(alpha=alpha).fit(tr, ttr)
    pred = model.predict(te)
    per = r2_score(tte, pred, multioutput="raw_values")
    return {"r2": float(per.mean()), "per_target": per if not squeeze else per[:1], "model": model}


@_one_blas_thread
def knn(f_tr: Any, y_tr: Any, f_te: Any, y_te: Any, k: int = 20, metric: str = "cosine") -> dict[str, Any]:
    """k-nearest-neighbour majority vote (distance ties broken by scikit-learn's order)."""
    tr, te = standardize(f_tr, f_te)
    ytr, yte = _labels(y_tr), _labels(y_te)
    clf = KNeighborsClassifier(n_neighbors=min(k, len(ytr)), metric=metric).fit(tr, ytr)
    return {"acc": float((clf.predict(te) == yte).mean())}


def mlp(f_tr: Any, y_tr: Any, f_te: Any, y_te: Any, hidden: Sequence[int] = (200, 200), norm: str = "bn",
        steps: int = 100, batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.0,
        seed: int = 0, device=None) -> dict[str, Any]:
    """A non-linear probe: an MLP (Linear -> norm -> ReLU per hidden layer, then Linear) on
    standardised frozen features, trained with Adam for a fixed ``steps`` budget.

    The default is RotNet's non-linear head (Gidaris et al. 2018: two hidden layers of 200
    units with batch norm). Unlike the sklearn-backed probes it runs in torch (on ``device``,
    default the features' device when they are tensors, else the CPU) and is seeded.

    Returns ``{"acc": test accuracy, "train_acc": ..., "model": the trained head (eval mode),
    "predict": features -> predicted labels (standardised with the train statistics)}``.
    """
    import torch
    from ..models.heads import MLPHead
    from .fit import fit

    dev = torch.device(device) if device is not None else (f_tr.device if hasattr(f_tr, "device") else torch.device("cpu"))

    def tensor(f: Any) -> torch.Tensor:      # stays on the device when it is one (no host round trip)
        t = f.detach() if hasattr(f, "detach") else torch.as_tensor(np.asarray(f))
        return t.to(dev, torch.float32)

    xtr = tensor(f_tr)
    if xtr.ndim != 2:
        raise ValueError(f"features must be (N, D), got {tuple(xtr.shape)}")
    t64 = xtr.double()
    mean_t, std_t = t64.mean(0), t64.std(0, unbiased=False)        # the training split's statistics
    std_t[std_t == 0] = 1.0
    mean_t, std_t = mean_t.float(), std_t.float()

    def prep(f: Any) -> torch.Tensor:
        t = tensor(f)
        if t.ndim != 2 or t.shape[1] != len(mean_t):
            raise ValueError(f"features must be (N, {len(mean_t)}), got {tuple(t.shape)}")
        return (t - mean_t) / std_t

    ytr = torch.as_tensor(_labels(y_tr), device=dev)
    yte = _labels(y_te)
    n_classes = int(max(ytr.max().item(), yte.max(initial=0)) + 1)
    torch.manual_seed(seed)
    head = MLPHead(len(mean_t), n_classes, hidden=tuple(hidden), norm=norm)
    fit(head, (prep(f_tr), ytr), steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
        device=dev, progress=False)
    head.eval()

    @torch.no_grad()
    def predict(f: Any) -> np.ndarray:
        return head(prep(f)).argmax(1).cpu().numpy()

    return {"acc": float((predict(f_te) == yte).mean()),
            "train_acc": float((predict(f_tr) == ytr.cpu().numpy()).mean()),
            "model": head, "predict": predict}


def per_class_subset(y: Any, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of ``per_class`` examples of every class (fewer if a class has fewer), drawn
    without replacement with a seeded generator, in increasing order. (For a total count
    split evenly over the classes, in random order, see `replibook.data.balanced_subset`.)"""
    labels = _labels(y)
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def label_efficiency(make_model: Callable[[], Any], x_tr: Any, y_tr: Any, x_te: Any, y_te: Any,
                     labels_per_class: Sequence[int], *, steps: int = 80, batch_size: int = 64,
                     lr: float = 1e-3, weight_decay: float = 0.0, opt: str = "adam", seed: int = 0,
                     device=None, progress: bool = False) -> dict[int, float]:
    """Test accuracy after fine-tuning a model on ``n`` labelled examples per class, for each ``n``.

    ``make_model()`` returns the initial classifier (logits out), e.g. a copy of a pretrained
    backbone with a new linear layer, or a freshly initialised one; it is called once per
    ``n`` and the model it returns is trained in place (all parameters that require grad) with
    `replibook.train.fit` for ``steps`` updates. The labelled subset is `per_class_subset` with
    ``seed`` (nested sets are not guaranteed); comparing two inits with the same ``seed`` gives
    them the same labelled images and the same minibatch order.

    Returns ``{n: test accuracy}``.
    """
    import torch
    from .fit import fit

    ytr_np = _labels(y_tr)
    out: dict[int, float] = {}
    for n in labels_per_class:
        idx = torch.as_tensor(per_class_subset(ytr_np, int(n), seed))
        model = make_model()
        dev = torch.device(device) if device is not None else next(model.parameters()).device
        xs = torch.as_tensor(x_tr)[idx.to(torch.as_tensor(x_tr).device)]
        ys = torch.as_tensor(ytr_np[idx.numpy()])
        fit(model, (xs, ys), steps=steps, batch_size=batch_size, lr=lr, opt=opt, weight_decay=weight_decay,
            seed=seed, device=dev, progress=progress, desc=f"fine-tune, {n}/class")
        model.eval()
        with torch.no_grad():
            xt = torch.as_tensor(x_te).to(dev)
            pred = torch.cat([model(xt[i:i + 500]).argmax(1) for i in range(0, len(xt), 500)]).cpu().numpy()
        out[int(n)] = float((pred == _labels(y_te)).mean())
    return out


def linear_head(probe: dict[str, Any], f_tr: Any):
    """The fitted `linear` probe as a ``torch.nn.Linear`` on *raw* features (standardisation folded in).

    ``probe`` is `linear`'s result and ``f_tr`` the training features it was fitted on (their mean
    and std define the standardisation). ``head(f).argmax(1)`` equals the probe's prediction. Used to
    start fine-tuning from the probe (LP-FT, Kumar et al. 2022) instead of a random head.
    """
    import torch

    clf = probe["model"]
    tr = as_numpy(f_tr).astype(np.float64)
    mean, std = tr.mean(0), tr.std(0)
    std[std == 0] = 1.0
    coef = np.atleast_2d(clf.coef_)
    if coef.shape[0] == 1:          # sklearn's binary case: one row for class 1
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-clf.intercept_[0] / 2, clf.intercept_[0] / 2])
    else:
        intercept = clf.intercept_
    w = coef / std
    b = intercept - w @ mean
    head = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
        head.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
    return head
