"""The MRI sequence classifier (T1 / T1c / T2 / FLAIR): intensity handling shared by every
source, the shipped model on held-out patients, and what ``classify`` says with it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from brainspineai.catalogue import ZOO_DIR, load_model, read_card
from brainspineai.classification.sequence import (DEFAULT_SEQUENCE_MODEL_ID, SEQUENCES, check_sequence,
                                                  detect_sequence, sequence_slices)
from brainspineai.errors import InputError, ModelError
from conftest import BRATS15, DATA, need, run_cli

TCGA = DATA / "volumes" / "tcga-lgg-flair"
FOLDER = ZOO_DIR / DEFAULT_SEQUENCE_MODEL_ID
# held-out (test) patients of the shipped model's split.json
TEST_TCGA, TEST_BRATS = "TCGA_DU_5849", "brats_2013_pat0005_1"


@pytest.fixture(scope="module")
def seq_model():
    return load_model(str(FOLDER), device="cpu", task="sequence-2d")


def test_normalisation_ignores_the_value_range_of_the_source():
    """uint8 TCGA and z-scored BraTS 2015 volumes go through the same per-volume mapping: an
    affine change of intensities (another scanner's scale) gives the same model input."""
    for path in (need(TCGA) / TEST_TCGA / "flair.nii.gz", need(BRATS15) / TEST_BRATS / "T1c_subtrMeanDivStd.nii.gz"):
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
        a, ka = sequence_slices(arr, size=64)
        b, kb = sequence_slices(arr * 7.5 - 300.0, size=64)
        assert ka == kb and a.shape == (len(ka), 64, 64) and len(ka) >= 5
        np.testing.assert_allclose(a, b, atol=1e-4)
        assert a.min() >= 0 and a.max() <= 1 and a.mean() > 0.05
    with pytest.raises(InputError, match="no foreground"):
        sequence_slices(np.zeros((4, 32, 32), np.float32))


def test_shipped_card_and_split_keep_patients_apart():
    card = read_card(FOLDER)
    assert card["task"] == "sequence-2d" and card["class_names"] == SEQUENCES
    # version 2: EfficientNet-Lite0 (frozen ImageNet trunk + fitted linear head), 13 MiB
    assert card["version"] == 2 and card["architecture"] == "efficientnet-lite0"
    assert (FOLDER / "model.safetensors").stat().st_size < 16 * 2 ** 20
    split = json.loads((FOLDER / "split.json").read_text())
    assert not set(split["train"]) & set(split["test"]) and not set(split["validation"]) & set(split["test"])
    assert TEST_TCGA in split["test"] and TEST_BRATS in split["test"]
    assert "t2" not in card["validated_sequences"] and "t2" in card["training_data"]["t2_note"].lower()
    for seq in ("t1", "t1c", "flair"):
        m = card["metrics"]["test"][seq]
        assert m["volumes"] >= 15 and m["volume_ci95"][0] <= m["volume_accuracy"] <= m["volume_ci95"][1]


@pytest.mark.slow
def test_held_out_patients_get_their_sequence(seq_model):
    """The first 8 TCGA-LGG test patients of split.json (24 volumes with skull; chance is 6 of 24;
    version 1 got 18, version 2 must get 20) and the two BraTS 2015 test patients' T1c and FLAIR
    volumes (skull-stripped, z-scored; version 1 read both FLAIR volumes as T1c)."""
    split = json.loads((FOLDER / "split.json").read_text())
    tcga = [p for p in split["test"] if p.startswith("TCGA")][:8]
    right, n = 0, 0
    for p in tcga:
        for f, truth in (("t1.nii.gz", "t1"), ("t1ce.nii.gz", "t1c"), ("flair.nii.gz", "flair")):
            if (need(TCGA) / p / f).exists():
                r = detect_sequence(sitk.ReadImage(str(TCGA / p / f)), seq_model)
                assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-3) and 0 < r["agreement"] <= 1
                right, n = right + (r["predicted"] == truth), n + 1
    assert n == 24 and right >= 20, (right, n)
    for p in ("brats_2013_pat0005_1", "brats_2013_pat0006_1"):
        for f, truth in (("T1c_subtrMeanDivStd.nii.gz", "t1c"), ("Flair_subtrMeanDivStd.nii.gz", "flair")):
            assert detect_sequence(sitk.ReadImage(str(need(BRATS15) / p / f)), seq_model)["predicted"] == truth, (p, f)


