"""The preprocessing stage: every sequence registered onto the reference sequence's grid
(:mod:`.registration`), the brain extracted on the sequence deepbet suits best and the mask
applied to all (:mod:`.brain`). The result lives on the reference grid, so anything computed
from it (a labelmap) maps back onto the user's reference volume exactly.

``mode="on"`` applies every step; ``mode="auto"`` decides from the data and records why: a
registration is applied only when it moves the brain by more than :data:`MOTION_MM` on average (else the
sequence is only resampled by its header, bit-identical when the grids already match), and the
mask is applied only when the reference still has tissue outside it (more than
:data:`STRIPPED_FRACTION` of its foreground; less means the scan is already skull-stripped).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, ModelError
from .brain import BRAIN_ML, EXTRACT_ORDER, extract_brain, model_name
from .registration import foreground, register, resample_onto

MODES = ("auto", "on", "off")
#: auto: a registration that moves the reference's foreground less than this on average (mm) is not applied.
MOTION_MM = 1.0
#: auto: a reference with less than this fraction of its foreground outside the brain mask is
#: taken as already skull-stripped (the mask is then not applied).
STRIPPED_FRACTION = 0.15


@dataclass
class Preprocessed:
    """``images``: sequence -> float32 ``SimpleITK.Image`` on the reference grid; ``mask``:
    uint8 brain mask on that grid (``None`` when extraction was skipped); ``report``: what was
    done, JSON-ready (see :func:`preprocess`)."""

    images: dict
    mask: object
    report: dict


def _background(arr: np.ndarray) -> float:
    z, y, x = (s - 1 for s in arr.shape)
    corners = np.array([arr[a, b, c] for a in (0, z) for b in (0, y) for c in (0, x)], float)
    vals, counts = np.unique(corners, return_counts=True)
    return float(vals[counts.argmax()]) if counts.max() >= 4 else float(min(arr.min(), 0.0))


def _check(img, seq: str) -> None:
    import SimpleITK as sitk

    if img.GetDimension() != 3:
        raise InputError(f"{seq}: a 3D volume is needed (got {img.GetDimension()}D)")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{seq}: a scalar volume is needed (got {img.GetNumberOfComponentsPerPixel()} components)")
    a = sitk.GetArrayViewFromImage(img)
    if not np.all(np.isfinite(a)):
        raise InputError(f"{seq}: volume contains {int(np.count_nonzero(~np.isfinite(a)))} NaN or infinite voxel values")


def _same_grid(a, b) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4) and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


def preprocess(images: dict, reference: str, mode: str = "auto", affine: bool = False, device: str = "cpu",
               extract_on: str | None = None, brain_ml=BRAIN_ML, progress=None) -> Preprocessed:
    """Register every sequence onto ``reference`` and extract the brain.

    :param images: sequence name (``t1``, ``t1ce``, ``t2``, ``flair``) -> 3D ``SimpleITK.Image``.
    :param reference: the sequence whose grid everything is put on.
    :param mode: ``auto`` or ``on`` (``off``: the images returned as they are, nothing done).
    :param affine: refine each rigid registration with an affine one.
    :param device: ``cpu`` or ``cuda`` for the extraction network.
    :param extract_on: sequence to extract the brain on (default: the first of
        :data:`brainspineai.preprocessing.brain.EXTRACT_ORDER` given).
    :param progress: optional ``progress(fraction, message)``.
    :returns: :class:`Preprocessed`; its ``report``: ``{"mode", "reference", "grid": {"size",
        "spacing_mm"}, "registration": {seq: {..., "applied", "reason"}}, "brain_extraction":
        {"model", "sequence", "volume_ml", "outside_fraction", "applied", "reason", "seconds"},
        "seconds"}``.
    :raises ModelError: ``mode="on"`` and deepbet is not installed (``auto`` then skips the
        extraction and says so in the report).
    :raises InputError: unknown mode or sequence, a non-3D / NaN volume, sequences that do not
        overlap, a registration below the quality floor, an implausible brain mask volume.
    """
    import SimpleITK as sitk

    if mode not in MODES:
        raise InputError(f"--preprocess {mode}: use one of {', '.join(MODES)}")
    if reference not in images:
        raise InputError(f"reference sequence {reference} not given")
    for seq, img in images.items():
        _check(img, seq)
    if mode == "off":
        return Preprocessed(images=dict(images), mask=None, report={"mode": "off"})
    t0 = time.time()
    say = progress or (lambda f, m: None)
    ref = images[reference]
    out = {reference: sitk.Cast(ref, sitk.sitkFloat32)}
    regs = {}
    others = [s for s in images if s != reference]
    for i, seq in enumerate(others):
        say(0.0, f"registering {seq} to {reference} ({i + 1}/{len(others)})")
        r = register(ref, images[seq], affine=affine, names=(reference, seq))
        apply = mode == "on" or r.motion_mm > MOTION_MM
        d = r.summary()
        d["applied"] = apply
        d["reason"] = ("mode on" if mode == "on" else f"motion {r.motion_mm:.2f} mm > {MOTION_MM} mm") if apply \
            else f"motion {r.motion_mm:.2f} mm <= {MOTION_MM} mm: resampled by header only"
        regs[seq] = d
        img = images[seq]
        if apply:
            out[seq] = resample_onto(img, ref, r.transform)
        elif _same_grid(img, ref):
            out[seq] = sitk.Cast(img, sitk.sitkFloat32)
        else:
            out[seq] = resample_onto(img, ref)
    src = extract_on or next((s for s in EXTRACT_ORDER if s in out), reference)
    if src not in out:
        raise InputError(f"--extract-on {src}: that sequence was not given")
    try:
        model_name()
    except ModelError as exc:
        if mode == "on":
            raise
        be = {"model": None, "sequence": src, "applied": False, "reason": f"skipped: {exc}"}
        return Preprocessed(images=out, mask=None, report=_report(mode, reference, ref, regs, be, t0))
    say(0.0, f"brain extraction (deepbet) on {src}")
    bm = extract_brain(out[src], device=device, brain_ml=brain_ml, name=src)
    mask = sitk.GetArrayFromImage(bm.mask).astype(bool)
    fg = foreground(sitk.GetArrayFromImage(out[reference]))
    outside = float((fg & ~mask).sum() / max(int(fg.sum()), 1))
    apply = mode == "on" or outside > STRIPPED_FRACTION
    reason = "mode on" if mode == "on" else (
        f"{outside:.1%} of the {reference} foreground outside the brain mask (> {STRIPPED_FRACTION:.0%})" if apply
        else f"only {outside:.1%} of the {reference} foreground outside the brain mask: already skull-stripped")
    if apply:
        for seq, img in list(out.items()):
            a = sitk.GetArrayFromImage(img)
            a[~mask] = _background(a)
            new = sitk.GetImageFromArray(a)
            new.CopyInformation(img)
            out[seq] = new
    be = {"model": bm.model, "sequence": src, "volume_ml": round(bm.volume_ml, 2), "outside_fraction": round(outside, 4),
          "applied": apply, "reason": reason, "seconds": round(bm.seconds, 2)}
    return Preprocessed(images=out, mask=bm.mask, report=_report(mode, reference, ref, regs, be, t0))


def _report(mode, reference, ref, regs, be, t0) -> dict:
    return {"mode": mode, "reference": reference,
            "grid": {"size": list(ref.GetSize()), "spacing_mm": [round(s, 6) for s in ref.GetSpacing()]},
            "registration": regs, "brain_extraction": be, "seconds": round(time.time() - t0, 2)}
