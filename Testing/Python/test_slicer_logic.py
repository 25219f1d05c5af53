"""The BrainSpineAI module's logic against a real MRML scene (the ``slicer-core`` wheel):
real slices and a real BraTS volume loaded by Slicer's own volumes logic."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from BrainSpineAILib import mrml_utils  # noqa: E402
from BrainSpineAILib.classification_logic import ClassificationLogic  # noqa: E402
from brainspineai.catalogue import DEFAULT_MODEL_ID  # noqa: E402
from conftest import BRATS15, at_2mm, need, load_volume as load  # noqa: E402

CASE = BRATS15 / "brats_2013_pat0003_1"
GLIOMA_T1C = BRATS15 / "brats_2013_pat0004_1" / "T1c_subtrMeanDivStd.nii.gz"


@pytest.fixture
def scene():
    s = slicer.vtkMRMLScene()
    s.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    s.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    return s


def slice_as_nrrd(jpg, tmp_path, rgb=False):
    """slicer-core's ITK has no JPEG reader: hand Slicer the same pixels as NRRD."""
    img = sitk.ReadImage(str(jpg))
    if rgb:
        img = sitk.Compose(img, img, img)
    out = tmp_path / (jpg.stem + ("_rgb" if rgb else "") + ".nrrd")
    sitk.WriteImage(img, str(out))
    return out


def same_geometry(a, b):
    return np.allclose(mrml_utils.ijk_to_ras_array(a), mrml_utils.ijk_to_ras_array(b), atol=1e-9)


@pytest.mark.slow
def test_known_slices_scalar_and_rgb(scene, tmp_path, validation_images):
    logic = ClassificationLogic(scene)
    for name in ("glioma", "pituitary", "notumor"):
        jpg = sorted(validation_images[name])[1]
        node = load(scene, slice_as_nrrd(jpg, tmp_path), name)
        assert logic.isSingleSlice(node)
        out = logic.classify(node, device="cpu")
        assert out.result["predicted"] == name
        assert sum(out.result["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert same_geometry(out.heatmapNode, node)
        assert out.tableNode.GetNumberOfRows() == 4
        assert out.tableNode.GetAttribute("BrainSpineAI.predicted") == name
        rgb = load(scene, slice_as_nrrd(jpg, tmp_path, rgb=True), name + "_rgb")
        assert rgb.IsA("vtkMRMLVectorVolumeNode")
        out_rgb = logic.classify(rgb, device="cpu")
        np.testing.assert_allclose(out_rgb.result["probabilities"], out.result["probabilities"], atol=1e-4)


@pytest.mark.slow
def test_heatmap_is_shown_over_the_input(scene, tmp_path, validation_images):
    logic = ClassificationLogic(scene)
    node = load(scene, slice_as_nrrd(sorted(validation_images["meningioma"])[0], tmp_path), "m")
    out = logic.classify(node, device="cpu")
    logic.showHeatmap(out.heatmapNode, node, 0.4)
    comps = logic._compositeNodes()
    assert len(comps) == 2
    for c in comps:
        assert c.GetBackgroundVolumeID() == node.GetID() and c.GetForegroundVolumeID() == out.heatmapNode.GetID()
        assert c.GetForegroundOpacity() == pytest.approx(0.4)
    logic.setHeatmapOpacity(0.8)
    assert comps[0].GetForegroundOpacity() == pytest.approx(0.8)
    display = out.heatmapNode.GetDisplayNode()
    assert display.GetColorNode().GetName() == "BrainSpineAI Heat"
    colours = display.GetColorNode()
    alphas = [colours.GetLookupTable().GetTableValue(i)[3] for i in (0, 64, 128, 255)]
    assert alphas[0] == 0.0 and alphas == sorted(alphas) and alphas[-1] == 1.0  # transparent to hot
    hm = out.result["heatmap_method"]
    assert out.heatmapNode.GetAttribute("BrainSpineAI.heatmapMethod") == "{} at {}, {} px input".format(
        hm["name"], hm["layer"], "+".join(map(str, hm["input_sizes"])))
    heat = mrml_utils.array_from_volume_node(out.heatmapNode)
    assert heat.shape == mrml_utils.array_from_volume_node(node).shape and heat.max() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_brats_volume_in_a_background_process(scene, tmp_path):
    """A real glioma (BraTS 2015, T1c, at 2 mm: the same path, a quarter of the heatmap work):
    classified in a separate process, as glioma."""
    node = load(scene, at_2mm(need(GLIOMA_T1C), tmp_path / "t1c.nii.gz"), "t1c")
    logic = ClassificationLogic(scene)
    assert not logic.isSingleSlice(node)
    job = logic.startBackgroundClassification(node, device="cpu")
    assert job.wait(600)
    out = logic.finishBackgroundClassification(job)
    assert not job.workdir.exists()
    r = out.result
    assert sum(r["probabilities"]) == pytest.approx(1.0, abs=1e-5) and len(r["slices"]) > 50
    assert r["predicted"] == "glioma"
    assert same_geometry(out.heatmapNode, node)
    assert mrml_utils.array_from_volume_node(out.heatmapNode).shape == (78, 120, 120)
    assert out.plotChartNode.GetNumberOfPlotSeriesNodes() == 4
    table = scene.GetFirstNodeByName("t1c per-slice probabilities")
    assert table.GetNumberOfRows() == len(r["slices"])
    # the strongest evidence first: the axial view moves to the slice of the hottest voxel
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetOrientation("Axial")
    logic.showHeatmap(out.heatmapNode, node)
    heat = mrml_utils.array_from_volume_node(out.heatmapNode)
    k = int(np.unravel_index(int(heat.argmax()), heat.shape)[0])
    assert r["heatmap_strongest_slice"] == k  # BraTS NIfTI is already LPS-axial along k
    assert r["heatmap_method"]["slice_sigma"] == 2.5  # the default's map is smoothed across slices, and says so
    assert out.heatmapNode.GetAttribute("BrainSpineAI.heatmapMethod").endswith("smoothed across slices (sigma 2.5)")
    ras = [float(v) for v in out.heatmapNode.GetAttribute("BrainSpineAI.hottestRAS").split()]
    assert red.GetSliceToRAS().GetElement(2, 3) == pytest.approx(ras[2], abs=1e-3)


@pytest.mark.slow
def test_cancel_leaves_the_scene_as_it_was(scene):
    node = load(scene, need(CASE / "Flair_subtrMeanDivStd.nii.gz"), "flair")
    before = scene.GetNumberOfNodes()
    logic = ClassificationLogic(scene)
    job = logic.startBackgroundClassification(node, device="cpu")
    job.cancel()
    assert job.poll() and job.process.returncode != 0
    assert not job.workdir.exists()
    with pytest.raises(RuntimeError, match="cancelled"):
        logic.finishBackgroundClassification(job)
    assert scene.GetNumberOfNodes() == before


def test_errors_name_the_problem(scene):
    logic = ClassificationLogic(scene)
    with pytest.raises(ValueError, match="Select an input volume"):
        logic.classify(None)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="no image data"):
        logic.classify(empty)
    blank = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "blank")
    mrml_utils.update_volume_node_from_array(blank, np.zeros((4, 32, 32), np.float32))
    job = logic.startBackgroundClassification(blank, device="cpu")
    job.wait(300)
    with pytest.raises(RuntimeError, match="empty"):
        logic.finishBackgroundClassification(job)
    assert scene.GetFirstNodeByName("blank Grad-CAM") is None


