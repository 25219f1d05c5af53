"""How well a heatmap points at the tumour: localisation metrics and the labelled data they
are measured on.

Metrics of one 2D map (:func:`localisation_scores`):

- pointing game (Zhang et al., "Top-down neural attention by excitation backprop", ECCV
  2016 / IJCV 2018): a hit when the map's maximum lies inside the tumour, or within
  ``tolerance_mm`` of it (distance measured with the pixel spacing); a map without heat is
  a miss.
- energy inside the tumour (the "energy-based pointing game" of Score-CAM, Wang et al.,
  CVPRW 2020): the fraction of the map's total heat that lies inside the tumour mask / box.
- heat outside the head: the fraction of the total heat outside the head mask.
- where a miss lands: the distance from the map's maximum to the nearest tumour pixel (mm),
  and whether it lies across the head's midline from the tumour (axial slices; the midline is
  the head mask's mean column, the tumour's side its centre of mass, decided only when that
  is more than :data:`SIDE_MARGIN_MM` off the midline); :func:`summarise` counts misses by
  distance and side, and the pointing rate on small and large tumour sections.

Ground truth readers: figshare3 expert boxes (``tumor_boxes.csv``, fractions of the image
size), BraTS 2015 labels (``OTMultiClass.nii.gz``, whole tumour = any label > 0, head =
``brainmask.nii.gz``) and TCGA-LGG FLAIR-abnormality masks (``mask.nii.gz``; head from
:func:`explain.head_mask` of the image).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

DEFAULT_TOLERANCE_MM = 3.0  # BraTS at 1 mm: the tumour grown by 3 voxels
SIDE_MARGIN_MM = 10.0  # a tumour centred closer than this to the midline has no side
SMALL_SECTION_MM2 = 1000.0  # tumour sections below this (about 3.5 x 3.5 cm) count as small
MISS_BINS_MM = (10.0, 30.0)  # misses counted up to 10, 10-30 and over 30 mm from the tumour


def box_mask(shape, x_center: float, y_center: float, width: float, height: float) -> np.ndarray:
    """Bool mask (rows, cols) of a box given as fractions of the image size (the columns of
    ``figshare3/tumor_boxes.csv``); at least one pixel."""
    rows, cols = shape
    r0, r1 = int(np.floor((y_center - height / 2) * rows)), int(np.ceil((y_center + height / 2) * rows))
    c0, c1 = int(np.floor((x_center - width / 2) * cols)), int(np.ceil((x_center + width / 2) * cols))
    m = np.zeros(shape, dtype=bool)
    m[max(0, r0):max(r0 + 1, min(rows, r1)), max(0, c0):max(c0 + 1, min(cols, c1))] = True
    return m


def peak_distance(heat: np.ndarray, target: np.ndarray, spacing=(1.0, 1.0)):
    """Distance in mm from the maximum of ``heat`` to the nearest pixel of ``target`` (0 inside);
    ``None`` for a map without heat.

    :param heat: 2D float array (rows, cols), >= 0.
    :param target: 2D bool array of the same shape (must hold a pixel).
    :param spacing: (row, column) pixel spacing in mm.
    :raises ValueError: shapes differ or the target is empty.
    """
    from scipy import ndimage

    heat, target = np.asarray(heat, dtype=np.float64), np.asarray(target, dtype=bool)
    if heat.shape != target.shape or not target.any():
        raise ValueError(f"heat {heat.shape} and a non-empty target of the same shape are needed, got {target.shape}")
    if not np.isfinite(heat).all() or heat.max() <= 0:
        return None
    peak = np.unravel_index(int(heat.argmax()), heat.shape)
    if target[peak]:
        return 0.0
    return float(ndimage.distance_transform_edt(~target, sampling=tuple(float(s) for s in spacing))[peak])


def pointing_hit(heat: np.ndarray, target: np.ndarray, spacing=(1.0, 1.0), tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> bool:
    """Whether the maximum of ``heat`` lies within ``tolerance_mm`` of ``target`` (see
    :func:`peak_distance`, whose arguments and errors it shares); a map without heat misses."""
    d = peak_distance(heat, target, spacing)
    return bool(d is not None and d <= tolerance_mm)


def peak_other_side(heat, target, head, spacing=(1.0, 1.0)):
    """Whether the map's maximum lies across the head's midline from the tumour (an axial
    slice, columns left-right): ``None`` without heat or head, or when the tumour's centre of
    mass is within :data:`SIDE_MARGIN_MM` of the midline (the head mask's mean column)."""
    heat, target, head = np.asarray(heat, np.float64), np.asarray(target, bool), np.asarray(head, bool)
    if not head.any() or not np.isfinite(heat).all() or heat.max() <= 0:
        return None
    mid = float(np.nonzero(head)[1].mean())
    off = float(np.nonzero(target)[1].mean()) - mid
    if abs(off) * float(spacing[1]) <= SIDE_MARGIN_MM:
        return None
    col = np.unravel_index(int(heat.argmax()), heat.shape)[1]
    return bool((col - mid) * off < 0)


def localisation_scores(heat, target, head=None, spacing=(1.0, 1.0), tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> dict:
    """The three metrics of one 2D map.

    :param heat: 2D float array (rows, cols), >= 0, any scale.
    :param target: 2D bool tumour mask or box.
    :param head: optional 2D bool head mask.
    :returns: ``{"pointing": bool, "energy_in_tumour": float, "heat_outside_head": float | None,
        "peak_distance_mm": float | None, "peak_other_side": bool | None, "tumour_mm2": float}``
        (fractions in [0, 1]; a map without heat scores 0 energy and 0 outside; see
        :func:`peak_distance`, :func:`peak_other_side`; ``tumour_mm2``: the target's area).
    """
    heat = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float64)), 0, None)
    target = np.asarray(target, dtype=bool)
    total = heat.sum()
    d = peak_distance(heat, target, spacing)
    out = {"pointing": bool(d is not None and d <= tolerance_mm),
           "energy_in_tumour": float(heat[target].sum() / total) if total > 0 else 0.0,
           "heat_outside_head": None, "peak_distance_mm": d, "peak_other_side": None,
           "tumour_mm2": float(target.sum()) * float(spacing[0]) * float(spacing[1])}
    if head is not None:
        out["heat_outside_head"] = float(heat[~np.asarray(head, bool)].sum() / total) if total > 0 else 0.0
        out["peak_other_side"] = peak_other_side(heat, target, head, spacing)
    return out


