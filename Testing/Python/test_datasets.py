"""Dataset summaries (``brainspineai dataset-summary``) on real slices and real BraTS cases,
with real defects made from them: a truncated JPEG, an empty class folder, a sequence whose
geometry differs from its labelmap, an empty labelmap; and the short one-cycle schedule."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import BRATS15, KAGGLE, need, run_cli


@pytest.fixture
def slice_folder(tmp_path):
    """glioma / pituitary, 6 real slices each, one glioma JPEG cut to its first 3000 bytes,
    and an empty 'meningioma' class folder."""
    root = tmp_path / "slices"
    for c in ("glioma", "pituitary"):
        (root / c).mkdir(parents=True)
        for f in sorted((need(KAGGLE) / c).iterdir())[:6]:
            shutil.copy(f, root / c / f.name)
    victim = sorted((root / "glioma").iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:3000])
    (root / "meningioma").mkdir()
    return root, victim


def test_summary_flags_truncated_jpeg_and_empty_class(slice_folder, tmp_path):
    from brainspineai.datasets import summarise

    root, victim = slice_folder
    doc = summarise(root)
    assert doc["kind"] == "image-folder"
    assert doc["classes"] == {"glioma": 5, "meningioma": 0, "pituitary": 6}
    kinds = {(p["kind"], p["path"]) for p in doc["problems"]}
    assert ("unreadable", f"glioma/{victim.name}") in kinds
    assert ("empty-class", "meningioma") in kinds
    assert len(doc["problems"]) == 2
    assert doc["skipped_by_training"] == [f"glioma/{victim.name}"]
    assert doc["image_size"]["max"] == [256, 256]
    # training's scan leaves out exactly what the summary flags
    from brainspineai.classification.data import scan_image_folder

    paths, labels, classes = scan_image_folder(root)
    assert victim not in paths and len(paths) == 11 and classes == ["glioma", "meningioma", "pituitary"]
    # the CLI
    out = tmp_path / "summary.json"
    r = run_cli("dataset-summary", root, "--json", out)
    assert r.returncode == 0, r.stderr
    assert "unreadable: glioma/" in r.stdout and "empty-class: meningioma" in r.stdout
    assert json.loads(out.read_text())["classes"]["glioma"] == 5
    r = run_cli("dataset-summary", tmp_path / "nowhere")
    assert r.returncode == 2 and r.stderr.startswith("brainspineai: error: dataset folder not found")


def test_summary_of_real_brats_cases_flags_geometry_and_empty_label(tmp_path):
    from brainspineai.datasets import summarise

    root = tmp_path / "brats"
    cases = ["brats_2013_pat0001_1", "brats_2013_pat0002_1", "brats_2013_pat0003_1"]
    for c in cases:
        (root / c).mkdir(parents=True)
        for f in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz", "OTMultiClass.nii.gz"):
            (root / c / f).symlink_to(need(BRATS15) / c / f)
    # case 2: the FLAIR shifted by 3 mm (origin) -> geometry mismatch with its labelmap
    flair = root / cases[1] / "Flair_subtrMeanDivStd.nii.gz"
    img = sitk.ReadImage(str(flair))
    flair.unlink()
    img.SetOrigin(tuple(o + 3.0 for o in img.GetOrigin()))
    sitk.WriteImage(img, str(flair))
    # case 3: the labelmap emptied
    label = root / cases[2] / "OTMultiClass.nii.gz"
    lab = sitk.ReadImage(str(label))
    label.unlink()
    empty = sitk.Image(lab.GetSize(), lab.GetPixelID())
    empty.CopyInformation(lab)
    sitk.WriteImage(empty, str(label))
    doc = summarise(root)
    assert doc["kind"] == "volumes" and doc["n_cases"] == 3
    assert doc["sequences"] == {"flair": 3, "t1ce": 3}
    assert doc["size_range"]["min"] == [240, 240, 155]
    found = {(p["kind"], p["case"]) for p in doc["problems"]}
    assert found == {("geometry-mismatch", cases[1]), ("empty-label", cases[2])}
    mismatch = [p for p in doc["problems"] if p["kind"] == "geometry-mismatch"][0]
    assert "origin" in mismatch["detail"] and "flair" in mismatch["detail"]


def test_one_cycle_survives_every_short_run():
    """Regression: OneCycleLR divided by zero for 5 steps in all (pct_start 0.2)."""
    import torch

    from brainspineai.engine import one_cycle

    for total in range(1, 40):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=1e-3)
        sched = one_cycle(opt, 1e-3, total, 1)
        rates = []
        for _ in range(total):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert max(rates) == pytest.approx(1e-3), total
        if total >= 4:
            assert rates[0] < 1e-3 and np.argmax(rates) <= total // 2


def test_flat_folder_of_unlabelled_slices(tmp_path):
    """SimCLR's unlabelled folder: summarised, and its truncated slice left out by training."""
    from brainspineai.datasets import summarise
    from brainspineai.classification.simclr import scan_unlabelled

    for f in sorted((need(KAGGLE) / "notumor").iterdir())[:5]:
        shutil.copy(f, tmp_path / f.name)
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(sorted((need(KAGGLE) / "notumor").iterdir())[5].read_bytes()[:2500])
    doc = summarise(tmp_path)
    assert doc["unlabelled"] == 5 and doc["classes"] == {} and doc["skipped_by_training"] == ["cut.jpg"]
    paths, labels, classes = scan_unlabelled(tmp_path)
    assert len(paths) == 5 and bad not in paths and labels is None