def test_model_list_puts_the_default_first(scene):
    cards = ClassificationLogic(scene).availableModels()
    assert cards[0]["id"] == DEFAULT_MODEL_ID and "path" in cards[0]
    assert ClassificationLogic.missingPackages() == []


def test_affcl_model_in_the_module_logic(scene, tmp_path, validation_images, tiny_affcl, tiny_encoder, monkeypatch):
    """A contrastive (AFF-CL two-branch) model is offered, classifies and gives a Grad-CAM
    heatmap on the input's grid; a SimCLR encoder is not offered as a classifier."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_affcl[0], models / "tiny-affcl")
    shutil.copytree(tiny_encoder[0], models / "tiny-simclr")
    monkeypatch.setenv("BRAINSPINEAI_MODEL_PATH", str(models))
    logic = ClassificationLogic(scene)
    ids = [c["id"] for c in logic.availableModels()]
    assert "tiny-affcl" in ids and "tiny-simclr" not in ids
    node = load(scene, slice_as_nrrd(sorted(validation_images["glioma"])[0], tmp_path), "g")
    out = logic.classify(node, modelRef="tiny-affcl", device="cpu")
    assert out.result["model"] == "tiny-affcl"
    assert sum(out.result["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert same_geometry(out.heatmapNode, node)
    heat = mrml_utils.array_from_volume_node(out.heatmapNode)
    assert heat.shape == mrml_utils.array_from_volume_node(node).shape and heat.max() == pytest.approx(1.0, abs=1e-5)


def test_single_slice_is_classified_in_a_background_process(scene, tmp_path, validation_images):
    """The GUI classifies a single slice through the background path too (no torch, CUDA
    or model loading in Slicer's GUI thread): same answer and heatmap as in this process."""
    jpg = sorted(validation_images["pituitary"])[2]
    node = load(scene, slice_as_nrrd(jpg, tmp_path), "p")
    logic = ClassificationLogic(scene)
    here = logic.classify(node, device="cpu")
    here_heat = mrml_utils.array_from_volume_node(here.heatmapNode).copy()
    job = logic.startBackgroundClassification(node, device="cpu")
    assert job.command[1:3] == ["-m", "brainspineai"] and job.context["inputNodeID"] == node.GetID()
    assert job.wait(300)
    out = logic.finishBackgroundClassification(job)
    assert not job.workdir.exists()
    assert out.result["predicted"] == "pituitary" == here.result["predicted"]
    np.testing.assert_allclose(out.result["probabilities"], here.result["probabilities"], atol=1e-4)
    assert out.plotChartNode is None and same_geometry(out.heatmapNode, node)
    np.testing.assert_allclose(mrml_utils.array_from_volume_node(out.heatmapNode), here_heat, atol=1e-3)


def test_nodes_by_class_releases_the_collection(scene):
    """vtkMRMLScene.GetNodesByClass hands Python a collection with one reference too many;
    the module's helper releases it (as slicer.util.getNodesByClass does)."""
    raw = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    assert raw.GetReferenceCount() == 2  # the leak: nobody owns the second reference
    owned = mrml_utils._nodesByClassCollection(scene, "vtkMRMLSliceCompositeNode")
    assert owned.GetReferenceCount() == 1  # freed with the Python object
    nodes = mrml_utils.nodes_by_class(scene, "vtkMRMLSliceCompositeNode")
    assert len(nodes) == 2 and all(n.IsA("vtkMRMLSliceCompositeNode") for n in nodes)
    assert [n.GetID() for n in nodes] == [owned.GetItemAsObject(i).GetID() for i in range(2)]
    raw.UnRegister(None)


def test_sicf_models_get_no_heatmap_in_the_background(scene, tmp_path):
    """An SICF model has no Grad-CAM: the background command leaves out --heatmap (the CLI
    refuses it), whatever the caller asked."""
    import json

    folder = tmp_path / "fake-sicf"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({"id": "fake-sicf", "task": "sicf-2d", "class_names": ["a", "b"],
                                                   "architecture": "sicf", "input_size": [224, 224],
                                                   "sha256": "0" * 64, "weights": "model.skops"}))
    logic = ClassificationLogic(scene)
    assert logic._isSICF(str(folder)) and not logic._isSICF(None)
    assert not logic._isSICF("https://127.0.0.1:9/never-fetched")
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "slice")
    mrml_utils.update_volume_node_from_array(node, np.random.default_rng(0).random((1, 32, 32), dtype=np.float32))
    job = logic.startBackgroundClassification(node, modelRef=str(folder), device="cpu", computeHeatmap=True)
    try:
        assert "--heatmap" not in job.command and job.command[job.command.index("--model") + 1] == str(folder)
    finally:
        job.cancel()
    job = logic.startBackgroundClassification(node, device="cpu", computeHeatmap=True)
    try:
        assert "--heatmap" in job.command
    finally:
        job.cancel()