def summarise(scores: list, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Means of :func:`localisation_scores` dicts: ``{"n", "pointing", "energy_in_tumour",
    "heat_outside_head"}`` (``None`` where no score has the value), and ``"pointing_ci95"``:
    a 95% percentile bootstrap interval of the pointing rate that resamples *patients* (the
    ``case`` of each score, so the slices of one patient move together) where the scores name
    them, else single slices; ``"n_cases"`` counts the patients (``None`` without cases).
    Where the scores carry them (:func:`localisation_scores`): ``"misses"``, the missed slices
    counted by peak distance (``"<= 10 mm"``, ``"10-30 mm"``, ``"> 30 mm"``, ``"no heat"``) and
    ``"other_side"`` (peak across the midline), and ``"pointing_small"`` / ``"pointing_large"``
    with their ``"n_small"`` / ``"n_large"``: the rate on tumour sections below / from
    :data:`SMALL_SECTION_MM2`."""
    out = {"n": len(scores)}
    for key in ("pointing", "energy_in_tumour", "heat_outside_head"):
        vals = [float(s[key]) for s in scores if s.get(key) is not None]
        out[key] = float(np.mean(vals)) if vals else None
    if scores and all("peak_distance_mm" in s for s in scores):
        a, b = MISS_BINS_MM
        missed = [s for s in scores if not s["pointing"]]
        d = [s["peak_distance_mm"] for s in missed]
        out["misses"] = {f"<= {a:g} mm": sum(1 for v in d if v is not None and v <= a),
                         f"{a:g}-{b:g} mm": sum(1 for v in d if v is not None and a < v <= b),
                         f"> {b:g} mm": sum(1 for v in d if v is not None and v > b),
                         "no heat": sum(1 for v in d if v is None),
                         "other_side": sum(1 for s in missed if s.get("peak_other_side"))}
        for name, keep in (("small", lambda s: s["tumour_mm2"] < SMALL_SECTION_MM2),
                           ("large", lambda s: s["tumour_mm2"] >= SMALL_SECTION_MM2)):
            sel = [float(s["pointing"]) for s in scores if keep(s)]
            out[f"n_{name}"], out[f"pointing_{name}"] = len(sel), (float(np.mean(sel)) if sel else None)
    cases = [s.get("case") for s in scores]
    out["n_cases"] = len(set(cases)) if scores and all(c is not None for c in cases) else None
    out["pointing_ci95"] = None
    if scores and n_bootstrap > 0:
        groups = {}
        for i, s in enumerate(scores):
            groups.setdefault(s.get("case") if out["n_cases"] else i, []).append(float(s["pointing"]))
        hits = np.array([sum(g) for g in groups.values()])
        sizes = np.array([len(g) for g in groups.values()])
        pick = np.random.default_rng(seed).integers(0, len(hits), (n_bootstrap, len(hits)))
        rates = hits[pick].sum(1) / sizes[pick].sum(1)
        out["pointing_ci95"] = [float(v) for v in np.percentile(rates, [2.5, 97.5])]
    return out


# ---------------------------------------------------------------- labelled data
def read_boxes(csv_path) -> list:
    """Rows of a ``tumor_boxes.csv``: dicts with ``image`` (path relative to the CSV's
    folder), ``label``, and the float box fractions ``x_center, y_center, width, height``.

    :raises InputError: unreadable file or missing columns."""
    from ..errors import InputError

    need = ("image", "label", "x_center", "y_center", "width", "height")
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise InputError(f"{csv_path}: cannot be read ({exc.strerror or exc})") from None
    if not rows or any(k not in rows[0] for k in need):
        raise InputError(f"{csv_path}: not a tumour box table (needs columns {', '.join(need)})")
    try:
        return [{"image": r["image"], "label": r["label"],
                 **{k: float(r[k]) for k in need[2:]}} for r in rows]
    except ValueError as exc:
        raise InputError(f"{csv_path}: a box value is not a number ({exc})") from None


def labelled_volumes(root, kind: str) -> list:
    """Labelled volumes under ``root``: a list of ``{"case", "sequence", "image", "label",
    "head"}`` (paths; ``head`` may be ``None``).

    :param kind: ``"brats2015"`` (``*/{Flair,T1c}_subtrMeanDivStd.nii.gz`` +
        ``OTMultiClass.nii.gz`` + ``brainmask.nii.gz``) or ``"lgg"`` (``*/{flair,t1,t1ce}.nii.gz``
        + ``mask.nii.gz``).
    """
    root, out = Path(root), []
    if kind == "brats2015":
        for case in sorted(p for p in root.iterdir() if (p / "OTMultiClass.nii.gz").is_file()):
            for seq, name in (("flair", "Flair_subtrMeanDivStd.nii.gz"), ("t1c", "T1c_subtrMeanDivStd.nii.gz")):
                if (case / name).is_file():
                    head = case / "brainmask.nii.gz"
                    out.append({"case": case.name, "sequence": seq, "image": case / name,
                                "label": case / "OTMultiClass.nii.gz", "head": head if head.is_file() else None})
    elif kind == "lgg":
        for case in sorted(p for p in root.iterdir() if (p / "mask.nii.gz").is_file()):
            for seq in ("flair", "t1", "t1ce"):
                if (case / f"{seq}.nii.gz").is_file():
                    out.append({"case": case.name, "sequence": seq, "image": case / f"{seq}.nii.gz",
                                "label": case / "mask.nii.gz", "head": None})
    else:
        raise ValueError(f"kind must be 'brats2015' or 'lgg', got {kind!r}")
    return out


def volume_scores(heat_image, label_image, head_image=None, image=None, min_tumour_pixels: int = 20,
                  tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> list:
    """Per-slice metrics of a volume heatmap on the axial slices that hold tumour.

    :param heat_image: ``SimpleITK.Image`` heatmap (the input's grid, as :func:`inference.classify_image` gives).
    :param label_image: label volume on the same grid; tumour = label > 0.
    :param head_image: optional head / brain mask on the same grid; without it the head is
        :func:`explain.head_mask` of ``image`` (each axial slice).
    :param min_tumour_pixels: slices with fewer tumour pixels are skipped.
    :returns: one :func:`localisation_scores` dict per tumour slice, with its LPS ``index``.
    """
    import SimpleITK as sitk

    from .explain import head_mask
    from .preprocess import to_lps_axial

    def axial(img):
        return sitk.GetArrayFromImage(to_lps_axial(img))

    heat, label = axial(heat_image), axial(label_image) > 0
    head = axial(head_image) > 0 if head_image is not None else None
    arr = axial(image) if (head is None and image is not None) else None
    sp = to_lps_axial(heat_image).GetSpacing()
    out = []
    for k in range(heat.shape[0]):
        if int(label[k].sum()) < min_tumour_pixels:
            continue
        h = head[k] if head is not None else (head_mask(arr[k]) if arr is not None else None)
        s = localisation_scores(heat[k], label[k], h, spacing=(sp[1], sp[0]), tolerance_mm=tolerance_mm)
        s["index"] = k
        out.append(s)
    return out


# ---------------------------------------------------------------- a model's maps, scored
def score_volume(model, image, label, head=None, class_name: str = "glioma", method=None, layer=None,
                 mask_head: bool = True, step: int = 1, tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                 input_sizes=None, slice_sigma=None) -> list:
    """Metrics of a model's maps on the tumour-bearing axial slices of one labelled volume.

    The slices are prepared exactly as :func:`inference.classify_image` prepares a volume
    (LPS axial slices, one crop box for the volume); the axial slices with at least 20 tumour
    pixels (every ``step``-th of them) that the classifier would read (enough foreground) are
    scored. Without smoothing across slices only they are explained; with it, every slice the
    classifier reads is. Per-slice metrics do not depend on the volume's shared scale.

    :param image, label, head: ``SimpleITK.Image`` on one grid (``head`` may be ``None``:
        :func:`explain.head_mask` of each slice is the head).
    :param method, layer: see :func:`explain.heatmap_choice`.
    :param input_sizes: sides of the slices the maps are computed on (:func:`explain.heatmap_sizes`).
    :param mask_head: zero the heat outside the head mask (as ``classify_image`` does).
    :param slice_sigma: smoothing across slices (:func:`explain.heatmap_slice_sigma`; default: the
        model's choice). When it is not 0, every slice the classifier reads is explained, as
        ``classify_image`` does, and the smoothed maps of the scored slices are scored.
    :returns: one :func:`localisation_scores` dict per scored slice (with its LPS ``index``).
    """
    import SimpleITK as sitk

    from .explain import head_mask, heatmap_choice, heatmap_sizes, heatmap_slice_sigma, multiscale_cam, smooth_across_slices
    from .preprocess import MIN_FOREGROUND_FRACTION, crop_mode, prepare_slices, restore_map, to_lps_axial

    def axial(img):
        return sitk.GetArrayFromImage(to_lps_axial(img))

    vol, lab = axial(image).astype(np.float32), axial(label) > 0
    heads = axial(head) > 0 if head is not None else None
    sp = to_lps_axial(image).GetSpacing()
    _, _, fractions = prepare_slices(list(vol), model.input_size, crop=crop_mode(model.card, volume=True))
    ks = [k for k in range(vol.shape[0]) if lab[k].sum() >= 20 and fractions[k] >= MIN_FOREGROUND_FRACTION][::max(1, step)]
    if not ks:
        return []
    method, layer = heatmap_choice(model, method, layer)
    sigma = heatmap_slice_sigma(model, slice_sigma)
    explained = [k for k in range(vol.shape[0]) if fractions[k] >= MIN_FOREGROUND_FRACTION] if sigma > 0 else ks
    raw, geoms = multiscale_cam(model, list(vol), explained, model.class_names.index(class_name), method, layer,
                                heatmap_sizes(model, input_sizes), crop_mode(model.card, volume=True))
    heats, own = np.zeros(vol.shape, np.float32), np.zeros(vol.shape, bool)
    for i, k in enumerate(explained):
        own[k] = head_mask(vol[k])
        heats[k] = restore_map(raw[i], geoms[i]) * (own[k] if mask_head else 1.0)
    explained_mask = np.zeros(vol.shape, bool)
    explained_mask[explained] = True
    heats = smooth_across_slices(heats, own if mask_head else explained_mask, sigma)
    out = []
    for k in ks:
        own_head, heat = own[k], heats[k]
        s = localisation_scores(heat, lab[k], heads[k] if heads is not None else own_head, (sp[1], sp[0]), tolerance_mm)
        s["index"] = int(k)
        out.append(s)
    return out


def score_boxes(model, rows: list, root, method=None, layer=None, mask_head: bool = True,
                tolerance_mm: float = DEFAULT_TOLERANCE_MM, batch_size: int = 32, input_sizes=None) -> list:
    """Metrics of a model's maps (explaining each row's ``label``) on 2D slices with tumour
    boxes (rows of :func:`read_boxes`; images relative to ``root``); pixel spacing 1 (the
    JPEGs carry none, so the tolerance is in pixels). Head: :func:`explain.head_mask`."""
    from ..io import read_image
    from .explain import head_mask, heatmap_choice, heatmap_sizes, multiscale_cam
    from .preprocess import crop_mode, restore_map, slice_array

    method, layer = heatmap_choice(model, method, layer)
    sides = heatmap_sizes(model, input_sizes)
    out = []
    for i in range(0, len(rows), batch_size):
        part = [r for r in rows[i:i + batch_size] if r["label"] in model.class_names]
        arrs = [slice_array(read_image(Path(root) / r["image"])) for r in part]
        for cls in sorted({r["label"] for r in part}):
            idx = [j for j, r in enumerate(part) if r["label"] == cls]
            raw, geoms = multiscale_cam(model, arrs, idx, model.class_names.index(cls), method, layer, sides,
                                        crop_mode(model.card, volume=False))
            for j, h, geom in zip(idx, raw, geoms):
                r, head = part[j], head_mask(arrs[j])
                heat = restore_map(h, geom) * (head if mask_head else 1.0)
                target = box_mask(heat.shape, r["x_center"], r["y_center"], r["width"], r["height"])
                # the slice plane of a 2D image is unknown (figshare3 has sagittal and coronal
                # slices too): no left / right side; its distances are in pixels
                out.append(dict(localisation_scores(heat, target, head, tolerance_mm=tolerance_mm),
                                image=r["image"], label=cls, peak_other_side=None))
    return out


def localisation_report(model, source, method=None, layer=None, mask_head: bool = True, limit: int = 0,
                        step: int = 1, progress=None, input_sizes=None, slice_sigma=None) -> dict:
    """Localisation metrics of a model on one labelled source, per sequence.

    :param source: a ``tumor_boxes.csv`` (2D slices, images relative to its folder, each
        explained for its own label), or a folder of BraTS 2015 cases (``OTMultiClass.nii.gz``)
        or of TCGA-LGG cases (``mask.nii.gz``; every volume explained for ``glioma``).
    :param limit: use only ``limit`` evenly spaced rows / the first ``limit`` cases (0: all).
    :param input_sizes: sides of the slices the maps are computed on (:func:`explain.heatmap_sizes`).
    :param slice_sigma: volumes: smoothing across slices (:func:`explain.heatmap_slice_sigma`).
    :returns: ``{"source", "method", "layer", "input_sizes", "slice_sigma", "groups": {sequence: summary}}`` with the
        summaries of :func:`summarise` (slice-level means).
    :raises InputError: unusable source.
    """
    from ..errors import InputError
    from ..io import read_image
    from .explain import heatmap_choice, heatmap_sizes, heatmap_slice_sigma

    source, report = Path(source), progress or (lambda msg: None)
    method, layer = heatmap_choice(model, method, layer)
    input_sizes = list(heatmap_sizes(model, input_sizes))
    slice_sigma = heatmap_slice_sigma(model, slice_sigma)
    groups = {}
    if source.is_file():
        rows = read_boxes(source)
        rows = rows[::max(1, len(rows) // limit)][:limit] if limit else rows  # evenly over the classes
        groups["2d-boxes"] = summarise(score_boxes(model, rows, source.parent, method, layer, mask_head,
                                                   input_sizes=input_sizes))
    elif source.is_dir():
        kind = "brats2015" if any(source.glob("*/OTMultiClass.nii.gz")) else "lgg"
        items = labelled_volumes(source, kind)
        if not items:
            raise InputError(f"--localisation {source}: no labelled volumes (BraTS OTMultiClass.nii.gz or "
                             "TCGA-LGG mask.nii.gz case folders)")
        cases = sorted({it["case"] for it in items})[:limit] if limit else None
        if "glioma" not in model.class_names:
            raise InputError(f"model '{model.id}' has no glioma class to explain on {source}")
        scores = {}
        for it in items:
            if cases is not None and it["case"] not in cases:
                continue
            report(f"{it['case']} {it['sequence']}")
            head = read_image(it["head"]) if it["head"] else None
            scores.setdefault(it["sequence"], []).extend(
                dict(sc, case=it["case"]) for sc in
                score_volume(model, read_image(it["image"]), read_image(it["label"]), head, "glioma",
                             method, layer, mask_head, step, input_sizes=input_sizes, slice_sigma=slice_sigma))
        groups = {seq: summarise(s) for seq, s in sorted(scores.items())}
    else:
        raise InputError(f"--localisation {source}: not found (give tumor_boxes.csv or a folder of labelled volumes)")
    return {"source": str(source), "method": method, "layer": layer, "input_sizes": input_sizes,
            "slice_sigma": slice_sigma if source.is_dir() else None, "groups": groups}
