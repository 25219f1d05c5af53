"""Several studies of one patient (time points): a prognosis per study and the tumour's growth.

A *series folder* holds one study folder per time point (each in the :mod:`.data` layout:
``flair.nii.gz``, ``mask.nii.gz``, optionally ``t1`` / ``t1ce``) and no ``flair`` of its own.
The studies are put in time order by ``timepoints.csv`` (columns ``study`` = folder name and
``days`` = days since any fixed date, e.g. the first study), or else by folder names that are
dates (``2019-03-04`` or ``20190304``).

What is computed per study: the model's prediction (:meth:`.model.PrognosisModel.predict`),
the tumour volume (ml, from the mask's voxels and the header spacing) and the mean tumour
diameter ``D = (2 V)^(1/3)`` (mm; Mandonnet et al., Ann Neurol 2003). Over the series: the
velocity of diametric expansion (VDE, mm/year; least-squares slope of ``D`` against time, as
Pallud et al., Ann Neurol 2006, who found a VDE of 8 mm/year or more associated with shorter
survival in lower-grade glioma). The result's prediction is that of the **latest** study. The
growth figures are reported beside it, not fed into the model: the shipped model was trained
on one study per patient (no longitudinal training data), so the time points are not modelled
jointly, and the output says so.
"""
from __future__ import annotations

import csv
import datetime as _dt
import math
import re
from pathlib import Path

from ..errors import InputError
from .data import MASK_NAME, SEQUENCES, SUFFIXES, find_case

TIMEPOINTS_CSV = "timepoints.csv"
VDE_THRESHOLD_MM_PER_YEAR = 8.0  # Pallud et al. 2006
DAYS_PER_YEAR = 365.25
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")


def _has_study(folder: Path) -> bool:
    return any((folder / f"{s}{x}").is_file() for s in (*SEQUENCES, MASK_NAME) for x in SUFFIXES)


def is_series(folder) -> bool:
    """True when ``folder`` holds study folders and no study of its own."""
    folder = Path(folder)
    return folder.is_dir() and not _has_study(folder) and any(
        p.is_dir() and _has_study(p) for p in folder.iterdir())


def find_series(folder) -> list:
    """The studies of a series folder in time order: ``[(name, days (float), Path), ...]``,
    ``days`` counted from the first study (0.0).

    :raises InputError: fewer than one study, no dates (neither ``timepoints.csv`` nor dated
        folder names), a ``timepoints.csv`` naming a missing folder or leaving one out, a bad or
        repeated day.
    """
    folder = Path(folder)
    studies = sorted(p for p in folder.iterdir() if p.is_dir() and _has_study(p))
    if not studies:
        raise InputError(f"{folder}: no study folders (each with flair.nii.gz) and no FLAIR of its own")
    table = folder / TIMEPOINTS_CSV
    days = {}
    if table.is_file():
        try:
            with open(table, newline="", encoding="utf-8-sig") as fh:
                rows = list(csv.DictReader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"{table.name}: not a readable CSV ({exc})") from None
        if not rows or not {"study", "days"} <= set(rows[0]):
            raise InputError(f"{table.name}: needs the columns study, days (one row per study folder)")
        for i, row in enumerate(rows, start=2):
            name = (row["study"] or "").strip()
            try:
                d = float(row["days"])
            except (TypeError, ValueError):
                raise InputError(f"{table.name} line {i}: days {row['days']!r} is not a number") from None
            if not math.isfinite(d):
                raise InputError(f"{table.name} line {i}: days {row['days']!r} is not a finite number")
            if not (folder / name).is_dir() or "/" in name or name in (".", ".."):
                raise InputError(f"{table.name} line {i}: study {name!r} is not a study folder of {folder.name}")
            if name in days:
                raise InputError(f"{table.name} line {i}: study {name} appears twice")
            days[name] = d
        left = [p.name for p in studies if p.name not in days]
        if left:
            raise InputError(f"{table.name}: no days for the study folder(s) {', '.join(left)}")
    else:
        for p in studies:
            m = _DATE.match(p.name)
            try:
                date = _dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None
            except ValueError:
                date = None
            if date is None:
                raise InputError(f"{folder}: study folder {p.name!r} is not a date (YYYY-MM-DD); name the folders "
                                 f"by their dates or give {TIMEPOINTS_CSV} (study, days)")
            days[p.name] = float(date.toordinal())
    order = sorted(studies, key=lambda p: days[p.name])
    seen = [days[p.name] for p in order]
    if len(set(seen)) != len(seen):
        raise InputError(f"{folder}: two studies on the same day; one study per time point")
    return [(p.name, days[p.name] - seen[0], p) for p in order]


