"""Segmentation data on real BraTS cases: folder readers, label conventions, regions,
the dataset writer, and per-sequence preparation (no network)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from brainspineai.errors import InputError
from brainspineai.segmentation.data import (add_case, brats2015_to_2020, discover_cases, label_to_regions, read_labelmap,
                                  regions_to_labelmap)
from brainspineai.segmentation.prepare import prepare, restore
from conftest import BRATS15, BRATS23, need


@pytest.fixture(scope="module")
def case1():
    return discover_cases(need(BRATS15))[0]


def _small(img, size=48):
    """A real 48^3 block around the tumour of pat0001 (keeps writes fast)."""
    return sitk.RegionOfInterest(img, [size] * 3, [80, 110, 60])


def test_brats2015_folder_is_read_with_its_label_convention():
    cases = discover_cases(need(BRATS15))
    assert [c.case_id for c in cases] == [f"brats_2013_pat000{i}_1" for i in range(1, 7)]
    for c in cases:
        assert sorted(c.images) == ["flair", "t1ce"]
        assert c.label.name == "OTMultiClass.nii.gz" and c.convention == "brats2015"


def test_brats2023_case_folder_maps_the_four_sequence_names():
    (case,) = discover_cases(need(BRATS23))
    assert case.images["flair"].name.endswith("-t2f.nii.gz")
    assert case.images["t1"].name.endswith("-t1n.nii.gz")
    assert case.images["t1ce"].name.endswith("-t1c.nii.gz")
    assert case.images["t2"].name.endswith("-t2w.nii.gz")
    assert case.label is None


def test_brats2015_labels_become_brats2020_labels_and_regions(case1):
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(case1.label))).astype(int)
    counts = {v: int((raw == v).sum()) for v in range(5)}
    assert all(counts[v] > 0 for v in range(5))  # the case has every 2015 label, 3 included
    lab = sitk.GetArrayFromImage(read_labelmap(case1))
    assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 1, 2, 4}
    assert (lab == 1).sum() == counts[1] + counts[3]
    assert (lab == 2).sum() == counts[2] and (lab == 4).sum() == counts[4]
    reg = label_to_regions(lab)
    assert reg.shape == lab.shape + (3,)
    wt, tc, et = (int(reg[..., i].sum()) for i in range(3))
    assert wt == counts[1] + counts[2] + counts[3] + counts[4]
    assert tc == counts[1] + counts[3] + counts[4]
    assert et == counts[4]
    assert wt > tc > et > 1000  # a glioma with oedema around a core and an enhancing part
    np.testing.assert_array_equal(regions_to_labelmap(reg), lab)
    np.testing.assert_array_equal(regions_to_labelmap(label_to_regions(lab, axis=0), axis=0), lab)


def test_out_of_convention_label_values_are_refused():
    with pytest.raises(InputError, match=r"outside the BraTS 2015 labels"):
        brats2015_to_2020(np.array([0, 1, 7]))


def test_add_case_writes_brats2020_names_and_dataset_json(tmp_path, case1):
    flair = _small(sitk.ReadImage(str(case1.images["flair"])))
    t1ce = _small(sitk.ReadImage(str(case1.images["t1ce"])))
    lab = _small(read_labelmap(case1))
    folder = add_case(tmp_path, "case-a", {"flair": flair, "t1ce": t1ce}, lab)
    assert sorted(p.name for p in folder.iterdir()) == ["case-a_flair.nii.gz", "case-a_seg.nii.gz", "case-a_t1ce.nii.gz"]
    doc = json.loads((tmp_path / "dataset.json").read_text())
    assert doc["sequences"] == ["t1ce", "flair"]
    assert doc["training"][0]["image"]["flair"] == "case-a/case-a_flair.nii.gz"
    (back,) = discover_cases(tmp_path)
    assert back.case_id == "case-a" and sorted(back.images) == ["flair", "t1ce"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_labelmap(back)), sitk.GetArrayFromImage(lab))
    with pytest.raises(InputError, match="already exists"):
        add_case(tmp_path, "case-a", {"flair": flair}, lab)
    add_case(tmp_path, "case-a", {"flair": flair}, lab, overwrite=True)
    (back,) = discover_cases(tmp_path)
    assert sorted(back.images) == ["flair"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    moved = sitk.Image(flair)
    moved.SetOrigin((5.0, 0.0, 0.0))
    with pytest.raises(InputError, match="flair geometry"):
        add_case(tmp_path, "case-b", {"flair": moved}, lab)
    bad = sitk.Image(lab)
    bad[0, 0, 0] = 3
    with pytest.raises(InputError, match="outside the BraTS labels"):
        add_case(tmp_path, "case-c", {"flair": flair}, bad)
    assert not (tmp_path / "case-b").exists() and not (tmp_path / "case-c").exists()


def test_prepare_normalises_crops_and_restores_onto_the_reference_grid(case1):
    flair = sitk.ReadImage(str(case1.images["flair"]))
    t1ce = sitk.ReadImage(str(case1.images["t1ce"]))
    # T1ce on another grid (2 mm, shifted): it must be resampled onto FLAIR's grid
    t1ce_2mm = sitk.Resample(t1ce, [120, 120, 78], sitk.Transform(), sitk.sitkLinear, t1ce.GetOrigin(), (2.0, 2.0, 2.0),
                             t1ce.GetDirection(), float(sitk.GetArrayViewFromImage(t1ce)[0, 0, 0]))
    lab = read_labelmap(case1)
    prep = prepare({"flair": flair, "t1ce": t1ce_2mm, "t2": None}, ["flair", "t1ce"], 4.0, label=lab)
    assert prep.image.dtype == np.float32 and prep.image.shape[0] == 2
    box = prep.crop
    assert all(b - a < s for (a, b), s in zip(box, (155, 240, 240)))  # cropped to the brain
    expect = tuple(round((b - a) / 4.0) for a, b in box)
    assert prep.image.shape[1:] == expect and prep.label.shape == expect
    for ch in prep.image:
        inside = ch[np.abs(ch) > 0]
        assert abs(inside.mean()) < 0.15 and 0.8 < inside.std() < 1.2
    assert set(np.unique(prep.label)) <= {0, 1, 2, 4} and (prep.label == 4).any()
    # perfect regions at the model spacing come back as nearly the expert labelmap on the 1 mm grid
    regions = label_to_regions(prep.label, axis=0).astype(np.float32)
    out = restore(regions, prep)
    assert out.GetSize() == flair.GetSize() and out.GetSpacing() == flair.GetSpacing()
    assert out.GetOrigin() == flair.GetOrigin() and out.GetDirection() == flair.GetDirection()
    assert out.GetPixelID() == sitk.sitkUInt8
    a, b = sitk.GetArrayFromImage(out) > 0, sitk.GetArrayFromImage(lab) > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.85  # WT Dice after a 4 mm round trip


def test_prepare_refuses_missing_sequences_and_nan(case1):
    flair = sitk.ReadImage(str(case1.images["flair"]))
    with pytest.raises(InputError, match=r"^missing sequence t1ce \(the model needs flair, t1ce\)$"):
        prepare({"flair": flair}, ["flair", "t1ce"], 4.0)
    arr = sitk.GetArrayFromImage(flair)
    arr[70, 120, 120] = np.nan
    nan = sitk.GetImageFromArray(arr)
    nan.CopyInformation(flair)
    with pytest.raises(InputError, match=r"flair: volume contains 1 NaN"):
        prepare({"flair": nan, "t1ce": flair}, ["flair", "t1ce"], 4.0)


def test_post_processing_keeps_the_main_tumour_components():
    from brainspineai.segmentation.prepare import keep_main_components

    reg = np.zeros((3, 30, 30, 30), bool)
    reg[0, 2:12, 2:12, 2:12] = True      # main tumour, 1000 voxels
    reg[0, 20:26, 20:26, 20:26] = True   # second focus, 216 voxels (>= 20%): kept
    reg[0, 28, 28, 28] = True            # speck: removed
    reg[1, 4:8, 4:8, 4:8] = True
    reg[1, 0, 29, 0] = True              # TC outside WT: removed
    reg[2, 28, 28, 28] = True            # ET only in the speck: removed
    out = keep_main_components(reg)
    assert out[0].sum() == 1000 + 216 and not out[0, 28, 28, 28]
    assert out[1].sum() == 64 and not out[2].any()
    assert not keep_main_components(np.zeros((3, 4, 4, 4), bool)).any()
