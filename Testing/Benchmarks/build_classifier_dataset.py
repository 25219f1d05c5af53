"""Build the training folder of the default tumour classifier from everything real that is shared.

    PYTHONPATH=BrainSpineAI python3 Testing/Benchmarks/build_classifier_dataset.py --out DIR

Writes ``DIR/train`` (ImageFolder: glioma, meningioma, notumor, pituitary) with a ``groups.csv``
(``image, group, split, sequence, source``) that :func:`brainspineai.classification.data.split_dataset`
reads, and ``DIR/test`` (the same layout) with slices of patients kept out of training and
validation, and a ``boxes.csv`` in each (tumour boxes: figshare3's expert boxes and the bounding
box of the TCGA-LGG / BraTS mask on each tumour slice) for ``train classifier --boxes``. Images of
2D sets are symlinked; volume slices are written as 8-bit PNG.

Sources and how they are split (all at the patient level where patients are known):

- ``kaggle4-train``: no patient ids. The validation images of the current default model
  (its ``split.json``) are fixed to validation and its training images to training, so that the
  old and the new model are compared on images neither trained on.
- ``figshare3`` (T1c): patient ids were lost; file numbers run in the source's order, where
  one patient's slices are consecutive, so blocks of 20 consecutive numbers are one group.
- Near-duplicates across the two 2D sets (kaggle4 contains a copy of figshare): images whose
  32 x 32 thumbnails correlate above 0.97 are one group, so a copy never sits on the other side.
- ``tcga-lgg-flair`` (81 patients; FLAIR, T1, T1c): 20 % of patients (seed 0) are test, 15 %
  validation, the rest training. From each volume: up to 5 tumour slices (mask area at least
  30 % of the volume's largest) as ``glioma`` and up to 3 tumour-free slices (no mask within
  3 slices, head at least 60 % of the largest head section) as ``notumor``.
- ``brats2015-flair-t1c`` (6 patients; FLAIR, T1c): all test (an outside institution's
  volumes for the volume-level figures); the same slice rule with the expert labels.
- ``brats2023-4seq-noseg`` has no labels: used only by the volume-level figures.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BrainSpineAI"))
DATA = ROOT.parent / "shared" / "data"
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
DEFAULT = ROOT / "BrainSpineAI" / "brainspineai" / "zoo" / "brain-tumor-4class-resnet18w32"


def thumbs(paths, size=32):
    import cv2

    out = np.zeros((len(paths), size * size), np.float32)
    for i, p in enumerate(paths):
        im = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        v = cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
        v -= v.mean()
        out[i] = v / (np.linalg.norm(v) + 1e-6)
    return out


def near_duplicate_groups(paths, keys, threshold=0.97):
    """Union-find: images sharing a key, or whose thumbnails correlate above ``threshold``, are one group.

    :returns: (group root per image, number of near-duplicate pairs).
    """
    t = thumbs(paths)
    parent = list(range(len(paths)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = {}
    for i, k in enumerate(keys):
        parent[find(i)] = find(first.setdefault(k, i))
    n_pairs = 0
    for s in range(0, len(paths), 512):
        sim = t[s:s + 512] @ t.T
        for a, b in zip(*np.nonzero(sim > threshold)):
            a += s
            if a < b:
                parent[find(a)] = find(b)
                n_pairs += 1
    return [find(i) for i in range(len(paths))], n_pairs


def volume_slices(vol_path, mask_path, label_fn, n_tumour=5, n_free=3):
    """(glioma slices, notumor slices) as uint8 arrays in the LPS axial order classify uses."""
    import SimpleITK as sitk

    from brainspineai.classification.preprocess import to_lps_axial

    vol = sitk.GetArrayFromImage(to_lps_axial(sitk.ReadImage(str(vol_path)))).astype(np.float32)
    mask = label_fn(sitk.GetArrayFromImage(to_lps_axial(sitk.ReadImage(str(mask_path)))))
    area = mask.reshape(len(mask), -1).sum(1)
    lo, hi = np.percentile(vol[vol > vol.min()], [0.5, 99.5]) if np.any(vol > vol.min()) else (0, 1)
    img = (np.clip((vol - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    head = (vol > vol.min() + 0.05 * (vol.max() - vol.min())).reshape(len(vol), -1).sum(1)
    tumour = np.flatnonzero(area >= 0.3 * area.max()) if area.max() > 0 else np.zeros(0, int)
    near = np.zeros(len(vol), bool)
    for z in np.flatnonzero(area > 0):
        near[max(0, z - 3):z + 4] = True
    free = np.flatnonzero(~near & (head >= 0.6 * head.max()))
    pick = lambda idx, n: idx[np.linspace(0, len(idx) - 1, n).round().astype(int)] if len(idx) > n else idx  # noqa: E731
    def box(z):  # the mask's bounding box on slice z, as fractions (x_center, y_center, width, height)
        ys, xs = np.nonzero(mask[z])
        h, w = mask[z].shape
        return ((xs.min() + xs.max() + 1) / 2 / w, (ys.min() + ys.max() + 1) / 2 / h, (xs.max() + 1 - xs.min()) / w,
                (ys.max() + 1 - ys.min()) / h)

    return ([(int(z), img[z], box(z)) for z in pick(tumour, n_tumour)],
            [(int(z), img[z], None) for z in pick(free, n_free)])


def main(argv=None):
    import cv2

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = args.out
    rows = {"train": [], "test": []}
    for part in rows:
        for c in CLASSES:
            (out / part / c).mkdir(parents=True, exist_ok=True)

    # 2D sets
    old = json.loads((DEFAULT / "split.json").read_text())
    old_side = {**{p: "train" for p in old["train"]}, **{p: "validation" for p in old["validation"]}}
    items = []  # (source, rel, path, sequence, group, fixed)
    for rel in old_side:
        items.append(("kaggle4", rel, DATA / "brain-mri-2d" / "kaggle4-train" / rel, "", "k4:" + rel, old_side[rel]))
    for p in sorted((DATA / "brain-mri-2d" / "figshare3").glob("*/*.jpg")):
        items.append(("figshare3", f"{p.parent.name}/{p.name}", p, "t1c", f"fs:{int(p.stem) // 20}", ""))
    roots, n_pairs = near_duplicate_groups([it[2] for it in items], [it[4] for it in items])
    side_of = {}
    for (src, rel, p, seq, g, fixed), r in zip(items, roots):
        if fixed:  # a group holding an image the old model trained on is training data
            prev = side_of.get(r)
            side_of[r] = "train" if "train" in (prev, fixed) else fixed
    group_of = dict(zip([it[4] for it in items], roots))
    moved = sum(1 for it in items if it[5] == "validation" and side_of[group_of[it[4]]] == "train")
    for src, rel, p, seq, g, fixed in items:
        name = f"{src}__{Path(rel).name}"
        cls = Path(rel).parent.name
        dst = out / "train" / cls / name
        if not dst.exists():
            os.symlink(p.resolve(), dst)
        rows["train"].append((f"{cls}/{name}", f"2d:{group_of[g]}", side_of.get(group_of[g], ""), seq, src))

    # volumes
    tcga = sorted(p for p in (DATA / "volumes" / "tcga-lgg-flair").glob("TCGA_*") if p.is_dir())
    rng = np.random.default_rng(args.seed)
    order = [tcga[i] for i in rng.permutation(len(tcga))]
    n_te, n_va = round(0.2 * len(order)), round(0.15 * len(order))
    sides = {d.name: "test" for d in order[:n_te]}
    sides.update({d.name: "validation" for d in order[n_te:n_te + n_va]})
    vols = []
    for d in tcga:
        for seq, f in (("t1", "t1.nii.gz"), ("flair", "flair.nii.gz"), ("t1c", "t1ce.nii.gz")):
            if (d / f).exists():
                vols.append(("tcga-lgg", d.name, seq, d / f, d / "mask.nii.gz", lambda m: m > 0, sides.get(d.name, "train")))
    for d in sorted((DATA / "volumes" / "brats2015-flair-t1c").glob("brats_*")):
        for seq, f in (("flair", "Flair_subtrMeanDivStd.nii.gz"), ("t1c", "T1c_subtrMeanDivStd.nii.gz")):
            vols.append(("brats2015", d.name, seq, d / f, d / "OTMultiClass.nii.gz", lambda m: m > 0, "test"))
    counts = {}
    boxes = {"train": [], "test": []}
    for r in csv.DictReader(open(DATA / "brain-mri-2d" / "figshare3" / "tumor_boxes.csv", newline="", encoding="utf-8")):
        cls, fname = r["image"].split("/")
        boxes["train"].append((f"{cls}/figshare3__{fname}", r["label"], r["x_center"], r["y_center"], r["width"], r["height"]))
    for src, pid, seq, path, mask, fn, side in vols:
        tum, free = volume_slices(path, mask, fn)
        part = "test" if side == "test" else "train"
        for cls, sl in (("glioma", tum), ("notumor", free)):
            for z, arr, bx in sl:
                name = f"{src}__{pid}__{seq}__z{z:03d}.png"
                cv2.imwrite(str(out / part / cls / name), arr)
                if bx is not None:
                    boxes[part].append((f"{cls}/{name}", cls, *(round(float(v), 5) for v in bx)))
                rows[part].append((f"{cls}/{name}", f"{src}:{pid}", "" if part == "test" else side, seq, src))
                counts[(part, side, src, seq, cls)] = counts.get((part, side, src, seq, cls), 0) + 1
    for part, rs in rows.items():
        with open(out / part / "groups.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "group", "split", "sequence", "source"])
            w.writerows(rs)
        with open(out / part / "boxes.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "label", "x_center", "y_center", "width", "height"])
            w.writerows(boxes[part])
    print(json.dumps({"near_duplicate_pairs": n_pairs, "old_validation_moved_to_train": moved,
                      "tcga_patients": {s: sum(1 for v in sides.values() if v == s) for s in ("test", "validation")},
                      "volume_slices": {"/".join(k): v for k, v in sorted(counts.items())},
                      "images": {p: len(r) for p, r in rows.items()}}, indent=1))


if __name__ == "__main__":
    main()
