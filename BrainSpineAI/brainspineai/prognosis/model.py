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


@dataclass
class PrognosisModel:
    """A loaded prognosis model: ``cox`` and ``grade`` (:class:`LinearModel`), the risk-group
    ``cut`` (on the Cox linear predictor: training median), the pyradiomics ``settings`` and the
    reference ``spacing`` (mm)."""

    card: dict
    folder: Path
    cox: LinearModel
    grade: LinearModel
    cut: float
    settings: dict
    spacing: tuple
    kind: str = "prognosis"

    @property
    def id(self) -> str:
        return self.card["id"]

    @property
    def needs_imaging(self) -> bool:
        return any(f != "age" for f in self.cox.features + self.grade.features)

    def _row(self, lm: LinearModel, radiomics: dict, age: float):
        import numpy as np

        vals = []
        for f in lm.features:
            if f == "age":
                vals.append(age)
            elif f in radiomics:
                vals.append(radiomics[f])
            else:
                raise ModelError(f"model '{self.id}': feature {f} was not computed (other pyradiomics version?)")
        return np.asarray([vals], dtype=np.float64)

    def predict_features(self, radiomics: dict, age: float, missing=()) -> dict:
        """Prediction from computed radiomics (:func:`.features.radiomics_features`) and age.

        :returns: ``{"risk", "risk_group", "survival": {"days", "probability"}, "grade":
            {"probabilities": {"II", "III"}}, "modality_weights"}``; ``risk`` is the Cox
            linear predictor (log relative hazard against the training cohort's mean patient).
        """
        import numpy as np

        lp = float(self.cox.linear_predictor(self._row(self.cox, radiomics, age))[0])
        surv = self.cox.survival(self._row(self.cox, radiomics, age), CURVE_DAYS)[0]
        z = float(self.grade.linear_predictor(self._row(self.grade, radiomics, age))[0])
        p3 = float(1.0 / (1.0 + np.exp(-z)))
        used = [s for s in ("t1", "t1ce", "flair") if s == "flair" and self.needs_imaging]
        weights = {s: (1.0 / len(used) if s in used else 0.0) for s in ("t1", "t1ce", "flair")}
        return {"model": self.id, "risk": lp, "risk_group": "high" if lp > self.cut else "low",
                "survival": {"days": list(CURVE_DAYS), "probability": [round(float(v), 6) for v in surv]},
                "grade": {"probabilities": {"II": round(1.0 - p3, 6), "III": round(p3, 6)}},
                "modality_weights": weights, "missing_sequences": list(missing), "age": age}

    def predict(self, case_dir, age, mask=None) -> dict:
        """Prognosis of one patient folder (:mod:`.data` layout) at ``age`` years.

        :raises InputError: unknown age, no FLAIR, no tumour mask, unreadable files.
        """
        from .data import check_age
        from .features import case_features

        age = check_age(age)
        if not self.needs_imaging:
            return self.predict_features({}, age)
        if mask is not None:
            from .data import load_case
            from .features import radiomics_features

            case = load_case(case_dir, self.spacing, mask=mask)
            feats = {"radiomics": radiomics_features(case, self.settings), "missing": case["missing"]}
        else:
            from .data import find_case

            if "mask" not in find_case(case_dir):
                raise InputError(f"{case_dir}: no tumour mask (mask.nii.gz) and no segmenter for lower-grade "
                                 "glioma FLAIR in this model; give the expert or a segmented mask")
            feats = case_features(case_dir, self.settings, self.spacing)
        return self.predict_features(feats["radiomics"], age, feats["missing"])


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
        return PrognosisModel(card, folder, cox, grade, float(payload["cut"]), settings,
                              tuple(float(s) for s in payload["spacing"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{folder}: malformed prognosis model ({str(exc)[:120]})") from None
