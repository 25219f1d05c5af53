"""The ``brainspineai`` command on real data, and every bad input it must refuse cleanly."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from brainspineai.catalogue import DEFAULT_MODEL_ID, ZOO_DIR
from conftest import BRATS23, KAGGLE, KAGGLE_MODEL_ID, need, run_cli

T1C = BRATS23 / "BraTS-GLI-00001-000-t1c.nii.gz"


def test_classify_slice_writes_json_and_png_overlay(tmp_path, validation_images):
    image = validation_images["meningioma"][0]
    r = run_cli("classify", image, "--device", "cpu", "--json", tmp_path / "r.json", "--heatmap", tmp_path / "h.png")
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert set(doc) >= {"model", "classes", "probabilities", "predicted"} and "slices" not in doc
    assert doc["model"] == DEFAULT_MODEL_ID
    assert abs(sum(doc["probabilities"]) - 1) < 1e-5
    assert doc["predicted"] == "meningioma"
    assert "predicted: meningioma" in r.stdout
    png = sitk.ReadImage(str(tmp_path / "h.png"))
    assert png.GetSize() == sitk.ReadImage(str(image)).GetSize() and png.GetNumberOfComponentsPerPixel() == 3


@pytest.mark.slow
def test_classify_volume_writes_slices_and_heatmap_with_input_geometry(tmp_path):
    # one heatmap scale: the geometry does not depend on it, and the default three-scale heatmap of a
    # whole volume runs in test_slicer_logic.py::test_brats_volume_in_a_background_process
    r = run_cli("classify", need(T1C), "--device", "cpu", "--json", tmp_path / "r.json", "--heatmap", tmp_path / "h.nii.gz",
                "--heatmap-size", "128")
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["heatmap_method"]["input_sizes"] == [128] and doc["heatmap_method"]["slice_sigma"] == 2.5
    assert "smoothed across slices, sigma 2.5 slices" in r.stdout
    assert len(doc["slices"]) > 50 and all(abs(sum(s["probabilities"]) - 1) < 1e-5 for s in doc["slices"])
    assert abs(sum(doc["probabilities"]) - 1) < 1e-5
    assert doc["predicted"] == "glioma"  # BraTS 2023 adult glioma, T1c
    heat, src = sitk.ReadImage(str(tmp_path / "h.nii.gz")), sitk.ReadImage(str(T1C))
    assert heat.GetSize() == src.GetSize()
    assert heat.GetSpacing() == pytest.approx(src.GetSpacing())
    assert heat.GetOrigin() == pytest.approx(src.GetOrigin())
    assert heat.GetDirection() == pytest.approx(src.GetDirection())
    h = sitk.GetArrayFromImage(heat)
    assert 0 <= h.min() and h.max() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_evaluate_on_the_held_out_split_reaches_95_percent(tmp_path):
    split = ZOO_DIR / KAGGLE_MODEL_ID / "split.json"  # the kaggle4 ResNet's own held-out images
    r = run_cli("evaluate", need(KAGGLE), "--model", KAGGLE_MODEL_ID, "--device", "cpu", "--split", split,
                "--json", tmp_path / "e.json",
                "--confusion-png", tmp_path / "cm.png")
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc["n"] == len(json.loads(split.read_text())["validation"])
    assert doc["accuracy"] >= 0.95
    assert np.trace(np.array(doc["confusion_matrix"])) == round(doc["accuracy"] * doc["n"])
    assert (tmp_path / "cm.png").stat().st_size > 1000


def _write(path, arr, vector=False):
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=vector), str(path))
    return path


def _bad_inputs(tmp):
    cases = {
        "missing": (tmp / "nope.nii.gz", [], "input not found"),
        "not-an-image": ((tmp / "report.txt"), [], "unsupported file type"),
        "garbage-nifti": ((tmp / "garbage.nii.gz"), [], "not a readable image"),
        "empty": (_write(tmp / "empty.nrrd", np.zeros((5, 20, 20), np.float32)), [], "empty"),
        "4d": (tmp / "4d.nii.gz", [], "4D"),
        "nan": (_write(tmp / "nan.nrrd", np.where(np.eye(20)[None].repeat(3, 0) > 0, np.nan, 1.0).astype(np.float32)), [], "NaN"),
        "unknown-model": (None, ["--model", "no-such-model"], "unknown model 'no-such-model'"),
        "checksum": (None, ["--model", tmp / "corrupt"], "checksum mismatch"),
        "volume-heatmap-png": (T1C, [], "heatmap"),
    }
    (tmp / "report.txt").write_text("not an image")
    (tmp / "garbage.nii.gz").write_bytes(b"\x1f\x8b garbage")
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(np.random.rand(4, 8, 8).astype(np.float32))] * 2),
                    str(tmp / "4d.nii.gz"))
    shutil.copytree(ZOO_DIR / DEFAULT_MODEL_ID, tmp / "corrupt")
    w = tmp / "corrupt" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-4] + b"\0\0\0\0")
    return cases


@pytest.mark.parametrize("case", ["missing", "not-an-image", "garbage-nifti", "empty", "4d", "nan",
                                  "unknown-model", "checksum", "volume-heatmap-png"])
def test_bad_input_exits_nonzero_with_one_clear_line_and_no_output(tmp_path, case):
    inputs = tmp_path / "in"
    inputs.mkdir()
    path, extra, message = _bad_inputs(inputs)[case]
    if path is None:
        path = sorted(need(KAGGLE / "glioma").glob("*.jpg"))[0]
    out = tmp_path / "out"
    heat = out / ("h.png" if case == "volume-heatmap-png" else "h.nii.gz")
    r = run_cli("classify", path, "--device", "cpu", *extra, "--json", out / "r.json", "--heatmap", heat)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("brainspineai: error:"), r.stderr
    assert message in lines[0]
    assert not out.exists() or not any(out.iterdir())
