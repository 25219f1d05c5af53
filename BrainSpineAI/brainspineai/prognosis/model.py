"""The prognosis model folder (card task ``prognosis``) and prediction for one patient.

Folder: ``model.json`` (card), ``prognosis.json`` (the card's ``weights``: the Cox model and
the grade model as :class:`.survival.LinearModel` numbers, the risk-group cut, the reference
spacing), ``radiomics.json`` (the pyradiomics settings the features were computed with),
``cv.json`` (the cross-validation table). Every file is listed with its sha256 in the card's
``files`` and checked before it is read (:func:`brainspineai.catalogue.verify_weights`).
Nothing is pickled: prediction is numpy arithmetic on the stored numbers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, ModelError
from .survival import LinearModel

TASK = "prognosis"
WEIGHTS = "prognosis.json"
SETTINGS = "radiomics.json"
CV_FILE = "cv.json"
FORMAT = 1
CURVE_DAYS = tuple(range(0, 3651, 30))  # the survival curve's days (10 years, monthly)


NET_RISK, NET_GRADE = "network_risk", "network_grade_logit"  # the network's outputs as model features
NET_FILE = "network.safetensors"


@dataclass
class PrognosisModel:
    """A loaded prognosis model: ``cox`` and ``grade`` (:class:`LinearModel`), the risk-group
    ``cut`` (on the Cox linear predictor: training median), the pyradiomics ``settings``, the
    reference ``spacing`` (mm), and the multi-modal ``network`` (:mod:`.network`, or ``None``)
    with the age standardisation ``net_age`` (mean, scale) it was trained with."""

    card: dict
    folder: Path
    cox: LinearModel
    grade: LinearModel
    cut: float
    settings: dict
    spacing: tuple
    network: object = None
    net_age: tuple = (0.0, 1.0)
    kind: str = "prognosis"

    @property
    def id(self) -> str:
        return self.card["id"]

    @property
    def _features(self) -> set:
        return set(self.cox.features) | set(self.grade.features)

    @property
    def weighted_features(self) -> set:
        """Features with a non-zero coefficient in the Cox or the grade model (the others cannot
        change a prediction)."""
        return {f for lm in (self.cox, self.grade) for f, c in zip(lm.features, lm.coef) if float(c) != 0.0}

    @property
    def needs_imaging(self) -> bool:
        return bool(self._features - {"age"})

    def _row(self, lm: LinearModel, feats: dict):
        import numpy as np

        missing = [f for f in lm.features if f not in feats]
        if missing:
            raise ModelError(f"model '{self.id}': feature {missing[0]} was not computed (other pyradiomics version?)")
        return np.asarray([[feats[f] for f in lm.features]], dtype=np.float64)

    def predict_features(self, feats: dict, age: float, missing=(), weights=None) -> dict:
        """Prediction from computed features (radiomics by pyradiomics name, the network's
        ``network_risk`` / ``network_grade_logit``) and the age.

        :returns: ``{"risk", "risk_group", "survival": {"days", "probability"}, "grade":
            {"probabilities": {"II", "III"}}, "modality_weights"}``; ``risk`` is the Cox
            linear predictor (log relative hazard against the training cohort's mean patient).
        """
        import numpy as np

        feats = {**feats, "age": age}
        lp = float(self.cox.linear_predictor(self._row(self.cox, feats))[0])
        surv = self.cox.survival(self._row(self.cox, feats), CURVE_DAYS)[0]
        z = float(self.grade.linear_predictor(self._row(self.grade, feats))[0])
        p3 = float(1.0 / (1.0 + np.exp(-z)))
        if weights is None:  # radiomics: the FLAIR only
            weights = {s: (1.0 if s == "flair" and self.needs_imaging else 0.0) for s in ("t1", "t1ce", "flair")}
        return {"model": self.id, "risk": lp, "risk_group": "high" if lp > self.cut else "low",
                "survival": {"days": list(CURVE_DAYS), "probability": [round(float(v), 6) for v in surv]},
                "grade": {"probabilities": {"II": round(1.0 - p3, 6), "III": round(p3, 6)}},
                "modality_weights": weights, "missing_sequences": list(missing), "age": age}

    def predict(self, case_dir, age, mask=None) -> dict:
        """Prognosis of one patient folder (:mod:`.data` layout) at ``age`` years; ``mask``
        (a file) replaces the folder's ``mask.nii.gz``.

        :raises InputError: unknown age, no FLAIR, no tumour mask, unreadable files, or a radiomic
            feature the model uses that pyradiomics could not compute for this tumour (rather than
            a prediction from a stand-in value).
        """
        from .data import check_age, find_case, load_case
        from .features import radiomics_features

        age = check_age(age)
        if not self.needs_imaging:
            return self.predict_features({}, age)
        if mask is None and "mask" not in find_case(case_dir):
            raise InputError(f"{case_dir}: no tumour mask (mask.nii.gz) and no segmenter for lower-grade "
                             "glioma FLAIR in this model; give the expert or a segmented mask (--mask)")
        case = load_case(case_dir, self.spacing, mask=mask)
        feats, weights = {}, None
        if self._features - {"age", NET_RISK, NET_GRADE}:
            failed = []
            feats.update(radiomics_features(case, self.settings, not_finite=failed))
            used = sorted(set(failed) & self.weighted_features)
            if used:
                raise InputError(f"{case_dir}: pyradiomics could not compute {', '.join(used)} for this tumour "
                                 "(the model needs it); no prediction from a stand-in value")
        if self.network is not None:
            from .network import SEQUENCES, patient_tensor, run_network

            x, av = patient_tensor(case)
            r, g, a = run_network(self.network, x[None], av[None], [(age - self.net_age[0]) / self.net_age[1]])
            feats.update({NET_RISK: float(r[0]), NET_GRADE: float(g[0])})
            weights = {s: round(float(w), 6) for s, w in zip(SEQUENCES, a[0])}
        return self.predict_features(feats, age, case["missing"], weights)


def save_prognosis_model(out_dir, card: dict, payload: dict, settings: dict, extra: dict) -> Path:
    """Write the folder atomically (:func:`brainspineai.catalogue.write_model_folder`):
    ``payload`` as :data:`WEIGHTS`, ``settings`` as :data:`SETTINGS`, and ``extra`` (file name
    -> bytes: the cross-validation table, figures), every file listed with its sha256."""
    from ..catalogue import check_file_name, sha256_file, write_model_folder

    for name in extra:
        check_file_name(name)

    def write(tmp: Path) -> dict:
        (tmp / WEIGHTS).write_text(json.dumps({**payload, "format": FORMAT}, indent=1) + "\n", encoding="utf-8")
        (tmp / SETTINGS).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        for name, data in extra.items():
            (tmp / name).write_bytes(data)
        files = {n: sha256_file(tmp / n) for n in (WEIGHTS, SETTINGS, *extra)}
        return {"weights": WEIGHTS, "sha256": files[WEIGHTS], "files": files}

    return write_model_folder(out_dir, {**card, "task": TASK}, write)


def load_prognosis_model(folder, card: dict, device=None) -> PrognosisModel:
    """Verify every file's sha256 and read the model (``device`` is unused: numpy only).

    :raises ModelError: missing or malformed files. :raises ChecksumError: a digest differs.
    """
    from ..catalogue import verify_weights

    folder = Path(folder)
    if not isinstance(card.get("files"), dict) or SETTINGS not in card["files"]:
        raise ModelError(f"{folder}: prognosis model card must list {SETTINGS} in files")
    verify_weights(folder, card)
    try:
        payload = json.loads((folder / WEIGHTS).read_text(encoding="utf-8"))
        settings = json.loads((folder / SETTINGS).read_text(encoding="utf-8"))
        if payload.get("format") != FORMAT:
            raise ValueError(f"format {payload.get('format')!r}")
        cox, grade = LinearModel.from_dict(payload["cox"]), LinearModel.from_dict(payload["grade"])
        for lm in (cox, grade):
            n = len(lm.features)
            if not (len(lm.mean) == len(lm.scale) == len(lm.coef) == n):
                raise ValueError("coefficient lengths differ")
        net, net_age = None, (0.0, 1.0)
        if "network" in payload:
            from .network import load_state

            if card["files"].get(NET_FILE) is None:
                raise ValueError(f"the card does not list {NET_FILE}")
            net = load_state((folder / NET_FILE).read_bytes(), payload["network"]["config"])
            net_age = (float(payload["network"]["age_mean"]), float(payload["network"]["age_scale"]))
        return PrognosisModel(card, folder, cox, grade, float(payload["cut"]), settings,
                              tuple(float(s) for s in payload["spacing"]), net, net_age)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelError(f"{folder}: malformed prognosis model ({str(exc)[:120]})") from None
