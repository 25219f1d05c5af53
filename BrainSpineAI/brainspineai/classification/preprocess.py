"""Slice extraction and intensity normalisation shared by training and inference.

The same :func:`prepare_slices` runs on training JPEGs and on slices cut from volumes, so
a model sees the same intensity statistics in both places (the model card records it as
``"intensity_normalisation": {"method": "foreground-percentile", ...}``):

1. Background detection: if at least 90% of a slice's border pixels share one value, the
   pixels with exactly that value are background (zero-padded and skull-stripped scans,
   z-scored BraTS volumes whose background is 0 while the brain is centred on 0).
2. Intensities are clipped to the [0.5, 99.5] percentiles of the foreground and rescaled
   to [0, 1]; background becomes 0.
3. The slice is cropped to its foreground's bounding box plus a 4% margin (a volume's
   slices share one box: the union over its slices), so that a skull-stripped BraTS brain
   in a wide field of view fills the frame as the head does in the 2D training slices.
4. The crop is zero-padded to a square (aspect ratio kept) and resized (bilinear,
   antialiased) to ``size x size`` pixels.

Volumes are cut into axial slices after reorienting them to LPS (``SimpleITK.DICOMOrient``),
so every slice is shown as radiologists read it: anterior at the top, patient's left on the
image's right, like the 2D training slices.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERCENTILES = (0.5, 99.5)
MIN_FOREGROUND_FRACTION = 0.05  # slices with less foreground than this are not classified


CROP_MARGIN = 0.04  # of the box side, added on each side


@dataclass(frozen=True)
class SliceGeometry:
    """How a slice of ``shape`` (rows, cols) pixels was cropped to ``box`` (row0, row1,
    col0, col1; end exclusive) and padded to a ``side`` x ``side`` square before resizing."""

    shape: tuple
    pad_top: int
    pad_left: int
    side: int
    box: tuple = None


# What a model card records about the preparation above (``intensity_normalisation``).
NORMALISATION_CARD = {"method": "foreground-percentile", "percentiles": [0.5, 99.5], "range": [0.0, 1.0],
                      "crop_to_foreground": True, "pad_to_square": True}


def normalize_slice(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalise one 2D slice to [0, 1] and return ``(normalised, foreground_mask)``.

    :param arr: 2D array (rows, cols), any real dtype.
    :returns: float32 array of the same shape, and a bool foreground mask.
    """
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"expected a 2D slice, got shape {a.shape}")
    border = np.concatenate([a[0, :], a[-1, :], a[:, 0], a[:, -1]])
    bg = np.median(border)
    if np.mean(border == bg) >= 0.9:
        fg = a != bg
    else:
        fg = np.ones(a.shape, dtype=bool)
    vals = a[fg]
    if vals.size < 16:
        return np.zeros_like(a), np.zeros(a.shape, dtype=bool)
    lo, hi = np.percentile(vals, PERCENTILES)
    if not hi > lo:
        return np.zeros_like(a), fg
    out = np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    out[~fg] = 0.0
    return out, fg


def pad_to_square(arr: np.ndarray, box=None) -> tuple[np.ndarray, SliceGeometry]:
    """Crop a 2D array to ``box`` (row0, row1, col0, col1; default: all of it) and zero-pad
    the crop to a square, centred; returns the square and its :class:`SliceGeometry`."""
    full = (0, arr.shape[0], 0, arr.shape[1])
    box = tuple(int(v) for v in (box or full))
    crop = arr[box[0]:box[1], box[2]:box[3]]
    h, w = crop.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    out = np.zeros((side, side), dtype=arr.dtype)
    out[top:top + h, left:left + w] = crop
    return out, SliceGeometry(tuple(arr.shape), top, left, side, box)


def foreground_box(norm: np.ndarray, margin: float = CROP_MARGIN):
    """Bounding box (row0, row1, col0, col1) of a normalised slice's foreground (value > 0.1
    in rows / columns holding at least 2% foreground pixels), grown by ``margin`` of its
    side on each side; ``None`` when there is no foreground."""
    fg = norm > 0.1
    rows = np.flatnonzero(fg.sum(1) >= max(2, 0.02 * fg.shape[1]))
    cols = np.flatnonzero(fg.sum(0) >= max(2, 0.02 * fg.shape[0]))
    if rows.size == 0 or cols.size == 0:
        return None
    return _grow((rows[0], rows[-1] + 1, cols[0], cols[-1] + 1), norm.shape, margin)


