"""The BrainSpineAI Segment module's logic against a real MRML scene (the ``slicer-core``
wheel) on a real BraTS case (brats_2013_pat0005: FLAIR + T1c, expert labels), with the real
``brainspineai segment`` command in a background process."""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from conftest import BRATS15, BRATS23, ROOT, need  # noqa: E402

if str(ROOT / "BrainSpineAISegment") not in sys.path:
    sys.path.insert(0, str(ROOT / "BrainSpineAISegment"))

from BrainSpineAILib import mrml_utils  # noqa: E402
from BrainSpineAISegmentLib.segment_logic import (  # noqa: E402
    REGION_TAG,
    REGIONS,
    SegmentationLogic,
    labelmap_from_regions,
    region_masks,
)
from BrainSpineAISegmentLib.sequences import assign_sequences, guess_sequence  # noqa: E402

CASE = BRATS15 / "brats_2013_pat0005_1"


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def load(scene, path, name):
    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetMRMLScene(scene)
    node = logic.AddArchetypeVolume(str(path), name)
    assert node is not None, f"Slicer could not load {path}"
    return node


@pytest.fixture
def pat5(scene):
    """pat0005 loaded as Slicer names it (file stems), plus its expert labels in BraTS 2020 codes."""
    flair = load(scene, need(CASE / "Flair_subtrMeanDivStd.nii.gz"), "Flair_subtrMeanDivStd")
    t1c = load(scene, CASE / "T1c_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(CASE / "OTMultiClass.nii.gz"))).astype(np.uint8)
    labels[labels == 3] = 1  # BraTS 2015 non-enhancing -> BraTS 2020 NCR/NET
    return {"flair": flair, "t1ce": t1c}, labels


def ras_matrix(node):
    return mrml_utils.ijk_to_ras_array(node)


def tag(segment, name):
    import vtk

    value = vtk.reference("")
    assert segment.GetTag(name, value), f"segment '{segment.GetName()}' has no tag {name}"
    return str(value)


# ------------------------------------------------------------------------- sequence names
@pytest.mark.parametrize("name, expected", [
    ("BraTS-GLI-00001-000-t1n", "t1"), ("BraTS-GLI-00001-000-t1c", "t1ce"), ("BraTS-GLI-00001-000-t2w", "t2"),
    ("BraTS-GLI-00001-000-t2f", "flair"), ("Flair_subtrMeanDivStd", "flair"), ("T1c_subtrMeanDivStd", "t1ce"),
    ("case_t1ce", "t1ce"), ("case_t1", "t1"), ("case_t2", "t2"), ("case_flair", "flair"), ("sub-01_T1w", "t1"),
    ("T1_Gd", "t1ce"), ("T1+C", "t1ce"), ("post-contrast T1", "t1ce"), ("T1 contrast", "t1ce"), ("T2-FLAIR", "flair"),
    ("T2w", "t2"), ("MPRAGE", "t1"), ("OTMultiClass", None), ("brainmask", None), ("t10", None), ("", None),
])
def test_sequence_guessed_from_the_name(name, expected):
    assert guess_sequence(name) == expected


def test_each_sequence_is_assigned_once_first_name_wins():
    names = ["seg", "x_t2f", "x_t1c", "other FLAIR", "x_t1n", "x_t2w"]
    assert assign_sequences(names) == {"t1": 4, "t1ce": 2, "t2": 5, "flair": 1}


def test_scene_volumes_are_assigned_by_name(scene, pat5):
    volumes, _ = pat5
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "t1 labels")  # a labelmap is never an input
    guessed = SegmentationLogic(scene).guessVolumes()
    assert guessed == volumes


