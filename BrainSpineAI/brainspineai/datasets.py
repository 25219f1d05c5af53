"""Dataset summaries before training: what is there and what is wrong with it.

Two kinds of dataset folder are recognised:

- **image folder** (2D classification): ``ROOT/<class>/<slice>.jpg|png`` (also volume files,
  which contribute their middle slice, see :func:`data.load_slice_batch`), or a flat folder
  of unlabelled slices (SimCLR pre-training);
- **volumes** (3D segmentation): BraTS 2020 case folders (``<case>/<case>_flair.nii.gz``,
  ``_t1``, ``_t1ce``, ``_t2``, ``_seg``), BraTS 2023 (``-t2f``, ``-t1n``, ``-t1c``, ``-t2w``,
  ``-seg``), the BraTS 2015 files shipped with DeepMedic (``Flair_subtrMeanDivStd``,
  ``T1c_subtrMeanDivStd``, ``OTMultiClass``) or a ``dataset.json`` at the root (see
  :mod:`brainspineai.cases`).

Problems reported (``kind``): ``unreadable`` (the file cannot be decoded completely, e.g.
a truncated JPEG: the slice is read with Pillow and fully decoded, because SimpleITK
silently pads a truncated JPEG with grey), ``empty-class`` (a class folder without images),
``geometry-mismatch`` (a sequence whose size, spacing, origin or direction differs from the
labelmap's), ``empty-label`` (a labelmap without any foreground voxel), ``missing-label``,
``missing-sequence`` (a case lacking a sequence that other cases have).

Training uses the same test: the 2D pipelines skip the slices reported ``unreadable``
(:func:`readable_slices`, called by :func:`data.scan_image_folder`), so a summary's
``skipped_by_training`` list is exactly what a run leaves out.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .errors import InputError
from .io import SLICE_SUFFIXES, VOLUME_SUFFIXES, _suffix

# file-name ending -> sequence, per BraTS release (checked longest first)
SEQUENCE_ENDINGS = {
    "_flair": "flair", "_t1ce": "t1ce", "_t1": "t1", "_t2": "t2", "_seg": "label",
    "-t2f": "flair", "-t1c": "t1ce", "-t1n": "t1", "-t2w": "t2", "-seg": "label",
}
BRATS15_FILES = {"flair_subtrmeandivstd": "flair", "t1c_subtrmeandivstd": "t1ce", "t1_subtrmeandivstd": "t1",
                 "t2_subtrmeandivstd": "t2", "otmulticlass": "label"}
GEOMETRY_TOLERANCE = 1e-3  # mm for spacing / origin, and for direction cosines


def slice_problem(path) -> str | None:
    """Why a 2D slice file cannot be used (None: it decodes completely).

    JPEG and PNG are opened with Pillow and fully decoded (a truncated file raises there).
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.size[0] == 0 or im.size[1] == 0:
                return "image has no pixels"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"cannot be decoded ({exc})"
    return None


def readable_slices(paths) -> tuple[list, list]:
    """Split slice files into ``(readable, unreadable)`` by :func:`slice_problem`; files that
    are not JPEG / PNG are kept as readable (their reader reports its own errors)."""
    good, bad = [], []
    for p in paths:
        if _suffix(Path(p)) in SLICE_SUFFIXES and slice_problem(p) is not None:
            bad.append(p)
        else:
            good.append(p)
    return good, bad


def is_volume_dataset(root) -> bool:
    """A ``dataset.json`` at the root, or case folders holding BraTS-named labelmaps / sequences."""
    root = Path(root)
    if (root / "dataset.json").is_file():
        return True
    for sub in sorted(p for p in root.iterdir() if p.is_dir())[:20]:
        for f in sub.iterdir():
            if _suffix(f) in VOLUME_SUFFIXES and _sequence_of(f) is not None:
                return True
    return False


def _sequence_of(path: Path) -> str | None:
    name = path.name.lower()
    for s in VOLUME_SUFFIXES:
        if name.endswith(s):
            name = name[: -len(s)]
            break
    if name in BRATS15_FILES:
        return BRATS15_FILES[name]
    for ending in sorted(SEQUENCE_ENDINGS, key=len, reverse=True):
        if name.endswith(ending):
            return SEQUENCE_ENDINGS[ending]
    return None


def discover_volume_cases(root) -> list[dict]:
    """Cases of a volume dataset: ``[{"case", "images": {seq: Path}, "label": Path | None}]``,
    read by :func:`brainspineai.cases.discover_cases` (BraTS layouts or ``dataset.json``).

    :raises InputError: no cases, or an unreadable ``dataset.json``.
    """
    from .cases import discover_cases

    return [{"case": c.case_id, "images": dict(c.images), "label": c.label} for c in discover_cases(root)]


