"""Classification of one 2D slice or of a 3D volume slice by slice, with Grad-CAM.

Volume-level rule (used by :func:`classify_image` for 3D input):
  1. The volume is reoriented to LPS and cut into axial slices (inferior to superior).
  2. Slices whose foreground covers less than 5% of the slice are not classified.
  3. Every other slice gets class probabilities from the 2D model.
  4. If the model has a ``notumor`` class, a slice is a *tumour slice* when its most likely
     class is a tumour class. With at least 3 tumour slices, the volume's probabilities are
     the mean over the tumour slices (the tumour is judged where it is seen); otherwise the
     mean over all classified slices (so a scan without tumour evidence reads ``notumor``).
     Models without ``notumor`` average over all classified slices.
  5. The predicted class is the argmax of the volume's probabilities, which sum to 1.

Probabilities are calibrated with the card's temperature (``calibration.temperature``, see
:mod:`brainspineai.classification.calibration`) before the rule; the result's ``uncertainty``
flags a prediction whose calibrated top probability or margin is below the card's thresholds,
or (volumes) whose class fewer than ``min_slice_agreement`` of the slices behind step 4 vote for.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError

NO_TUMOUR_CLASS = "notumor"
MIN_TUMOUR_SLICES = 3


@dataclass
class ClassificationResult:
    """Outcome of :func:`classify_image`.

    ``probabilities``: float64 array (C,), sums to 1, in ``classes`` order.
    ``slices``: for volumes, one dict per classified axial slice (LPS index ``index``,
    inferior to superior, and its ``probabilities``); ``None`` for 2D input.
    ``heatmap``: ``SimpleITK.Image`` (float32, [0, 1]) with exactly the input's size,
    spacing, origin and direction, or ``None``.
    ``heatmap_class``: the class the heatmap explains; ``heatmap_method``: how
    (``{"method", "layer", "name", "input_sizes"}``, see :mod:`explain`);
    ``strongest_slice``: for volumes, the LPS axial index of the slice that holds the hottest voxel.
    """

    model: str
    classes: list
    probabilities: np.ndarray
    predicted: str
    slices: list | None = None
    heatmap: object = None
    heatmap_class: str | None = None
    heatmap_method: dict | None = None
    strongest_slice: int | None = None
    rule: str = "single slice"
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The CLI's JSON: ``{"model", "classes", "probabilities", "predicted"}`` plus
        ``"slices"`` for volumes."""
        out = {"model": self.model, "classes": list(self.classes),
               "probabilities": [float(p) for p in self.probabilities], "predicted": self.predicted}
        if self.slices is not None:
            out["slices"] = self.slices
            out["volume_rule"] = self.rule
        if self.heatmap_class is not None:
            out["heatmap_class"] = self.heatmap_class
        if self.heatmap_method is not None:
            out["heatmap_method"] = dict(self.heatmap_method)
        if self.strongest_slice is not None:
            out["heatmap_strongest_slice"] = int(self.strongest_slice)
        if "uncertainty" in self.extra:
            out["calibrated"] = self.extra.get("temperature", 1.0) != 1.0
            out["uncertain"] = self.extra["uncertainty"]["uncertain"]
            out["uncertainty"] = self.extra["uncertainty"]
        return out


def _probabilities(model, batch, batch_size: int = 64) -> np.ndarray:
    """Softmax outputs at the card's temperature (float64 ``(N, C)``)."""
    from .calibration import apply_temperature, card_temperature
    from .predict import predict_batches

    return apply_temperature(predict_batches(model.network, batch, model.device, batch_size), card_temperature(model.card))


def _flag(res: ClassificationResult, card: dict, slice_probs=None) -> ClassificationResult:
    """Fill ``res.extra`` with the temperature and :func:`calibration.uncertainty` (for volumes,
    the agreement of the slices that step 4 of the rule averaged)."""
    from .calibration import card_temperature, uncertainty

    agreement = None
    if slice_probs is not None:
        top = slice_probs.argmax(1)
        used = top != res.classes.index(NO_TUMOUR_CLASS) if "tumour slices" in res.rule else np.ones(len(top), bool)
        agreement = float((top[used] == res.classes.index(res.predicted)).mean())
    res.extra.update(temperature=card_temperature(card), uncertainty=uncertainty(card, res.probabilities, agreement))
    return res


