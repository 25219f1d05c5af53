"""The SICF classifier and its figures: the paper's random forest (scikit-learn; 100 trees,
max depth 20, Gini, balanced class weights) and the paper's metrics (accuracy, macro
sensitivity, specificity, AUC and F1) with 95% percentile bootstrap intervals."""
from __future__ import annotations

import numpy as np


def make_forest(seed: int, n_jobs: int = 1):
    """The paper's random forest: 100 trees, max depth 20, Gini, balanced class weights."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=100, max_depth=20, criterion="gini", class_weight="balanced",
                                  random_state=seed, n_jobs=n_jobs)


def sicf_metrics(y_true, probs, class_names, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """The paper's figures: accuracy, macro sensitivity, macro specificity, macro AUC and
    macro F1, each ``{"value", "ci95"}`` with a 95% percentile bootstrap interval.

    Accuracy and AUC (and the per-class figures under ``"probability_metrics"``) come from
    :func:`brainspineai.metrics.probability_metrics`; macro sensitivity / specificity / F1
    are recomputed on resamples drawn the same way (seeded ``numpy.random.Generator``,
    multinomial case counts), averaging over the classes present in each resample.

    :param y_true: int (N,) class indices; ``probs``: float (N, C) class probabilities;
        ``class_names``: C names.
    :returns: ``{"accuracy", "sensitivity", "specificity", "auc", "f1"}`` (each ``{"value",
        "ci95": [lo, hi] or None}``), ``"n"``, ``"n_bootstrap"``, ``"classification"``
        (:func:`brainspineai.metrics.classification_metrics`) and ``"probability_metrics"``.
    :raises ValueError: from :func:`brainspineai.metrics.probability_metrics` (no cases,
        shapes that do not match, NaN probabilities, ...).
    """
    from ..metrics import classification_metrics, probability_metrics

    y = np.asarray(y_true, np.int64)
    probs = np.asarray(probs, np.float64)
    n, c = probs.shape
    pm = probability_metrics(y, probs, class_names, n_bootstrap=n_bootstrap, seed=seed)
    pred = probs.argmax(1)
    ind = np.zeros((n, c, 3))  # TP, FN, FP per class
    for k in range(c):
        ind[:, k, 0] = (y == k) & (pred == k)
        ind[:, k, 1] = (y == k) & (pred != k)
        ind[:, k, 2] = (y != k) & (pred == k)

    def macro(w):  # w: (B, N) case weights -> (sens, spec, f1) each (B,)
        tp, fn, fp = (np.einsum("bn,nk->bk", w, ind[:, :, j]) for j in range(3))
        tn = w.sum(1, keepdims=True) - tp - fn - fp
        with np.errstate(invalid="ignore", divide="ignore"):
            sens, spec, f1 = tp / (tp + fn), tn / (tn + fp), 2 * tp / (2 * tp + fp + fn)
        return np.nanmean(sens, 1), np.nanmean(spec, 1), np.nanmean(f1, 1)

    point = [float(v[0]) for v in macro(np.ones((1, n)))]
    boots = [[], [], []]
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        for start in range(0, n_bootstrap, 200):
            w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(200, n_bootstrap - start)).astype(np.float64)
            for j, v in enumerate(macro(w)):
                boots[j].append(v)

    def stat(value, samples):
        if not n_bootstrap:
            return {"value": value, "ci95": None}
        s = np.concatenate(samples)
        s = s[np.isfinite(s)]
        return {"value": value, "ci95": [float(np.quantile(s, 0.025)), float(np.quantile(s, 0.975))]}

    return {"accuracy": {"value": pm["accuracy"]["value"], "ci95": pm["accuracy"]["ci95"]},
            "sensitivity": stat(point[0], boots[0]), "specificity": stat(point[1], boots[1]),
            "auc": {"value": pm["macro_auc"]["value"], "ci95": pm["macro_auc"]["ci95"]},
            "f1": stat(point[2], boots[2]), "n": n, "n_bootstrap": n_bootstrap,
            "classification": classification_metrics(y, pred, class_names), "probability_metrics": pm}

