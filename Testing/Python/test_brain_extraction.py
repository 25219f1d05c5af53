"""Brain extraction of the preprocessing stage (issue 17; deepbet, weights from the installed
wheel): on a TCGA-LGG study with its skull, the expert FLAIR abnormality stays inside the mask
and the skull is left out; on an already-stripped BraTS case the brain stays almost whole and
``auto`` changes nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import BRATS15, DATA, need, run_cli

TCGA = DATA / "volumes" / "tcga-lgg-flair"
TCGA_CASE = "TCGA_CS_4941"  # t1, t1ce, flair and a manual FLAIR abnormality mask

pytest.importorskip("deepbet", reason="brain extraction needs the deepbet package (a dependency)")


def _down(img, mm=2.0):
    """``img`` on a ``mm`` isotropic grid covering the same box (linear)."""
    size = [int(round(n * s / mm)) for n, s in zip(img.GetSize(), img.GetSpacing())]
    bg = float(sitk.GetArrayViewFromImage(img)[0, 0, 0])
    return sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), [mm] * 3, img.GetDirection(),
                         bg, sitk.sitkFloat32)


@pytest.fixture(scope="module")
def brats():
    case = need(BRATS15) / "brats_2013_pat0001_1"
    fl = _down(sitk.ReadImage(str(case / "Flair_subtrMeanDivStd.nii.gz")))
    t1c = _down(sitk.ReadImage(str(case / "T1c_subtrMeanDivStd.nii.gz")))
    brain = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(case / "brainmask.nii.gz")), fl, sitk.Transform(),
                                                 sitk.sitkNearestNeighbor, 0)) > 0
    return fl, t1c, brain


@pytest.mark.slow
def test_auto_leaves_an_aligned_stripped_case_untouched(brats):
    from brainspineai.preprocessing.pipeline import preprocess

    fl, t1c, brain = brats
    p = preprocess({"flair": fl, "t1ce": t1c}, "flair", mode="auto")
    rep = p.report
    assert rep["registration"]["t1ce"]["applied"] is False and rep["registration"]["t1ce"]["motion_mm"] < 1.0
    be = rep["brain_extraction"]
    assert be["sequence"] == "t1ce" and be["applied"] is False and "already skull-stripped" in be["reason"]
    mask = sitk.GetArrayFromImage(p.mask) > 0
    kept = (mask & brain).sum() / brain.sum()
    assert kept > 0.97, kept  # the already-stripped brain stays almost whole
    assert abs(be["volume_ml"] - brain.sum() * 8 / 1000) < 0.1 * brain.sum() * 8 / 1000
    for s, img in (("flair", fl), ("t1ce", t1c)):
        assert np.array_equal(sitk.GetArrayFromImage(p.images[s]), sitk.GetArrayFromImage(img))


@pytest.mark.slow
def test_preprocess_cli_on_a_tcga_study_keeps_the_abnormality_and_leaves_the_skull_out(tmp_path):
    d = need(TCGA) / TCGA_CASE
    out = tmp_path / "prep"
    r = run_cli("preprocess", "--flair", d / "flair.nii.gz", "--t1", d / "t1.nii.gz", "--out-dir", out,
                "--device", "cpu", "--brain-ml", "100", "2500")  # the TCGA spacing is a placeholder
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "preprocessing.json").read_text())
    assert doc["reference"] == "flair" and doc["brain_extraction"]["sequence"] == "t1"
    assert doc["registration"]["t1"]["applied"] and doc["brain_extraction"]["model"].startswith("deepbet ")
    ref = sitk.ReadImage(str(d / "flair.nii.gz"))
    mask_img = sitk.ReadImage(str(out / "brain_mask.nii.gz"))
    assert mask_img.GetSize() == ref.GetSize() and mask_img.GetOrigin() == ref.GetOrigin()
    assert mask_img.GetSpacing() == ref.GetSpacing() and mask_img.GetDirection() == ref.GetDirection()
    mask = sitk.GetArrayFromImage(mask_img) > 0
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "mask.nii.gz"))) > 0
    assert (mask & truth).sum() / truth.sum() >= 0.99
    head, rim = _head_and_rim(sitk.ReadImage(str(d / "t1.nii.gz")))
    assert mask.sum() < 0.7 * head.sum()  # the skull and scalp are left out
    assert (mask & rim).sum() / rim.sum() < 0.05  # nothing of the outer rim of the head
    flair = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "flair.nii.gz")))
    assert np.all(flair[~mask] == 0) and flair[mask].max() > 0


def _head_and_rim(img):
    """The head as the T1 shows it (skull and scalp included): Otsu foreground, closed and
    filled slice by slice; its rim: the outer 3 voxels in-plane."""
    from scipy import ndimage

    fg = sitk.GetArrayFromImage(sitk.OtsuThreshold(img, 0, 1)).astype(bool)
    head = np.stack([ndimage.binary_fill_holes(ndimage.binary_closing(s, iterations=2)) for s in fg])
    return head, head & ~np.stack([ndimage.binary_erosion(s, iterations=3) for s in head])
