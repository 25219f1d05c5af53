"""Radiomics of the tumour region with pyradiomics (van Griethuysen et al., Cancer Research
2017; IBSI-aligned, Zwanenburg et al., Radiology 2020).

Features are computed on the FLAIR (the one sequence every patient has) inside the tumour
mask, after resampling onto the model's reference spacing (:func:`.data.load_case`). The
pyradiomics settings (:data:`RADIOMICS_SETTINGS`, a parameter file as a dict) are stored in
every model folder (``radiomics.json``) and the same settings are used at inference:
intensities normalised (z-score x 100 over the image), a fixed bin count of 32 (the FLAIR
has no absolute scale, so a fixed bin width would not be comparable between scanners),
texture (GLCM, GLRLM, GLSZM) per axial slice (``force2D``: the slices are thick and their
spacing is a placeholder) and 3D shape. Deterministic: the same files give the same numbers.

:func:`cohort_features` caches each patient's vector as JSON keyed by the settings and the
input files (size and modification time), so repeated runs read them back.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ..errors import InputError

RADIOMICS_SETTINGS = {
    "setting": {"binCount": 32, "normalize": True, "normalizeScale": 100, "force2D": True,
                "force2Ddimension": 0, "label": 1, "correctMask": True, "minimumROIDimensions": 2,
                "minimumROISize": 20, "interpolator": "sitkBSpline", "additionalInfo": False},
    "imageType": {"Original": {}},
    "featureClass": {"shape": None, "firstorder": None, "glcm": None, "glrlm": None, "glszm": None},
}
FEATURE_SEQUENCE = "flair"


def settings_digest(settings=None, spacing=None) -> str:
    """sha256 of the settings and spacing (the cache key's first part)."""
    blob = json.dumps({"s": settings or RADIOMICS_SETTINGS, "sp": list(spacing or [])}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def radiomics_version() -> str:
    try:
        import radiomics
    except ImportError:
        return "missing"
    return str(getattr(radiomics, "__version__", "unknown"))


def _extractor(settings):
    try:
        from radiomics import featureextractor
    except ImportError:
        raise InputError("pyradiomics is not installed; install it with 'pip install pyradiomics' "
                         "(the prognosis model's features are pyradiomics features)") from None
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    params = json.loads(json.dumps(settings))
    ext = featureextractor.RadiomicsFeatureExtractor(params)
    return ext


def radiomics_features(case: dict, settings=None, not_finite: list | None = None) -> dict:
    """Radiomic features of the tumour on the FLAIR of a loaded case (:func:`.data.load_case`).

    :param not_finite: when given, the names of features pyradiomics could not compute (NaN or
        infinite: it logs the failure and goes on) are appended to it; they are 0.0 in the result.
    :returns: feature name (pyradiomics naming, e.g. ``original_glcm_Idmn``) -> float, sorted.
    :raises InputError: no mask, or pyradiomics refuses the region (too small, one voxel wide).
    """
    import math

    if case.get("mask") is None:
        raise InputError("no tumour mask: give the case a mask.nii.gz (expert or segmented)")
    ext = _extractor(settings or RADIOMICS_SETTINGS)
    try:
        result = ext.execute(case["images"][FEATURE_SEQUENCE], case["mask"], label=1)
    except (ValueError, RuntimeError, AssertionError) as exc:
        raise InputError(f"the tumour region cannot be described by radiomics ({str(exc).splitlines()[0][:160]})") from None
    out = {}
    for k, v in result.items():
        if k.startswith("diagnostics_"):
            continue
        x = float(v)
        if not math.isfinite(x):
            x = 0.0
            if not_finite is not None:
                not_finite.append(k)
        out[k] = x
    return dict(sorted(out.items()))


def _file_key(files: dict) -> str:
    parts = []
    for name in sorted(files):
        st = Path(files[name]).stat()
        parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def case_features(folder, settings=None, spacing=None, cache_dir=None) -> dict:
    """Features of one patient folder (FLAIR + mask), read from ``cache_dir`` when cached.

    :returns: ``{"radiomics": {name: float}, "missing": [sequence, ...], "not_finite": [name, ...]}``
        (``not_finite``: features pyradiomics could not compute, 0.0 in ``radiomics``).
    :raises InputError: see :func:`.data.load_case` and :func:`radiomics_features`.
    """
    from ..io import atomic_write_text
    from .data import REFERENCE_SPACING, find_case, load_case

    settings = settings or RADIOMICS_SETTINGS
    spacing = tuple(spacing or REFERENCE_SPACING)
    folder = Path(folder)
    cache = None
    if cache_dir is not None:
        files = find_case(folder)
        key = f"{folder.name}-{settings_digest(settings, spacing)[:16]}-{_file_key(files)}.json"
        cache = Path(cache_dir) / key
        if cache.is_file():
            try:
                return json.loads(cache.read_text(encoding="utf-8"))
            except ValueError:
                pass
    case = load_case(folder, spacing)
    failed = []
    out = {"radiomics": radiomics_features(case, settings, not_finite=failed), "missing": case["missing"],
           "not_finite": failed}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps(out))
    return out


def cohort_features(data_dir, patients, settings=None, spacing=None, cache_dir=None, progress=None, not_finite=None):
    """Feature matrix of ``patients`` (:class:`.data.Patient` list) under ``data_dir``.

    :param not_finite: when given (a dict), patient id -> names of the features pyradiomics
        could not compute for that patient (0.0 in ``X``).

    :returns: ``(X float64 (n_patients, n_features), names list, missing list of lists)``.
    :raises InputError: a patient folder is missing, or its features cannot be computed (the
        message names the patient).
    """
    import numpy as np

    rows, names, missing = [], None, []
    for i, p in enumerate(patients):
        folder = Path(data_dir) / p.patient
        if not folder.is_dir():
            raise InputError(f"{data_dir}: no folder for patient {p.patient} of the clinical CSV")
        try:
            f = case_features(folder, settings, spacing, cache_dir)
        except InputError as exc:
            raise InputError(f"patient {p.patient}: {exc}") from None
        if names is None:
            names = list(f["radiomics"])
        elif list(f["radiomics"]) != names:
            raise InputError(f"patient {p.patient}: radiomics gave other features than for the first patient")
        rows.append([f["radiomics"][n] for n in names])
        missing.append(f["missing"])
        if not_finite is not None and f.get("not_finite"):
            not_finite[p.patient] = list(f["not_finite"])
        if progress:
            progress(i + 1, len(patients))
    return np.asarray(rows, dtype=np.float64), names or [], missing
