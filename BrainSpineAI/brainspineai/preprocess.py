"""Slice extraction and intensity normalisation shared by training and inference.

The same :func:`prepare_slices` runs on training JPEGs and on slices cut from volumes, so
a model sees the same intensity statistics in both places (the model card records it as
``"intensity_normalisation": {"method": "foreground-percentile", ...}``):

1. Background detection: if at least 90% of a slice's border pixels share one value, the
   pixels with exactly that value are background (zero-padded and skull-stripped scans,
   z-scored BraTS volumes whose background is 0 while the brain is centred on 0).
2. Intensities are clipped to the [0.5, 99.5] percentiles of the foreground and rescaled
   to [0, 1]; background becomes 0.
3. The slice is zero-padded to a square (aspect ratio kept) and resized (bilinear,
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


@dataclass(frozen=True)
class SliceGeometry:
    """How a slice of ``shape`` (rows, cols) pixels was padded before resizing."""

    shape: tuple
    pad_top: int
    pad_left: int
    side: int


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


def pad_to_square(arr: np.ndarray) -> tuple[np.ndarray, SliceGeometry]:
    """Zero-pad a 2D array to a square, centred; returns the padded array and its geometry."""
    h, w = arr.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    out = np.zeros((side, side), dtype=arr.dtype)
    out[top:top + h, left:left + w] = arr
    return out, SliceGeometry((h, w), top, left, side)


def prepare_slices(slices, size: int):
    """Turn 2D slices into a model batch.

    :param slices: iterable of 2D arrays (rows, cols), any real dtype; sizes may differ.
    :param size: output side in pixels.
    :returns: ``(batch, geometries, foreground_fractions)``: a float32 torch tensor of
        shape (N, 1, size, size) in [0, 1], one :class:`SliceGeometry` per slice, and a
        float64 array (N,) with each slice's foreground fraction (normalised value > 0.05).
    """
    import torch
    import torch.nn.functional as F

    tensors, geoms, fractions = [], [], []
    for s in slices:
        norm, _ = normalize_slice(s)
        fractions.append(float(np.mean(norm > 0.05)))
        sq, geom = pad_to_square(norm)
        t = torch.from_numpy(sq)[None, None]
        if geom.side != size:
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=geom.side > size)
        tensors.append(t[0])
        geoms.append(geom)
    batch = torch.stack(tensors) if tensors else torch.zeros((0, 1, size, size))
    return batch.float(), geoms, np.asarray(fractions, dtype=np.float64)


def restore_map(heat, geom: SliceGeometry) -> np.ndarray:
    """Map a (size, size) model-space map back onto the original slice grid.

    :param heat: 2D torch tensor or array (size, size).
    :returns: float32 array of shape ``geom.shape``.
    """
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(heat, dtype=np.float32))[None, None]
    if t.shape[-1] != geom.side:
        t = F.interpolate(t, size=(geom.side, geom.side), mode="bilinear", align_corners=False)
    h, w = geom.shape
    return t[0, 0, geom.pad_top:geom.pad_top + h, geom.pad_left:geom.pad_left + w].numpy().astype(np.float32)


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