def test_sequence_warning_and_uncertain_flag_reach_the_result_table(scene):
    """A held-out TCGA-LGG T1 volume (the shipped classifier is validated on T1c and FLAIR only):
    the result carries the detected sequence, the warning and the uncertain flag, the table node
    their attributes, and the module's table the extra rows."""
    from BrainSpineAILib.classification_logic import resultTrustRows
    from conftest import DATA

    node = load(scene, need(DATA / "volumes" / "tcga-lgg-flair" / "TCGA_DU_5849" / "t1.nii.gz"), "t1")
    out = ClassificationLogic(scene).classify(node, device="cpu", computeHeatmap=False)
    r = out.result
    assert r["sequence"]["predicted"] == "t1" and "validated on T1c" in r["warnings"][0]
    assert out.tableNode.GetAttribute("BrainSpineAI.sequence") == "t1"
    assert out.tableNode.GetAttribute("BrainSpineAI.warnings") == r["warnings"][0]
    assert out.tableNode.GetAttribute("BrainSpineAI.uncertain") == ("true" if r["uncertain"] else "false")
    rows = dict(resultTrustRows(r))
    assert rows["Sequence"].startswith("T1 (") and rows["Uncertain"] == ("YES" if r["uncertain"] else "no")
    assert resultTrustRows({"classes": ["a"], "probabilities": [1.0]}) == []  # an older result: no extra rows
