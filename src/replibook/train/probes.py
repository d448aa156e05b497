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

from typing import Any, Sequence

import functools

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

__all__ = ["as_numpy", "standardize", "linear", "logreg_auroc", "ridge", "knn"]


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
