"""Compare tumour classifiers on the patient-level split of build_classifier_dataset.py; prints JSON.

    PYTHONPATH=BrainSpineAI python3 Testing/Benchmarks/evaluate_default_classifier.py \
        --data DIR --split NEW_MODEL/split.json --model A --model B [--json OUT.json]

For every model, on images none of them trained on:

- ``validation``: the validation images of ``--split`` (the new model's split; the old default
  trained on kaggle4 images only, and its own validation images were fixed to this validation
  side), accuracy per class and per source / sequence, Wilson 95 % intervals.
- ``test``: ``DIR/test`` (TCGA-LGG test patients and the BraTS 2015 patients), the same figures;
  nothing was chosen on them.
- ``volumes``: every BraTS volume (2015: FLAIR, T1c; 2023: T1, T1c, T2, FLAIR) and the TCGA-LGG
  test patients' volumes, classified with the library's volume rule: the share read as glioma
  (all are gliomas) per sequence.
- ``calibration``: temperature fitted on half of the validation groups, ECE (15 bins) before and
  after on the other half and on the test slices (so "after" is never measured where it was fitted).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BrainSpineAI"))
DATA = ROOT.parent / "shared" / "data"


def wilson(k, n, z=1.96):
    if n == 0:
        return [None, None]
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(c - h, 3), round(c + h, 3)]


def acc_table(y, pred, keys):
    out = {}
    for k in sorted(set(keys)):
        m = np.asarray([kk == k for kk in keys])
        n, c = int(m.sum()), int((y[m] == pred[m]).sum())
        out[k] = {"n": n, "accuracy": round(c / n, 3), "ci95": wilson(c, n)}
    return out


def meta(folder):
    with open(Path(folder) / "groups.csv", newline="", encoding="utf-8") as fh:
        return {r["image"]: r for r in csv.DictReader(fh)}


def probs_for(model, paths):
    from brainspineai.classification.data import load_slice_batch
    from brainspineai.classification.predict import predict_batches
    from brainspineai.classification.preprocess import crop_mode

    batch = load_slice_batch(paths, model.input_size, crop=crop_mode(model.card, volume=False))
    return predict_batches(model.network, batch, model.device).astype(np.float64)


def figures(y, probs, info, classes):
    pred = probs.argmax(1)
    seq = [f"{r['source']}/{r['sequence'] or 'mixed'}" for r in info]
    return {"n": int(len(y)), "accuracy": round(float(np.mean(pred == y)), 4),
            "ci95": wilson(int(np.sum(pred == y)), len(y)),
            "per_class": acc_table(y, pred, [classes[i] for i in y]),
            "per_source_sequence": acc_table(y, pred, seq),
            "per_sequence_class": acc_table(y, pred, [f"{r['sequence'] or 'mixed'}/{classes[i]}" for r, i in zip(info, y)])}


def volumes(test_patients):
    out = []
    for d in sorted((DATA / "volumes" / "brats2015-flair-t1c").glob("brats_*")):
        out += [("brats2015", d.name, "flair", d / "Flair_subtrMeanDivStd.nii.gz"),
                ("brats2015", d.name, "t1c", d / "T1c_subtrMeanDivStd.nii.gz")]
    for d in sorted((DATA / "volumes" / "brats2023-4seq-noseg").glob("BraTS-*")):
        for seq, suf in (("t1", "t1n"), ("t1c", "t1c"), ("t2", "t2w"), ("flair", "t2f")):
            out.append(("brats2023", d.name, seq, d / f"{d.name}-{suf}.nii.gz"))
    for pid in sorted(test_patients):
        d = DATA / "volumes" / "tcga-lgg-flair" / pid
        for seq, f in (("t1", "t1.nii.gz"), ("flair", "flair.nii.gz"), ("t1c", "t1ce.nii.gz")):
            if (d / f).exists():
                out.append(("tcga-lgg-test", pid, seq, d / f))
    return out


def main(argv=None):
    import torch

    from brainspineai.catalogue import load_model
    from brainspineai.classification.calibration import (apply_temperature, expected_calibration_error,
                                                         fit_temperature)
    from brainspineai.classification.data import scan_image_folder
    from brainspineai.classification.inference import classify_image
    from brainspineai.io import read_image

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--split", required=True, type=Path, help="the new model's split.json, or 'groups' to recompute it")
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-volumes", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(int(__import__('os').environ.get('BRAINSPINEAI_THREADS', '2')))
    if a.split.suffix == ".json":
        val_rel = set(json.loads(a.split.read_text())["validation"])
    else:  # no model trained yet: the split train classifier makes of DIR/train (groups.csv, seed 0, 0.15)
        from brainspineai.classification.data import split_dataset

        ps, ls, _ = scan_image_folder(a.data / "train")
        _, va, _ = split_dataset(a.data / "train", ps, ls, 0.15, 0)
        val_rel = {ps[i].relative_to(a.data / "train").as_posix() for i in va}
    tr_meta, te_meta = meta(a.data / "train"), meta(a.data / "test")
    report = {}
    for ref in a.model:
        model = load_model(ref, device="cpu")
        classes = list(model.class_names)
        paths, labels, _ = scan_image_folder(a.data / "train", classes)
        keep = [i for i, p in enumerate(paths) if p.relative_to(a.data / "train").as_posix() in val_rel]
        vp, vy = [paths[i] for i in keep], np.asarray(labels)[keep]
        vinfo = [tr_meta[p.relative_to(a.data / "train").as_posix()] for p in vp]
        tp, ty, _ = scan_image_folder(a.data / "test", classes)
        tinfo = [te_meta[p.relative_to(a.data / "test").as_posix()] for p in tp]
        pv, pt = probs_for(model, vp), probs_for(model, tp)
        r = {"validation": figures(vy, pv, vinfo, classes), "test": figures(np.asarray(ty), pt, tinfo, classes)}
        # calibration: fit on half the validation groups, measure on the other half and on test
        groups = sorted({i["group"] for i in vinfo})
        rng = np.random.default_rng(0)
        half = set(np.asarray(groups, dtype=object)[rng.permutation(len(groups))[: len(groups) // 2]].tolist())
        fit_m = np.asarray([i["group"] in half for i in vinfo])
        t_half = fit_temperature(pv[fit_m], vy[fit_m])["temperature"]
        t_all = fit_temperature(pv, vy)["temperature"]
        ty = np.asarray(ty)
        r["calibration"] = {
            "temperature_half": round(t_half, 4), "temperature_all_validation": round(t_all, 4),
            "ece_other_half_before": round(expected_calibration_error(pv[~fit_m], vy[~fit_m]), 4),
            "ece_other_half_after": round(expected_calibration_error(apply_temperature(pv[~fit_m], t_half), vy[~fit_m]), 4),
            "n_other_half": int((~fit_m).sum()),
            "ece_test_before": round(expected_calibration_error(pt, ty), 4),
            "ece_test_after": round(expected_calibration_error(apply_temperature(pt, t_all), ty), 4)}
        if not a.no_volumes:
            test_patients = {i["group"].split(":", 1)[1] for i in tinfo if i["source"] == "tcga-lgg"}
            vols = []
            for src, pid, seq, path in volumes(test_patients):
                res = classify_image(read_image(path), model)
                vols.append({"source": src, "patient": pid, "sequence": seq, "predicted": res.predicted,
                             "glioma": round(float(res.probabilities[classes.index("glioma")]), 3)})
            per = {}
            for v in vols:
                k = f"{v['source']}/{v['sequence']}"
                per.setdefault(k, []).append(v["predicted"] == "glioma")
            r["volumes"] = {k: {"n": len(v), "glioma": int(sum(v)), "ci95": wilson(int(sum(v)), len(v))}
                            for k, v in sorted(per.items())}
            allseq = {}
            for v in vols:
                allseq.setdefault(v["sequence"], []).append(v["predicted"] == "glioma")
            r["volumes_per_sequence"] = {k: {"n": len(v), "glioma": int(sum(v)), "ci95": wilson(int(sum(v)), len(v))}
                                         for k, v in sorted(allseq.items())}
            r["volume_rows"] = vols
        report[model.id] = r
        print(json.dumps({model.id: {k: v for k, v in r.items() if k != "volume_rows"}}, indent=1), flush=True)
    if a.json:
        a.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
