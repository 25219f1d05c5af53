"""Brain extraction (skull stripping) with deepbet (Fisch et al., "deepbet: Fast brain
extraction of T1-weighted MRI using Convolutional Neural Networks", Comput Biol Med 2024;
https://github.com/wwu-mmll/deepbet, MIT licence). Its two TorchScript networks (a coarse
bounding-box net at 128^3 and the mask net at 256^3, about 9 MB each) ship inside the
``deepbet`` wheel from PyPI: nothing is downloaded at run time.

deepbet was trained on T1-weighted scans; on this project's data it also holds on T1c and,
less tightly (some skull and scalp kept), on FLAIR and T2 (figures in the README), so the
mask is computed on the first of :data:`EXTRACT_ORDER` available and applied to the others.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, ModelError

#: Sequences to extract the brain on, best first (deepbet is a T1-weighted model).
EXTRACT_ORDER = ("t1", "t1ce", "flair", "t2")
#: Plausible brain mask volume in ml (adult brain about 1000-1700 ml; a margin for children,
#: resections and partial coverage). Outside it the extraction is refused.
BRAIN_ML = (400.0, 2500.0)


@dataclass
class BrainMask:
    """``mask``: ``SimpleITK.Image`` uint8 (1 brain) on the input's grid; ``volume_ml``;
    ``seconds``; ``model``: ``deepbet <version>``."""

    mask: object
    volume_ml: float
    seconds: float
    model: str


def model_name() -> str:
    """``deepbet <version>``; :raises ModelError: deepbet is not installed or lacks its weights."""
    from importlib import metadata
    from pathlib import Path

    try:
        from deepbet.utils import DATA_PATH
    except ImportError as exc:
        raise ModelError(f"brain extraction needs the deepbet package (pip install deepbet): {exc}") from None
    for name in ("model.pt", "bbox_model.pt"):
        if not (Path(DATA_PATH) / "models" / name).is_file():
            raise ModelError(f"deepbet is installed without its weights ({Path(DATA_PATH) / 'models' / name} missing); "
                             "reinstall it: pip install --force-reinstall deepbet")
    return f"deepbet {metadata.version('deepbet')}"


_CACHE = {}


def _extractor(device: str):
    if device not in _CACHE:
        import warnings

        from deepbet.bet import BrainExtraction

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load deprecation
            _CACHE[device] = BrainExtraction(no_gpu=(device == "cpu"))
    return _CACHE[device]


def extract_brain(image, device: str = "cpu", brain_ml=BRAIN_ML, name: str = "image", dilate: int = 1) -> BrainMask:
    """Brain mask of one 3D volume.

    The volume is reoriented to RAS (deepbet's convention; ``SimpleITK.DICOMOrient``), passed
    through deepbet's networks (threshold 0.5, largest component, holes filled), dilated by
    ``dilate`` voxels (a margin for tumour at the brain surface), and put back on the input grid.

    :param image: 3D scalar ``SimpleITK.Image`` (any orientation and pixel type).
    :param device: ``"cpu"`` or ``"cuda"`` (as resolved by :mod:`brainspineai.device`).
    :param brain_ml: (min, max) plausible mask volume in ml.
    :raises ModelError: deepbet missing (:func:`model_name`).
    :raises InputError: the mask is empty or its volume lies outside ``brain_ml``.
    """
    import SimpleITK as sitk

    t0 = time.time()
    model = model_name()
    bet = _extractor("cpu" if device == "cpu" else "gpu")
    ras = sitk.DICOMOrient(sitk.Cast(image, sitk.sitkFloat32), "RAS")
    x = np.ascontiguousarray(sitk.GetArrayFromImage(ras).transpose(2, 1, 0))
    try:
        prob = bet.run_model(x.copy())
        m = bet.postprocess(prob > 0.5, int(dilate))
    except (AssertionError, ValueError) as exc:  # deepbet: "Not enough foreground to calculate bounding box"
        raise InputError(f"{name}: brain extraction found no brain ({exc or 'empty mask'})") from None
    out = sitk.GetImageFromArray(np.ascontiguousarray(m.transpose(2, 1, 0)).astype(np.uint8))
    out.CopyInformation(ras)
    out = sitk.Resample(out, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    n = int(sitk.GetArrayViewFromImage(out).sum())
    ml = n * float(np.prod(image.GetSpacing())) / 1000.0
    lo, hi = brain_ml
    if not lo <= ml <= hi:
        raise InputError(f"{name}: the brain mask is implausibly {'small' if ml < lo else 'large'} ({ml:.0f} ml; "
                         f"expected {lo:.0f}-{hi:.0f} ml): not a head scan, a wrong voxel spacing, or a failed extraction")
    return BrainMask(mask=out, volume_ml=ml, seconds=time.time() - t0, model=model)