def _geometry(path):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return {"size": list(reader.GetSize()), "spacing": list(reader.GetSpacing()),
            "origin": list(reader.GetOrigin()), "direction": list(reader.GetDirection())}


def _geometry_difference(a: dict, b: dict) -> str | None:
    import numpy as np

    if a["size"] != b["size"]:
        return f"size {a['size']} vs {b['size']}"
    for key in ("spacing", "origin", "direction"):
        if not np.allclose(a[key], b[key], atol=GEOMETRY_TOLERANCE):
            return f"{key} {[round(v, 4) for v in a[key]]} vs {[round(v, 4) for v in b[key]]}"
    return None


def summarise_image_folder(root) -> dict:
    """Summary of an ImageFolder dataset (see the module docstring for the problem kinds).

    :returns: ``{"kind": "image-folder", "root", "classes": {name: n_readable}, "n_files",
        "image_size": {"min": [w, h], "max": [w, h]} (pixels), "problems": [...],
        "skipped_by_training": [relative paths], "seconds", "files_per_second"}``.
    :raises InputError: not a folder, or no class folders.
    """
    from PIL import Image

    root = Path(root)
    t0 = time.time()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    flat = not classes and any(_suffix(p) in SLICE_SUFFIXES for p in root.iterdir() if p.is_file())
    if flat:  # unlabelled slices (SimCLR pre-training)
        classes = ["."]
    if not classes:
        raise InputError(f"{root}: no class folders (expected ImageFolder layout ROOT/<class>/<image>)")
    counts, problems, skipped, sizes, n_files = {}, [], [], [], 0
    for name in classes:
        files = [p for p in sorted((root / name).iterdir())
                 if p.is_file() and _suffix(p) in (SLICE_SUFFIXES if flat else SLICE_SUFFIXES + VOLUME_SUFFIXES)]
        n_ok = 0
        for p in files:
            n_files += 1
            rel = str(p.relative_to(root))
            if _suffix(p) in SLICE_SUFFIXES:
                why = slice_problem(p)
                if why is None:
                    with Image.open(p) as im:
                        sizes.append(im.size)
            else:
                try:
                    sizes.append(tuple(_geometry(p)["size"][:2]))
                    why = None
                except RuntimeError as exc:
                    why = f"cannot be read ({str(exc).strip().splitlines()[-1]})"
            if why is None:
                n_ok += 1
            else:
                problems.append({"kind": "unreadable", "path": rel, "detail": why})
                if _suffix(p) in SLICE_SUFFIXES:
                    skipped.append(rel)
        counts[name] = n_ok
        if not files:
            problems.append({"kind": "empty-class", "path": name, "detail": "class folder holds no images"})
    seconds = time.time() - t0
    size_range = None
    if sizes:
        size_range = {"min": [min(s[0] for s in sizes), min(s[1] for s in sizes)],
                      "max": [max(s[0] for s in sizes), max(s[1] for s in sizes)]}
    return {"kind": "image-folder", "root": str(root), "classes": {} if flat else counts,
            "unlabelled": counts["."] if flat else 0, "n_files": n_files,
            "image_size": size_range, "problems": problems, "skipped_by_training": skipped,
            "seconds": round(seconds, 3), "files_per_second": round(n_files / seconds, 1) if seconds > 0 else None}


