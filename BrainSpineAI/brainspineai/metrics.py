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
