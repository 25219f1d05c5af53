""""Add to training set as <class>": save the shown slice or volume into a classification
dataset (ImageFolder layout ``<dataset>/<class>/<name>``), for Retrain.

- a single-slice volume node (a loaded JPEG / PNG, or any volume with one slice) is saved as
  an 8-bit grayscale PNG of its pixels (intensities stretched min..max, RGB turned into BT.601
  luma), the format the dataset's other slices have;
- a 3D volume node is saved as a NIfTI volume (``.nii.gz``, LPS geometry kept, see
  :func:`mrml_utils.sitk_image_from_volume_node`); training uses its middle axial slice
  (see :func:`brainspineai.classification.data.load_slice_batch`), or
- with ``sliceIndex`` (K, the axial IJK index), that one slice of a 3D volume as PNG.

Each file is written to a temporary name in the class folder and renamed (atomic); the name
is ``<node name>.png`` / ``.nii.gz`` made unique with ``-2``, ``-3``, ... Nothing in the
scene is changed.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from . import mrml_utils

CLASS_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")


def datasetClasses(datasetDir) -> list[str]:
    """Class folder names of an ImageFolder dataset (sorted; empty when the folder is absent)."""
    root = Path(datasetDir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _safeStem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name or "image").strip("._") or "image"
    return stem[:80]


def uniquePath(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem+suffix``, or with ``-2``, ``-3``, ... before the suffix when taken."""
    cand = folder / f"{stem}{suffix}"
    n = 2
    while cand.exists():
        cand = folder / f"{stem}-{n}{suffix}"
        n += 1
    return cand


def _to_uint8(plane: np.ndarray) -> np.ndarray:
    if plane.ndim == 3:  # RGB(A) -> BT.601 luma
        plane = plane[..., 0] * 0.299 + plane[..., 1] * 0.587 + plane[..., 2] * 0.114
    plane = plane.astype(np.float64)
    lo, hi = float(plane.min()), float(plane.max())
    if hi <= lo:
        raise ValueError("the slice is empty (every pixel has the same value)")
    return np.round((plane - lo) / (hi - lo) * 255.0).astype(np.uint8)


def addToTrainingSet(volumeNode, datasetDir, className: str, sliceIndex: int | None = None) -> Path:
    """Save ``volumeNode`` (or its axial slice ``sliceIndex``) into ``<datasetDir>/<className>/``.

    :returns: the written file.
    :raises ValueError: no volume, a class name that is not a plain folder name, an empty
        slice, or ``sliceIndex`` outside the volume.
    """
    import SimpleITK as sitk

    if volumeNode is None or volumeNode.GetImageData() is None:
        raise ValueError("select a volume to add to the training set")
    if not CLASS_PATTERN.match(className or "") or className in (".", ".."):
        raise ValueError(f"class '{className}': use letters, digits, spaces, '.', '_' or '-'")
    folder = Path(datasetDir) / className
    folder.mkdir(parents=True, exist_ok=True)
    arr = mrml_utils.array_from_volume_node(volumeNode)  # (K, J, I[, C])
    stem = _safeStem(volumeNode.GetName())
    if arr.shape[0] == 1 or sliceIndex is not None:
        k = 0 if arr.shape[0] == 1 else int(sliceIndex)
        if not 0 <= k < arr.shape[0]:
            raise ValueError(f"slice {k} is outside the volume (0..{arr.shape[0] - 1})")
        pixels = _to_uint8(arr[k])
        suffix = ".png"
        if arr.shape[0] > 1:
            stem = f"{stem}_k{k}"
        image = sitk.GetImageFromArray(pixels)
        # MRML rows run along J; the IJK grid of a loaded PNG has J down, so rows come out unflipped
    else:
        image = mrml_utils.sitk_image_from_volume_node(volumeNode)
        suffix = ".nii.gz"
    target = uniquePath(folder, stem, suffix)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp)
        os.chmod(tmp, 0o644)
        if target.exists():  # taken meanwhile: pick the next free name
            target = uniquePath(folder, stem, suffix)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def sliceIndexAt(volumeNode, sliceNode) -> int:
    """The volume's axial IJK index K under the centre of a slice view (``vtkMRMLSliceNode``),
    rounded to the nearest slice (parent transforms are not applied)."""
    import vtk

    sliceToRAS = sliceNode.GetSliceToRAS()
    ras = [sliceToRAS.GetElement(r, 3) for r in range(3)] + [1.0]
    m = vtk.vtkMatrix4x4()
    volumeNode.GetRASToIJKMatrix(m)
    ijk = m.MultiplyPoint(ras)
    return int(round(ijk[2]))
