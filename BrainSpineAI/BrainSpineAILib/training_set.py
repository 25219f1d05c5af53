""""Add to training set as <class>": save the shown slice or volume into a classification
dataset (ImageFolder layout ``<dataset>/<class>/<name>``), for Retrain.

- a single-slice volume node (a loaded JPEG / PNG, or any volume with one slice) is saved as
  an 8-bit grayscale PNG of its pixels (intensities stretched min..max, RGB turned into BT.601
  luma), the format the dataset's other slices have;
- a 3D volume node is saved as a NIfTI volume (``.nii.gz``, LPS geometry kept, see
  :func:`mrml_utils.sitk_image_from_volume_node`); training uses its middle axial slice
  (see :func:`brainspineai.classification.data.load_slice_batch`), or
- with ``sliceIndex`` (K, the IJK index along the volume's third axis), that one voxel plane of a
  3D volume as PNG, rows along J as stored; or
- with ``plane`` (:func:`viewPlaneAt`: the voxel plane under a slice view, in the view's own
  orientation, whatever the volume's IJK-to-RAS), that plane as PNG, oriented as the view shows
  it (columns left to right, rows top to bottom on the screen).

Each file is written to a temporary name in the class folder and renamed (atomic); the name
is ``<node name>.png`` / ``.nii.gz`` made unique with ``-2``, ``-3``, ... Nothing in the
scene is changed.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import mrml_utils

CLASS_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")


def chosenFolder(path) -> Path | None:
    """A folder chosen in the GUI, or None when none is: ``ctkPathLineEdit.currentPath`` is
    ``""`` when the field is empty, and ``Path("")`` is ``.`` (the working directory), so an
    empty or blank path must never reach ``Path``."""
    if path is None:
        return None
    text = str(path).strip()
    return Path(text) if text else None


def datasetClasses(datasetDir) -> list[str]:
    """Class folder names of an ImageFolder dataset (sorted; empty when no folder is chosen
    (``""`` / None, see :func:`chosenFolder`) or the folder is absent)."""
    root = chosenFolder(datasetDir)
    if root is None or not root.is_dir():
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


def addToTrainingSet(volumeNode, datasetDir, className: str, sliceIndex: int | None = None,
                     plane: "ViewPlane | None" = None) -> Path:
    """Save ``volumeNode`` (or one voxel plane of it) into ``<datasetDir>/<className>/``.

    :param sliceIndex: K index: the plane ``arr[K]`` as stored (rows along J).
    :param plane: a :class:`ViewPlane` from :func:`viewPlaneAt`: that plane in the slice
        view's orientation (takes precedence over ``sliceIndex``).
    :returns: the written file.
    :raises ValueError: no volume, no dataset folder, a class name that is not a plain folder
        name, an empty slice, or ``sliceIndex`` outside the volume.
    """
    import SimpleITK as sitk

    if volumeNode is None or volumeNode.GetImageData() is None:
        raise ValueError("select a volume to add to the training set")
    root = chosenFolder(datasetDir)
    if root is None:
        raise ValueError("select a dataset folder")
    if not CLASS_PATTERN.match(className or "") or className in (".", ".."):
        raise ValueError(f"class '{className}': use letters, digits, spaces, '.', '_' or '-'")
    arr = mrml_utils.array_from_volume_node(volumeNode)  # (K, J, I[, C])
    stem = _safeStem(volumeNode.GetName())
    if plane is not None and arr.shape[0] > 1 and min(arr.shape[:3]) > 1:
        pixels = _to_uint8(plane.extract(arr))
        folder = root / className
        folder.mkdir(parents=True, exist_ok=True)
        return _writeAtomic(sitk.GetImageFromArray(pixels), folder, f"{stem}_{'ijk'[plane.axis]}{plane.index}", ".png")
    folder = root / className
    folder.mkdir(parents=True, exist_ok=True)
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
    return _writeAtomic(image, folder, stem, suffix)


def _writeAtomic(image, folder: Path, stem: str, suffix: str) -> Path:
    """Write ``image`` as ``folder/<unique name>`` through a temporary file and a rename."""
    import SimpleITK as sitk

    target = uniquePath(folder, stem, suffix)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a written file follows the umask
        if target.exists():  # taken meanwhile: pick the next free name
            target = uniquePath(folder, stem, suffix)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


MAX_OBLIQUE_DEGREES = 20.0  # a view further from every voxel plane is refused: no voxel plane looks like it


@dataclass(frozen=True)
class ViewPlane:
    """One voxel plane of a volume as a slice view shows it.

    ``axis`` is the IJK axis across the plane (0 = I, 1 = J, 2 = K) and ``index`` the voxel
    index along it; ``rowAxis`` / ``colAxis`` are the IJK axes that run down the screen and
    to the right, ``flipRows`` / ``flipCols`` whether they run against the index order;
    ``obliqueDegrees`` is the angle between the view's normal and ``axis``.
    """

    axis: int
    index: int
    rowAxis: int
    colAxis: int
    flipRows: bool
    flipCols: bool
    obliqueDegrees: float

    def extract(self, arr: np.ndarray) -> np.ndarray:
        """The plane of a volume array (K, J, I[, C]) as (rows, cols[, C]), screen order.

        :raises ValueError: ``index`` outside the volume.
        """
        size = arr.shape[2 - self.axis]
        if not 0 <= self.index < size:
            raise ValueError(f"slice {self.index} is outside the volume (0..{size - 1}) along {'IJK'[self.axis]}")
        plane = np.take(arr, self.index, axis=2 - self.axis)  # remaining numpy axes: the two others, K > J > I
        remaining = [a for a in (2, 1, 0) if a != self.axis]  # IJK axis of each remaining numpy axis
        if remaining.index(self.rowAxis) != 0:
            plane = np.swapaxes(plane, 0, 1)
        if self.flipRows:
            plane = plane[::-1]
        if self.flipCols:
            plane = plane[:, ::-1]
        return np.ascontiguousarray(plane)


def _volumeToWorld(volumeNode) -> np.ndarray:
    """IJK-to-world (4, 4) of a volume node, its linear parent transforms applied.

    :raises ValueError: the volume is under a non-linear transform (harden it first).
    """
    import vtk

    m = mrml_utils.ijk_to_ras_array(volumeNode)
    parent = volumeNode.GetParentTransformNode()
    if parent is None:
        return m
    if not parent.IsTransformToWorldLinear():
        raise ValueError(f"'{volumeNode.GetName()}' is under a non-linear transform; harden it first")
    t = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(t)
    return np.array([[t.GetElement(r, c) for c in range(4)] for r in range(4)]) @ m


def viewPlaneAt(volumeNode, sliceNode, maxObliqueDegrees: float = MAX_OBLIQUE_DEGREES) -> ViewPlane:
    """The voxel plane of ``volumeNode`` under the centre of a slice view, picked with the
    view's own orientation (``vtkMRMLSliceNode`` SliceToRAS: columns x-right, y-up, normal,
    centre) and the volume's IJK-to-RAS (with its linear parent transforms): the IJK axis
    closest to the view's normal, the voxel index nearest the view's centre along it, and the
    in-plane axes ordered and flipped so that the plane reads as on the screen (x to the
    right, y up). Works for axial, sagittal, coronal and reformatted views of volumes stored
    in any orientation.

    :raises ValueError: the view is more than ``maxObliqueDegrees`` from every voxel plane of
        the volume (rotate the view to the volume plane first), or the volume is under a
        non-linear transform.
    """
    sliceToRAS = np.array([[sliceNode.GetSliceToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    ijkToWorld = _volumeToWorld(volumeNode)
    dirs = ijkToWorld[:3, :3] / np.linalg.norm(ijkToWorld[:3, :3], axis=0)[None, :]  # unit IJK axes in RAS
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    x, y, n = unit(sliceToRAS[:3, 0]), unit(sliceToRAS[:3, 1]), unit(sliceToRAS[:3, 2])
    cosines = np.abs(dirs.T @ n)
    axis = int(np.argmax(cosines))
    oblique = float(np.degrees(np.arccos(min(1.0, cosines[axis]))))
    if oblique > maxObliqueDegrees:
        raise ValueError(f"the slice view is {oblique:.0f} degrees away from every voxel plane of "
                         f"'{volumeNode.GetName()}'; rotate the view to the volume plane first")
    ijk = np.linalg.solve(ijkToWorld, np.append(sliceToRAS[:3, 3], 1.0))
    inPlane = [a for a in range(3) if a != axis]
    colAxis = max(inPlane, key=lambda a: abs(dirs[:, a] @ x))
    rowAxis = inPlane[0] if colAxis == inPlane[1] else inPlane[1]
    return ViewPlane(axis=axis, index=int(round(float(ijk[axis]))), rowAxis=rowAxis, colAxis=colAxis,
                     flipRows=bool(dirs[:, rowAxis] @ y > 0),  # rows go down the screen: against y
                     flipCols=bool(dirs[:, colAxis] @ x < 0), obliqueDegrees=oblique)


def sliceIndexAt(volumeNode, sliceNode) -> int:
    """The volume's IJK index K under the centre of a slice view (``vtkMRMLSliceNode``),
    rounded to the nearest slice (parent transforms are not applied). Right only for a view
    across K; :func:`viewPlaneAt` handles any view orientation."""
    import vtk

    sliceToRAS = sliceNode.GetSliceToRAS()
    ras = [sliceToRAS.GetElement(r, 3) for r in range(3)] + [1.0]
    m = vtk.vtkMatrix4x4()
    volumeNode.GetRASToIJKMatrix(m)
    ijk = m.MultiplyPoint(ras)
    return int(round(ijk[2]))
