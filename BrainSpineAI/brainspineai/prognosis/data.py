"""Prognosis inputs: the clinical table and the patient folders.

Clinical CSV (the columns of the shared TCGA-LGG ``clinical.csv``, Buda et al. 2019 with the
survival of the TCGA Pan-Cancer Clinical Data Resource, Liu et al., Cell 2018):
``patient`` (folder name), ``age`` (years at diagnosis), ``grade`` (the source's coding:
``1`` = WHO grade II, ``2`` = WHO grade III; ``2``/``3`` written as ``"G2"``/``"G3"`` are read
too), ``time_days`` (days to death or last contact, > 0) and ``event`` (1 = died, 0 =
censored). Further columns are ignored. :func:`read_clinical` refuses a file that lacks a
column or has an unusable value, in one line naming the row.

Patient folder: ``flair.nii.gz`` (required), ``t1.nii.gz`` (pre-contrast), ``t1ce.nii.gz``
(post-contrast) and ``mask.nii.gz`` (tumour / FLAIR abnormality, 0/1; required unless a
segmenter makes one). Any resolution: every image is resampled by its spacing onto the
model's reference spacing (:func:`resample_to_spacing`), so the published 256 px slices
(1 mm placeholder spacing) and the 128 px shared copies (2 mm) give the same grid.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

SEQUENCES = ("t1", "t1ce", "flair")  # network input order
REQUIRED_COLUMNS = ("patient", "age", "grade", "time_days", "event")
MASK_NAME = "mask"
SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")  # of a patient folder's files
REFERENCE_SPACING = (2.0, 2.0, 1.0)  # mm, x y z (SimpleITK order): the shared copies' placeholder spacing
_GRADE_CODES = {"1": 2, "2": 3, "g2": 2, "g3": 3, "ii": 2, "iii": 3}


@dataclass
class Patient:
    """One row of the clinical table. ``grade`` is the WHO grade (2 or 3) or ``None``;
    ``time_days`` (float, days) and ``event`` (0/1) may be ``None`` where only inference is run."""

    patient: str
    age: float | None
    grade: int | None = None
    time_days: float | None = None
    event: int | None = None
    extra: dict = field(default_factory=dict)


def _number(text: str, what: str, where: str) -> float | None:
    text = (text or "").strip()
    if text == "" or text.lower() in ("na", "nan", "none", "unknown", "[not available]"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"{where}: {what} {text!r} is not a finite number")
    return value


def check_age(age, where: str = "--age") -> float:
    """An age in years (0 < age < 120).

    :raises InputError: unknown or implausible age."""
    if age is None:
        raise InputError(f"{where}: the age is unknown; the prognosis model needs the age in years at diagnosis")
    try:
        value = float(age)
    except (TypeError, ValueError):
        raise InputError(f"{where}: age {age!r} is not a number of years") from None
    if not math.isfinite(value) or not 0 < value < 120:
        raise InputError(f"{where}: age {age!r} is not a plausible age in years (0-120)")
    return value


def read_clinical(path, need_outcome: bool = True, need_age: bool = True) -> list:
    """Read and validate the clinical CSV.

    :param need_outcome: every row must give ``time_days`` > 0 and ``event`` 0/1.
    :param need_age: every kept row must give an age; with ``False`` rows without age are kept
        (``age`` None). Rows without age, grade or outcome are otherwise *skipped* only where
        the caller says so: here an unknown age is an error (one line naming the patient).
    :returns: list of :class:`Patient` in file order.
    :raises InputError: unreadable file, missing columns, a duplicate patient, or a bad value.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"clinical CSV not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path.name}: not a readable CSV ({exc})") from None
    if not rows:
        raise InputError(f"{path.name}: the clinical CSV has no rows")
    needed = REQUIRED_COLUMNS if need_outcome else ("patient", "age")
    missing = [c for c in needed if c not in header]
    if missing:
        raise InputError(f"{path.name}: clinical CSV lacks the column(s) {', '.join(missing)} "
                         f"(needs {', '.join(needed)})")
    out, seen = [], set()
    for i, row in enumerate(rows, start=2):
        pid = (row.get("patient") or "").strip()
        where = f"{path.name} line {i}" + (f" (patient {pid})" if pid else "")
        if not pid or "/" in pid or "\\" in pid or pid in (".", ".."):
            raise InputError(f"{where}: patient {pid!r} is not a folder name")
        if pid in seen:
            raise InputError(f"{where}: patient {pid} appears twice")
        seen.add(pid)
        age = _number(row.get("age"), "age", where)
        if age is None and need_age:
            raise InputError(f"{where}: the age is unknown; give it or leave the patient out")
        if age is not None:
            check_age(age, where)
        g = (row.get("grade") or "").strip().lower()
        if g and g not in ("na", "nan") and g.replace(".0", "") not in _GRADE_CODES:
            raise InputError(f"{where}: grade {row.get('grade')!r} is not 1 (WHO II) or 2 (WHO III)")
        grade = _GRADE_CODES.get(g.replace(".0", "")) if g else None
        t = _number(row.get("time_days"), "time_days", where)
        e = _number(row.get("event"), "event", where)
        if need_outcome:
            if t is None or t <= 0:
                raise InputError(f"{where}: time_days {row.get('time_days')!r} is not a positive number of days")
            if e not in (0.0, 1.0):
                raise InputError(f"{where}: event {row.get('event')!r} is not 0 (censored) or 1 (died)")
        out.append(Patient(pid, age, grade, t, None if e is None else int(e),
                           {k: v for k, v in row.items() if k not in REQUIRED_COLUMNS}))
    return out