# ------------------------------------------------------------------------- scene output
def test_expert_labels_become_one_segmentation_node(scene, pat5):
    """A real labelmap -> one node, three overlapping named, coloured, terminology-coded segments on
    the reference grid, closed surfaces, visible, placed under the reference volume's study."""
    volumes, labels = pat5
    reference = volumes["flair"]
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "BraTS pat0005"), "MR brain")
    sh.CreateItem(study, reference)
    before = scene.GetNumberOfNodes()
    t0 = time.perf_counter()
    node = SegmentationLogic(scene).segmentationNodeFromLabelmap(labels, reference, "pat5 tumour",
                                                                 {"model": "m", "report": "ring-enhancing mass"})
    print(f"node build: {time.perf_counter() - t0:.2f} s")
    assert node.IsA("vtkMRMLSegmentationNode") and scene.GetNumberOfNodes() > before
    assert node.GetAttribute("BrainSpineAI.model") == "m"
    assert node.GetAttribute("BrainSpineAI.report") == "ring-enhancing mass"
    seg = node.GetSegmentation()
    assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == \
        ["Whole tumour (WT)", "Tumour core (TC)", "Enhancing tumour (ET)"]
    tlogic = slicer.vtkSlicerTerminologiesModuleLogic
    expected_types = {"WT": ("SCT", "52988006"), "TC": ("SCT", "108369006"), "ET": ("NCIt", "C113842")}
    for region in REGIONS:
        segment = seg.GetSegment(region.key)
        assert segment.GetColor() == pytest.approx(region.color)
        entry = slicer.vtkSlicerTerminologyEntry()
        assert tlogic.DeserializeTerminologyEntry(tag(segment, segment.GetTerminologyEntryTagName()), entry)
        assert entry.GetCategoryObject().GetCodeValue() == "49755003"
        t = entry.GetTypeObject()
        assert (t.GetCodingSchemeDesignator(), t.GetCodeValue()) == expected_types[region.key]
        assert entry.GetRegionObject().GetCodeMeaning() == "Brain"
        assert tag(segment, REGION_TAG) == region.key
    # geometry: the reference volume's; voxels: exactly the regions, overlapping
    geometry = seg.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    ref_geometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(
        slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(reference))
    assert geometry == ref_geometry
    masks = SegmentationLogic(scene).regionMasksOnReference(node, reference)
    expected = region_masks(labels)
    for key in ("WT", "TC", "ET"):
        assert masks[key].shape == (155, 240, 240)
        assert np.array_equal(masks[key], expected[key]), key
    assert masks["ET"].sum() < masks["TC"].sum() < masks["WT"].sum()
    assert seg.ContainsRepresentation("Closed surface")
    display = node.GetDisplayNode()
    assert display.GetVisibility() and display.GetVisibility2D() and display.GetVisibility3D()
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study


def test_labelmap_round_trip_helpers():
    lab = np.array([0, 1, 2, 4, 2, 0], np.uint8)
    m = region_masks(lab)
    assert np.array_equal(labelmap_from_regions(m["WT"], m["TC"], m["ET"]), lab)


def test_wrong_labelmap_leaves_no_node(scene, pat5):
    volumes, labels = pat5
    logic = SegmentationLogic(scene)
    before = scene.GetNumberOfNodes()
    with pytest.raises(RuntimeError, match="reference volume 'Flair_subtrMeanDivStd' has"):
        logic.segmentationNodeFromLabelmap(labels[:, :, :100], volumes["flair"], "x")
    bad = labels.copy()
    bad[0, 0, 0] = 3
    with pytest.raises(RuntimeError, match=r"labels \[3\]"):
        logic.segmentationNodeFromLabelmap(bad, volumes["flair"], "x")
    assert scene.GetNumberOfNodes() == before


# ------------------------------------------------------------------------- bad input
def test_bad_inputs_are_named(scene, pat5):
    volumes, _ = pat5
    logic = SegmentationLogic(scene)
    need_both = ["flair", "t1ce"]
    with pytest.raises(ValueError, match=r"Select a T1 contrast \(T1ce\) volume: the model needs FLAIR, T1 contrast"):
        logic.checkInputs({"flair": volumes["flair"]}, need_both)
    with pytest.raises(ValueError, match="selected both as FLAIR and as T1 contrast"):
        logic.checkInputs({"flair": volumes["flair"], "t1ce": volumes["flair"]}, need_both)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="'empty' has no image data"):
        logic.checkInputs({"flair": volumes["flair"], "t1ce": empty}, need_both)
    nan = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "nan")
    arr = mrml_utils.array_from_volume_node(volumes["t1ce"])
    arr[70, 120, 120] = np.nan
    mrml_utils.update_volume_node_from_array(nan, arr, reference=volumes["t1ce"])
    with pytest.raises(ValueError, match="'nan' contains NaN"):
        logic.checkInputs({"flair": volumes["flair"], "t1ce": nan}, need_both)
    flat = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "one slice")
    mrml_utils.update_volume_node_from_array(flat, np.ones((1, 64, 64), np.float32))
    with pytest.raises(ValueError, match="not a 3D volume"):
        logic.checkInputs({"flair": flat, "t1ce": volumes["t1ce"]}, need_both)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    mrml_utils.update_volume_node_from_array(labelmap, np.ones((4, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="'labels' is not a scalar image volume"):
        logic.checkInputs({"flair": labelmap, "t1ce": volumes["t1ce"]}, need_both)
    rgb = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    import vtk
    from vtk.util import numpy_support

    image = vtk.vtkImageData()
    image.SetDimensions(8, 8, 4)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ones((4 * 8 * 8, 3), np.uint8), deep=True))
    rgb.SetAndObserveImageData(image)
    with pytest.raises(ValueError, match="3 components per voxel"):
        logic.checkInputs({"flair": rgb, "t1ce": volumes["t1ce"]}, need_both)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    volumes["t1ce"].SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(ValueError, match="different transforms"):
        logic.checkInputs(volumes, need_both)
    volumes["t1ce"].SetAndObserveTransformNodeID(None)
    assert list(logic.checkInputs({"t1ce": volumes["t1ce"], "flair": volumes["flair"], "t2": None}, need_both)) \
        == need_both