def tumour_size(mask) -> tuple:
    """``(volume_ml, mean_diameter_mm)`` of a mask (file or SimpleITK image; voxels > 0), from
    the header spacing; the mean diameter is ``(2 V)^(1/3)`` with ``V`` in mm^3 (Mandonnet 2003)."""
    import numpy as np
    import SimpleITK as sitk

    from ..io import read_image

    img = mask if isinstance(mask, sitk.Image) else read_image(mask)
    n = int(np.count_nonzero(sitk.GetArrayViewFromImage(img) > 0))
    v_mm3 = n * float(np.prod(img.GetSpacing()))
    return v_mm3 / 1000.0, (2.0 * v_mm3) ** (1.0 / 3.0)


def growth(days, diameters_mm, volumes_ml) -> dict | None:
    """VDE (mm/year, least-squares slope of the mean diameter over time) and the volume change
    (ml/year) of a series; ``None`` for one time point."""
    import numpy as np

    if len(days) < 2:
        return None
    years = np.asarray(days, float) / DAYS_PER_YEAR
    vde = float(np.polyfit(years, np.asarray(diameters_mm, float), 1)[0])
    dv = float(np.polyfit(years, np.asarray(volumes_ml, float), 1)[0])
    return {"vde_mm_per_year": round(vde, 3), "volume_change_ml_per_year": round(dv, 3),
            "interval_days": float(days[-1] - days[0]), "n_time_points": len(days),
            "vde_at_least_8_mm_per_year": vde >= VDE_THRESHOLD_MM_PER_YEAR,
            "note": "VDE of 8 mm/year or more was associated with shorter survival in lower-grade glioma "
                    "(Pallud et al., Ann Neurol 2006); reported beside the model's risk, not part of it, and "
                    "not validated on this project's data (one study per patient); volumes use the header "
                    "spacing"}


def predict_series(model, folder, age, progress=None) -> dict:
    """Prognosis of a series folder: the latest study's prediction, plus ``"time_points"``
    (per study: ``study``, ``days``, ``tumour_volume_ml``, ``mean_diameter_mm``, ``risk``,
    ``risk_group``, ``grade_III``) and ``"growth"`` (:func:`growth`); ``progress(fraction,
    message)`` is called before each study.

    :raises InputError: see :func:`find_series`; a study without a mask; any study's own error,
        naming the study.
    """
    series = find_series(folder)
    points, res = [], None
    for i, (name, day, path) in enumerate(series):
        if progress is not None:
            progress(i / len(series), f"study {i + 1}/{len(series)}: {name}")
        files = find_case(path)
        if MASK_NAME not in files:
            raise InputError(f"study {name}: no tumour mask (mask.nii.gz); every time point needs its own mask")
        try:
            res = model.predict(path, age)
        except InputError as exc:
            raise InputError(f"study {name}: {exc}") from None
        vol, diam = tumour_size(files[MASK_NAME])
        points.append({"study": name, "days": day, "tumour_volume_ml": round(vol, 3),
                       "mean_diameter_mm": round(diam, 3), "risk": res["risk"], "risk_group": res["risk_group"],
                       "grade_III": res["grade"]["probabilities"]["III"]})
    out = dict(res)
    out["study"] = series[-1][0]
    out["time_points"] = points
    out["growth"] = growth([p["days"] for p in points], [p["mean_diameter_mm"] for p in points],
                           [p["tumour_volume_ml"] for p in points])
    out["time_points_note"] = ("risk, survival and grade are those of the latest study; the model was trained on "
                               "one study per patient, so the time points are not modelled jointly")
    return out


def check_case(folder) -> None:
    """Check a patient folder or a series folder before any model is loaded.

    :raises InputError: see :func:`find_series` and :func:`.data.find_case`."""
    if is_series(folder):
        find_series(folder)
    else:
        find_case(folder)


def predict_case(model, folder, age, mask=None, progress=None) -> dict:
    """:func:`predict_series` for a series folder, else the model's one-study prediction.

    :raises InputError: ``mask`` given for a series (each study has its own), and see above.
    """
    if is_series(folder):
        if mask is not None:
            raise InputError(f"{folder}: several studies; --mask applies to one study, put each study's "
                             "mask.nii.gz into its folder")
        return predict_series(model, folder, age, progress)
    return model.predict(folder, age, mask=mask)
