"""Train a prognosis model: features of every patient, the cross-validated comparison of the
variants (:mod:`.study`), Kaplan-Meier figures, then the refit of the best survival variant
and the best grade variant on all patients, written as a model folder (:mod:`.model`) with
its card (data, cross-validated figures with intervals, intended use and what it must not be
used for)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

INTENDED_USE = ("Research only: a study of whether MRI radiomics of lower-grade glioma add prognostic information "
                "to age. Not a medical device.")
NOT_FOR = ["clinical decisions about a patient's treatment or prognosis",
           "tumours other than adult WHO grade II/III glioma, or images other than the axial FLAIR of this "
           "collection's kind (pre-operative, TCIA TCGA-LGG)",
           "patients without an expert or checked tumour mask",
           "grading in place of histopathology or molecular markers (IDH, 1p/19q), which the model never saw"]


@dataclass
class PrognosisConfig:
    data: str
    clinical: str
    out: str
    folds: int = 5
    seed: int = 0
    bootstrap: int = 1000
    penalizer: float = 0.5
    cache: str | None = None
    model_id: str | None = None
    limit: int = 0  # use the first N patients (quick runs); 0 = all
    network: bool = True  # cross-validate the multi-modal network too
    net_epochs: int = 40


def usable_patients(patients):
    """Split the clinical rows into those with age, outcome and (optionally) grade, and the
    left-out ones with the reason."""
    keep, left = [], []
    for p in patients:
        if p.age is None:
            left.append((p.patient, "unknown age"))
        else:
            keep.append(p)
    return keep, left


def run_study(cfg: PrognosisConfig, log=print) -> dict:
    """Features, cross-validation and ablation. :returns: a dict with everything the model
    folder and the report need."""
    import numpy as np

    from .data import REFERENCE_SPACING, read_clinical
    from .features import RADIOMICS_SETTINGS, cohort_features
    from .study import ablation_table, cross_validate

    patients = read_clinical(cfg.clinical, need_outcome=True, need_age=False)
    patients, left = usable_patients(patients)
    for pid, why in left:
        log(f"left out {pid}: {why}")
    if cfg.limit:
        patients = patients[:cfg.limit]
    n_events = sum(p.event for p in patients)
    if len(patients) < 2 * cfg.folds or n_events < cfg.folds:
        raise InputError(f"{len(patients)} patients with {n_events} deaths are too few for {cfg.folds}-fold "
                         "cross-validation")
    log(f"radiomics of {len(patients)} patients ...")
    failed = {}
    X, names, missing = cohort_features(cfg.data, patients, RADIOMICS_SETTINGS, REFERENCE_SPACING, cfg.cache,
                                        not_finite=failed)
    for pid, feats in failed.items():  # pyradiomics logs such a failure and goes on; say so here
        log(f"{pid}: pyradiomics could not compute {len(feats)} feature(s) ({', '.join(feats[:3])}"
            f"{', ...' if len(feats) > 3 else ''}); 0.0 stands in for them")
    age = np.asarray([p.age for p in patients])
    time = np.asarray([p.time_days for p in patients])
    event = np.asarray([p.event for p in patients])
    grade = [p.grade for p in patients]
    extra, tensors = {}, None
    if cfg.network:
        from .network import NetConfig, cohort_tensors, cross_validate_network
        from .study import folds

        log("multi-modal network: slice series of every patient ...")
        tensors = cohort_tensors(cfg.data, patients, REFERENCE_SPACING, cfg.cache)
        g = np.asarray([np.nan if x is None else x for x in grade], dtype=float)
        extra["network"] = cross_validate_network(*tensors, age, time, event, g, folds(event, cfg.folds, cfg.seed),
                                                  NetConfig(epochs=cfg.net_epochs, seed=cfg.seed), log)
    log(f"{cfg.folds}-fold cross-validation of {len(names)} features ...")
    cv = cross_validate(X, names, age, time, event, grade, cfg.folds, cfg.seed, cfg.bootstrap, cfg.penalizer,
                        extra_risks=extra)
    table, verdict, best = ablation_table(cv)
    return {"tensors": tensors, "patients": patients, "left_out": left, "not_finite": failed, "X": X, "names": names, "missing": missing, "age": age,
            "time": time, "event": event, "grade": grade, "cv": cv, "table": table, "verdict": verdict,
            "best": best}


def _km_png(study: dict, variant: str) -> bytes:
    import os
    import tempfile

    from .survival import km_plot

    r = study["cv"]["variants"][variant]
    fd, path = tempfile.mkstemp(suffix=".png")
    os.close(fd)
    try:
        km_plot(path, study["time"], study["event"], r["oof_group"],
                f"{variant}: out-of-fold risk group ({len(study['cv']['folds'])}-fold CV)")
        return Path(path).read_bytes()
    finally:
        os.unlink(path)


def train_prognosis(cfg: PrognosisConfig, log=print) -> Path:
    """Run the study and write the model folder at ``cfg.out``.

    :raises InputError: bad clinical CSV, missing patient folders, too few patients.
    """
    import json

    import numpy as np

    from .data import REFERENCE_SPACING
    from .features import RADIOMICS_SETTINGS, radiomics_version
    from .model import CV_FILE, FORMAT, SETTINGS, TASK, save_prognosis_model
    from .study import design
    from .survival import fit_cox, fit_logistic

    s = run_study(cfg, log)
    v = s["cv"]["variants"]
    best = s["best"]
    best_grade = max(v, key=lambda k: v[k].get("grade_auc", -1))
    g = np.asarray([np.nan if x is None else x for x in s["grade"]], dtype=float)
    known = ~np.isnan(g)
    payload, extra_files = {}, {}
    if "network" in (best, best_grade):
        from .model import NET_FILE, NET_GRADE, NET_RISK
        from .network import NetConfig, breslow, config_dict, run_network, save_state, train_network
        from .survival import LinearModel

        log("refitting the network on all patients ...")
        ncfg = NetConfig(epochs=cfg.net_epochs, seed=cfg.seed)
        mu, sd = float(s["age"].mean()), float(s["age"].std() + 1e-9)
        net = train_network(*s["tensors"], (s["age"] - mu) / sd, s["time"], s["event"], g, ncfg)
        lp_all, _, _ = run_network(net, *s["tensors"], (s["age"] - mu) / sd)
        payload["network"] = {"config": config_dict(ncfg), "age_mean": mu, "age_scale": sd}
        extra_files[NET_FILE] = save_state(net)
    if best == "network":
        cox = LinearModel("cox", [NET_RISK], [0.0], [1.0], [1.0], 0.0, *breslow(lp_all, s["time"], s["event"]))
        cut = float(np.median(lp_all))
    else:
        D, dn = design(best, s["X"], s["names"], s["age"])
        cox = fit_cox(D, s["time"], s["event"], dn, cfg.penalizer if best != "age" else 0.0)
        cut = float(np.median(cox.linear_predictor(D)))
    if best_grade == "network":
        grade = LinearModel("logistic", [NET_GRADE], [0.0], [1.0], [1.0], 0.0)
        dng = [NET_GRADE]
    else:
        Dg, dng = design(best_grade, s["X"], s["names"], s["age"])
        grade = fit_logistic(Dg[known], (g[known] == 3).astype(int), dng)
    dn = cox.features
    figures = {k: {m: r[m] for m in ("c_index", "c_index_95ci", "time_auc", "grade_auc", "grade_auc_95ci",
                                        "fold_c_index") if m in r} for k, r in v.items()}
    pats = s["patients"]
    card = {
        "id": cfg.model_id or Path(cfg.out).name, "version": 1, "task": TASK,
        "architecture": f"cox-{best}+logistic-{best_grade}",
        "class_names": ["grade II", "grade III"], "input_size": [len(dn)], "in_channels": 1,
        "description": f"Overall survival (Cox, {best}) and WHO grade (logistic, {best_grade}) of lower-grade "
                       "glioma from MRI of the tumour region and age",
        "inputs": {"sequences": ["flair"] + (["t1 (optional)", "t1ce (optional)"] if "network" in payload else []), "mask": "tumour / FLAIR abnormality, 0/1", "age": "years at diagnosis",
                   "reference_spacing_mm": list(REFERENCE_SPACING)},
        "features": {"extractor": "pyradiomics", "pyradiomics_version": radiomics_version(),
                     "settings_file": SETTINGS, "sequence": "flair", "n_features": len(s["names"])},
        "training_data": {"source": "TCGA-LGG (Buda et al. 2019 images and masks; TCGA-CDR survival, Liu et al. 2018)",
                          "data_dir": str(cfg.data), "clinical": str(cfg.clinical), "n_patients": len(pats),
                          "n_deaths": int(s["event"].sum()), "left_out": [f"{a}: {b}" for a, b in s["left_out"]],
                          "features_not_computed": s.get("not_finite", {}),  # patient -> names; 0.0 stood in
                          "grade_II": int((g == 2).sum()), "grade_III": int((g == 3).sum())},
        "metrics": {"protocol": f"patient-level {cfg.folds}-fold cross-validation stratified by event (seed "
                                f"{cfg.seed}), out-of-fold predictions pooled; 95% percentile bootstrap intervals "
                                f"({cfg.bootstrap} resamples); time AUC cumulative/dynamic with IPCW",
                    "variants": figures, "selected_survival": best, "selected_grade": best_grade,
                    "imaging_vs_age": s["verdict"]},
        "risk_group": "high when the Cox linear predictor exceeds the training median, else low",
        "intended_use": INTENDED_USE, "must_not_be_used_for": NOT_FOR,
        "penalizer": cfg.penalizer, "format": FORMAT,
    }
    cv = {"table": s["table"], "verdict": s["verdict"], "folds": s["cv"]["folds"],
          "patients": [p.patient for p in pats], "variants": v}
    payload.update({"cox": cox.to_dict(), "grade": grade.to_dict(), "cut": cut,
                    "spacing": list(REFERENCE_SPACING)})
    kms = {f"km-{k.replace('+', '-')}.png": _km_png(s, k) for k in v if "oof_group" in v[k]}

    extra = {CV_FILE: (json.dumps(cv, indent=1) + "\n").encode(),
             **kms, **extra_files}
    folder = save_prognosis_model(cfg.out, card, payload, RADIOMICS_SETTINGS, extra)
    log(s["table"])
    log(s["verdict"])
    return folder
