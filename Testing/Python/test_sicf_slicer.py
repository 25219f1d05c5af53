"""SICF display in a real MRML scene (slicer-core): the ROI and SIFT keypoints of the real
cervical spine T2 volume (stored PSR, so index order differs from RAS) as markups nodes."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from BrainSpineAILib import mrml_utils, sicf_logic  # noqa: E402
from conftest import SPINE, need, load_volume as load  # noqa: E402


def sicf_result_for(node, k):
    """The 'sicf' part of a result for LPS axial slice k, from the library's own functions."""
    from brainspineai.classification.preprocess import to_lps_axial
    from brainspineai.sicf.features import equalised_roi, roi_box, sift_features

    arr = sitk.GetArrayFromImage(to_lps_axial(mrml_utils.sitk_image_from_volume_node(node))).astype(np.float32)[k]
    box = roi_box(arr, "quadrant")
    pts, _ = sift_features(equalised_roi(arr, box, 224))
    r0, c0, r1, c1 = box
    kp = np.stack([r0 + pts[:, 1] * (r1 - r0) / 224, c0 + pts[:, 0] * (c1 - c0) / 224], 1)
    return {"roi_box": list(box), "keypoints": kp.tolist(), "slice_index": k, "n_features_kept": 123}


def test_roi_and_keypoints_in_ras():
    scene = slicer.vtkMRMLScene()
    node = load(scene, need(SPINE) / "t2" / "t2.nii.gz", "t2")
    seg = load(scene, SPINE / "t2" / "t2_seg-manual.nii.gz", "cord", labelmap=True)
    k = 30
    sicf = sicf_result_for(node, k)
    roi, pts = sicf_logic.showSICFResult(scene, node, sicf)
    # the ROI's corners are the pixel box mapped through the node's own IJK-to-RAS matrix
    to_lps = mrml_utils.sitk_image_from_volume_node(node)
    from brainspineai.classification.preprocess import to_lps_axial
    lps_img = to_lps_axial(to_lps)
    m = mrml_utils.ijk_to_ras_array(node)
    r0, c0, r1, c1 = sicf["roi_box"]
    corners = []
    for r, c in [(r0 - .5, c0 - .5), (r0 - .5, c1 - .5), (r1 - .5, c0 - .5), (r1 - .5, c1 - .5)]:
        phys = lps_img.TransformContinuousIndexToPhysicalPoint((c, r, float(k)))
        ijk = to_lps.TransformPhysicalPointToContinuousIndex(phys)  # the node's IJK
        corners.append((m @ np.r_[ijk, 1.0])[:3])
    corners = np.array(corners)
    np.testing.assert_allclose(sicf_logic.boxCornersRAS(node, sicf["roi_box"], k), corners, atol=1e-6)
    center = np.zeros(3)
    roi.GetCenter(center)
    size = np.array(roi.GetSize())
    np.testing.assert_allclose(center, (corners.min(0) + corners.max(0)) / 2, atol=1e-6)
    lo, hi = corners.min(0), corners.max(0)
    assert np.count_nonzero(hi - lo > 1e-6) == 2  # an in-plane box of an axial slice
    np.testing.assert_allclose(np.maximum(hi - lo, 1.0), size, atol=1e-6)
    # the cord of that axial slice lies inside the ROI node (in RAS)
    cord = mrml_utils.array_from_volume_node(seg) > 0  # (K, J, I) of the node
    kk, jj, ii = np.nonzero(cord)
    ras = (m @ np.c_[ii, jj, kk, np.ones(len(ii))].T).T[:, :3]
    on_slice = np.abs(ras[:, 2] - center[2]) < 0.5
    assert on_slice.sum() > 30
    inside = np.all((ras[on_slice] >= center - size / 2 - 1e-6) & (ras[on_slice] <= center + size / 2 + 1e-6), axis=1)
    assert inside.mean() >= 0.9
    # keypoints: one control point each, on the slice plane, inside the ROI
    assert pts.GetNumberOfControlPoints() == len(sicf["keypoints"]) > 0
    p = np.zeros(3)
    for n in range(pts.GetNumberOfControlPoints()):
        pts.GetNthControlPointPosition(n, p)
        assert abs(p[2] - center[2]) < 1e-6 and np.all(p >= lo - 1e-6) and np.all(p <= hi + 1e-6)
    assert roi.GetAttribute("BrainSpineAI.nFeaturesKept") == "123"
    # a second result reuses the nodes
    roi2, pts2 = sicf_logic.showSICFResult(scene, node, sicf_result_for(node, 10))
    assert roi2 is roi and pts2 is pts and scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode") == 1


@pytest.mark.slow
def test_logic_classifies_with_an_sicf_model(tmp_path, monkeypatch):
    import warnings

    from BrainSpineAILib.classification_logic import ClassificationLogic
    from brainspineai.sicf.pipeline import SICFConfig, train_sicf
    from conftest import FIGSHARE

    cfg = SICFConfig(roi="quadrant", image_size=64, n_words=16, population=5, iterations=1, limit_per_class=6,
                     val_fraction=0.34, n_bootstrap=0, cv_folds=2, cache_dir=str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = train_sicf(need(FIGSHARE), tmp_path / "models" / "tiny-sicf-slicer", cfg)
    monkeypatch.setenv("BRAINSPINEAI_MODEL_PATH", str(tmp_path / "models"))
    scene = slicer.vtkMRMLScene()
    node = load(scene, need(SPINE) / "t2" / "t2.nii.gz", "t2")
    logic = ClassificationLogic(scene)
    assert "tiny-sicf-slicer" in [c["id"] for c in logic.availableModels()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = logic.classify(node, modelRef="tiny-sicf-slicer", device="cpu", computeHeatmap=True)
    res = out.result
    assert out.heatmapNode is None and sum(res["probabilities"]) == pytest.approx(1.0)
    assert res["sicf"]["roi_mode"] == "quadrant" and res["sicf"]["slice_index"] is not None
    assert res["sicf"]["n_features_kept"] == int(np.load(folder / "feature_mask.npy").sum())
    roi, pts = sicf_logic.showSICFResult(scene, node, res["sicf"])
    assert pts.GetNumberOfControlPoints() == len(res["sicf"]["keypoints"])
    # the background path (the CLI in a separate process, as Slicer runs volumes) gives the same answer
    job = logic.startBackgroundClassification(node, modelRef=str(folder), device="cpu", computeHeatmap=False)
    assert job.wait(600)
    bg = logic.finishBackgroundClassification(job).result
    assert bg["sicf"]["roi_box"] == res["sicf"]["roi_box"] and bg["sicf"]["slice_index"] == res["sicf"]["slice_index"]
    np.testing.assert_allclose(bg["probabilities"], res["probabilities"], atol=1e-9)
    assert len(bg["slices"]) == len(res["slices"])
