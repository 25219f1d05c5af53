"""Calibrated probabilities and "does the model know?" for the 2D tumour classifiers.

- Temperature scaling (Guo C. et al., "On Calibration of Modern Neural Networks", ICML 2017):
  one scalar ``T`` divides the logits; fitted by minimising the negative log-likelihood on the
  model's validation split (:func:`fit_temperature`, ``scipy.optimize.minimize_scalar``).
  Applied to softmax outputs as ``p_i ** (1/T) / sum_j p_j ** (1/T)`` (= softmax(logits / T)).
- Expected calibration error (:func:`expected_calibration_error`): top-label ECE over 15
  equal-width confidence bins (Guo et al. 2017; Naeini et al. AAAI 2015).
- Uncertainty thresholds (:func:`choose_thresholds`): on the validation split, the calibrated
  top probability and the top-1 minus top-2 margin below which a prediction is flagged, each
  chosen to maximise Youden's J for separating the wrong predictions from the right ones.

Card fields read here: ``calibration.temperature`` and ``uncertainty.{min_top_probability,
min_margin, min_slice_agreement}``; a card without them is used as it is (T = 1, no flags).
"""
from __future__ import annotations

import numpy as np

N_BINS = 15
DEFAULT_MIN_SLICE_AGREEMENT = 0.5  # a fixed rule (not tuned): most classified slices must agree


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """Softmax outputs ``(N, C)`` -> the same at temperature ``T`` (float64, rows sum to 1)."""
    p = np.clip(np.asarray(probs, np.float64), 1e-300, 1.0)
    if temperature == 1.0:
        return p / p.sum(axis=-1, keepdims=True)
    logp = np.log(p) / float(temperature)
    logp -= logp.max(axis=-1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=-1, keepdims=True)


def card_temperature(card: dict) -> float:
    """The card's fitted temperature (1.0 when the card has none)."""
    t = (card.get("calibration") or {}).get("temperature", 1.0)
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 else 1.0


def _nll(probs, labels) -> float:
    p = np.asarray(probs)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.mean(np.log(np.clip(p, 1e-300, 1.0))))


def fit_temperature(probs, labels) -> dict:
    """Temperature minimising the NLL of softmax outputs ``probs`` ``(N, C)`` for integer ``labels``.

    :returns: ``{"temperature", "nll_before", "nll_after", "n"}``; T searched in [0.05, 20] (log scale)."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda lt: _nll(apply_temperature(probs, float(np.exp(lt))), labels),
                          bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    t = float(np.exp(res.x))
    return {"temperature": round(t, 4), "nll_before": round(_nll(apply_temperature(probs, 1.0), labels), 4),
            "nll_after": round(_nll(apply_temperature(probs, t), labels), 4), "n": int(len(labels))}


def reliability_bins(probs, labels, n_bins: int = N_BINS) -> list:
    """Per equal-width bin of the top probability: ``{"lo", "hi", "n", "confidence", "accuracy"}``."""
    p = np.asarray(probs, np.float64)
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == np.asarray(labels))
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        m = which == b
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(m.sum()),
                    "confidence": float(conf[m].mean()) if m.any() else None,
                    "accuracy": float(correct[m].mean()) if m.any() else None})
    return out


def expected_calibration_error(probs, labels, n_bins: int = N_BINS) -> float:
    """Top-label ECE: sum over bins of (bin size / N) * |accuracy - mean confidence|, in [0, 1]."""
    bins = reliability_bins(probs, labels, n_bins)
    n = sum(b["n"] for b in bins)
    return float(sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["n"])) if n else 0.0


def _youden(scores, wrong) -> float:
    """Threshold t on ``scores`` flagging ``score < t`` that maximises TPR(wrong) - FPR(right)."""
    s, w = np.asarray(scores, np.float64), np.asarray(wrong, bool)
    if not w.any() or w.all():
        return 0.0
    best, best_t = -1.0, 0.0
    for t in np.unique(np.concatenate([s, [1.0 + 1e-9]])):
        j = (s[w] < t).mean() - (s[~w] < t).mean()
        if j > best + 1e-12:
            best, best_t = j, float(t)
    return best_t


def choose_thresholds(probs_calibrated, labels) -> dict:
    """Uncertainty thresholds on calibrated validation outputs (see module doc).

    :returns: ``{"min_top_probability", "min_margin", "min_slice_agreement", "validation": {...}}``
        where validation gives the share of predictions flagged and of errors caught."""
    p = np.asarray(probs_calibrated, np.float64)
    srt = np.sort(p, axis=1)
    top, margin = srt[:, -1], srt[:, -1] - srt[:, -2]
    wrong = p.argmax(1) != np.asarray(labels)
    t_top, t_margin = _youden(top, wrong), _youden(margin, wrong)
    flagged = (top < t_top) | (margin < t_margin)
    return {"min_top_probability": round(t_top, 4), "min_margin": round(t_margin, 4),
            "min_slice_agreement": DEFAULT_MIN_SLICE_AGREEMENT,
            "rule": "uncertain when the calibrated top probability < min_top_probability or top-1 minus top-2 < "
                    "min_margin (each threshold maximises Youden's J for flagging validation errors), or, for a "
                    "volume, when fewer than min_slice_agreement of the slices behind the volume's probabilities "
                    "vote for its class (a fixed rule)",
            "validation": {"n": int(len(p)), "errors": int(wrong.sum()), "flagged": int(flagged.sum()),
                           "errors_flagged": int((flagged & wrong).sum()),
                           "accuracy_unflagged": round(float((~wrong[~flagged]).mean()), 4) if (~flagged).any() else None}}


def uncertainty(card: dict, probabilities, slice_agreement=None) -> dict:
    """``{"uncertain": bool, "reasons": [str], "top_probability", "margin", "slice_agreement"}``
    for one (calibrated) probability vector under the card's ``uncertainty`` thresholds."""
    u = card.get("uncertainty") or {}
    p = np.sort(np.asarray(probabilities, np.float64))
    top, margin = float(p[-1]), float(p[-1] - (p[-2] if len(p) > 1 else 0.0))
    reasons = []
    t, m = u.get("min_top_probability"), u.get("min_margin")
    if isinstance(t, (int, float)) and top < t:
        reasons.append(f"top probability {top:.1%} is below {t:.1%}")
    if isinstance(m, (int, float)) and margin < m:
        reasons.append(f"margin to the second class {margin:.1%} is below {m:.1%}")
    a = u.get("min_slice_agreement", DEFAULT_MIN_SLICE_AGREEMENT if u else None)
    if slice_agreement is not None and isinstance(a, (int, float)) and slice_agreement < a:
        reasons.append(f"only {slice_agreement:.0%} of the slices agree (needs {a:.0%})")
    return {"uncertain": bool(reasons), "reasons": reasons, "top_probability": round(top, 4),
            "margin": round(margin, 4), "slice_agreement": None if slice_agreement is None else round(float(slice_agreement), 4)}


def reliability_png_bytes(probs_before, probs_after, labels, title: str, n_bins: int = N_BINS) -> bytes:
    """A reliability diagram (accuracy against mean confidence per bin, before and after
    temperature scaling, with the diagonal of perfect calibration) as PNG bytes (matplotlib, Agg)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for probs, name, style in ((probs_before, "before", "o-"), (probs_after, "after", "s-")):
        if probs is None:
            continue
        bins = [b for b in reliability_bins(probs, labels, n_bins) if b["n"]]
        ece = expected_calibration_error(probs, labels, n_bins)
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style, label=f"{name} (ECE {ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean top probability (confidence)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
