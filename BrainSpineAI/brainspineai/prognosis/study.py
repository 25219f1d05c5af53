"""The prognosis study: patient-level cross-validation of every variant, the ablation table,
and the refit of the best variant on all patients.

Variants (survival, Cox): ``age`` (age alone, the strong clinical baseline in lower-grade
glioma), ``radiomics`` (ridge Cox on the FLAIR radiomics), ``radiomics+age``; grade (II vs
III, logistic regression) on the same three inputs. Each is fitted inside the training folds
only (standardisation, coefficients, baseline, the risk-group cut at the training median) and
scored on the held-out fold; the out-of-fold predictions of all folds are pooled for the
C-index, its 95% bootstrap interval (1000 resamples of patients), the time-dependent AUC at
1, 2 and 3 years, the grade AUC and the Kaplan-Meier curves by predicted risk group.
"""
from __future__ import annotations

from .survival import (DEFAULT_PENALIZER, bootstrap_ci, c_index, fit_cox, fit_logistic, grade_auc,
                       time_dependent_auc)

VARIANTS = ("age", "radiomics", "radiomics+age")
HORIZONS = (365, 730, 1095)


def design(variant: str, X, names, age):
    """The columns a variant uses: ``(matrix (n, k), names)``."""
    import numpy as np

    age = np.asarray(age, dtype=np.float64)[:, None]
    if variant == "age":
        return age, ["age"]
    if variant == "radiomics":
        return np.asarray(X, dtype=np.float64), list(names)
    if variant == "radiomics+age":
        return np.hstack([np.asarray(X, dtype=np.float64), age]), list(names) + ["age"]
    raise ValueError(f"unknown variant {variant}")


def folds(event, n_folds: int = 5, seed: int = 0):
    """Patient-level folds stratified by event (scikit-learn ``StratifiedKFold``):
    list of (train indices, test indices)."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    e = np.asarray(event, dtype=int)
    return [(tr, te) for tr, te in skf.split(np.zeros(len(e)), e)]


def _summary(time, event, risk, grade, p_grade, n_boot: int, seed: int) -> dict:
    import numpy as np

    out = {"c_index": c_index(time, event, risk),
           "c_index_95ci": bootstrap_ci(c_index, (time, event, risk), n_boot, seed)}
    out["time_auc"] = {f"{h // 365}y": time_dependent_auc(time, event, risk, h) for h in HORIZONS}
    if grade is not None:
        g = np.asarray(grade, dtype=float)
        known = ~np.isnan(g)
        y, p = (g[known] == 3).astype(int), np.asarray(p_grade)[known]
        out["grade_auc"] = grade_auc(y, p)
        out["grade_auc_95ci"] = bootstrap_ci(grade_auc, (y, p), n_boot, seed)
    return out


def cross_validate(X, names, age, time, event, grade, n_folds: int = 5, seed: int = 0, n_boot: int = 1000,
                   penalizer: float = DEFAULT_PENALIZER, extra_risks=None) -> dict:
    """Cross-validate every variant.

    :param X: radiomics float (n, p); ``age`` years (n,); ``time`` days; ``event`` 0/1;
        ``grade`` WHO 2/3 (NaN unknown).
    :param extra_risks: optional ``{variant: {"risk": (n,), "p_grade": (n,), "group": [...]}}``,
        out-of-fold predictions computed elsewhere on the same folds (the network), added to
        the table.
    :returns: ``{"variants": {name: metrics + "oof_risk", "oof_group", "fold_c_index"},
        "folds": [[test patients' indices], ...]}``.
    """
    import numpy as np

    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=int)
    g = np.asarray([np.nan if v is None else v for v in grade], dtype=float)
    splits = folds(event, n_folds, seed)
    results = {}
    for variant in VARIANTS:
        D, dn = design(variant, X, names, age)
        risk, group, pg, per_fold = np.zeros(len(time)), np.empty(len(time), dtype=object), np.full(len(time), np.nan), []
        for tr, te in splits:
            cox = fit_cox(D[tr], time[tr], event[tr], dn, penalizer if variant != "age" else 0.0)
            risk[te] = cox.linear_predictor(D[te])
            cut = float(np.median(cox.linear_predictor(D[tr])))
            group[te] = np.where(risk[te] > cut, "high", "low")
            per_fold.append(c_index(time[te], event[te], risk[te]))
            known = tr[~np.isnan(g[tr])]
            lr = fit_logistic(D[known], (g[known] == 3).astype(int), dn)
            pg[te] = 1.0 / (1.0 + np.exp(-lr.linear_predictor(D[te])))
        res = _summary(time, event, risk, g, pg, n_boot, seed)
        res.update(fold_c_index=per_fold, oof_risk=risk.tolist(), oof_group=group.tolist())
        results[variant] = res
    for variant, oof in (extra_risks or {}).items():
        risk = np.asarray(oof["risk"], dtype=float)
        res = _summary(time, event, risk, g, oof["p_grade"], n_boot, seed)
        res.update(fold_c_index=[c_index(time[te], event[te], risk[te]) for _, te in splits],
                   oof_risk=risk.tolist(), oof_group=list(oof["group"]))
        if "modality_weights" in oof:
            mw = np.asarray(oof["modality_weights"])
            res["mean_modality_weights"] = dict(zip(("t1", "t1ce", "flair"), mw.mean(axis=0).round(4).tolist()))
        results[variant] = res
    return {"variants": results, "folds": [te.tolist() for _, te in splits]}


def ablation_table(cv: dict) -> tuple:
    """Markdown table of the variants and a plain sentence: did imaging beat age alone?

    :returns: ``(table text, verdict sentence, best survival variant)``.
    """
    v = cv["variants"]
    lines = ["| variant | C-index (95% CI) | mean fold C | AUC 1y | AUC 2y | AUC 3y | grade AUC (95% CI) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in v.items():
        lo, hi = r["c_index_95ci"]
        ga = f"{r['grade_auc']:.3f} ({r['grade_auc_95ci'][0]:.3f}-{r['grade_auc_95ci'][1]:.3f})" \
            if "grade_auc" in r else "-"
        fc = sum(r["fold_c_index"]) / len(r["fold_c_index"])
        lines.append(f"| {name} | {r['c_index']:.3f} ({lo:.3f}-{hi:.3f}) | {fc:.3f} | "
                     + " | ".join(f"{r['time_auc'][k]:.3f}" for k in ("1y", "2y", "3y")) + f" | {ga} |")
    best = max(v, key=lambda k: v[k]["c_index"])
    age = v["age"]
    imaging = {k: r for k, r in v.items() if k != "age"}
    top = max(imaging, key=lambda k: imaging[k]["c_index"])
    if imaging[top]["c_index"] > age["c_index"] and imaging[top]["c_index_95ci"][0] > age["c_index"]:
        verdict = (f"Imaging beat age alone: {top} C {imaging[top]['c_index']:.3f} vs age {age['c_index']:.3f}, "
                   "with the lower end of its interval above age's C-index.")
    elif imaging[top]["c_index"] > age["c_index"]:
        verdict = (f"Imaging did NOT clearly beat age alone: {top} C {imaging[top]['c_index']:.3f} vs age "
                   f"{age['c_index']:.3f}, but the intervals overlap widely ({len(cv['folds'])}-fold CV on "
                   "few deaths): the difference is not established.")
    else:
        verdict = (f"Imaging did NOT beat age alone: best imaging variant {top} C {imaging[top]['c_index']:.3f} "
                   f"vs age alone {age['c_index']:.3f}.")
    return "\n".join(lines), verdict, best
