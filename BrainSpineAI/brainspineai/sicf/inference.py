"""SICF inference: the ROI, SIFT keypoints and fused features of one slice
(:func:`slice_details`) and the classification of a 2D slice or a volume slice by slice
(:func:`classify_sicf`) with a loaded :class:`brainspineai.sicf.model.SICFModel`."""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from .features import bovw_histogram, equalised_roi, roi_box, sift_features
from .model import SICFModel


def slice_details(arr, model: SICFModel) -> dict:
    """ROI box, SIFT keypoints (slice pixels) and fused features of one 2D slice.

    :returns: ``{"box": (row0, col0, row1, col1), "keypoints": float32 (K, 2) as (row, col)
        in slice pixels, "roi": uint8 (S, S), "fused": float32 (4608,)}``.
    """
    box = roi_box(arr, model.roi)
    roi = equalised_roi(arr, box, model.input_size)
    pts, desc = sift_features(roi)
    r0, c0, r1, c1 = box
    s = model.input_size
    kp = np.stack([r0 + pts[:, 1] * (r1 - r0) / s, c0 + pts[:, 0] * (c1 - c0) / s], axis=1).astype(np.float32) \
        if len(pts) else np.zeros((0, 2), np.float32)
    fused = np.concatenate([bovw_histogram(desc, model.codebook), model.vgg(roi[None])[0]]).astype(np.float32)
    return {"box": tuple(int(v) for v in box), "keypoints": kp, "roi": roi, "fused": fused}


def classify_sicf(image, model: SICFModel, progress=None):
    """Classify a 2D slice, or a volume slice by slice, with an SICF model.

    A volume is reoriented to LPS; axial slices whose foreground (pixels above the slice's
    1st percentile + 10% of its range) covers at least 5% are classified, and the volume's
    probabilities are their mean. The ROI and keypoints reported are those of the 2D slice,
    or of the volume's middle classified slice.

    :returns: :class:`brainspineai.classification.inference.ClassificationResult` whose ``extra["sicf"]``
        is ``{"roi_box": [row0, col0, row1, col1], "keypoints": [[row, col], ...],
        "slice_index": LPS axial index or None, "n_features_kept", "roi_mode"}``.
    :raises InputError: NaN / infinite or constant input.
    """
    import SimpleITK as sitk

    from ..classification.inference import ClassificationResult
    from ..io import is_slice, validate_image
    from ..classification.preprocess import slice_array, to_lps_axial

    validate_image(image)
    if is_slice(image):
        arrays, indices = [slice_array(image)], [None]
    else:
        vol = sitk.GetArrayFromImage(to_lps_axial(image)).astype(np.float32)
        arrays, indices = [], []
        for k in range(vol.shape[0]):
            a = vol[k]
            lo, hi = np.percentile(a, 1), a.max()
            if hi > lo and np.mean(a > lo + 0.1 * (hi - lo)) >= 0.05:
                arrays.append(a)
                indices.append(k)
        if not arrays:
            raise InputError("no axial slice of the volume has enough foreground to classify")
    details = []
    for i, a in enumerate(arrays):
        details.append(slice_details(a, model))
        if progress:
            progress((i + 1) / len(arrays), f"slice {i + 1}/{len(arrays)}")
    probs_all = model.predict_features(np.stack([d["fused"] for d in details]))
    probs = probs_all.mean(0)
    probs = probs / probs.sum()
    mid = len(details) // 2
    slices = None
    if indices[0] is not None:
        slices = [{"index": int(k), "probabilities": [float(p) for p in pr]} for k, pr in zip(indices, probs_all)]
    extra = {"sicf": {"roi_box": list(details[mid]["box"]), "keypoints": details[mid]["keypoints"].round(2).tolist(),
                      "slice_index": indices[mid], "n_features_kept": int(model.mask.sum()),
                      "n_features": int(len(model.mask)), "roi_mode": model.roi}}
    return ClassificationResult(model=model.id, classes=list(model.class_names), probabilities=probs,
                                predicted=model.class_names[int(np.argmax(probs))], slices=slices,
                                rule="mean over classified axial slices" if slices else "single slice", extra=extra)
