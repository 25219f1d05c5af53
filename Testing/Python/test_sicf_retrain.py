"""Retraining an SICF model (``train sicf --init-model``) on a grown real dataset: a tiny
parent on 3 classes x 10 real brain slices (figshare, full-image ROI, 64 px, 32 words,
VGG16 from a seeded random initialisation: nothing is downloaded), then 4 more slices per
class. The new version reuses the parent's codebook, VGG16 and feature mask, keeps its
validation images held out, records version / parent / lineage, and the parent's folder and
predictions are unchanged; unusable parents are refused before anything is written."""
from __future__ import annotations

import hashlib
import json
import shutil
import warnings

import numpy as np
import pytest

from conftest import FIGSHARE, need, run_cli

CLASSES = ("glioma", "meningioma", "pituitary")
PARENT = dict(roi="full", image_size=64, n_words=32, population=5, iterations=1, val_fraction=0.4, n_bootstrap=50,
              cv_folds=2)


def folder_digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def copy_slices(src, dst, start, stop):
    for c in CLASSES:
        (dst / c).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / c).iterdir())[start:stop]:
            shutil.copy(f, dst / c / f.name)


def predictions(folder, images):
    from brainspineai.catalogue import load_model
    from brainspineai.io import read_image
    from brainspineai.sicf.inference import classify_sicf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(folder, "cpu")
    return np.stack([classify_sicf(read_image(p), model).probabilities for p in images])


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """(data folder grown by 4 slices per class, parent folder, parent's predictions and file
    digests taken before the dataset grew, feature cache folder)."""
    from brainspineai.sicf.pipeline import SICFConfig, train_sicf

    base = tmp_path_factory.mktemp("sicf-retrain")
    data = base / "slices"
    copy_slices(need(FIGSHARE), data, 0, 10)
    cache = base / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parent = train_sicf(data, base / "models" / "tiny-sicf", SICFConfig(**PARENT, cache_dir=str(cache)))
    probe = sorted(p for c in CLASSES for p in (data / c).iterdir())[::5]
    before = predictions(parent, probe)
    digests = folder_digests(parent)
    copy_slices(FIGSHARE, data, 10, 14)  # the dataset grows: 14 slices per class
    return data, parent, probe, before, digests, cache


