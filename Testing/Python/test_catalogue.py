"""The model catalogue: the shipped default model, lookup, checksums, download cache."""
from __future__ import annotations

import json
import shutil

import pytest

from brainspineai.catalogue import (DEFAULT_MODEL_ID, ZOO_DIR, list_models, load_model, resolve_model, save_model,
                                    sha256_file)
from brainspineai.errors import ChecksumError, ModelError


def test_default_model_is_shipped_small_and_documented():
    folder = ZOO_DIR / DEFAULT_MODEL_ID
    card = json.loads((folder / "model.json").read_text())
    assert card["id"] == DEFAULT_MODEL_ID and card["task"] == "classification-2d"
    assert card["class_names"] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert (folder / card["weights"]).stat().st_size <= 25 * 2**20
    assert sha256_file(folder / card["weights"]) == card["sha256"]
    val = card["metrics"]["validation"]
    # its validation holds TCGA-LGG FLAIR / T1 / T1c slices of unseen patients besides the 2D sets
    assert val["accuracy"] >= 0.9 and val["n"] == card["training_data"]["n_validation"] > 500
    split = json.loads((folder / "split.json").read_text())
    assert not set(split["validation"]) & set(split["train"])
    assert len(split["validation"]) == val["n"]

    def patients(names):  # volume slices are named <source>__<patient>__<sequence>__z<k>.png
        return {n.split("/")[-1].split("__")[1] for n in names if n.split("/")[-1].startswith("tcga-lgg__")}

    assert patients(split["validation"]) and not patients(split["validation"]) & patients(split["train"])


def test_lookup_by_id_path_and_listing():
    assert resolve_model(None) == resolve_model(DEFAULT_MODEL_ID) == ZOO_DIR / DEFAULT_MODEL_ID
    assert resolve_model(str(ZOO_DIR / DEFAULT_MODEL_ID / "model.json")) == ZOO_DIR / DEFAULT_MODEL_ID
    assert DEFAULT_MODEL_ID in [c["id"] for c in list_models()]


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ModelError, match=f"unknown model 'no-such-model'.*{DEFAULT_MODEL_ID}"):
        resolve_model("no-such-model")


def test_corrupted_weights_fail_the_checksum(tmp_path):
    copy = tmp_path / "corrupt"
    shutil.copytree(ZOO_DIR / DEFAULT_MODEL_ID, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        load_model(copy, "cpu")


def test_user_catalogue_and_model_path(tmp_path, monkeypatch, isolated_catalogue):
    user = isolated_catalogue / "models" / "my-model"
    shutil.copytree(ZOO_DIR / DEFAULT_MODEL_ID, user)
    card = json.loads((user / "model.json").read_text())
    card["id"] = "my-model"
    (user / "model.json").write_text(json.dumps(card))
    assert load_model("my-model", "cpu").folder == user


def test_file_url_download_is_verified_and_cached(tmp_path, isolated_catalogue):
    url = (ZOO_DIR / DEFAULT_MODEL_ID).as_uri()
    folder = resolve_model(url)
    assert folder.parent == isolated_catalogue / "cache"
    assert sha256_file(folder / "model.safetensors") == json.loads((folder / "model.json").read_text())["sha256"]
    assert resolve_model(url) == folder  # reused, not downloaded twice
    m = load_model(url, "cpu")
    assert m.id == DEFAULT_MODEL_ID


def test_corrupted_download_leaves_nothing_in_the_cache(tmp_path, isolated_catalogue):
    remote = tmp_path / "remote"
    shutil.copytree(ZOO_DIR / DEFAULT_MODEL_ID, remote)
    (remote / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ChecksumError):
        resolve_model(remote.as_uri())
    assert list((isolated_catalogue / "cache").iterdir()) == []


def test_save_model_replaces_atomically(tmp_path, kaggle_model):
    out = tmp_path / "m"
    card = {k: v for k, v in kaggle_model.card.items() if k not in ("sha256", "created")}
    save_model(kaggle_model.network, card, out)
    first = sha256_file(out / "model.safetensors")
    assert first == kaggle_model.card["sha256"]  # same weights, same digest
    save_model(kaggle_model.network, card, out, extra_files={"notes.txt": "second"})
    assert (out / "notes.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folders left
