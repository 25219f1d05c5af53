"""Calibration of the shipped tumour classifier: temperature, ECE, reliability diagram, the
per-image predictions of ``evaluate`` and the ``uncertain`` flag of ``classify``, on real images."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from brainspineai.catalogue import DEFAULT_MODEL_ID, read_card, ZOO_DIR
from brainspineai.classification.calibration import (apply_temperature, choose_thresholds,
                                                     expected_calibration_error, fit_temperature, uncertainty)
from conftest import run_cli

CARD = read_card(ZOO_DIR / DEFAULT_MODEL_ID)


def test_ece_by_hand_and_temperature_identity():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.95, 0.05], [0.55, 0.45]])
    labels = np.array([0, 1, 0, 0])
    # bins: 0.9 & 0.95 -> bin 14 (right), 0.6 -> bin 8 (wrong), 0.55 -> bin 8 (right)
    # bin 14: acc 1, conf 0.925 -> 2/4 * 0.075; bin 8: acc 0.5, conf 0.575 -> 2/4 * 0.075
    assert expected_calibration_error(probs, labels) == pytest.approx(0.075)
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs)
    hot = apply_temperature(probs, 2.0)  # softmax(log p / 2): flatter, same ranking
    assert (hot.argmax(1) == probs.argmax(1)).all() and (hot.max(1) < probs.max(1)).all()
    np.testing.assert_allclose(hot.sum(1), 1.0)


def test_the_card_records_a_temperature_fitted_on_its_validation_split():
    cal, unc = CARD["calibration"], CARD["uncertainty"]
    assert cal["n"] == len(json.loads((ZOO_DIR / DEFAULT_MODEL_ID / "split.json").read_text())["validation"])
    assert cal["nll_after"] <= cal["nll_before"] and cal["ece_after"] < cal["ece_before"] and cal["ece_bins"] == 15
    assert 0 < unc["min_top_probability"] < 1 and 0 <= unc["min_margin"] < 1 and unc["min_slice_agreement"] == 0.5
    v = unc["validation"]
    assert v["errors_flagged"] <= v["errors"] and v["flagged"] < v["n"] / 4  # flags few of the right answers
    # every class on T1c; on FLAIR only what the shared FLAIR data holds (glioma, tumour-free)
    assert CARD["validated_sequences"] == {"t1c": CARD["class_names"], "flair": ["glioma", "notumor"]}
    held = cal["heldout_half"]  # the honest "after": fitted on half the validation patients, measured on the rest
    assert held["n"] > 300 and 0 <= held["ece_after"] <= held["ece_before"]


def test_the_default_card_reports_classes_sequences_and_volumes_on_held_out_patients():
    """The new default's card: per class and per sequence on validation and test patients, the
    volume figures, and the previous default measured on the same images."""
    ev = CARD["evaluation"]
    assert CARD["architecture"] == "efficientnet-lite0" and CARD["pretrained"]["licence"].startswith("Apache-2.0")
    for part in ("validation", "test"):
        assert {"per_class", "per_source_sequence", "per_sequence_class"} <= set(ev[part])
        lo, hi = ev[part]["ci95"]
        assert lo <= ev[part]["accuracy"] <= hi
    assert {"tcga-lgg/flair", "tcga-lgg/t1", "tcga-lgg/t1c", "brats2015/flair", "brats2015/t1c"} <= set(ev["test"]["per_source_sequence"])
    assert {"t1", "t1c", "t2", "flair"} <= set(ev["volumes_per_sequence"])
    old = ev["previous_default_same_images"]
    assert ev["validation"]["accuracy"] > old["validation_accuracy"] and ev["test"]["accuracy"] > old["test_accuracy"]


def test_fit_and_thresholds_on_real_outputs(kaggle_model, validation_images):
    """Real softmax outputs of 6 validation images per class: the fitted temperature lowers the
    NLL; the thresholds flag no more than all and every flagged image is below them."""
    from brainspineai.classification.data import load_slice_batch
    from brainspineai.classification.predict import predict_batches

    names = sorted(validation_images)
    paths = [p for n in names for p in sorted(validation_images[n])[:6]]
    labels = np.array([names.index(n) for n in names for _ in range(6)])
    probs = predict_batches(kaggle_model.network, load_slice_batch(paths, kaggle_model.input_size), kaggle_model.device)
    fit = fit_temperature(probs, labels)
    assert fit["nll_after"] <= fit["nll_before"] + 1e-9 and 0.05 <= fit["temperature"] <= 20
    th = choose_thresholds(apply_temperature(probs, fit["temperature"]), labels)
    assert 0.0 <= th["min_top_probability"] <= 1.0 + 1e-6 and th["validation"]["n"] == len(labels)


def test_uncertainty_reasons():
    card = {"uncertainty": {"min_top_probability": 0.6, "min_margin": 0.2, "min_slice_agreement": 0.5}}
    u = uncertainty(card, [0.32, 0.31, 0.29, 0.08])  # the T2 volume
    assert u["uncertain"] and len(u["reasons"]) == 2 and "32.0%" in u["reasons"][0]
    assert not uncertainty(card, [0.9, 0.05, 0.03, 0.02])["uncertain"]
    u = uncertainty(card, [0.9, 0.05, 0.03, 0.02], slice_agreement=0.3)
    assert u["uncertain"] and "30% of the slices" in u["reasons"][0]
    assert not uncertainty({}, [0.3, 0.3, 0.4])["uncertain"]  # no thresholds in the card: no flag


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory, validation_images):
    """An ImageFolder of links to 5 validation images per class."""
    root = tmp_path_factory.mktemp("val8")
    for name, paths in validation_images.items():
        (root / name).mkdir()
        for p in sorted(paths)[:5]:
            os.symlink(p, root / name / p.name)
    return root


def test_evaluate_reports_ece_reliability_png_and_per_image_predictions(tmp_path, small_folder):
    js, png = tmp_path / "e.json", tmp_path / "rel.png"
    r = run_cli("evaluate", small_folder, "--device", "cpu", "--bootstrap", "0", "--json", js, "--reliability-png", png)
    assert r.returncode == 0, r.stderr
    doc = json.loads(js.read_text())
    ece = doc["ece"]
    assert ece["bins"] == 15 and ece["temperature"] == CARD["calibration"]["temperature"]
    assert 0 <= ece["before"] <= 1 and 0 <= ece["after"] <= 1 and ece["after"] != ece["before"]
    preds = doc["predictions"]
    assert len(preds) == doc["n"] == 20
    assert {p["file"].split("/")[0] for p in preds} == set(CARD["class_names"])
    for p in preds:
        assert p["true"] == p["file"].split("/")[0] and set(p["probabilities"]) == set(CARD["class_names"])
        assert p["predicted"] == max(p["probabilities"], key=p["probabilities"].get)
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert sum(p["true"] == p["predicted"] for p in preds) == round(doc["accuracy"] * 20)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "expected calibration error (15 bins)" in r.stdout
    r = run_cli("evaluate", small_folder, "--reliability-png", tmp_path / "rel.txt")
    assert r.returncode == 2 and "use a .png file" in r.stderr
