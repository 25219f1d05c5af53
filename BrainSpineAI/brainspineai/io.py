"""Reading and writing images.

Everything is read with SimpleITK, so the physical geometry (spacing in mm, origin in
mm, direction cosines, all in LPS as ITK defines them) travels with the pixels.

Supported inputs: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage
(``.mha``, ``.mhd``), a folder holding one DICOM series, and 2D JPEG / PNG slices
(RGB or RGBA is turned into grayscale with ITU-R BT.601 luma weights).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import InputError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SLICE_SUFFIXES = (".jpg", ".jpeg", ".png")
SUPPORTED = VOLUME_SUFFIXES + SLICE_SUFFIXES


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in SUPPORTED:
        if name.endswith(s):
            return s
    return path.suffix.lower()


def to_grayscale(image):
    """Return a scalar float32 image; vector (RGB/RGBA) pixels become BT.601 luma.

    :param image: ``SimpleITK.Image``, scalar or with 3 or 4 components per pixel.
    :raises InputError: for any other number of components.
    """
    import SimpleITK as sitk

    n = image.GetNumberOfComponentsPerPixel()
    if n == 1:
        return sitk.Cast(image, sitk.sitkFloat32)
    if n not in (3, 4):
        raise InputError(f"image has {n} components per pixel; expected grayscale, RGB or RGBA")
    channels = [sitk.Cast(sitk.VectorIndexSelectionCast(image, i), sitk.sitkFloat32) for i in range(3)]
    gray = channels[0] * 0.299 + channels[1] * 0.587 + channels[2] * 0.114
    gray.CopyInformation(channels[0])
    return gray


def validate_image(image, source: str = "image"):
    """Check that an image is usable for inference and return it unchanged.

    :raises InputError: if the image is empty (a zero-sized axis or all voxels equal), has
        more than three dimensions, or contains NaN or infinite values.
    """
    import SimpleITK as sitk

    dim = image.GetDimension()
    if dim > 3:
        sizes = "x".join(str(s) for s in image.GetSize())
        raise InputError(f"{source}: {dim}D data ({sizes}) is not supported; give one 2D slice or one 3D volume")
    if dim < 2:
        raise InputError(f"{source}: {dim}D data is not an image")
    if any(s == 0 for s in image.GetSize()):
        raise InputError(f"{source}: image is empty (size {image.GetSize()})")
    arr = sitk.GetArrayViewFromImage(image)
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise InputError(f"{source}: image contains {bad} NaN or infinite voxel values")
    if arr.size == 0 or float(arr.max()) == float(arr.min()):
        raise InputError(f"{source}: image is empty (every voxel has the same value)")
    return image


def read_image(path) -> "SimpleITK.Image":
    """Read a 2D slice or a 3D volume as a scalar float32 ``SimpleITK.Image``.

    A 3D file with a single slice is returned as 3D (its geometry is kept); callers decide
    whether it is a slice. Geometry: spacing (mm), origin (mm) and direction in LPS.

    :param path: a file with one of :data:`SUPPORTED` suffixes, or a DICOM series folder.
    :raises InputError: missing path, unsupported file type, unreadable file, no DICOM
        series in a folder, 4D data, empty image, or NaN / infinite values.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise InputError(f"{path}: folder holds no DICOM series")
        if len(series) > 1:
            raise InputError(f"{path}: folder holds {len(series)} DICOM series; give a folder with exactly one")
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise InputError(f"{path}: DICOM series could not be read ({_first_line(exc)})") from None
    else:
        suffix = _suffix(path)
        if suffix not in SUPPORTED:
            raise InputError(
                f"{path.name}: unsupported file type '{suffix or path.name}'; expected one of "
                + ", ".join(SUPPORTED) + " or a DICOM folder")
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(f"{path.name}: not a readable image ({_first_line(exc)})") from None
    if image.GetDimension() > 3:
        sizes = "x".join(str(s) for s in image.GetSize())
        raise InputError(f"{path.name}: {image.GetDimension()}D data ({sizes}) is not supported; give one 3D volume")
    image = to_grayscale(image)
    return validate_image(image, path.name)


def is_slice(image) -> bool:
    """True for a 2D image or a 3D image with exactly one voxel along some axis."""
    return image.GetDimension() == 2 or 1 in image.GetSize()


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "Description:" in ln or "ERROR" in ln.upper():
            return ln.split("Description:")[-1].strip()
    return lines[-1] if lines else type(exc).__name__


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename,
    so a reader never sees a half-written file and a failure leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_image_atomic(image, path) -> None:
    """Write a SimpleITK image (NIfTI, NRRD, MHA; chosen by suffix) atomically."""
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = _suffix(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
