"""Pixel-level preparation of multi-sequence MRI for the 3D segmenter, and the way back.

For a case given as sequence name -> ``SimpleITK.Image`` (:func:`prepare`):

1. the reference grid is the first sequence of the model (``sequences[0]``); any other
   sequence whose geometry differs is resampled onto it (SimpleITK, linear);
2. the brain mask is every voxel that differs from the background value (the value in the
   volume's corners: 0 for raw scans, a constant for pre-normalised BraTS 2015 volumes) in
   any sequence;
3. each sequence is clipped to its 0.5 / 99.5 percentiles inside the mask and z-scored
   there (zero outside);
4. the volume is cropped to the mask's bounding box (plus a margin; the box is kept to paste
   results back), then resampled to isotropic ``spacing`` mm (trilinear; labels nearest).

:func:`restore` maps region probabilities back: trilinear to the crop's size, threshold,
BraTS labelmap, pasted into a zero volume with exactly the reference's size, spacing,
origin and direction. Arrays are ``(C, Z, Y, X)`` (SimpleITK array order).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

CLIP_PERCENTILES = (0.5, 99.5)
MIN_OVERLAP = 0.5  # fraction of the reference's physical box another sequence must cover
MIN_SEG_SIDE = 16  # voxels along every axis of a volume to segment


@dataclass
class Prepared:
    """``image``: float32 ``(C, z, y, x)`` at the model spacing; ``crop``: ``((z0, z1), (y0,
    y1), (x0, x1))`` voxel box in the reference grid; ``crop_shape``: its size; ``reference``:
    the reference ``SimpleITK.Image``; ``label``: uint8 ``(z, y, x)`` BraTS labels at the
    model spacing, or ``None``."""

    image: np.ndarray
    crop: tuple
    crop_shape: tuple
    reference: object
    label: np.ndarray | None = None


def _corner_value(arr: np.ndarray) -> float:
    z, y, x = (s - 1 for s in arr.shape)
    corners = [arr[a, b, c] for a in (0, z) for b in (0, y) for c in (0, x)]
    vals, counts = np.unique(np.asarray(corners), return_counts=True)
    return float(vals[counts.argmax()])


def physical_box(image) -> tuple:
    """Axis-aligned bounding box ``(lo, hi)`` (LPS, mm, numpy arrays of 3) of the whole voxel
    extent of a 3D ``SimpleITK.Image`` (voxel corners, so a one-slice volume has a thickness)."""
    size = image.GetSize()
    pts = np.array([image.TransformContinuousIndexToPhysicalPoint(
        [(-0.5 if b == 0 else s - 0.5) for b, s in zip(bits, size)])
        for bits in np.ndindex(2, 2, 2)], float)
    return pts.min(0), pts.max(0)


def check_overlap(images: dict, sequences, min_overlap: float = MIN_OVERLAP) -> None:
    """Refuse sequences that do not cover the reference (``sequences[0]``) in physical space.

    The overlap is the volume of the intersection of the two axis-aligned physical boxes
    (:func:`physical_box`) as a fraction of the reference's box.

    :raises InputError: a sequence covering less than ``min_overlap`` of the reference,
        naming both, the fraction and the distance between the box centres in mm.
    """
    ref_name = sequences[0]
    rlo, rhi = physical_box(images[ref_name])
    rvol = float(np.prod(rhi - rlo))
    for seq in sequences[1:]:
        lo, hi = physical_box(images[seq])
        inter = float(np.prod(np.clip(np.minimum(hi, rhi) - np.maximum(lo, rlo), 0, None)))
        frac = inter / rvol if rvol > 0 else 0.0
        if frac < min_overlap:
            shift = float(np.linalg.norm((lo + hi) / 2 - (rlo + rhi) / 2))
            raise InputError(f"{seq} covers only {frac:.0%} of the physical extent of the reference {ref_name} "
                             f"(at least {min_overlap:.0%} needed; box centres {shift:.1f} mm apart): are they "
                             "scans of the same session, with their origins kept?")


def check_sequences(images: dict, sequences) -> None:
    """:raises InputError: ``missing sequence X (the model needs a, b)`` for the first absent one."""
    for seq in sequences:
        if images.get(seq) is None:
            raise InputError(f"missing sequence {seq} (the model needs {', '.join(sequences)})")


def normalise(arr: np.ndarray, mask: np.ndarray, percentiles=CLIP_PERCENTILES) -> np.ndarray:
    """Clip to ``percentiles`` inside ``mask`` then z-score inside ``mask``; 0 outside. float32."""
    out = np.zeros(arr.shape, np.float32)
    vals = arr[mask].astype(np.float64)
    if vals.size == 0:
        return out
    lo, hi = np.percentile(vals, percentiles)
    vals = np.clip(vals, lo, hi)
    sd = vals.std()
    out[mask] = ((vals - vals.mean()) / (sd if sd > 1e-8 else 1.0)).astype(np.float32)
    return out


def resize(arr: np.ndarray, shape, mode: str = "trilinear") -> np.ndarray:
    """Resize ``(C, z, y, x)`` to ``(C, *shape)`` with torch interpolation (``trilinear`` or ``nearest``)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]
    kw = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(t, size=tuple(int(s) for s in shape), mode=mode, **kw)[0].numpy()


