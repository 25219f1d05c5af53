"""Conversions between MRML volume nodes and SimpleITK images, and small scene helpers.

Geometry: MRML stores IJK-to-RAS; ITK uses LPS. A volume node with IJK-to-RAS matrix
``M = [D*diag(spacing) | origin_ras]`` becomes an image with spacing ``spacing`` (mm),
origin ``diag(-1, -1, 1) @ origin_ras`` and direction ``diag(-1, -1, 1) @ D``.
"""
from __future__ import annotations

import numpy as np

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def ijk_to_ras_array(volumeNode) -> np.ndarray:
    """The node's IJK-to-RAS matrix as a float64 (4, 4) array."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def array_from_volume_node(volumeNode) -> np.ndarray:
    """Voxels of a volume node as a numpy array (K, J, I) or (K, J, I, components), a copy."""
    from vtk.util import numpy_support

    image = volumeNode.GetImageData() if volumeNode is not None else None
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise ValueError(f"volume '{volumeNode.GetName() if volumeNode else None}' has no image data")
    dims = image.GetDimensions()
    scalars = image.GetPointData().GetScalars()
    arr = numpy_support.vtk_to_numpy(scalars)
    n = scalars.GetNumberOfComponents()
    shape = (dims[2], dims[1], dims[0]) + ((n,) if n > 1 else ())
    return arr.reshape(shape).copy()


def sitk_image_from_volume_node(volumeNode):
    """A ``SimpleITK.Image`` (LPS geometry) with the node's voxels (vector pixels for RGB)."""
    import SimpleITK as sitk

    arr = array_from_volume_node(volumeNode)
    image = sitk.GetImageFromArray(arr, isVector=arr.ndim == 4)
    m = ijk_to_ras_array(volumeNode)
    spacing = np.array(volumeNode.GetSpacing(), dtype=float)
    direction_ras = m[:3, :3] / spacing[None, :]
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in LPS_FROM_RAS @ m[:3, 3]))
    image.SetDirection(tuple(float(v) for v in (LPS_FROM_RAS @ direction_ras).ravel()))
    return image


def update_volume_node_from_array(volumeNode, arr: np.ndarray, reference=None) -> None:
    """Fill ``volumeNode`` with ``arr`` (K, J, I); copy geometry and parent transform from
    ``reference`` (a volume node) when given."""
    import vtk
    from vtk.util import numpy_support

    arr = np.ascontiguousarray(arr)
    image = vtk.vtkImageData()
    image.SetDimensions(arr.shape[2], arr.shape[1], arr.shape[0])
    vtk_arr = numpy_support.numpy_to_vtk(arr.ravel(), deep=True)
    image.GetPointData().SetScalars(vtk_arr)
    if reference is not None:
        m = vtk.vtkMatrix4x4()
        reference.GetIJKToRASMatrix(m)
        volumeNode.SetIJKToRASMatrix(m)
        volumeNode.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
    volumeNode.SetAndObserveImageData(image)


def named_node(scene, className: str, name: str):
    """The scene's first node of ``className`` called ``name``, added when there is none (so a
    rerun updates its table, chart or volume; a table and a chart may share a name)."""
    node = scene.GetFirstNode(name, className)
    if node is None:
        node = scene.AddNewNodeByClass(className, name)
    return node


def _nodesByClassCollection(scene, className):
    """``scene.GetNodesByClass`` without its leak: the C++ method returns a new collection
    that the Python wrapper references once more, so it is never freed unless released
    (what ``slicer.util.getNodesByClass`` does, for ``slicer.mrmlScene`` only)."""
    collection = scene.GetNodesByClass(className)
    collection.UnRegister(None)
    return collection


def nodes_by_class(scene, className: str) -> list:
    """Nodes of ``className`` (subclasses included) in ``scene``, in scene order; nothing
    leaks (see :func:`_nodesByClassCollection`)."""
    collection = _nodesByClassCollection(scene, className)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def heat_color_node(scene):
    """A 256-entry colour table that reads from transparent to hot: opacity grows with the
    value (0 fully transparent), colour runs dark red - red - yellow - white; created once
    per scene and reused."""
    from slicer import vtkMRMLColorTableNode

    name = "BrainSpineAI Heat"
    existing = scene.GetFirstNodeByName(name)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    node = vtkMRMLColorTableNode()
    node.SetName(name)
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    node.SetHideFromEditors(False)
    for i in range(256):
        t = i / 255.0
        r, g, b = min(1.0, 0.5 + 1.5 * t), min(1.0, max(0.0, 2 * t - 0.5)), min(1.0, max(0.0, 3 * t - 2))
        node.SetColor(i, f"{t:.3f}", r, g, b, min(1.0, 1.25 * t))  # weak heat barely tints the image
    node.SetSingletonTag("BrainSpineAIHeat")
    scene.AddNode(node)
    return scene.GetFirstNodeByName(name)
