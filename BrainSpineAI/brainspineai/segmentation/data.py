"""Segmentation datasets: BraTS folder layouts, a generic ``dataset.json``, label conventions.

Layouts read by :func:`discover_cases` (sequence names used everywhere in the library:
``t1``, ``t1ce`` (T1 contrast), ``t2``, ``flair``):

- BraTS 2020: ``<case>/<case>_flair.nii.gz``, ``_t1``, ``_t1ce``, ``_t2``, ``_seg``;
- BraTS 2023: ``<case>/<case>-t2f.nii.gz`` (FLAIR), ``-t1n`` (T1), ``-t1c`` (T1ce), ``-t2w`` (T2), ``-seg``;
- the BraTS 2015 cases as shipped with DeepMedic: ``Flair_subtrMeanDivStd.nii.gz``,
  ``T1c_subtrMeanDivStd.nii.gz``, ``OTMultiClass.nii.gz`` (labels 1 necrosis, 2 oedema,
  3 non-enhancing, 4 enhancing; converted on reading to the BraTS 2020 labels: 1, 3 -> 1,
  2 -> 2, 4 -> 4);
- a generic ``dataset.json`` at the root: ``{"sequences": [...], "training": [{"case": id,
  "image": {"flair": rel, ...}, "label": rel}]}`` (paths relative to the root).

Labelmaps (BraTS 2020 convention, uint8): 0 background, 1 necrosis / non-enhancing core
(NCR), 2 oedema (ED), 4 enhancing tumour (ET). Regions: whole tumour WT = label > 0, tumour
core TC = label in {1, 4}, enhancing tumour ET = label == 4 (Menze et al., IEEE TMI 2015;
Bakas et al. 2018).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from ..errors import InputError

REGIONS = ("WT", "TC", "ET")
LABELS = {1: "NCR", 2: "ED", 4: "ET"}

from ..cases import DATASET_JSON, SEQUENCES, Case, discover_cases  # noqa: E402,F401  (re-exported: the layouts live in the core)


def brats2015_to_2020(label: np.ndarray) -> np.ndarray:
    """BraTS 2015 labels (1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing) -> BraTS 2020
    labels (1 NCR/NET, 2 ED, 4 ET), uint8, same shape.

    :raises InputError: a label value outside 0..4."""
    label = np.asarray(label)
    bad = np.setdiff1d(np.unique(label), [0, 1, 2, 3, 4])
    if bad.size:
        raise InputError(f"labelmap holds values {bad.tolist()} outside the BraTS 2015 labels 0-4")
    out = label.astype(np.uint8).copy()
    out[label == 3] = 1
    return out


def read_labelmap(case: Case):
    """The case's labelmap as a uint8 ``SimpleITK.Image`` in the BraTS 2020 convention.

    :raises InputError: no label, unreadable file, or values outside the convention."""
    import SimpleITK as sitk

    from ..io import check_image_file

    if case.label is None:
        raise InputError(f"case {case.case_id}: no labelmap")
    check_image_file(case.label)  # a truncated labelmap would read as background
    try:
        img = sitk.ReadImage(str(case.label))
    except RuntimeError as exc:
        raise InputError(f"{case.label}: not a readable labelmap ({str(exc).strip().splitlines()[-1]})") from None
    arr = sitk.GetArrayFromImage(img)
    if case.convention == "brats2015":
        arr = brats2015_to_2020(arr)
    else:
        bad = np.setdiff1d(np.unique(arr), [0, 1, 2, 4])
        if bad.size:
            raise InputError(f"{case.label}: labelmap holds values {bad.tolist()} outside the BraTS labels 0, 1, 2, 4")
        arr = arr.astype(np.uint8)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


def label_to_regions(label: np.ndarray, axis: int = -1) -> np.ndarray:
    """BraTS 2020 labelmap (any shape, integer) -> region masks stacked on ``axis``
    (default last: shape ``(..., 3)``), uint8, channel order WT, TC, ET."""
    label = np.asarray(label)
    wt = label > 0
    tc = (label == 1) | (label == 4)
    et = label == 4
    return np.stack([wt, tc, et], axis=axis).astype(np.uint8)


def regions_to_labelmap(regions: np.ndarray, axis: int = -1) -> np.ndarray:
    """Region masks (WT, TC, ET on ``axis``, bool or 0/1) -> BraTS 2020 labelmap, uint8.

    Nested by the BraTS rule: a WT voxel is oedema (2) unless in TC, then NCR (1) unless in
    ET, then 4. TC and ET voxels outside WT still count (TC -> 1, ET -> 4)."""
    regions = np.moveaxis(np.asarray(regions).astype(bool), axis, 0)
    if regions.shape[0] != 3:
        raise InputError(f"regions need 3 channels (WT, TC, ET) on axis {axis}; got {regions.shape[0]}")
    wt, tc, et = regions
    out = np.zeros(wt.shape, np.uint8)
    out[wt] = 2
    out[tc] = 1
    out[et] = 4
    return out


def same_geometry(a, b, tol: float = 1e-4) -> bool:
    """True when two SimpleITK images share size, spacing, origin and direction (within ``tol``)."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def add_case(root, case_id: str, images: dict, labelmap, overwrite: bool = False) -> Path:
    """Add one labelled case to a dataset folder, in the BraTS 2020 file names, and list it
    in ``<root>/dataset.json``.

    Writes ``<root>/<case_id>/<case_id>_<seq>.nii.gz`` for every sequence and
    ``<case_id>_seg.nii.gz``; files and the JSON are each written to a temporary name and
    renamed, and the case folder appears only when complete.

    :param images: sequence name (``t1``, ``t1ce``, ``t2``, ``flair``) -> ``SimpleITK.Image``.
    :param labelmap: ``SimpleITK.Image`` with BraTS 2020 labels (0, 1, 2, 4).
    :returns: the case folder.
    :raises InputError: bad case id or sequence name, a duplicate case id without
        ``overwrite``, an image whose geometry differs from the labelmap's, or invalid labels.
    """
    import shutil

    import SimpleITK as sitk

    root = Path(root)
    if not case_id or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", case_id):
        raise InputError(f"case id '{case_id}': use letters, digits, '.', '_' and '-' only")
    if not images:
        raise InputError(f"case {case_id}: no images given")
    unknown = sorted(set(images) - set(SEQUENCES))
    if unknown:
        raise InputError(f"case {case_id}: unknown sequence name(s) {', '.join(unknown)}; use {', '.join(SEQUENCES)}")
    for seq, img in images.items():
        if not same_geometry(img, labelmap):
            raise InputError(f"case {case_id}: {seq} geometry (size {img.GetSize()}, spacing "
                             f"{tuple(round(s, 4) for s in img.GetSpacing())}) differs from the labelmap's (size "
                             f"{labelmap.GetSize()}, spacing {tuple(round(s, 4) for s in labelmap.GetSpacing())})")
    lab = sitk.GetArrayFromImage(labelmap)
    bad = np.setdiff1d(np.unique(lab), [0, 1, 2, 4])
    if bad.size:
        raise InputError(f"case {case_id}: labelmap holds values {bad.tolist()} outside the BraTS labels 0, 1, 2, 4")
    root.mkdir(parents=True, exist_ok=True)
    json_path = root / DATASET_JSON
    if json_path.is_file():
        try:
            doc = json.loads(json_path.read_text(encoding="utf-8"))
            doc.setdefault("training", [])
        except ValueError as exc:
            raise InputError(f"{json_path}: not valid JSON ({exc})") from None
    else:
        doc = {"sequences": [], "training": []}
    exists = any(e.get("case") == case_id for e in doc["training"]) or (root / case_id).exists()
    if exists and not overwrite:
        raise InputError(f"case {case_id} already exists in {root}; pass overwrite=True to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{case_id}.", dir=root))
    try:
        entry = {"case": case_id, "image": {}, "label": f"{case_id}/{case_id}_seg.nii.gz"}
        for seq, img in images.items():
            sitk.WriteImage(img, str(tmp / f"{case_id}_{seq}.nii.gz"), True)
            entry["image"][seq] = f"{case_id}/{case_id}_{seq}.nii.gz"
        lab_img = sitk.GetImageFromArray(lab.astype(np.uint8))
        lab_img.CopyInformation(labelmap)
        sitk.WriteImage(lab_img, str(tmp / f"{case_id}_seg.nii.gz"), True)
        os.chmod(tmp, 0o755)
        final = root / case_id
        if final.exists():
            old = final.with_name(f".{case_id}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    doc["training"] = [e for e in doc["training"] if e.get("case") != case_id] + [entry]
    doc["sequences"] = sorted(set(doc.get("sequences") or []) | set(images), key=SEQUENCES.index)
    from ..io import atomic_write_text

    atomic_write_text(json_path, json.dumps(doc, indent=2) + "\n")
    return final
