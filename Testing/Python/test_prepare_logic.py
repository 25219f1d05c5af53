"""The Segment module's "Prepare" step (issue 17) against a real MRML scene (slicer-core): a
TCGA-LGG study with its skull goes through ``brainspineai preprocess`` in a background process
and comes back as hidden nodes on the reference grid; a failure leaves the scene unchanged."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
pytest.importorskip("deepbet", reason="brain extraction needs the deepbet package (a dependency)")

from conftest import DATA, ROOT, need, load_volume as load  # noqa: E402

if str(ROOT / "BrainSpineAISegment") not in sys.path:
    sys.path.insert(0, str(ROOT / "BrainSpineAISegment"))

from BrainSpineAILib import mrml_utils  # noqa: E402
from BrainSpineAISegmentLib.prepare_logic import PrepareLogic  # noqa: E402

CASE = DATA / "volumes" / "tcga-lgg-flair" / "TCGA_CS_4941"


def _count(scene, cls):
    return len(mrml_utils.nodes_by_class(scene, cls))


@pytest.mark.slow
def test_prepared_sequences_and_brain_mask_land_on_the_reference_grid():
    scene = slicer.vtkMRMLScene()
    flair = load(scene, need(CASE / "flair.nii.gz"), "flair")
    t1 = load(scene, CASE / "t1.nii.gz", "t1")
    job = PrepareLogic(scene).startPreparation({"flair": flair, "t1": t1}, device="cpu", brainMl=(100, 2500))
    assert _count(scene, "vtkMRMLLabelMapVolumeNode") == 0
    assert job.wait(timeout=900) and job.succeeded, job.errorText
    out = PrepareLogic(scene).finishPreparation(job)
    assert set(out.volumes) == {"flair", "t1"} and out.brainMask is not None
    assert out.result["brain_extraction"]["sequence"] == "t1" and out.result["registration"]["t1"]["applied"]
    ref_m = mrml_utils.ijk_to_ras_array(flair)
    for node in list(out.volumes.values()) + [out.brainMask]:
        assert np.allclose(mrml_utils.ijk_to_ras_array(node), ref_m) and node.GetAttribute("BrainSpineAI.Prepared") == "1"
    mask = mrml_utils.array_from_volume_node(out.brainMask) > 0
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(CASE / "mask.nii.gz"))) > 0
    assert (mask & truth).sum() / truth.sum() >= 0.99
    prepared = mrml_utils.array_from_volume_node(out.volumes["flair"])
    assert np.all(prepared[~mask] == 0) and np.array_equal(prepared[mask], mrml_utils.array_from_volume_node(flair)[mask])


def test_a_failed_preparation_leaves_the_scene_unchanged():
    scene = slicer.vtkMRMLScene()
    flair = load(scene, need(CASE / "flair.nii.gz"), "flair")
    t1 = load(scene, CASE / "t1.nii.gz", "t1")
    t1.SetOrigin([o + 500 for o in t1.GetOrigin()])
    before = scene.GetNumberOfNodes()
    job = PrepareLogic(scene).startPreparation({"flair": flair, "t1": t1}, device="cpu")
    assert job.wait(timeout=600) and not job.succeeded
    with pytest.raises(RuntimeError, match="do not overlap"):
        PrepareLogic(scene).finishPreparation(job)
    assert scene.GetNumberOfNodes() == before
    with pytest.raises(ValueError, match="reference sequence t2 has no volume"):
        PrepareLogic(scene).startPreparation({"flair": flair}, reference="t2")