@pytest.mark.slow
def test_retrain_makes_version_2_from_the_parents_features(grown, tmp_path):
    from brainspineai.catalogue import read_card

    data, parent, probe, before, digests, _ = grown
    events = tmp_path / "events.jsonl"
    r = run_cli("train", "sicf", "--data", data, "--out", tmp_path / "v2", "--init-model", parent, "--bootstrap", "50",
                "--events", events)
    assert r.returncode == 0, r.stderr
    assert "version 2 of 'tiny-sicf'" in r.stdout and "feature mask reused" in r.stdout
    p_card, card = read_card(parent), read_card(tmp_path / "v2")
    assert card["id"] == "tiny-sicf-v2" and card["version"] == 2
    assert card["parent"] == "tiny-sicf" and isinstance(card["parent"], str) and card["lineage"] == ["tiny-sicf"]
    assert card["parent_sha256"] == p_card["sha256"] != card["sha256"]
    # same features: the parent's options, visual words, VGG16 and selected columns
    assert (card["roi"], card["input_size"], card["n_words"]) == ("full", [64, 64], 32)
    assert card["vgg16"] == p_card["vgg16"]
    for name in ("codebook.npy", "feature_mask.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "v2" / name), np.load(parent / name))
        assert card["files"][name] == p_card["files"][name]
    assert card["selection"]["inherited_from"] == "tiny-sicf" and card["n_features_kept"] == p_card["n_features_kept"]
    # the forest was refitted on the grown training set; the parent's validation slices stay held out
    s1, s2 = (json.loads((f / "split.json").read_text()) for f in (parent, tmp_path / "v2"))
    assert set(s1["validation"]) <= set(s2["validation"]) and not set(s1["train"]) & set(s2["validation"])
    assert card["training_data"]["n_train"] + card["training_data"]["n_validation"] == 42
    assert card["training_data"]["n_train"] > p_card["training_data"]["n_train"]
    assert card["training_data"]["parent_validation_kept"] == len(s1["validation"])
    first = json.loads(events.read_text().splitlines()[0])
    assert first["event"] == "data" and first["parent"] == "tiny-sicf"
    assert "loa" not in {json.loads(ln).get("stage") for ln in events.read_text().splitlines()}  # no re-selection
    # the parent is untouched and predicts exactly as before; the new version loads and predicts
    assert folder_digests(parent) == digests
    np.testing.assert_array_equal(predictions(parent, probe), before)
    after = predictions(tmp_path / "v2", probe)
    np.testing.assert_allclose(after.sum(1), 1.0)


@pytest.mark.slow
def test_retrain_with_reselect_runs_the_selection_again(grown, tmp_path):
    from brainspineai.sicf.pipeline import SICFConfig, train_sicf

    data, parent, _, _, _, cache = grown
    cfg = SICFConfig(roi=None, image_size=None, n_words=None, population=5, iterations=1, val_fraction=0.4,
                     cv_folds=2, n_bootstrap=0, cache_dir=str(cache), init_model=str(parent), reselect=True, model_id="mine")
    events = []
    folder = train_sicf(data, tmp_path / "mine", cfg, progress=events.append)
    card = json.loads((folder / "model.json").read_text())
    assert card["id"] == "mine" and card["version"] == 2 and card["parent"] == "tiny-sicf"
    assert card["selection"]["evaluations"] == 10 and "inherited_from" not in card["selection"]
    assert "loa" in {e.get("stage") for e in events}
    np.testing.assert_array_equal(np.load(folder / "codebook.npy"), np.load(parent / "codebook.npy"))
    mask = np.load(folder / "feature_mask.npy")
    assert card["n_features_kept"] == int(mask.sum()) > 0


@pytest.mark.slow
def test_unusable_parents_are_refused(grown, tmp_path):
    from brainspineai.errors import InputError
    from brainspineai.sicf.pipeline import SICFConfig, train_sicf

    data, parent, _, _, digests, cache = grown

    def cfg(init, **kw):
        return SICFConfig(**{**PARENT, "roi": None, "image_size": None, "n_words": None, **kw}, cache_dir=str(cache),
                          init_model=str(init))

    # another class list: the CLI says so in one line, exit 2, nothing written
    two = tmp_path / "two"
    for c in CLASSES[:2]:
        (two / c).mkdir(parents=True)
        for f in sorted((data / c).iterdir())[:6]:
            (two / c / f.name).symlink_to(f)
    r = run_cli("train", "sicf", "--data", two, "--out", tmp_path / "m", "--init-model", parent)
    assert r.returncode == 2 and r.stderr.startswith("brainspineai: error:") and "has classes" in r.stderr, r.stderr
    assert not (tmp_path / "m").exists()
    r = run_cli("train", "sicf", "--data", data, "--out", tmp_path / "m", "--reselect")
    assert r.returncode == 2 and "give --init-model too" in r.stderr and not (tmp_path / "m").exists()
    # not an SICF model (the shipped classifier)
    with pytest.raises(InputError, match="classification-2d model"):
        train_sicf(data, tmp_path / "m", cfg("brain-tumor-4class-resnet18w32"))
    # an option that would change what the features mean
    with pytest.raises(InputError, match="--image-size 64, this run asks for --image-size 96"):
        train_sicf(data, tmp_path / "m", cfg(parent, image_size=96))
    # VGG16 weights that cannot be rebuilt: a card whose recorded seed no longer gives its fingerprint
    bad = tmp_path / "bad-parent"
    shutil.copytree(parent, bad)
    card = json.loads((bad / "model.json").read_text())
    card["vgg16"]["seed"] = 123
    (bad / "model.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match="cannot reuse model 'tiny-sicf'.*VGG16 weights found differ"):
        train_sicf(data, tmp_path / "m", cfg(bad))
    with pytest.raises(InputError, match="parent model's folder"):
        train_sicf(data, parent, cfg(parent))
    assert not (tmp_path / "m").exists() and folder_digests(parent) == digests
