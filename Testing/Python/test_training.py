"""``brainspineai train classifier`` on a small real subset: model folder, events, resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from brainspineai.catalogue import load_model, read_card, sha256_file
from conftest import KAGGLE, LIB_PARENT, need, run_cli
import prewarmed

QUICK = ["--architecture", "resnet10-w32", "--image-size", "64", "--batch-size", "16", "--device", "cpu"]


def test_train_small_subset_produces_a_loadable_model(tmp_path):
    out = tmp_path / "tiny"
    events = tmp_path / "events.jsonl"
    r = run_cli("train", "classifier", "--data", need(KAGGLE), "--out", out, "--epochs", "3",
                "--limit-per-class", "12", "--events", events, *QUICK)
    assert r.returncode == 0, r.stderr
    card = read_card(out)
    assert card["id"] == "tiny" and card["class_names"] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert card["training_data"]["n_train"] + card["training_data"]["n_validation"] == 48
    assert sha256_file(out / "model.safetensors") == card["sha256"]
    split = json.loads((out / "split.json").read_text())
    assert len(split["validation"]) == card["training_data"]["n_validation"] and not set(split["validation"]) & set(split["train"])
    ev = [json.loads(line) for line in events.read_text().splitlines()]
    epochs = [e for e in ev if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and ev[-1]["event"] == "done"
    assert all({"step", "loss", "metrics", "eta_s"} <= set(e) for e in epochs)
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    model = load_model(out, "cpu")
    assert model.input_size == 64


def test_bad_dataset_is_refused_and_existing_model_kept(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    card = json.dumps({"id": "model", "task": "classification-2d", "architecture": "resnet10-w32", "class_names": ["a"],
                       "input_size": [64, 64], "sha256": "0" * 64, "weights": "model.safetensors"})
    (out / "model.json").write_text(card)
    empty = tmp_path / "data"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    r = run_cli("train", "classifier", "--data", empty, "--out", out, "--overwrite", *QUICK)
    assert r.returncode == 2 and "no images found" in r.stderr
    assert (out / "model.json").read_text() == card
    r = run_cli("train", "classifier", "--data", empty, "--out", out, *QUICK)  # without --overwrite: refused first
    assert r.returncode == 2 and "pass --overwrite" in r.stderr and (out / "model.json").read_text() == card


@pytest.mark.slow
def test_interrupted_training_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "resumable"
    args = ["train", "classifier", "--data", str(need(KAGGLE)), "--out", str(out), "--epochs", "6",
            "--limit-per-class", "30", *QUICK]
    env = dict(os.environ, PYTHONPATH=str(LIB_PARENT))
    proc = prewarmed.popen([sys.executable, "-m", "brainspineai", *args], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = tmp_path / "resumable.work" / "last.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint written after the first epoch"
    assert not out.exists(), "a killed run must not leave a model folder"
    events = tmp_path / "events.jsonl"
    r = run_cli(*args, "--resume", "--events", events)
    assert r.returncode == 0, r.stderr
    ev = [json.loads(line) for line in events.read_text().splitlines()]
    resumed = [e for e in ev if e["event"] == "resume"]
    assert resumed and 1 <= resumed[0]["epoch"] < 6
    assert [e["epoch"] for e in ev if e["event"] == "epoch"] == list(range(resumed[0]["epoch"] + 1, 7))
    assert len(read_card(out)["training"]["history"]) == 6
