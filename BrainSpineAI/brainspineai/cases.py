"""Volume datasets on disk: the BraTS case-folder layouts and a generic ``dataset.json``.

Read by :func:`discover_cases` (sequence names used everywhere in the library: ``t1``,
``t1ce`` (T1 contrast), ``t2``, ``flair``):

- BraTS 2020: ``<case>/<case>_flair.nii.gz``, ``_t1``, ``_t1ce``, ``_t2``, ``_seg``;
- BraTS 2023: ``<case>/<case>-t2f.nii.gz`` (FLAIR), ``-t1n`` (T1), ``-t1c`` (T1ce), ``-t2w`` (T2), ``-seg``;
- the BraTS 2015 cases as shipped with DeepMedic: ``Flair_subtrMeanDivStd.nii.gz``,
  ``T1c_subtrMeanDivStd.nii.gz``, ``OTMultiClass.nii.gz`` (``convention`` ``"brats2015"``:
  its labels are converted on reading, see :mod:`brainspineai.segmentation.data`);
- a generic ``dataset.json`` at the root: ``{"sequences": [...], "training": [{"case": id,
  "image": {"flair": rel, ...}, "label": rel}]}`` (paths relative to the root).

Part of the core: the dataset summaries (:mod:`brainspineai.datasets`) and the segmentation
capability both read cases through it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

SEQUENCES = ("t1", "t1ce", "t2", "flair")
DATASET_JSON = "dataset.json"

_BRATS2020 = {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"}
_BRATS2023 = {"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2"}
_BRATS2015 = {"Flair_subtrMeanDivStd": "flair", "T1c_subtrMeanDivStd": "t1ce", "T1_subtrMeanDivStd": "t1",
              "T2_subtrMeanDivStd": "t2"}
_NII = re.compile(r"\.nii(\.gz)?$", re.I)


@dataclass
class Case:
    """One case: ``images`` maps sequence name -> file; ``label`` is the labelmap file or
    ``None``; ``convention`` is ``"brats2020"`` or ``"brats2015"`` (labels converted on read)."""

    case_id: str
    images: dict = field(default_factory=dict)
    label: Path | None = None
    convention: str = "brats2020"


def _stem(p: Path) -> str:
    return _NII.sub("", p.name)


def _case_from_folder(folder: Path) -> Case | None:
    files = [p for p in folder.iterdir() if p.is_file() and _NII.search(p.name)]
    if not files:
        return None
    case = Case(case_id=folder.name)
    for p in files:
        stem = _stem(p)
        if stem in _BRATS2015:
            case.images[_BRATS2015[stem]] = p
        elif stem == "OTMultiClass":
            case.label, case.convention = p, "brats2015"
        else:
            m = re.match(r"^(.*)[_-]([A-Za-z0-9]+)$", stem)
            if not m:
                continue
            suffix = m.group(2).lower()
            if suffix == "seg":
                case.label = p
            elif suffix in _BRATS2023 and "-" + m.group(2) in stem:
                case.images[_BRATS2023[suffix]] = p
            elif suffix in _BRATS2020:
                case.images[_BRATS2020[suffix]] = p
    return case if case.images else None


def discover_cases(root) -> list[Case]:
    """Cases under ``root`` (a ``dataset.json`` root, a folder of case folders, or one case
    folder), sorted by case id.

    :raises InputError: the folder is missing, holds no case, or its ``dataset.json`` is invalid.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    if (root / DATASET_JSON).is_file():
        return _read_dataset_json(root)
    own = _case_from_folder(root)
    if own is not None:
        return [own]
    cases = [c for c in (_case_from_folder(d) for d in sorted(root.iterdir()) if d.is_dir()) if c is not None]
    if not cases:
        raise InputError(f"{root}: no cases found (expected BraTS 2015/2020/2023 case folders or a {DATASET_JSON})")
    return sorted(cases, key=lambda c: c.case_id)


def _read_dataset_json(root: Path) -> list[Case]:
    path = root / DATASET_JSON
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entries = doc["training"]
        cases = []
        for e in entries:
            images = {str(k): root / v for k, v in e["image"].items()}
            cases.append(Case(case_id=str(e["case"]), images=images,
                              label=(root / e["label"]) if e.get("label") else None,
                              convention=e.get("convention", "brats2020")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not a valid dataset description ({exc})") from None
    unknown = sorted({s for c in cases for s in c.images} - set(SEQUENCES))
    if unknown:
        raise InputError(f"{path}: unknown sequence name(s) {', '.join(unknown)}; use {', '.join(SEQUENCES)}")
    return sorted(cases, key=lambda c: c.case_id)
