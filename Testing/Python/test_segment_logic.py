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

from conftest import BRATS15, BRATS23, ROOT, need, load_volume as load  # noqa: E402

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


@pytest.fixture
def pat5(scene):
    """pat0005 loaded as Slicer names it (file stems), plus its expert labels in BraTS 2020 codes."""
    flair = load(scene, need(CASE / "Flair_subtrMeanDivStd.nii.gz"), "Flair_subtrMeanDivStd")
    t1c = load(scene, CASE / "T1c_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(CASE / "OTMultiClass.nii.gz"))).astype(np.uint8)
    labels[labels == 3] = 1  # BraTS 2015 non-enhancing -> BraTS 2020 NCR/NET
    return {"flair": flair, "t1ce": t1c}, labels


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
    again = SegmentationLogic(scene).segmentationNodeFromLabelmap(labels, reference, "pat5 tumour")
    assert again.GetName() == "pat5 tumour_1" and node.GetName() == "pat5 tumour"  # an earlier result is kept


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


# ------------------------------------------------------------------------- real CLI in the background
@pytest.fixture(scope="session")
def tiny_segmenter(tmp_path_factory):
    """A CLIP-guided 3D U-Net (small random CLIP) trained for one short epoch on one real case
    (pat0001, never segmented below) through the library: fast, for plumbing tests."""
    from brainspineai.segmentation.training import SegTrainConfig, train_segmenter

    data = tmp_path_factory.mktemp("segdata")
    (data / "brats_2013_pat0001_1").symlink_to(need(BRATS15 / "brats_2013_pat0001_1"))
    cfg = SegTrainConfig(epochs=1, batch_size=2, samples_per_epoch=2, patch_size=16, spacing=4.0, val_cases=0,
                         channels=(4, 8, 16, 32), device="cpu", model_id="tiny-seg")
    return train_segmenter(data, tmp_path_factory.mktemp("segmodel") / "tiny-seg", cfg)


@pytest.fixture
def seg_models(tiny_segmenter, tmp_path, monkeypatch):
    """The catalogue: the shipped models plus the tiny segmenter."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_segmenter, models / "tiny-seg")
    monkeypatch.setenv("BRAINSPINEAI_MODEL_PATH", str(models))
    return models


@pytest.mark.slow
def test_real_case_segmented_in_a_background_process(scene, pat5, seg_models):
    """pat0005 (FLAIR + T1c) through the real ``brainspineai segment`` (the shipped default model
    when present, else the tiny one): one node on the FLAIR grid whose segments hold exactly the
    voxels the CLI reported; the temporary folder is gone."""
    from brainspineai.catalogue import DEFAULT_SEGMENTER_ID

    volumes, labels = pat5
    logic = SegmentationLogic(scene)
    cards = logic.availableModels()
    ids = [c["id"] for c in cards]
    assert "tiny-seg" in ids and all(c["task"] == "segmentation-3d" for c in cards)
    model = DEFAULT_SEGMENTER_ID if DEFAULT_SEGMENTER_ID in ids else "tiny-seg"
    assert ids[0] == model
    assert logic.requiredSequences(model) == ["flair", "t1ce"]
    before = scene.GetNumberOfNodes()
    t0 = time.perf_counter()
    job = logic.startSegmentation(volumes, modelRef=model, device="cpu", report="ring-enhancing mass with oedema")
    assert scene.GetNumberOfNodes() == before
    assert job.wait(900), job.errorText
    out = logic.finishSegmentation(job)
    total = time.perf_counter() - t0
    print(f"model {model}: Segment -> nodes in scene {total:.1f} s (CLI {out.result['seconds']:.1f} s, "
          f"node build {out.seconds['nodes']:.2f} s)")
    assert not job.workdir.exists()
    assert [e["event"] for e in job.events][-1] == "done" and any(e["event"] == "progress" for e in job.events)
    node = out.segmentationNode
    assert out.referenceVolume is volumes["flair"]
    assert out.result["model"] == model and out.result["reference"] == "flair"
    assert out.result["report"] == "ring-enhancing mass with oedema"
    # both models have the untrained small-random CLIP: the report is said not to guide them
    assert out.result["warnings"] == [logic.reportWarning(model, "ring-enhancing mass with oedema")]
    assert "small-random" in out.result["warnings"][0] and logic.reportWarning(model, "  ") is None
    assert node.GetName() == "Flair_subtrMeanDivStd tumour" and node.GetAttribute("BrainSpineAI.model") == model
    seg = node.GetSegmentation()
    assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == [r.name for r in REGIONS]
    geometry = seg.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    assert geometry == slicer.vtkSegmentationConverter.SerializeImageGeometry(
        slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(volumes["flair"]))
    masks = logic.regionMasksOnReference(node, volumes["flair"])
    for key in ("WT", "TC", "ET"):
        assert int(masks[key].sum()) == out.result["regions"][key]["voxels"], key
    assert masks["WT"].sum() > 0
    assert not (masks["TC"] & ~masks["WT"]).any() and not (masks["ET"] & ~masks["TC"]).any()  # nested
    assert seg.ContainsRepresentation("Closed surface")
    if model == DEFAULT_SEGMENTER_ID:  # pat0005 was held apart from its training: Dice against the expert
        expert = region_masks(labels)
        dice = {k: 2 * (masks[k] & expert[k]).sum() / (masks[k].sum() + expert[k].sum()) for k in expert}
        print("Dice vs expert labels in the scene: " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
        assert dice["WT"] > 0.5 and dice["ET"] > 0.4


@pytest.mark.slow
def test_four_sequences_found_by_name_cancel_leaves_the_scene_as_it_was(scene, seg_models):
    """The BraTS 2023 case: the four volumes are found by name; a FLAIR + T1ce model is given
    only those two. Cancel kills the process, removes its files and adds nothing to the scene."""
    for suffix in ("t1n", "t1c", "t2w", "t2f"):
        name = f"{BRATS23.name}-{suffix}"
        load(scene, need(BRATS23 / f"{name}.nii.gz"), name)
    logic = SegmentationLogic(scene)
    volumes = logic.guessVolumes()
    assert {s: n.GetName()[-3:] for s, n in volumes.items()} == {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
    before = scene.GetNumberOfNodes()
    job = logic.startSegmentation(volumes, modelRef="tiny-seg", device="cpu")
    assert sorted(job.context["volumeNodeIDs"]) == ["flair", "t1ce"]
    assert job.context["referenceNodeID"] == volumes["flair"].GetID()
    assert "--t1" not in job.command and "--t2" not in job.command
    deadline = time.monotonic() + 120
    while not job.events and not job.poll() and time.monotonic() < deadline:  # cancel once it is working
        time.sleep(0.2)
    assert job.events and job.process.poll() is None, job.errorText
    job.cancel()
    assert job.poll() and job.process.returncode != 0
    assert not job.workdir.exists()
    with pytest.raises(RuntimeError, match="cancelled"):
        logic.finishSegmentation(job)
    assert scene.GetNumberOfNodes() == before
    assert scene.GetFirstNodeByClass("vtkMRMLSegmentationNode") is None


def test_cli_error_surfaces_and_scene_is_unchanged(scene, pat5, seg_models):
    """A model whose weights were damaged passes the logic's checks; the CLI refuses it (exit 2)
    and its one-line error is what the user reads."""
    import shutil

    volumes, _ = pat5
    broken = seg_models / "broken-seg"
    shutil.copytree(seg_models / "tiny-seg", broken)
    card = json.loads((broken / "model.json").read_text())
    card["id"] = "broken-seg"
    (broken / "model.json").write_text(json.dumps(card))
    with open(broken / "model.safetensors", "r+b") as fh:
        fh.seek(-16, 2)
        fh.write(b"\0" * 16)
    logic = SegmentationLogic(scene)
    before = scene.GetNumberOfNodes()
    job = logic.startSegmentation(volumes, modelRef="broken-seg", device="cpu")
    job.wait(600)
    assert job.process.returncode == 2
    with pytest.raises(RuntimeError, match=r"^brainspineai: error: .*(sha256|checksum)"):
        logic.finishSegmentation(job)
    assert scene.GetNumberOfNodes() == before and not job.workdir.exists()
    with pytest.raises(ValueError, match="not a segmentation model"):
        logic.startSegmentation(volumes, modelRef="brain-tumor-4class-resnet18w32")


# ------------------------------------------------------------------------- corrected case -> training set
def test_edited_segmentation_exports_exactly(scene, pat5, tmp_path):
    """Expert labels of pat0005 -> segmentation node -> a user erases part of ET -> exported case:
    the labelmap is exactly the edited one (erased ET becomes NCR, it is still tumour core), the
    geometry is the FLAIR file's, the sequences are the files' voxels, dataset.json lists the case."""
    from brainspineai.segmentation import data as segdata
    from brainspineai.errors import InputError

    volumes, labels = pat5
    logic = SegmentationLogic(scene)
    node = logic.segmentationNodeFromLabelmap(labels, volumes["flair"], "pat5 tumour")
    et = labels == 4
    cut = np.zeros_like(et)
    cut[: int(np.median(np.nonzero(et)[0]))] = True  # erase ET in the lower half of its slices
    edited_et = et & ~cut
    assert 0 < edited_et.sum() < et.sum()
    ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        logic._orientedImage(edited_et, volumes["flair"]), node, "ET", slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    assert ok
    expected = labels.copy()
    expected[et & cut] = 1
    dataset = tmp_path / "corrected"
    t0 = time.perf_counter()
    folder = logic.exportTrainingCase(dataset, "pat0005-edited", volumes, node)
    print(f"export: {time.perf_counter() - t0:.2f} s")
    assert folder == dataset / "pat0005-edited"
    seg_image = sitk.ReadImage(str(folder / "pat0005-edited_seg.nii.gz"))
    flair_file = sitk.ReadImage(str(CASE / "Flair_subtrMeanDivStd.nii.gz"))
    assert seg_image.GetSize() == flair_file.GetSize()
    assert np.allclose(seg_image.GetSpacing(), flair_file.GetSpacing(), atol=1e-6)
    assert np.allclose(seg_image.GetOrigin(), flair_file.GetOrigin(), atol=1e-5)
    assert np.allclose(seg_image.GetDirection(), flair_file.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(seg_image), expected)
    for seq, fname in (("flair", "Flair_subtrMeanDivStd.nii.gz"), ("t1ce", "T1c_subtrMeanDivStd.nii.gz")):
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"pat0005-edited_{seq}.nii.gz")))
        assert np.array_equal(written, sitk.GetArrayFromImage(sitk.ReadImage(str(CASE / fname)))), seq
    cases = segdata.discover_cases(dataset)
    assert [c.case_id for c in cases] == ["pat0005-edited"] and sorted(cases[0].images) == ["flair", "t1ce"]
    # the same case again: refused, then replaced on request
    with pytest.raises(InputError):
        logic.exportTrainingCase(dataset, "pat0005-edited", volumes, node)
    logic.exportTrainingCase(dataset, "pat0005-edited", volumes, node, overwrite=True)
    with pytest.raises(ValueError, match="case id 'bad id/x'"):
        logic.exportTrainingCase(dataset, "bad id/x", volumes, node)
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "nothing")
    with pytest.raises(ValueError, match="has no Whole tumour"):
        logic.exportTrainingCase(dataset, "other", volumes, empty)
    assert [c.case_id for c in segdata.discover_cases(dataset)] == ["pat0005-edited"]


@pytest.mark.slow
def test_retrain_request_fine_tunes_the_current_model(scene, pat5, tmp_path, seg_models):
    """A corrected case -> training set -> the retraining command fine-tunes the current model
    (real ``brainspineai train segmenter`` run, one short epoch): a new model whose parent it is."""
    from BrainSpineAILib.background import BackgroundJob, cliCommand

    volumes, labels = pat5
    logic = SegmentationLogic(scene)
    with pytest.raises(ValueError, match="no dataset.json"):
        logic.requestRetrain(tmp_path / "nothing", "tiny-seg", start=False)
    node = logic.segmentationNodeFromLabelmap(labels, volumes["flair"], "pat5 tumour")
    logic.exportTrainingCase(tmp_path / "set", "pat5", volumes, node)
    tiny = seg_models / "tiny-seg"
    request = logic.requestRetrain(tmp_path / "set", "tiny-seg", epochs=1, device="cpu", start=False)
    if isinstance(request, dict):  # the Train module's logic is installed: its run request
        assert request["pipelineKey"] == "segmenter" and request["initModel"] == str(tiny)
        assert request["dataDir"] == str(tmp_path / "set")
    else:
        assert request[:2] == ["train", "segmenter"] and request[request.index("--init-model") + 1] == str(tiny)
    card = logic.modelCard("tiny-seg")
    args = logic.retrainArguments(tmp_path / "set", tmp_path / "tiny-seg-v2", card, epochs=1, device="cpu",
                                  extra=["--samples-per-epoch", 2, "--batch-size", 2, "--model-id", "tiny-seg-v2"])
    assert args[args.index("--sequences") + 1: args.index("--sequences") + 3] == ["flair", "t1ce"]
    assert args[args.index("--spacing") + 1] == "4" and args[args.index("--patch-size") + 1] == "16"
    assert args[args.index("--val-cases") + 1] == "0"  # one case: nothing to hold out
    job = BackgroundJob(cliCommand(*args))
    assert job.wait(600), job.errorText
    assert job.succeeded, job.errorText
    assert any(e.get("event") == "epoch" for e in job.events)
    new = json.loads((tmp_path / "tiny-seg-v2" / "model.json").read_text())
    assert new["id"] == "tiny-seg-v2" and new["parent"] == "tiny-seg" and new["task"] == "segmentation-3d"
    assert new["training_data"]["train_cases"] == ["pat5"]


def test_export_resamples_a_sequence_on_another_grid(scene, pat5, tmp_path):
    """A T1c at 2 mm next to the 1 mm FLAIR: the exported T1c is on the FLAIR grid (what add_case
    requires) and close to the original 1 mm voxels."""
    volumes, labels = pat5
    logic = SegmentationLogic(scene)
    t1c = mrml_utils.sitk_image_from_volume_node(volumes["t1ce"])
    coarse = sitk.Resample(t1c, [s // 2 for s in t1c.GetSize()], sitk.Transform(), sitk.sitkLinear, t1c.GetOrigin(),
                           [2 * s for s in t1c.GetSpacing()], t1c.GetDirection(), 0.0, t1c.GetPixelID())
    path = tmp_path / "t1c_2mm.nii.gz"
    sitk.WriteImage(coarse, str(path))
    t1c_2mm = load(scene, path, "t1c 2mm")
    assert t1c_2mm.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))
    node = logic.segmentationNodeFromLabelmap(labels, volumes["flair"], "pat5 tumour")
    folder = logic.exportTrainingCase(tmp_path / "set", "mixed", {"flair": volumes["flair"], "t1ce": t1c_2mm}, node)
    written = sitk.ReadImage(str(folder / "mixed_t1ce.nii.gz"))
    flair = sitk.ReadImage(str(folder / "mixed_flair.nii.gz"))
    assert written.GetSize() == flair.GetSize() == (240, 240, 155)
    assert written.GetSpacing() == pytest.approx(flair.GetSpacing())
    a, b = sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(t1c)
    inside = b != 0
    assert np.corrcoef(a[inside], b[inside])[0, 1] > 0.8
