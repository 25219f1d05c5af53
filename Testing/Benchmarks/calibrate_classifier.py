"""Fit temperature scaling and the uncertainty thresholds of a 2D classifier on its own
validation split (``split.json`` of the model folder), and record them in its card.

    PYTHONPATH=BrainSpineAI python3 Testing/Benchmarks/calibrate_classifier.py MODEL_DIR DATA_DIR [--write]

Without ``--write`` the figures are only printed. With it, ``model.json`` gets ``calibration``,
``uncertainty`` and ``validated_sequences`` (update ``brainspineai/zoo/pins.json`` afterwards
for a shipped model: ``python3 Testing/Benchmarks/calibrate_classifier.py --pins``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BrainSpineAI"))

from brainspineai.classification.calibration import (apply_temperature, choose_thresholds,  # noqa: E402
                                                     expected_calibration_error, fit_temperature)


def update_pins():
    zoo = ROOT / "BrainSpineAI" / "brainspineai" / "zoo"
    pins = json.loads((zoo / "pins.json").read_text())
    for folder in sorted(p for p in zoo.iterdir() if (p / "model.json").is_file()):
        card = json.loads((folder / "model.json").read_text())
        pins[folder.name] = {"card": hashlib.sha256((folder / "model.json").read_bytes()).hexdigest(),
                             "weights": hashlib.sha256((folder / card["weights"]).read_bytes()).hexdigest()}
    (zoo / "pins.json").write_text(json.dumps(pins, indent=2) + "\n")
    print("pins.json updated")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", nargs="?")
    ap.add_argument("data_dir", nargs="?")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--pins", action="store_true")
    ap.add_argument("--validated-sequences", default="t1c", help="comma-separated sequences the card claims, each SEQ (every class) or SEQ=class+class")
    ap.add_argument("--sequence-note", default="the README's BraTS volume figures show it holds on T1c and not on "
                    "FLAIR / T1 / T2")
    a = ap.parse_args(argv)
    if a.pins:
        return update_pins()
    import torch

    from brainspineai.catalogue import load_model
    from brainspineai.classification.data import load_slice_batch, scan_image_folder
    from brainspineai.classification.predict import predict_batches
    from brainspineai.classification.preprocess import crop_mode

    torch.set_num_threads(2)
    folder = Path(a.model_dir)
    split = json.loads((folder / "split.json").read_text())
    wanted = set(split["validation"])
    model = load_model(str(folder), device="cpu")
    paths, labels, classes = scan_image_folder(a.data_dir, model.class_names)
    keep = [i for i, p in enumerate(paths) if p.relative_to(Path(a.data_dir)).as_posix() in wanted]
    paths, labels = [paths[i] for i in keep], np.asarray(labels)[keep]
    batch = load_slice_batch(paths, model.input_size, crop=crop_mode(model.card, volume=False))
    probs = predict_batches(model.network, batch, model.device).astype(np.float64)
    fit = fit_temperature(probs, labels)
    cal = apply_temperature(probs, fit["temperature"])
    thresholds = choose_thresholds(cal, labels)
    # an honest "after": fit on half of the validation groups (patients where groups.csv knows
    # them, else images), measure on the other half
    groups = [str(p) for p in paths]
    gfile = Path(a.data_dir) / "groups.csv"
    if gfile.is_file():
        import csv

        with open(gfile, newline="", encoding="utf-8") as fh:
            gmap = {r["image"]: r["group"] for r in csv.DictReader(fh)}
        groups = [gmap.get(p.relative_to(Path(a.data_dir)).as_posix(), str(p)) for p in paths]
    names = sorted(set(groups))
    half = set(np.asarray(names, dtype=object)[np.random.default_rng(0).permutation(len(names))[: len(names) // 2]])
    in_fit = np.asarray([g in half for g in groups])
    t_half = fit_temperature(probs[in_fit], labels[in_fit])["temperature"]
    calibration = {"method": "temperature scaling (Guo et al., ICML 2017), NLL minimised on the validation split",
                   "fitted_on": f"split.json validation ({len(labels)} images of {split.get('data_folder')})",
                   **fit, "ece_bins": 15,
                   "ece_before": round(expected_calibration_error(probs, labels), 4),
                   "ece_after": round(expected_calibration_error(cal, labels), 4),
                   "note": "ece_before / ece_after: all validation images, the temperature fitted on them too; "
                           "heldout_half: the temperature fitted on half of the validation groups (patients "
                           "where known), both ECEs on the other half",
                   "heldout_half": {"n": int((~in_fit).sum()), "temperature": round(float(t_half), 4),
                                    "ece_before": round(expected_calibration_error(probs[~in_fit], labels[~in_fit]), 4),
                                    "ece_after": round(expected_calibration_error(
                                        apply_temperature(probs[~in_fit], t_half), labels[~in_fit]), 4)}}
    print(json.dumps({"calibration": calibration, "uncertainty": thresholds}, indent=1))
    if a.write:
        card = json.loads((folder / "model.json").read_text())
        card["calibration"] = calibration
        card["uncertainty"] = thresholds
        seqs = [s for s in a.validated_sequences.split(",") if s]  # SEQ or SEQ=class+class
        card["validated_sequences"] = {s.split("=")[0]: (s.split("=")[1].split("+") if "=" in s else list(model.class_names))
                                       for s in seqs}
        card["validated_sequences_note"] = "sequence -> classes the model was validated on; " + a.sequence_note
        (folder / "model.json").write_text(json.dumps(card, indent=2) + "\n")
        print(f"card written: {folder / 'model.json'}")


if __name__ == "__main__":
    main()
