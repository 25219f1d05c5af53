"""Classification metrics (scikit-learn) and the confusion-matrix figure (matplotlib)."""
from __future__ import annotations

import numpy as np


def classification_metrics(y_true, y_pred, class_names) -> dict:
    """Accuracy, per-class precision / recall / F1 / support, macro F1 and the confusion matrix.

    :param y_true: int array (N,) of true class indices.
    :param y_pred: int array (N,) of predicted class indices.
    :param class_names: list of str, index order.
    :returns: JSON-ready dict: ``accuracy`` (float in [0, 1]), ``n`` (int), ``per_class``
        ({name: {precision, recall, f1, support}}), ``macro_f1``, ``confusion_matrix``
        (rows = true class, columns = predicted, in ``class_names`` order), ``class_names``.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "n": int(len(y_true)),
        "macro_f1": float(np.mean(f)),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
    }


def save_confusion_png(confusion, class_names, path, title: str = "Confusion matrix") -> None:
    """Draw a confusion matrix (counts, rows = true class) as a PNG, written atomically."""
    import io as _io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_write_bytes

    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2, 1.2 * len(class_names) + 1.5), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    thresh = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > thresh else "black")
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------------
# Probability-based metrics with bootstrap confidence intervals


def _weighted_ovr_auc(weights, positive, scores):
    """One-vs-rest ROC AUC for many case weightings at once (Mann–Whitney U with ties
    counted one half; Hanley & McNeil 1982).

    :param weights: float array (B, N): the multiplicity of each case in each resample
        (all ones gives the plain AUC).
    :param positive: bool array (N,): the case belongs to the class.
    :param scores: float array (N,): the class's predicted probability.
    :returns: float64 array (B,), NaN where a resample has no positive or no negative case.
    """
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each tied group
    w = weights[:, order]
    pos = positive[order]
    w_pos = np.add.reduceat(w * pos, starts, axis=1)  # (B, G) positive weight per score group
    w_neg = np.add.reduceat(w * ~pos, starts, axis=1)
    neg_below = np.cumsum(w_neg, axis=1) - w_neg
    numerator = np.sum(w_pos * (neg_below + 0.5 * w_neg), axis=1)
    n_pos, n_neg = w_pos.sum(axis=1), w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = numerator / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def probability_metrics(y_true, probs, class_names, n_bootstrap: int = 1000, seed: int = 0,
                        confidence: float = 0.95) -> dict:
    """Macro one-vs-rest ROC AUC, accuracy and per-class AUC / sensitivity / specificity, each
    with a percentile bootstrap confidence interval.

    Sensitivity of a class is its recall, TP / (TP + FN); specificity is TN / (TN + FP); both
    use the argmax prediction. The AUC of a class is the one-vs-rest ROC AUC of its
    probability; the macro AUC is their unweighted mean, as scikit-learn's
    ``roc_auc_score(average="macro", multi_class="ovr")`` (which gives the point value).

    Confidence intervals: percentile bootstrap (Efron B. & Tibshirani R.J., *An Introduction
    to the Bootstrap*, Chapman & Hall 1993, ch. 13): the N cases are resampled with
    replacement ``n_bootstrap`` times (a seeded ``numpy.random.Generator``), each statistic
    is recomputed on each resample, and the interval is the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles of those values. Resamples in which a statistic is
    undefined (a class with no positive or no negative case) are skipped for that
    statistic; how many were used is reported. The resamples are drawn once and shared by
    every statistic. Cases are assumed independent (several slices of one patient are not).

    :param y_true: int array (N,) of true class indices in ``[0, C)``.
    :param probs: float array (N, C): softmax probabilities (rows sum to 1), columns in
        ``class_names`` order.
    :param class_names: list of C str.
    :param n_bootstrap: resamples (0: point values only, every ``ci95`` is None).
    :param seed: seed of the resampling generator (same inputs and seed, same intervals).
    :param confidence: interval coverage in (0, 1).
    :returns: JSON-ready dict: ``macro_auc``, ``accuracy`` and, in ``per_class`` ({name:
        {auc, sensitivity, specificity}}), each statistic as ``{"value": float or None,
        "ci95": [lo, hi] or None, "n_bootstrap_used": int}``; ``value`` is None where the
        statistic is undefined (``macro_auc`` and a class's ``auc`` and ``sensitivity`` when
        the class is absent from ``y_true``; the other classes' AUCs are still given). Also
        ``n``, ``class_names``, ``n_bootstrap`` (asked for), ``n_bootstrap_used`` (the
        fewest used by any defined statistic), ``confidence``, ``seed`` and ``method``.
        The key ``ci95`` keeps its name whatever ``confidence`` is.
    :raises ValueError: N == 0, fewer than 2 classes, ``probs`` not (N, C) with C ==
        ``len(class_names)``, ``y_true`` not (N,) integers in range, NaN or infinite
        probabilities, rows not summing to 1, a negative ``n_bootstrap`` or a
        ``confidence`` outside (0, 1).
    """
    from sklearn.metrics import roc_auc_score

    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true)
    n_classes = len(class_names)
    if probs.ndim != 2:
        raise ValueError(f"probs must be a 2D array (N, C); got shape {probs.shape}")
    n = probs.shape[0]
    if n == 0:
        raise ValueError("no cases: y_true and probs are empty (N == 0)")
    if n_classes < 2:
        raise ValueError(f"need at least 2 classes; got class_names={list(class_names)}")
    if probs.shape[1] != n_classes:
        raise ValueError(f"probs has {probs.shape[1]} columns but there are {n_classes} class names")
    if y.shape != (n,):
        raise ValueError(f"y_true must have shape ({n},) to match probs {probs.shape}; got {y.shape}")
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise ValueError(f"y_true must hold integer class indices; got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y_true values must be in [0, {n_classes}); got range [{y.min()}, {y.max()}]")
    if not np.all(np.isfinite(probs)):
        raise ValueError(f"probs contains {int(np.count_nonzero(~np.isfinite(probs)))} NaN or infinite values")
    if np.max(np.abs(probs.sum(axis=1) - 1)) > 1e-3:
        raise ValueError("probs rows must sum to 1 (softmax probabilities)")
    if int(n_bootstrap) < 0:
        raise ValueError(f"n_bootstrap must be >= 0; got {n_bootstrap}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    n_bootstrap = int(n_bootstrap)

    pred = probs.argmax(axis=1)
    present = np.bincount(y, minlength=n_classes) > 0
    # indicator columns: correct, then per class TP, FN, FP, TN (counts = weights @ indicators)
    cols = [pred == y]
    for c in range(n_classes):
        t, p = y == c, pred == c
        cols += [t & p, t & ~p, ~t & p, ~t & ~p]
    indicators = np.stack(cols, axis=1).astype(np.float64)  # (N, 1 + 4C)

    def rates(counts):
        """(accuracy (B,), sensitivity (B, C), specificity (B, C)) from counts (B, 1 + 4C)."""
        total = counts[:, 1:].reshape(len(counts), n_classes, 4)
        tp, fn, fp, tn = (total[:, :, k] for k in range(4))
        with np.errstate(invalid="ignore", divide="ignore"):
            return counts[:, 0] / n, tp / (tp + fn), tn / (tn + fp)

    ones = np.ones((1, n))
    acc0, sens0, spec0 = rates(ones @ indicators)
    auc0 = np.full(n_classes, np.nan)
    for c in range(n_classes):
        if present[c] and np.any(y != c):  # needs positive and negative cases
            auc0[c] = roc_auc_score(y == c, probs[:, c])
    macro0 = None
    if present.all():
        labels = list(range(n_classes))
        if n_classes == 2:
            macro0 = float(roc_auc_score(y, probs[:, 1]))
        else:
            macro0 = float(roc_auc_score(y, probs, average="macro", multi_class="ovr", labels=labels))

    # bootstrap: multinomial case counts = resampling N cases with replacement
    boot = {"accuracy": [], "sens": [], "spec": [], "auc": []}
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        block = max(1, min(n_bootstrap, 2_000_000 // n))
        done = 0
        while done < n_bootstrap:
            b = min(block, n_bootstrap - done)
            weights = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)
            acc, sens, spec = rates(weights @ indicators)
            boot["accuracy"].append(acc)
            boot["sens"].append(sens)
            boot["spec"].append(spec)
            boot["auc"].append(np.stack([_weighted_ovr_auc(weights, y == c, probs[:, c]) if present[c]
                                         else np.full(b, np.nan) for c in range(n_classes)], axis=1))
            done += b
        boot = {k: np.concatenate(v) for k, v in boot.items()}
        # macro AUC is defined in a resample only when every class has positives and negatives
        boot["macro"] = boot["auc"].mean(axis=1)
    lo_q, hi_q = (1 - confidence) / 2, (1 + confidence) / 2
    used_counts = []

    def stat(value, samples):
        if value is None or not np.isfinite(value):
            return {"value": None, "ci95": None, "n_bootstrap_used": 0}
        out = {"value": float(value), "ci95": None, "n_bootstrap_used": 0}
        if n_bootstrap:
            ok = samples[np.isfinite(samples)]
            out["n_bootstrap_used"] = int(ok.size)
            used_counts.append(int(ok.size))
            if ok.size:
                lo, hi = np.quantile(ok, [lo_q, hi_q])
                out["ci95"] = [float(lo), float(hi)]
        return out

    get = (lambda key, *ix: boot[key][(slice(None),) + ix]) if n_bootstrap else (lambda key, *ix: None)
    result = {
        "macro_auc": stat(macro0, get("macro")),
        "accuracy": stat(float(acc0[0]), get("accuracy")),
        "per_class": {
            name: {
                "auc": stat(auc0[c], get("auc", c)),
                "sensitivity": stat(sens0[0, c], get("sens", c)),
                "specificity": stat(spec0[0, c], get("spec", c)),
            }
            for c, name in enumerate(class_names)
        },
        "n": int(n),
        "class_names": list(class_names),
        "n_bootstrap": n_bootstrap,
        "confidence": float(confidence),
        "seed": int(seed),
        "method": "percentile bootstrap over cases (Efron & Tibshirani 1993); AUC one-vs-rest, macro = unweighted mean",
    }
    result["n_bootstrap_used"] = min(used_counts) if used_counts else 0
    return result


# --------------------------------------------------------------------------------------
# 2D embedding figure


def embed_2d(features, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """2D t-SNE of feature vectors (van der Maaten & Hinton, JMLR 2008; scikit-learn's
    ``TSNE`` with ``init="pca"``, perplexity ``min(30, (N - 1) / 3)``).

    :param features: float array (N, D), N >= 5.
    :param method: ``"tsne"`` (the only one: UMAP is not a dependency of this library).
    :param seed: ``random_state`` of t-SNE.
    :returns: float32 array (N, 2).
    :raises ValueError: not a 2D array, N < 5, NaN / infinite values, or an unknown method.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2D array (N, D); got shape {x.shape}")
    if x.shape[0] < 5:
        raise ValueError(f"an embedding needs at least 5 cases; got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or infinite values")
    if method != "tsne":
        raise ValueError(f"unknown embedding method '{method}'; only 'tsne' is available")
    perplexity = min(30.0, (x.shape[0] - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    # one thread: t-SNE's OpenMP gradient loop syncs every iteration and slows down by 50x or
    # more when the cores are shared (another job, PyTorch's threads); one core takes < 1 s
    # for a few hundred cases
    with threadpool_limits(limits=1):
        return tsne.fit_transform(x).astype(np.float32)


def embedding_png_bytes(features, labels, class_names, method: str = "tsne", seed: int = 0,
                        title: str = "t-SNE of penultimate-layer features"):
    """Compute a 2D embedding (see :func:`embed_2d`) and draw it as a scatter plot coloured
    by class, with a legend.

    :param features: float array (N, D).
    :param labels: int array (N,) of class indices into ``class_names``.
    :returns: ``(png_bytes, coords)``: the PNG file's bytes and the float32 (N, 2) coordinates.
    :raises ValueError: as :func:`embed_2d`, or ``labels`` not (N,) indices into ``class_names``.
    """
    import io as _io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels)
    n = np.shape(features)[0] if np.ndim(features) else 0
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match features {np.shape(features)}; got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels must be indices in [0, {len(class_names)})")
    coords = embed_2d(features, method=method, seed=seed)
    fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=100)
    cmap = plt.get_cmap("tab10")
    for c, name in enumerate(class_names):
        sel = labels == c
        if sel.any():
            ax.scatter(coords[sel, 0], coords[sel, 1], s=12, alpha=0.8, color=cmap(c % 10), label=f"{name} ({int(sel.sum())})")
    ax.legend(loc="best", fontsize=8, markerscale=1.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(title)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue(), coords


def save_embedding_png(features, labels, class_names, path, method: str = "tsne", seed: int = 0,
                       title: str = "t-SNE of penultimate-layer features") -> np.ndarray:
    """Write a 2D t-SNE scatter plot of ``features`` coloured by class as a PNG, atomically
    (see :func:`embedding_png_bytes` for the arguments and errors).

    :returns: float32 array (N, 2): the embedding coordinates.
    """
    from .io import atomic_write_bytes

    png, coords = embedding_png_bytes(features, labels, class_names, method=method, seed=seed, title=title)
    atomic_write_bytes(path, png)
    return coords