def _grow(box, shape, margin):
    r0, r1, c0, c1 = box
    mr, mc = int(round((r1 - r0) * margin)), int(round((c1 - c0) * margin))
    return (max(0, r0 - mr), min(shape[0], r1 + mr), max(0, c0 - mc), min(shape[1], c1 + mc))


def prepare_slices(slices, size: int, crop: str = "slice"):
    """Turn 2D slices into a model batch.

    :param slices: iterable of 2D arrays (rows, cols), any real dtype; sizes may differ
        (except with ``crop="union"``).
    :param size: output side in pixels.
    :param crop: ``"slice"``: crop each slice to its own foreground box; ``"union"``: crop
        all slices (of one volume) to the union of the boxes of slices with at least
        :data:`MIN_FOREGROUND_FRACTION` foreground; ``"none"``: no crop.
    :returns: ``(batch, geometries, foreground_fractions)``: a float32 torch tensor of
        shape (N, 1, size, size) in [0, 1], one :class:`SliceGeometry` per slice, and a
        float64 array (N,) with each slice's foreground fraction (normalised value > 0.05).
    """
    import torch
    import torch.nn.functional as F

    if crop not in ("slice", "union", "none"):
        raise ValueError(f"crop must be 'slice', 'union' or 'none', got {crop!r}")
    norms = [normalize_slice(s)[0] for s in slices]
    fractions = [float(np.mean(n > 0.05)) for n in norms]
    boxes = [foreground_box(n) if crop != "none" else None for n in norms]
    if crop == "union":
        found = [b for b, f in zip(boxes, fractions) if b is not None and f >= MIN_FOREGROUND_FRACTION]
        union = None
        if found:
            b = np.array(found)
            union = (b[:, 0].min(), b[:, 1].max(), b[:, 2].min(), b[:, 3].max())
        boxes = [union] * len(norms)
    tensors, geoms = [], []
    for norm, box in zip(norms, boxes):
        sq, geom = pad_to_square(norm, box)
        t = torch.from_numpy(sq)[None, None]
        if geom.side != size:
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=geom.side > size)
        tensors.append(t[0])
        geoms.append(geom)
    batch = torch.stack(tensors) if tensors else torch.zeros((0, 1, size, size))
    return batch.float(), geoms, np.asarray(fractions, dtype=np.float64)


def crop_mode(card: dict, volume: bool) -> str:
    """The ``crop`` argument of :func:`prepare_slices` a model was trained with: models whose
    card says ``intensity_normalisation.crop_to_foreground`` crop each 2D slice to its own
    foreground and a volume's slices to their union; older models do not crop."""
    if not card.get("intensity_normalisation", {}).get("crop_to_foreground", False):
        return "none"
    return "union" if volume else "slice"


def restore_map(heat, geom: SliceGeometry) -> np.ndarray:
    """Map a (size, size) model-space map back onto the original slice grid (zero outside
    the crop box).

    :param heat: 2D torch tensor or array (size, size).
    :returns: float32 array of shape ``geom.shape``.
    """
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(heat, dtype=np.float32))[None, None]
    if t.shape[-1] != geom.side:
        t = F.interpolate(t, size=(geom.side, geom.side), mode="bilinear", align_corners=False)
    r0, r1, c0, c1 = geom.box or (0, geom.shape[0], 0, geom.shape[1])
    h, w = r1 - r0, c1 - c0
    out = np.zeros(geom.shape, dtype=np.float32)
    out[r0:r1, c0:c1] = t[0, 0, geom.pad_top:geom.pad_top + h, geom.pad_left:geom.pad_left + w].numpy()
    return out


def slice_array(image) -> np.ndarray:
    """Pixels of a 2D image, or of a 3D image with one voxel along an axis, as (rows, cols)."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(image)
    if arr.ndim == 3:
        axes = [i for i, n in enumerate(arr.shape) if n == 1]
        if not axes:
            raise ValueError(f"image of size {image.GetSize()} is not a single slice")
        arr = arr.squeeze(axis=axes[0])
    return arr.astype(np.float32)


def to_lps_axial(image):
    """Reorient a 3D image to LPS so that ``GetArrayFromImage(out)[k]`` is axial slice k
    (rows anterior to posterior, columns right to left)."""
    import SimpleITK as sitk

    return sitk.DICOMOrient(image, "LPS")
