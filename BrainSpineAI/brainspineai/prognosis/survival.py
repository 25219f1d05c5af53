"""Survival and grade models as plain numbers, and the metrics of the prognosis study.

Fitting uses the well-kept libraries: a ridge-penalised Cox proportional-hazards model from
lifelines (``CoxPHFitter``, Breslow baseline; Davidson-Pilon, JOSS 2019) and a logistic
regression from scikit-learn for the grade. Every fitted model is turned into a
:class:`LinearModel` (feature means, scales, coefficients; for Cox the baseline survival
curve) so that prediction needs numpy only and the model folder holds JSON, never a pickle.

Metrics: Harrell's concordance index (lifelines), its 95% percentile bootstrap interval over
patients, the cumulative/dynamic time-dependent AUC with inverse-probability-of-censoring
weights (Uno et al., JASA 2007; the estimator of scikit-survival's
``cumulative_dynamic_auc``), the ROC AUC of the grade (scikit-learn) and Kaplan-Meier curves
(lifelines).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

DEFAULT_PENALIZER = 0.5  # ridge strength of the Cox fits on radiomics (lifelines' penalizer)


@dataclass
class LinearModel:
    """``z = (x - mean) / scale``; ``lp = z @ coef + intercept``. For ``kind == "cox"`` the risk
    is ``exp(lp)`` and ``S(t | x) = baseline_survival(t) ** exp(lp)`` (``baseline_days``
    ascending, days); for ``kind == "logistic"`` ``P(grade III) = 1 / (1 + exp(-lp))``."""

    kind: str
    features: list
    mean: list
    scale: list
    coef: list
    intercept: float = 0.0
    baseline_days: list = field(default_factory=list)
    baseline_survival: list = field(default_factory=list)

    def linear_predictor(self, X):
        """:param X: float array (n, len(features)). :returns: float64 (n,)."""
        import numpy as np

        X = np.asarray(X, dtype=np.float64)
        z = (X - np.asarray(self.mean)) / np.asarray(self.scale)
        return z @ np.asarray(self.coef, dtype=np.float64) + float(self.intercept)

    def survival(self, X, days):
        """Survival probability (n, len(days)) at ``days`` (step function of the baseline)."""
        import numpy as np

        lp = self.linear_predictor(X)
        bd = np.asarray(self.baseline_days, dtype=np.float64)
        bs = np.asarray(self.baseline_survival, dtype=np.float64)
        idx = np.searchsorted(bd, np.asarray(days, dtype=np.float64), side="right") - 1
        s0 = np.where(idx >= 0, bs[np.clip(idx, 0, len(bs) - 1)], 1.0)
        return s0[None, :] ** np.exp(lp)[:, None]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LinearModel":
        return cls(**d)


def _standardise(X):
    import numpy as np

    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale < 1e-12] = 1.0
    return (X - mean) / scale, mean, scale


def fit_cox(X, time, event, names, penalizer: float = DEFAULT_PENALIZER) -> LinearModel:
    """Ridge-penalised Cox model (lifelines ``CoxPHFitter(penalizer, l1_ratio=0)``) on
    standardised features; a feature named ``age`` is left unpenalised (the clinical
    covariate is kept whole, only the many radiomic coefficients are shrunk).

    :param X: float (n, p); ``time`` days (n,); ``event`` 0/1 (n,).
    """
    import warnings

    import numpy as np
    import pandas as pd
    from lifelines import CoxPHFitter

    Z, mean, scale = _standardise(X)
    df = pd.DataFrame(Z, columns=[f"f{i}" for i in range(Z.shape[1])])
    df["T"], df["E"] = np.asarray(time, dtype=float), np.asarray(event, dtype=int)
    pen = np.asarray([0.0 if n == "age" else penalizer for n in names], dtype=np.float64)
    if not pen.any():
        pen = 0.0
    cph = CoxPHFitter(penalizer=pen, l1_ratio=0.0, baseline_estimation_method="breslow")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cph.fit(df, "T", "E")
    coef = cph.params_.values.astype(np.float64)
    # lifelines' baseline is at its own covariate means (those of Z: ~0); fold the offset in
    offset = float(np.asarray(cph._norm_mean.values) @ coef)
    bs = cph.baseline_survival_
    return LinearModel("cox", list(names), mean.tolist(), scale.tolist(), coef.tolist(), -offset,
                       [float(t) for t in bs.index], [float(v) for v in bs.iloc[:, 0].values])


def fit_logistic(X, y, names, C: float = 0.1) -> LinearModel:
    """L2 logistic regression (scikit-learn, lbfgs) of grade III vs II on standardised features
    (a constant model when ``y`` holds one grade only)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    Z, mean, scale = _standardise(X)
    y = np.asarray(y, dtype=int)
    if len(np.unique(y)) < 2:  # one grade only (a small fold): the constant model of that grade
        p = float(np.clip(y.mean() if len(y) else 0.5, 0.01, 0.99))
        return LinearModel("logistic", list(names), mean.tolist(), scale.tolist(), [0.0] * Z.shape[1],
                           float(np.log(p / (1 - p))))
    lr = LogisticRegression(C=C, max_iter=2000).fit(Z, y)
    return LinearModel("logistic", list(names), mean.tolist(), scale.tolist(), lr.coef_[0].tolist(),
                       float(lr.intercept_[0]))