def _class_index(model, heatmap_class) -> int | None:
    if heatmap_class is None:
        return None
    if isinstance(heatmap_class, int) or (isinstance(heatmap_class, str) and heatmap_class.isdigit()):
        idx = int(heatmap_class)
        if not 0 <= idx < len(model.class_names):
            raise InputError(f"class index {idx} out of range for classes {model.class_names}")
        return idx
    if heatmap_class not in model.class_names:
        raise InputError(f"unknown class '{heatmap_class}'; the model's classes are {', '.join(model.class_names)}")
    return model.class_names.index(heatmap_class)


def volume_rule(probs: np.ndarray, class_names: list) -> tuple[np.ndarray, str]:
    """Apply the volume-level rule to per-slice probabilities (K, C); see the module doc."""
    if NO_TUMOUR_CLASS in class_names:
        nt = class_names.index(NO_TUMOUR_CLASS)
        tumour = probs.argmax(1) != nt
        if int(tumour.sum()) >= MIN_TUMOUR_SLICES:
            p = probs[tumour].mean(0)
            return p / p.sum(), f"mean over {int(tumour.sum())} tumour slices"
    p = probs.mean(0)
    return p / p.sum(), f"mean over all {len(probs)} classified slices"


def _heat(model, slices, keep, cls, method, sizes, crop):
    """Maps of :func:`explain.multiscale_cam` for ``method`` (``None``: the model's choice; else
    ``METHOD`` or ``METHOD@LAYER``) at the input sides :func:`explain.heatmap_sizes` of ``sizes``;
    returns ``(maps (N, s, s), geometries of the kept slices, {"method", "layer", "name", "input_sizes"})``."""
    from .explain import METHOD_NAMES, heatmap_choice, heatmap_sizes, multiscale_cam, parse_method

    m, layer = parse_method(method) if method else (None, None)
    m, layer = heatmap_choice(model, m, layer)
    sides = heatmap_sizes(model, sizes)
    raw, geoms = multiscale_cam(model, list(slices), keep, cls, m, layer, sides, crop)
    return raw, geoms, {"method": m, "layer": layer, "name": METHOD_NAMES[m], "input_sizes": list(sides)}


