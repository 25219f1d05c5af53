"""Reading images: every supported format on real data, and a clear error for bad input."""
from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from brainspineai.errors import InputError
from brainspineai.io import is_slice, read_image, to_grayscale, write_image_atomic
from conftest import BRATS15, BRATS23, KAGGLE, need

CASE = BRATS15 / "brats_2013_pat0001_1"


def test_reads_jpeg_slice_as_float_grayscale():
    path = sorted(need(KAGGLE / "glioma").glob("*.jpg"))[0]
    img = read_image(path)
    assert img.GetDimension() == 2 and is_slice(img)
    assert img.GetPixelID() == sitk.sitkFloat32
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), raw.astype(np.float32))


def test_rgb_png_becomes_bt601_luma(tmp_path):
    path = sorted(need(KAGGLE / "meningioma").glob("*.jpg"))[0]
    gray = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.uint8)
    rgb = np.stack([gray, gray // 2, np.zeros_like(gray)], -1)
    png = tmp_path / "rgb.png"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(png))
    out = sitk.GetArrayFromImage(read_image(png))
    np.testing.assert_allclose(out, 0.299 * gray + 0.587 * (gray // 2), atol=1e-3)


def test_reads_nifti_volume_with_geometry():
    img = read_image(need(CASE / "T1c_subtrMeanDivStd.nii.gz"))
    assert img.GetSize() == (240, 240, 155) and not is_slice(img)
    assert img.GetSpacing() == pytest.approx((1.0, 1.0, 1.0))


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_nrrd_and_mha_round_trip(tmp_path, suffix):
    src = read_image(need(BRATS23 / "BraTS-GLI-00001-000-t1c.nii.gz"))
    out = tmp_path / f"copy{suffix}"
    write_image_atomic(src, out)
    back = read_image(out)
    assert back.GetSize() == src.GetSize() and back.GetOrigin() == pytest.approx(src.GetOrigin())
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(src))
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_reads_dicom_series_folder(tmp_path):
    vol = sitk.ReadImage(str(need(BRATS23 / "BraTS-GLI-00001-000-t1c.nii.gz")))
    vol = sitk.Cast(vol[60:180, 40:200, 70:76], sitk.sitkInt16)
    series_uid = "1.2.826.0.1.3680043.2.1125.1.42"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(vol.GetDepth()):
        sl = vol[:, :, k]
        for tag, value in [("0008|0060", "MR"), ("0020|000d", series_uid + ".0"), ("0020|000e", series_uid),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0013", str(k + 1)),
                           ("0020|0032", "\\".join(map(str, vol.TransformIndexToPhysicalPoint((0, 0, k))))),
                           ("0028|0030", "1\\1"), ("0018|0050", "1")]:
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(tmp_path / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    img = read_image(tmp_path)
    assert img.GetSize() == vol.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(vol).astype(np.float32))


def _write(tmp_path, arr, name="bad.nii.gz"):
    p = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(p))
    return p


@pytest.mark.parametrize("make, message", [
    (lambda t: t / "missing.nii.gz", "not found"),
    (lambda t: (t / "notes.txt").write_text("hello") and t / "notes.txt", "unsupported file type"),
    (lambda t: (t / "fake.nii.gz").write_bytes(b"not a nifti at all") and t / "fake.nii.gz", "not a readable image"),
    (lambda t: _write(t, np.zeros((8, 16, 16), np.float32)), "empty"),
    (lambda t: _write(t, np.where(np.arange(4096).reshape(16, 16, 16) == 7, np.nan, 1.0).astype(np.float32), "nan.nrrd"), "NaN"),
    (lambda t: t, "no DICOM series"),
])
def test_bad_inputs_raise_clear_errors(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        read_image(make(tmp_path))


def test_4d_input_is_rejected(tmp_path):
    img = sitk.JoinSeries([sitk.GetImageFromArray(np.random.rand(4, 8, 8).astype(np.float32))] * 3)
    p = tmp_path / "4d.nii.gz"
    sitk.WriteImage(img, str(p))
    with pytest.raises(InputError, match="4D"):
        read_image(p)


def test_two_component_image_is_rejected():
    img = sitk.GetImageFromArray(np.random.rand(8, 8, 2).astype(np.float32), isVector=True)
    with pytest.raises(InputError, match="2 components"):
        to_grayscale(img)


def test_header_checks_accept_every_real_volume_and_format(tmp_path):
    """The file checks must not refuse good data: real NIfTI (BraTS 2015 float, BraTS 2023
    int16), and the same volume as NRRD / MetaImage, raw and compressed."""
    from brainspineai.io import check_image_file

    for p in [CASE / "T1c_subtrMeanDivStd.nii.gz", CASE / "OTMultiClass.nii.gz", BRATS23 / "BraTS-GLI-00001-000-t2f.nii.gz"]:
        check_image_file(need(p))
    img = sitk.ReadImage(str(BRATS23 / "BraTS-GLI-00001-000-t1c.nii.gz"))[40:200, 40:200, 60:90]
    for name, compress in [("a.nrrd", False), ("b.nrrd", True), ("c.mha", False), ("d.mha", True), ("e.nii", False)]:
        sitk.WriteImage(img, str(tmp_path / name), compress)
        check_image_file(tmp_path / name)
        assert read_image(tmp_path / name).GetSize() == img.GetSize()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    from brainspineai.io import atomic_write_text

    img = sitk.GetImageFromArray(np.arange(32 * 32, dtype=np.float32).reshape(32, 32))
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        write_image_atomic(img, tmp_path / "b.nii.gz")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.nii.gz").stat().st_mode & 0o777 == mode


def test_output_paths_are_compared_as_files_not_strings(tmp_path):
    from brainspineai.outputs import check_outputs

    src = tmp_path / "in" / "a.nii.gz"
    src.parent.mkdir()
    src.write_bytes(b"x")
    (tmp_path / "link.nii.gz").symlink_to(src)
    os.link(src, tmp_path / "hard.nii.gz")
    for spelling in [src, tmp_path / "link.nii.gz", tmp_path / "hard.nii.gz", tmp_path / "in" / ".." / "in" / "a.nii.gz"]:
        with pytest.raises(InputError, match="refusing to overwrite an input"):
            check_outputs([("--out", spelling)], inputs=[src])
    with pytest.raises(InputError, match="the same file as --json"):
        check_outputs([("--json", tmp_path / "r.json"), ("--out", tmp_path / "x" / ".." / "r.json")])
    check_outputs([("--out", tmp_path / "new" / "deeper" / "s.nii.gz")], inputs=[src])  # fine: folders get created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.nii.gz", "in", "link.nii.gz"]  # nothing created
