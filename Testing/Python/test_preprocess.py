"""Slice preparation on real MRI: background detection, orientation, pad / restore."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from brainspineai.classification.preprocess import normalize_slice, prepare_slices, restore_map, to_lps_axial
from conftest import BRATS15, KAGGLE, SPINE, need

CASE = BRATS15 / "brats_2013_pat0002_1"


def test_zscored_brats_background_is_found_from_the_border():
    """BraTS 2015 volumes are z-scored inside the brain (background 0, brain around 0): the
    foreground found from the border must match the expert brain mask."""
    t1c = sitk.GetArrayFromImage(sitk.ReadImage(str(need(CASE / "T1c_subtrMeanDivStd.nii.gz"))))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(CASE / "brainmask.nii.gz"))) > 0
    k = 80
    norm, fg = normalize_slice(t1c[k])
    inter, union = np.sum(fg & mask[k]), np.sum(fg | mask[k])
    assert inter / union > 0.95
    assert norm.min() == 0.0 and norm.max() == 1.0
    assert np.all(norm[~mask[k]] == 0.0)
    assert np.median(norm[mask[k]]) > 0.2  # brain is not squashed to black


def test_jpeg_slice_uses_its_full_range():
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(sorted(need(KAGGLE / "notumor").glob("*.jpg"))[0])))
    norm, _ = normalize_slice(arr)
    assert norm.dtype == np.float32 and norm.min() == 0.0 and norm.max() == 1.0


def test_reorientation_to_lps_puts_anterior_at_the_top():
    """After to_lps_axial, array rows run anterior -> posterior whatever the file's orientation."""
    img = sitk.ReadImage(str(need(SPINE / "t2" / "t2.nii.gz")))
    out = to_lps_axial(img)
    np.testing.assert_allclose(np.array(out.GetDirection()).reshape(3, 3), np.eye(3), atol=1e-6)
    # the same physical point holds the same value before and after
    idx = [s // 3 for s in img.GetSize()]
    p = img.TransformIndexToPhysicalPoint(idx)
    assert out[out.TransformPhysicalPointToIndex(p)] == img[idx]


def test_prepare_then_restore_keeps_geometry_for_non_square_slices():
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(need(CASE / "Flair_subtrMeanDivStd.nii.gz"))))[70, 20:220, :]
    batch, geoms, frac = prepare_slices([arr], 128)
    assert batch.shape == (1, 1, 128, 128) and 0.05 < frac[0] < 1
    back = restore_map(batch[0, 0].numpy(), geoms[0])
    assert back.shape == arr.shape
    norm, _ = normalize_slice(arr)
    assert np.corrcoef(back.ravel(), norm.ravel())[0, 1] > 0.9


def test_not_a_slice_raises():
    with pytest.raises(ValueError):
        normalize_slice(np.zeros((2, 3, 4)))


def test_volume_crop_box_holds_the_whole_brain_and_fills_the_frame():
    """A volume's slices share one crop box: it must contain every voxel of the expert brain
    mask, and the brain must fill most of the frame (as the head does in 2D training slices)."""
    t1c = sitk.GetArrayFromImage(sitk.ReadImage(str(need(CASE / "T1c_subtrMeanDivStd.nii.gz"))))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(CASE / "brainmask.nii.gz"))) > 0
    batch, geoms, frac = prepare_slices(list(t1c), 128, crop="union")
    boxes = {g.box for g in geoms}
    assert len(boxes) == 1
    r0, r1, c0, c1 = boxes.pop()
    rows, cols = np.flatnonzero(mask.any((0, 2))), np.flatnonzero(mask.any((0, 1)))
    assert r0 <= rows[0] and rows[-1] < r1 and c0 <= cols[0] and cols[-1] < c1
    k = int(np.argmax(mask.sum((1, 2))))
    assert np.mean(batch[k, 0].numpy() > 0.05) > 0.45  # brain covers about half the frame or more
    back = restore_map(batch[k, 0].numpy(), geoms[k])
    assert back.shape == t1c[k].shape and np.mean(back[~mask[k]] > 0.2) < 0.01  # only edge blur outside