def classify_image(image, model, heatmap: bool = False, heatmap_class=None, progress=None,
                   heatmap_method=None, heatmap_sizes=None, heatmap_slice_sigma=None) -> ClassificationResult:
    """Classify a 2D slice or a 3D volume.

    :param image: scalar ``SimpleITK.Image`` (see :func:`io.read_image`); 2D, or 3D (one voxel
        thick along an axis = a slice).
    :param model: :class:`catalogue.LoadedModel`.
    :param heatmap: also compute the Grad-CAM heatmap.
    :param heatmap_class: class name or index to explain; default: the predicted class.
    :param heatmap_method: ``METHOD`` or ``METHOD@LAYER`` (:data:`explain.METHODS`); default:
        the model's choice (:func:`explain.heatmap_choice`). Heat outside the head
        (:func:`explain.head_mask`) is set to 0.
    :param heatmap_sizes: sides in pixels of the slices the map is computed on, one or several
        (default: the model's choice, :func:`explain.heatmap_sizes`); probabilities always come
        from the model's own input size.
    :param heatmap_slice_sigma: a volume's map is smoothed across its axial slices by a
        Gaussian of this many slices, then cut to each slice's head (default: the model's
        choice, :func:`explain.heatmap_slice_sigma`; 0: none). Ignored for a 2D slice.
    :param progress: optional callable ``(fraction_done: float, message: str)``.
    :raises InputError: unusable image (see :func:`io.validate_image`), a volume whose axial
        slices are smaller than :data:`io.MIN_SIDE` pixels, or a volume with no slice holding
        enough foreground.
    """
    import SimpleITK as sitk

    from .explain import head_mask, heatmap_sizes as _sizes, heatmap_slice_sigma as _sigma, parse_method, smooth_across_slices
    from ..io import MIN_SIDE, is_slice, to_grayscale, validate_image
    from .preprocess import (MIN_FOREGROUND_FRACTION, crop_mode, prepare_slices, restore_map, slice_array,
                             to_lps_axial)

    report = progress or (lambda f, m: None)
    image = validate_image(to_grayscale(image))
    size = model.input_size
    wanted = _class_index(model, heatmap_class)
    if heatmap:  # refuse a bad method or size before any work
        if heatmap_method:
            parse_method(heatmap_method)
        _sizes(model, heatmap_sizes)
        sigma = _sigma(model, heatmap_slice_sigma)

    if is_slice(image):
        arr = slice_array(image)
        batch, _, _ = prepare_slices([arr], size, crop=crop_mode(model.card, volume=False))
        probs = _probabilities(model, batch)[0]
        pred = int(probs.argmax())
        res = _flag(ClassificationResult(model.id, list(model.class_names), probs, model.class_names[pred]), model.card)
        if heatmap:
            cls = pred if wanted is None else wanted
            raw, hgeoms, used = _heat(model, [arr], [0], cls, heatmap_method, heatmap_sizes,
                                      crop_mode(model.card, volume=False))
            heat = restore_map(raw[0], hgeoms[0]) * head_mask(arr)
            if heat.max() > 0:
                heat /= heat.max()
            heat_arr = heat.reshape(sitk.GetArrayViewFromImage(image).shape).astype(np.float32)
            himg = sitk.GetImageFromArray(heat_arr)
            himg.CopyInformation(image)
            res.heatmap, res.heatmap_class, res.heatmap_method = himg, model.class_names[cls], used
        report(1.0, "done")
        return res

    oriented = to_lps_axial(image)
    vol = sitk.GetArrayFromImage(oriented)  # (K, J, I): axial slices, inferior to superior
    if min(vol.shape[1:]) < MIN_SIDE:
        raise InputError(f"volume of {' x '.join(map(str, image.GetSize()))} voxels: its axial slices are "
                         f"{vol.shape[2]} x {vol.shape[1]} pixels, fewer than {MIN_SIDE} per side; give an axial "
                         "series or a single slice")
    report(0.05, f"preparing {vol.shape[0]} axial slices")
    batch, _, fractions = prepare_slices(list(vol), size, crop=crop_mode(model.card, volume=True))
    keep = np.flatnonzero(fractions >= MIN_FOREGROUND_FRACTION)
    if keep.size == 0:
        raise InputError("no axial slice has enough foreground to classify (is the volume empty?)")
    report(0.2, f"classifying {keep.size} slices")
    probs = _probabilities(model, batch[keep])
    vp, rule = volume_rule(probs, model.class_names)
    pred = int(vp.argmax())
    slices = [{"index": int(k), "probabilities": [float(p) for p in probs[i]]} for i, k in enumerate(keep)]
    res = _flag(ClassificationResult(model.id, list(model.class_names), vp, model.class_names[pred], slices=slices,
                                     rule=rule), model.card, probs)
    if heatmap:
        cls = pred if wanted is None else wanted
        report(0.5, "computing the heatmap")
        raw, hgeoms, used = _heat(model, vol, keep, cls, heatmap_method, heatmap_sizes,
                                  crop_mode(model.card, volume=True))
        heat, heads = np.zeros(vol.shape, dtype=np.float32), np.zeros(vol.shape, dtype=bool)
        for i, k in enumerate(keep):
            heads[k] = head_mask(vol[k])
            heat[k] = restore_map(raw[i], hgeoms[i]) * heads[k]
        heat = smooth_across_slices(heat, heads, sigma)
        used["slice_sigma"] = sigma
        res.strongest_slice = int(heat.max(axis=(1, 2)).argmax())  # holds the hottest voxel
        if heat.max() > 0:
            heat /= heat.max()  # one scale for the whole volume
        himg = sitk.GetImageFromArray(heat)
        himg.CopyInformation(oriented)
        # back onto the input's own grid: a permutation / flip, so nearest neighbour is exact
        res.heatmap = sitk.Resample(himg, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32)
        res.heatmap_class, res.heatmap_method = model.class_names[cls], used
    report(1.0, "done")
    return res