def summarise_volumes(root, check_labels: bool = True) -> dict:
    """Summary of a volume (segmentation) dataset.

    :param check_labels: read every labelmap to find empty ones (else headers only).
    :returns: ``{"kind": "volumes", "root", "n_cases", "sequences": {seq: n_cases},
        "size_range": {"min", "max"} (voxels), "spacing_range" (mm), "problems": [...],
        "seconds", "files_per_second"}``.
    """
    import numpy as np
    import SimpleITK as sitk

    root = Path(root)
    t0 = time.time()
    cases = discover_volume_cases(root)
    problems, seq_counts, sizes, spacings, n_files = [], {}, [], [], 0
    all_seqs = sorted({s for c in cases for s in c["images"]})
    for c in cases:
        geoms = {}
        for seq, path in list(c["images"].items()) + ([("label", c["label"])] if c["label"] else []):
            n_files += 1
            rel = str(Path(path).relative_to(root)) if str(path).startswith(str(root)) else str(path)
            if not Path(path).is_file():
                problems.append({"kind": "unreadable", "path": rel, "case": c["case"], "detail": "file not found"})
                continue
            try:
                geoms[seq] = _geometry(path)
                if seq == "label" and check_labels:
                    label_image = sitk.ReadImage(str(path))
                    if not np.any(sitk.GetArrayViewFromImage(label_image)):
                        problems.append({"kind": "empty-label", "path": rel, "case": c["case"],
                                         "detail": "labelmap has no foreground voxel"})
            except RuntimeError as exc:
                problems.append({"kind": "unreadable", "path": rel, "case": c["case"],
                                 "detail": str(exc).strip().splitlines()[-1][:200]})
                geoms.pop(seq, None)
                continue
            if seq != "label":
                seq_counts[seq] = seq_counts.get(seq, 0) + 1
                sizes.append(geoms[seq]["size"])
                spacings.append(geoms[seq]["spacing"])
        if c["label"] is None:
            problems.append({"kind": "missing-label", "path": c["case"], "case": c["case"], "detail": "no labelmap"})
        for seq in all_seqs:
            if seq not in c["images"]:
                problems.append({"kind": "missing-sequence", "path": c["case"], "case": c["case"],
                                 "detail": f"no {seq} image"})
        ref = geoms.get("label")
        for seq, g in geoms.items():
            if seq == "label" or ref is None:
                continue
            diff = _geometry_difference(g, ref)
            if diff:
                problems.append({"kind": "geometry-mismatch", "path": str(Path(c["images"][seq]).name),
                                 "case": c["case"], "detail": f"{seq} vs label: {diff}"})
    seconds = time.time() - t0

    def rng(rows):
        return {"min": [min(r[i] for r in rows) for i in range(len(rows[0]))],
                "max": [max(r[i] for r in rows) for i in range(len(rows[0]))]} if rows else None

    return {"kind": "volumes", "root": str(root), "n_cases": len(cases), "sequences": seq_counts,
            "size_range": rng(sizes), "spacing_range": rng(spacings), "problems": problems,
            "seconds": round(seconds, 3), "files_per_second": round(n_files / seconds, 1) if seconds > 0 else None}


def summarise(root) -> dict:
    """Summary of a dataset folder of either kind (see :func:`summarise_image_folder`,
    :func:`summarise_volumes`).

    :raises InputError: the folder does not exist or holds neither layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder not found: {root}")
    if is_volume_dataset(root):
        return summarise_volumes(root)
    return summarise_image_folder(root)


def summary_text(doc: dict) -> str:
    """Human-readable lines of a summary (what the CLI prints and the Train module shows)."""
    lines = [f"dataset: {doc['root']} ({'2D image folder' if doc['kind'] == 'image-folder' else '3D volumes'})"]
    if doc["kind"] == "image-folder":
        if doc.get("unlabelled"):
            lines.append(f"{doc['unlabelled']} usable unlabelled images ({doc['n_files']} files; no class folders)")
        else:
            lines.append(f"{sum(doc['classes'].values())} usable images in {len(doc['classes'])} classes "
                         f"({doc['n_files']} files)")
        for name, n in doc["classes"].items():
            lines.append(f"  {name:<16} {n}")
        if doc["image_size"]:
            lines.append(f"image size (w x h, px): {doc['image_size']['min'][0]}x{doc['image_size']['min'][1]} "
                         f"to {doc['image_size']['max'][0]}x{doc['image_size']['max'][1]}")
    else:
        lines.append(f"{doc['n_cases']} cases; sequences: "
                     + (", ".join(f"{k} ({v})" for k, v in doc["sequences"].items()) or "none"))
        if doc["size_range"]:
            lines.append(f"size (voxels): {doc['size_range']['min']} to {doc['size_range']['max']}; spacing (mm): "
                         f"{[round(v, 3) for v in doc['spacing_range']['min']]} to "
                         f"{[round(v, 3) for v in doc['spacing_range']['max']]}")
    lines.append(f"problems: {len(doc['problems'])}" + (" (none)" if not doc["problems"] else ""))
    for p in doc["problems"][:50]:
        lines.append(f"  {p['kind']}: {p['path']}: {p['detail']}")
    if len(doc["problems"]) > 50:
        lines.append(f"  ... and {len(doc['problems']) - 50} more")
    if doc.get("skipped_by_training"):
        lines.append(f"training skips the {len(doc['skipped_by_training'])} unreadable slices")
    return "\n".join(lines)


def warn_skipped(root, skipped) -> None:
    """One stderr line naming the slices training leaves out."""
    if skipped:
        names = ", ".join(str(Path(p).relative_to(root)) if str(p).startswith(str(root)) else str(p) for p in skipped[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        print(f"brainspineai: note: skipping {len(skipped)} unreadable image(s) in {root}: {names}{more}",
              file=sys.stderr)