def prepare(images: dict, sequences, spacing: float, label=None, margin_mm: float = 8.0) -> Prepared:
    """Prepare one case for the network (see the module docstring).

    :param images: sequence name -> 3D ``SimpleITK.Image`` (extra sequences are ignored).
    :param sequences: the model's sequences; the first is the reference grid.
    :param spacing: model voxel size in mm (isotropic).
    :param label: optional BraTS 2020 labelmap ``SimpleITK.Image`` on the reference grid.
    :raises InputError: a missing sequence, a non-3D image, one smaller than
        :data:`MIN_SEG_SIDE` voxels along an axis, sequences that barely overlap in physical
        space (:func:`check_overlap`), NaN / infinite voxels, an empty brain mask, or a
        labelmap whose geometry differs from the reference.
    """
    import SimpleITK as sitk

    from .data import same_geometry

    check_sequences(images, sequences)
    ref = images[sequences[0]]
    if ref.GetDimension() != 3:
        raise InputError(f"{sequences[0]}: a 3D volume is needed (got {ref.GetDimension()}D)")
    arrays = []
    for seq in sequences:
        img = images[seq]
        if img.GetDimension() != 3:
            raise InputError(f"{seq}: a 3D volume is needed (got {img.GetDimension()}D)")
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"{seq}: a scalar volume is needed (got {img.GetNumberOfComponentsPerPixel()} components)")
        if min(img.GetSize()) < MIN_SEG_SIDE:
            raise InputError(f"{seq}: a volume of {' x '.join(map(str, img.GetSize()))} voxels is too small to segment "
                             f"(at least {MIN_SEG_SIDE} voxels along every axis)")
    check_overlap(images, sequences)
    for seq in sequences:
        img = images[seq]
        img = sitk.Cast(img, sitk.sitkFloat32)
        if not same_geometry(img, ref):
            img = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, _corner_value(sitk.GetArrayViewFromImage(img)),
                                sitk.sitkFloat32)
        a = sitk.GetArrayFromImage(img)
        if not np.all(np.isfinite(a)):
            raise InputError(f"{seq}: volume contains {int(np.count_nonzero(~np.isfinite(a)))} NaN or infinite voxel values")
        arrays.append(a)
    mask = np.zeros(arrays[0].shape, bool)
    for a in arrays:
        mask |= np.abs(a - _corner_value(a)) > 1e-6
    if not mask.any():
        raise InputError(f"{', '.join(sequences)}: no brain voxels (every voxel equals the background value)")
    sp_zyx = np.array(ref.GetSpacing()[::-1], float)
    pad = np.ceil(margin_mm / sp_zyx).astype(int)
    idx = np.nonzero(mask)
    box = tuple((max(0, int(i.min()) - p), min(s, int(i.max()) + 1 + p)) for i, p, s in zip(idx, pad, mask.shape))
    sl = tuple(slice(a, b) for a, b in box)
    crop_shape = tuple(b - a for a, b in box)
    vol = np.stack([normalise(a[sl], mask[sl]) for a in arrays])
    target = tuple(max(1, int(round(n * s / spacing))) for n, s in zip(crop_shape, sp_zyx))
    vol = resize(vol, target).astype(np.float32)
    lab = None
    if label is not None:
        if not same_geometry(label, ref):
            raise InputError(f"labelmap geometry (size {label.GetSize()}) differs from the reference {sequences[0]} "
                             f"(size {ref.GetSize()})")
        la = sitk.GetArrayFromImage(label)[sl]
        lab = resize(la[None].astype(np.float32), target, mode="nearest")[0].astype(np.uint8)
    return Prepared(image=vol, crop=box, crop_shape=crop_shape, reference=ref, label=lab)


def keep_main_components(regions: np.ndarray, min_fraction: float = 0.2) -> np.ndarray:
    """Post-processing of region masks ``(3, z, y, x)`` bool (WT, TC, ET): keep the whole
    tumour's largest 26-connected component and any other component of at least
    ``min_fraction`` of its size (multifocal tumours), and clear TC and ET outside the kept
    WT. Removes small far-away false positives (which dominate HD95)."""
    import SimpleITK as sitk

    wt = regions[0]
    if not wt.any():
        return regions
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(wt.astype(np.uint8)), True))
    lab = sitk.GetArrayFromImage(cc)
    sizes = np.bincount(lab.ravel())[1:]
    keep_ids = 1 + np.nonzero(sizes >= min_fraction * sizes[0])[0]
    keep = np.isin(lab, keep_ids)
    return regions & keep[None]


def restore(probabilities: np.ndarray, prep: Prepared, threshold: float = 0.5, postprocess: bool = True):
    """Region probabilities ``(3, z, y, x)`` at the model spacing (WT, TC, ET) -> BraTS
    labelmap ``SimpleITK.Image`` (uint8) on the reference grid (exact size, spacing, origin,
    direction). ``postprocess``: :func:`keep_main_components`."""
    import SimpleITK as sitk

    from .data import regions_to_labelmap

    up = resize(probabilities, prep.crop_shape) > threshold
    if postprocess:
        up = keep_main_components(up)
    lab_crop = regions_to_labelmap(up, axis=0)
    ref = prep.reference
    full = np.zeros(ref.GetSize()[::-1], np.uint8)
    full[tuple(slice(a, b) for a, b in prep.crop)] = lab_crop
    out = sitk.GetImageFromArray(full)
    out.CopyInformation(ref)
    return out