def test_a_2d_slice_and_the_wrong_task(seq_model):
    vol = sitk.ReadImage(str(need(TCGA) / TEST_TCGA / "flair.nii.gz"))
    one = vol[:, :, vol.GetSize()[2] // 2]
    r = detect_sequence(one, seq_model)
    assert r["slices"] == 1 and r["predicted"] in SEQUENCES
    with pytest.raises(ModelError, match="sequence-2d"):
        load_model(str(FOLDER), device="cpu")  # not a tumour classifier


def test_validated_sequences_warning(seq_model):
    vol = sitk.ReadImage(str(need(TCGA) / TEST_TCGA / "flair.nii.gz"))
    card = {"id": "m", "validated_sequences": {"t1c": ["glioma"]}}
    seq, warnings = check_sequence(vol, card, model=seq_model)
    if seq["predicted"] == "flair":
        assert warnings and "looks like FLAIR" in warnings[0] and "validated on T1c (contrast) only" in warnings[0]
    assert check_sequence(vol, {"id": "m"}, model=seq_model)[1] == []  # a card that says nothing: no warning


def test_per_sequence_classes_warn_on_a_class_never_validated_there(seq_model):
    """A card validated on FLAIR for glioma / no tumour only: a FLAIR answer of meningioma is flagged."""
    vol = sitk.ReadImage(str(need(TCGA) / TEST_TCGA / "flair.nii.gz"))
    card = {"id": "m", "validated_sequences": {"t1c": ["glioma", "meningioma"], "flair": ["glioma", "notumor"]}}
    seq, warnings = check_sequence(vol, card, model=seq_model, predicted="meningioma")
    assert seq["predicted"] == "flair"  # the held-out TCGA FLAIR volume the CLI test reads as FLAIR too
    assert len(warnings) == 1 and "on FLAIR" in warnings[0] and "not on meningioma" in warnings[0]
    assert check_sequence(vol, card, model=seq_model, predicted="glioma")[1] == []


def test_classify_reports_sequence_warning_and_uncertainty(tmp_path):
    """The shipped tumour classifier (validated on T1c, and on FLAIR for glioma / no tumour) on a
    held-out T1, FLAIR and T1c volume of TCGA-LGG: only the T1 one is warned about."""
    t1, flair = need(TCGA) / TEST_TCGA / "t1.nii.gz", TCGA / TEST_TCGA / "flair.nii.gz"
    t1c = TCGA / TEST_TCGA / "t1ce.nii.gz"
    r = run_cli("classify", t1, "--device", "cpu", "--json", tmp_path / "f.json")
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "f.json").read_text())
    assert set(doc["sequence"]) >= {"predicted", "probabilities"} and doc["sequence"]["predicted"] == "t1"
    assert len(doc["warnings"]) == 1 and "validated on T1c (contrast), FLAIR only" in doc["warnings"][0]
    assert f"warning: {doc['warnings'][0]}" in r.stderr and "sequence: T1 (" in r.stdout
    assert isinstance(doc["uncertain"], bool) and doc["calibrated"] is True
    assert doc["uncertain"] == ("UNCERTAIN" in r.stdout) == bool(doc["uncertainty"]["reasons"])
    r = run_cli("classify", t1c, "--device", "cpu", "--json", tmp_path / "c.json")
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["sequence"]["predicted"] == "t1c" and doc["warnings"] == [] and "warning" not in r.stderr
    r = run_cli("classify", flair, "--device", "cpu", "--json", tmp_path / "l.json")
    doc = json.loads((tmp_path / "l.json").read_text())
    assert r.returncode == 0 and doc["sequence"]["predicted"] == "flair" and doc["predicted"] == "glioma"
    assert doc["warnings"] == []  # FLAIR glioma is what this model was validated on