def c_index(time, event, risk) -> float:
    """Harrell's C (lifelines ``concordance_index``): higher risk should die earlier."""
    import numpy as np
    from lifelines.utils import concordance_index

    return float(concordance_index(np.asarray(time), -np.asarray(risk), np.asarray(event)))


def bootstrap_ci(stat, arrays, n_boot: int = 1000, seed: int = 0):
    """95% percentile bootstrap interval of ``stat(*resampled arrays)`` over patients.

    :returns: ``[low, high]`` (resamples where the statistic is undefined are skipped)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        try:
            v = stat(*[np.asarray(a)[idx] for a in arrays])
        except (ValueError, ZeroDivisionError):
            continue
        if v == v:
            vals.append(v)
    if not vals:
        return [float("nan"), float("nan")]
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def _censoring_survival(time, event):
    """Kaplan-Meier estimate of the censoring distribution G(t) (censoring as the event)."""
    import numpy as np

    t = np.asarray(time, dtype=float)
    c = 1 - np.asarray(event, dtype=int)
    uniq = np.unique(t)
    g, vals = 1.0, []
    for u in uniq:
        at_risk = (t >= u).sum()
        d = ((t == u) & (c == 1)).sum()
        g *= 1.0 - d / at_risk if at_risk else 1.0
        vals.append(g)
    return uniq, np.asarray(vals)


def time_dependent_auc(time, event, risk, horizon_days: float, train_time=None, train_event=None) -> float:
    """Cumulative/dynamic AUC at ``horizon_days``: cases died by then (weighted 1/G(T_i)),
    controls still alive after it (Uno et al. 2007). NaN when there is no case or no control."""
    import numpy as np

    t, e, r = (np.asarray(a, dtype=float) for a in (time, event, risk))
    gt, gv = _censoring_survival(train_time if train_time is not None else t,
                                 train_event if train_event is not None else e)
    cases = (t <= horizon_days) & (e == 1)
    controls = t > horizon_days
    if not cases.any() or not controls.any():
        return float("nan")
    idx = np.searchsorted(gt, t[cases], side="right") - 1
    g = np.where(idx >= 0, gv[np.clip(idx, 0, len(gv) - 1)], 1.0)
    w = 1.0 / np.clip(g, 1e-6, None)
    rc, rn = r[cases][:, None], r[controls][None, :]
    conc = (rc > rn).astype(float) + 0.5 * (rc == rn)
    return float((w[:, None] * conc).sum() / (w.sum() * controls.sum()))


def grade_auc(y, p) -> float:
    """ROC AUC of grade III probabilities (scikit-learn); NaN with one class only."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, p))


def km_plot(path, time, event, groups, title: str) -> None:
    """Kaplan-Meier curves (lifelines) of each risk group with the log-rank p-value, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import multivariate_logrank_test

    from ..io import atomic_write_bytes

    t, e, g = np.asarray(time), np.asarray(event), np.asarray(groups)
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    for name in sorted(set(g.tolist())):
        sel = g == name
        KaplanMeierFitter(label=f"{name} risk (n={sel.sum()}, deaths={int(e[sel].sum())})").fit(
            t[sel], e[sel]).plot_survival_function(ax=ax, ci_show=True)
    p = multivariate_logrank_test(t, g, e).p_value if len(set(g.tolist())) > 1 else float("nan")
    ax.set_title(f"{title}\nlog-rank p = {p:.3g}", fontsize=9)
    ax.set_xlabel("days")
    ax.set_ylabel("overall survival")
    ax.set_ylim(0, 1.02)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
