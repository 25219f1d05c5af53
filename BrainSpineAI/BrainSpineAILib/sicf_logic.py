"""Scene display of an SICF classification (no Qt): the ROI as a markups ROI node and the
SIFT keypoints as a markups point list, in RAS.

The CLI / library (:func:`brainspineai.sicf.inference.classify_sicf`) reports, under ``"sicf"``,
``roi_box`` = (row0, col0, row1, col1) half-open pixel box and ``keypoints`` = (row, col)
pixels of one slice: for a 2D input the slice's own array (``slice_array``: the image
array with its one-voxel axis removed), for a volume the LPS axial slice ``slice_index``
of the volume reoriented to LPS (:func:`brainspineai.classification.preprocess.to_lps_axial`). Pixel
(row, col) maps to the continuous image index (col, row[, slice]) of that image; ITK's
index-to-physical mapping gives LPS millimetres, and RAS = diag(-1, -1, 1) LPS. This is
the same point as the volume node's IJK-to-RAS matrix applied to the node's IJK (the
tests check it).
"""
from __future__ import annotations

import numpy as np

from . import mrml_utils

ROI_NODE_NAME = "SICF ROI"
KEYPOINTS_NODE_NAME = "SICF keypoints"


def pixelsToRAS(volumeNode, rowsCols, sliceIndex=None) -> np.ndarray:
    """RAS millimetres (N, 3) of slice pixels (N, 2) as (row, col), continuous.

    :param sliceIndex: LPS axial slice index for a volume; None for a single-slice image.
    """
    from brainspineai.classification.preprocess import to_lps_axial

    image = mrml_utils.sitk_image_from_volume_node(volumeNode)
    pts = np.asarray(rowsCols, dtype=float).reshape(-1, 2)
    if sliceIndex is None:
        size = image.GetSize()  # (I, J, K); slice_array drops the first one-voxel axis of (K, J, I)
        thin = [ax for ax in (2, 1, 0) if size[ax] == 1][0]
        rowAxis, colAxis = [ax for ax in (2, 1, 0) if ax != thin]
        def index(r, c):
            idx = [0.0, 0.0, 0.0]
            idx[rowAxis], idx[colAxis] = r, c
            return idx
    else:
        image = to_lps_axial(image)
        def index(r, c):
            return [c, r, float(sliceIndex)]
    out = np.zeros((len(pts), 3))
    for n, (r, c) in enumerate(pts):
        lps = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index(r, c)])
        out[n] = mrml_utils.LPS_FROM_RAS @ np.asarray(lps)
    return out


def boxCornersRAS(volumeNode, box, sliceIndex=None) -> np.ndarray:
    """RAS (4, 3) of the outer corners of a half-open pixel box (row0, col0, row1, col1):
    pixel edges at row0 - 0.5 ... row1 - 0.5 and col0 - 0.5 ... col1 - 0.5."""
    r0, c0, r1, c1 = box
    corners = [(r0 - 0.5, c0 - 0.5), (r0 - 0.5, c1 - 0.5), (r1 - 0.5, c0 - 0.5), (r1 - 0.5, c1 - 0.5)]
    return pixelsToRAS(volumeNode, corners, sliceIndex)


def showSICFResult(scene, volumeNode, sicf: dict):
    """Put an SICF result's ROI and keypoints in the scene (nodes reused by name).

    The ROI node is the RAS-axis-aligned box spanning the ROI's corners, one voxel thick
    across the slice (exact for volumes whose axes follow RAS, the bounding box otherwise).

    :param sicf: the ``"sicf"`` part of a classification result.
    :returns: ``(roiNode, pointsNode)``; both carry the attribute
        ``BrainSpineAI.nFeaturesKept``.
    """
    sliceIndex = sicf.get("slice_index")
    corners = boxCornersRAS(volumeNode, sicf["roi_box"], sliceIndex)
    lo, hi = corners.min(0), corners.max(0)
    spacing = min(volumeNode.GetSpacing())
    size = np.maximum(hi - lo, spacing)  # the slice's thickness across it
    roi = scene.GetFirstNodeByName(ROI_NODE_NAME)
    if roi is None or not roi.IsA("vtkMRMLMarkupsROINode"):
        roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", ROI_NODE_NAME)
    roi.SetCenter(*((lo + hi) / 2))
    roi.SetSize(*size)
    pts = scene.GetFirstNodeByName(KEYPOINTS_NODE_NAME)
    if pts is None or not pts.IsA("vtkMRMLMarkupsFiducialNode"):
        pts = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", KEYPOINTS_NODE_NAME)
    pts.RemoveAllControlPoints()
    kp = np.asarray(sicf.get("keypoints") or [], dtype=float).reshape(-1, 2)
    for p in (pixelsToRAS(volumeNode, kp, sliceIndex) if len(kp) else []):
        pts.AddControlPoint(float(p[0]), float(p[1]), float(p[2]), "")
    pts.SetLocked(True)
    for node in (roi, pts):
        node.SetAttribute("BrainSpineAI.nFeaturesKept", str(sicf.get("n_features_kept", "")))
    return roi, pts
