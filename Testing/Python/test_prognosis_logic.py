"""The Segment module's "Prognosis" step (issue 18) against a real MRML scene (slicer-core): a
TCGA-LGG patient's FLAIR, T1, T1c and tumour mask go through ``brainspineai prognosis`` in a
background process and come back as a table and a survival plot; the answer is the library's
own for the same patient, from a labelmap or from a segmentation; bad input is refused before
anything runs, and a failed run leaves the scene unchanged."""
from __future__ import annotations

import sys

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from conftest import DATA, ROOT, need, load_volume as load  # noqa: E402

if str(ROOT / "BrainSpineAISegment") not in sys.path:
    sys.path.insert(0, str(ROOT / "BrainSpineAISegment"))

from BrainSpineAILib import mrml_utils  # noqa: E402
from BrainSpineAISegmentLib.prognosis_logic import PrognosisLogic, survivalAt  # noqa: E402

CASE = DATA / "volumes" / "tcga-lgg-flair" / "TCGA_CS_4941"  # 67 years at diagnosis
AGE = 67


@pytest.fixture(scope="module")
def expected():
    """The library's prediction for the same patient folder."""
    from brainspineai.catalogue import load_model

    return load_model("tcga-lgg-prognosis", "cpu", task="prognosis").predict(need(CASE), AGE)


def _patient(scene):
    volumes = {s: load(scene, need(CASE / f"{s}.nii.gz"), s) for s in ("flair", "t1", "t1ce")}
    return volumes, load(scene, CASE / "mask.nii.gz", "mask", labelmap=True)


def _run(scene, volumes, mask):
    logic = PrognosisLogic(scene)
    before = scene.GetNumberOfNodes()
    job = logic.startPrognosis(volumes, mask, AGE)
    assert scene.GetNumberOfNodes() == before, "nothing enters the scene before the process has succeeded"
    assert job.wait(timeout=600) and job.succeeded, job.errorText
    out = logic.finishPrognosis(job)
    assert not job.workdir.exists()
    return out


def test_prognosis_from_a_labelmap_matches_the_library(expected):
    scene = slicer.vtkMRMLScene()
    volumes, mask = _patient(scene)
    out = _run(scene, volumes, mask)
    r = out.result
    assert r["risk"] == pytest.approx(expected["risk"], abs=1e-9) and r["risk_group"] == expected["risk_group"]
    assert r["grade"] == expected["grade"] and r["modality_weights"] == expected["modality_weights"]
    table = out.tableNode.GetTable()
    rows = {table.GetValue(i, 0).ToString(): table.GetValue(i, 1).ToString() for i in range(table.GetNumberOfRows())}
    assert rows["risk group"] == expected["risk_group"] and rows["age (years)"] == "67"
    assert rows["survival at 2 years"] == f"{survivalAt(expected, 730):.2f}"
    assert float(rows["grade III probability"]) == pytest.approx(expected["grade"]["probabilities"]["III"], abs=0.005)
    series = scene.GetNodeByID(out.plotChartNode.GetNthPlotSeriesNodeID(0))
    curve = series.GetTableNode().GetTable()
    assert curve.GetNumberOfRows() == len(expected["survival"]["days"])
    probs = [curve.GetValue(i, 1).ToDouble() for i in range(curve.GetNumberOfRows())]
    assert probs[0] == pytest.approx(1.0, abs=1e-6) and all(a >= b for a, b in zip(probs, probs[1:]))  # a survival curve
    counts = {c: len(mrml_utils.nodes_by_class(scene, c)) for c in ("vtkMRMLPlotChartNode", "vtkMRMLTableNode")}
    again = _run(scene, volumes, mask)  # a rerun updates the same table and chart
    assert again.plotChartNode is out.plotChartNode and again.tableNode is out.tableNode
    assert {c: len(mrml_utils.nodes_by_class(scene, c)) for c in counts} == counts == {
        "vtkMRMLPlotChartNode": 1, "vtkMRMLTableNode": 2}


def test_prognosis_from_a_segmentation_uses_its_whole_tumour(expected):
    """A BrainSpineAI segmentation (WT / TC / ET) gives the whole tumour; any other segmentation
    the union of its segments: both the same answer as the labelmap it was made from."""
    from BrainSpineAISegmentLib.segment_logic import SegmentationLogic, labelmap_from_regions

    scene = slicer.vtkMRMLScene()
    volumes, mask = _patient(scene)
    wt = mrml_utils.array_from_volume_node(mask) > 0
    logic = SegmentationLogic(scene)
    ours = logic.segmentationNodeFromLabelmap(labelmap_from_regions(wt, np.zeros_like(wt), np.zeros_like(wt)),
                                              volumes["flair"], "tumour")
    plain = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "expert")
    plain.SetReferenceImageGeometryParameterFromVolumeNode(volumes["flair"])
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(mask, plain)
    for node in (ours, plain):
        assert np.array_equal(PrognosisLogic(scene).maskArray(node, volumes["flair"]) > 0, wt)
    assert _run(scene, volumes, ours).result["risk"] == pytest.approx(expected["risk"], abs=1e-9)


def test_bad_input_is_refused_and_a_failed_run_leaves_the_scene_unchanged():
    scene = slicer.vtkMRMLScene()
    volumes, mask = _patient(scene)
    logic = PrognosisLogic(scene)
    with pytest.raises(ValueError, match="tumour mask"):
        logic.startPrognosis(volumes, None, AGE)
    with pytest.raises(ValueError, match="age"):
        logic.startPrognosis(volumes, mask, None)
    with pytest.raises(ValueError, match="age"):
        logic.startPrognosis(volumes, mask, 300)
    with pytest.raises(ValueError, match="FLAIR"):
        logic.startPrognosis({"t1": volumes["t1"]}, mask, AGE)
    empty = load(scene, CASE / "mask.nii.gz", "empty", labelmap=True)
    mrml_utils.update_volume_node_from_array(empty, np.zeros_like(mrml_utils.array_from_volume_node(mask)),
                                             reference=mask)
    with pytest.raises(ValueError, match="empty"):
        logic.startPrognosis(volumes, empty, AGE)
    before = scene.GetNumberOfNodes()
    job = logic.startPrognosis(volumes, mask, AGE, modelRef="no-such-prognosis-model")
    assert job.wait(timeout=300) and not job.succeeded
    with pytest.raises(RuntimeError, match="no-such-prognosis-model"):
        logic.finishPrognosis(job)
    assert scene.GetNumberOfNodes() == before and not job.workdir.exists()