def find_case(folder) -> dict:
    """The files of a patient folder: sequence name -> path, and ``"mask"`` where present.

    :raises InputError: not a folder, or no FLAIR.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"case folder not found: {folder}")
    files = {}
    for name in (*SEQUENCES, MASK_NAME):
        for suffix in SUFFIXES:
            p = folder / f"{name}{suffix}"
            if p.is_file():
                files[name] = p
                break
    if "flair" not in files:
        raise InputError(f"{folder}: no flair.nii.gz; the prognosis model needs at least the FLAIR sequence "
                         f"(found: {', '.join(sorted(files)) or 'no image'})")
    return files


def resample_to_spacing(image, spacing=REFERENCE_SPACING, label: bool = False, reference=None):
    """Resample a SimpleITK image onto ``spacing`` (mm, x y z) keeping its origin, direction
    and physical extent (linear for intensities, nearest neighbour for a ``label`` mask), or
    onto the grid of ``reference`` when given.

    :returns: a float32 (intensity) or uint8 (label) ``SimpleITK.Image``.
    """
    import SimpleITK as sitk

    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    pixel = sitk.sitkUInt8 if label else sitk.sitkFloat32
    if reference is not None:
        return sitk.Resample(image, reference, sitk.Transform(), interp, 0.0, pixel)
    old_sp, old_size = image.GetSpacing(), image.GetSize()
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(old_size, old_sp, spacing)]
    if tuple(size) == tuple(old_size) and all(abs(a - b) < 1e-6 for a, b in zip(old_sp, spacing)):
        return sitk.Cast(image, pixel)
    # keep the physical extent: the first voxel's corner stays where it was
    direction = image.GetDirection()
    shift = [(t - s) / 2.0 for s, t in zip(old_sp, spacing)]
    origin = list(image.GetOrigin())
    if image.GetDimension() == 3:
        origin = [o + sum(direction[r * 3 + c] * shift[c] for c in range(3)) for r, o in enumerate(origin)]
    return sitk.Resample(image, size, sitk.Transform(), interp, origin, tuple(spacing), direction, 0.0, pixel)


def load_case(folder, spacing=REFERENCE_SPACING, mask=None) -> dict:
    """Read a patient folder resampled onto ``spacing``: ``{"images": {seq: sitk.Image},
    "mask": sitk.Image (uint8 0/1) or None, "missing": [seq, ...], "source_size": [...]}``.
    Every sequence is put onto the FLAIR's resampled grid.

    :param mask: a mask file (or SimpleITK image) to use instead of the folder's ``mask``: binary
        (0 / 1 or 0 / 255), or a BraTS labelmap such as ``brainspineai segment`` writes (labels
        1 / 2 / 4), whose whole tumour (label > 0) is the region.
    :raises InputError: unreadable files, sequences of different physical extent than the
        FLAIR, or a mask that is empty or not 0/1.
    """
    import numpy as np
    import SimpleITK as sitk

    from ..io import read_image

    files = find_case(folder)
    flair_raw = read_image(files["flair"])
    if flair_raw.GetDimension() != 3:
        raise InputError(f"{files['flair']}: a 2D image; the prognosis model needs the FLAIR volume")
    flair = resample_to_spacing(flair_raw, spacing)
    images = {"flair": flair}
    for seq in ("t1", "t1ce"):
        if seq in files:
            img = read_image(files[seq])
            if img.GetDimension() != 3 or img.GetSize()[2] != flair_raw.GetSize()[2]:
                raise InputError(f"{files[seq]}: has {img.GetSize()} voxels, the FLAIR {flair_raw.GetSize()}; "
                                 "the sequences of one patient must cover the same slices")
            if img.GetSize() == flair_raw.GetSize():
                img.CopyInformation(flair_raw)  # same slices: trust the FLAIR's geometry
            images[seq] = resample_to_spacing(img, reference=flair)
    m = None
    src = mask if mask is not None else files.get(MASK_NAME)
    if src is not None:
        mimg = src if isinstance(src, sitk.Image) else read_image(src)
        arr = sitk.GetArrayViewFromImage(mimg)
        vals = np.unique(arr)
        # a binary mask, or a BraTS labelmap (1 NCR, 2 ED, 4 ET; `brainspineai segment`): its whole tumour
        if not (set(vals.tolist()) <= {0.0, 1.0, 255.0} or set(vals.tolist()) <= {0.0, 1.0, 2.0, 4.0}):
            raise InputError(f"{folder}: the tumour mask is neither binary nor a BraTS labelmap (0 / 1 / 2 / 4); "
                             f"values {vals[:6].tolist()}")
        if not (arr > 0).any():
            raise InputError(f"{folder}: the tumour mask is empty; no tumour region to describe")
        mimg = sitk.Cast(mimg > 0, sitk.sitkUInt8)
        if mimg.GetSize() == flair_raw.GetSize():
            mimg.CopyInformation(flair_raw)
        m = resample_to_spacing(mimg, label=True, reference=flair)
        if not sitk.GetArrayViewFromImage(m).any():
            raise InputError(f"{folder}: the tumour mask vanished when resampled (fewer than one voxel)")
    return {"images": images, "mask": m, "missing": [s for s in SEQUENCES if s not in images],
            "source_size": list(flair_raw.GetSize())}
