"""What the shipped classifier can and cannot do, measured on real data; prints a report.

1. Held-out accuracy: the model card's validation metrics (666 kaggle4-train slices held apart).
2. External volumes: every BraTS volume in ../shared/data (all gliomas: 6 BraTS 2015 cases x
   FLAIR, T1c; 1 BraTS 2023 case x T1, T1c, T2, FLAIR), classified with the volume rule.
3. Grad-CAM localisation on figshare3 slices with expert tumour boxes: median ratio of mean
   heat inside / outside the box, and how often the heat peak falls within the box grown by
   50%. (figshare images are part of the Kaggle merge, so this measures explanation, not
   generalisation.)
4. Grad-CAM faithfulness (deletion, Samek et al. 2017) on held-out tumour slices: probability
   lost when the 15% hottest vs the 15% coldest head pixels are set to 0.

Per class and per sequence on patient-level held-out slices, volume figures per sequence and
calibration measured away from where it was fitted: the card's ``evaluation`` entry, written from
``Testing/Benchmarks/evaluate_default_classifier.py`` (printed first when present).

5. With ``--localisation``: the localisation metrics (pointing game with 3 mm tolerance,
   energy inside the tumour / box, heat outside the head) per dataset and sequence, for
   Grad-CAM at layer4 without the head mask (before issue 16) and for the model's chosen
   method and input sides (:func:`explain.heatmap_choice`, :func:`explain.heatmap_sizes`);
   ``--compare`` adds every method x stage (x ``--sizes``), on which the choice in
   ``explain.DEFAULT_HEATMAPS`` was made. ``--cases N`` volumes per dataset,
   ``--rows N`` figshare3 box rows, ``--step K`` every K-th tumour slice.

Usage: python Testing/Benchmarks/model_report.py [--model ID|DIR] [--device cpu]
       python Testing/Benchmarks/model_report.py --localisation [--compare] [--cases 3] [--rows 60] [--step 3]
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


def main() -> None:
    import SimpleITK as sitk

    from brainspineai.catalogue import load_model
    from brainspineai.classification.explain import gradcam_batch
    from brainspineai.classification.inference import classify_image
    from brainspineai.io import read_image
    from brainspineai.classification.preprocess import crop_mode, prepare_slices, slice_array
    from brainspineai.classification.predict import predict_batches

    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--localisation", action="store_true")
    ap.add_argument("--compare", action="store_true")
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--rows", type=int, default=60)
    ap.add_argument("--step", type=int, default=3)
    ap.add_argument("--methods", nargs="+", metavar="METHOD@LAYER", help="with --compare: only these")
    ap.add_argument("--sizes", nargs="+", metavar="PX[,PX]", help="with --compare: explanation input sides to "
                    "compare (e.g. 128 192 128,192: one side, or the product of the maps over several); default: the model's")
    ap.add_argument("--datasets", nargs="+", choices=["figshare3", "brats2015", "lgg"])
    ap.add_argument("--lgg", type=Path, help="with --localisation: the TCGA-LGG case folder to use (e.g. a folder of "
                    "links to the validation patients only, to choose a method on them)")
    ap.add_argument("--volumes-only", action="store_true", help="stop after the calibration and BraTS volume figures")
    args = ap.parse_args()
    m = load_model(args.model, args.device)
    if args.localisation:
        return localisation_tables(m, args)
    val = m.card["metrics"]["validation"]
    print(f"model {m.id}: held-out accuracy {val['accuracy']:.2%} on {val['n']} slices, macro F1 {val['macro_f1']:.3f}")

    ev = m.card.get("evaluation") or {}  # written from Testing/Benchmarks/evaluate_default_classifier.py
    for part in ("validation", "test"):
        if part in ev:
            e = ev[part]
            print(f"{part} ({e['n']} slices, patients apart): accuracy {e['accuracy']:.3f} {e['ci95']}")
            for key in ("per_class", "per_source_sequence", "per_sequence_class"):
                print("  " + key + ": " + "; ".join(f"{k} {v['accuracy']:.2f} (n {v['n']}, {v['ci95']})"
                                                   for k, v in e[key].items()))
    if "volumes" in ev:
        print("volumes read as glioma (all are gliomas): " + "; ".join(
            f"{k} {v['glioma']}/{v['n']}" for k, v in ev["volumes"].items()))
    if "calibration_heldout" in ev:
        print(f"calibration, fitted on half the validation patients: {ev['calibration_heldout']}")
    cal = m.card.get("calibration") or {}
    if cal:
        print(f"calibration: temperature {cal['temperature']:g} fitted on {cal['fitted_on']}; ECE (15 bins) "
              f"{cal['ece_before']:.4f} -> {cal['ece_after']:.4f}; NLL {cal['nll_before']:.4f} -> {cal['nll_after']:.4f}")
        u = m.card["uncertainty"]
        print(f"uncertain below top probability {u['min_top_probability']:.3f} or margin {u['min_margin']:.3f}; "
              f"validation: {u['validation']}")

    print("\nExternal BraTS volumes (all glioma), with the detected sequence and the uncertain flag:")
    from brainspineai.classification.sequence import check_sequence

    vols = sorted((DATA / "volumes" / "brats2015-flair-t1c").glob("*/*_subtrMeanDivStd.nii.gz"))
    vols += sorted((DATA / "volumes" / "brats2023-4seq-noseg").glob("*/*.nii.gz"))
    right, flagged, warned = 0, 0, 0
    for v in vols:
        img = read_image(v)
        r = classify_image(img, m)
        seq, warnings = check_sequence(img, m.card, args.device)
        unc = r.extra["uncertainty"]["uncertain"]
        right, flagged, warned = right + (r.predicted == "glioma"), flagged + unc, warned + bool(warnings)
        probs = " ".join(f"{c}={p:.2f}" for c, p in zip(r.classes, r.probabilities))
        print(f"  {v.parent.name[-12:]:>12} {v.name.split('_')[0].split('-')[-1][:12]:<12} -> {r.predicted:<11} ({probs}; "
              f"{r.rule}) sequence {seq['predicted'] if seq else '?'}{' UNCERTAIN' if unc else ''}"
              f"{' WARNED' if warnings else ''}")
    print(f"  glioma predicted for {right} of {len(vols)} volumes; uncertain {flagged}; sequence warning {warned}")
    if args.volumes_only:
        return

    rows = list(csv.DictReader(open(DATA / "brain-mri-2d" / "figshare3" / "tumor_boxes.csv")))[::40][:60]
    ratios, hits = [], []
    for r in rows:
        img = read_image(DATA / "brain-mri-2d" / "figshare3" / r["image"])
        h = sitk.GetArrayFromImage(classify_image(img, m, heatmap=True, heatmap_class=r["label"]).heatmap)
        H, W = h.shape
        cx, cy, w, hh = (float(r[k]) for k in ("x_center", "y_center", "width", "height"))
        box = np.zeros_like(h, dtype=bool)
        box[max(0, int((cy - hh / 2) * H)):int(np.ceil((cy + hh / 2) * H)), max(0, int((cx - w / 2) * W)):int(np.ceil((cx + w / 2) * W))] = True
        ratios.append(h[box].mean() / max(h[~box].mean(), 1e-6))
        iy, ix = np.unravel_index(h.argmax(), h.shape)
        hits.append(abs(ix / W - cx) <= 0.75 * w and abs(iy / H - cy) <= 0.75 * hh)
    print(f"\nGrad-CAM localisation on {len(rows)} figshare3 slices: median heat ratio inside/outside the tumour box "
          f"{np.median(ratios):.2f}, peak within the box (grown 50%) {np.mean(hits):.0%}")

    split = json.loads((m.folder / "split.json").read_text())
    sel = [p for p in sorted(split["validation"]) if not p.startswith("notumor")][::4]
    imgs = [slice_array(read_image(DATA / "brain-mri-2d" / "kaggle4-train" / p)) for p in sel]
    x, _, _ = prepare_slices(imgs, m.input_size, crop=crop_mode(m.card, volume=False))
    y = [m.class_names.index(p.split("/")[0]) for p in sel]
    p0 = predict_batches(m.network, x, m.device)
    hot, cold = [], []
    for i in range(len(sel)):
        h = gradcam_batch(m, x[i:i + 1], y[i])[0].ravel()
        head = np.flatnonzero(x[i, 0].numpy().ravel() > 0.05)
        order = head[np.argsort(h[head])]
        k = int(0.15 * len(head))
        for chosen, out in ((order[-k:], hot), (order[:k], cold)):
            xc = x[i:i + 1].clone().view(-1)
            xc[chosen] = 0
            out.append(p0[i, y[i]] - predict_batches(m.network, xc.view(x[i:i + 1].shape), m.device)[0, y[i]])
    print(f"Grad-CAM deletion on {len(sel)} held-out tumour slices: probability lost hiding the 15% hottest head pixels "
          f"{np.mean(hot):.3f}, the 15% coldest {np.mean(cold):.3f}")


COMPARED = [(me, la) for la in ("layer4", "layer3", "layer2", "layer1") for me in ("gradcam", "gradcam++", "hirescam", "layercam")]


def localisation_tables(m, args) -> None:
    """Localisation metrics per dataset and sequence (see the module doc, item 5)."""
    import time

    from brainspineai.classification.explain import heatmap_choice, heatmap_sizes, heatmap_slice_sigma
    from brainspineai.classification.localisation import SMALL_SECTION_MM2, localisation_report

    vols = DATA / "volumes"
    sources = [("figshare3 boxes", DATA / "brain-mri-2d" / "figshare3" / "tumor_boxes.csv"),
               ("BraTS 2015", vols / "brats2015-flair-t1c"), ("TCGA-LGG", args.lgg or vols / "tcga-lgg-flair")]
    own, sides = (m.input_size,), heatmap_sizes(m)
    configs = [("before: gradcam@layer4, no head mask", ("gradcam", "layer4", False, own, 0))]
    chosen, sigma = heatmap_choice(m), heatmap_slice_sigma(m)
    configs.append((f"chosen: {chosen[0]}@{chosen[1]} {'+'.join(map(str, sides))} px, head mask"
                    + (f", slice sigma {sigma:g}" if sigma else ""), chosen + (True, sides, sigma)))
    if sigma and not args.compare:
        configs.append((f"{chosen[0]}@{chosen[1]} {'+'.join(map(str, sides))} px, head mask, not across slices",
                        chosen + (True, sides, 0)))
    if args.compare:
        pairs = [tuple(t.split("@")) for t in args.methods] if args.methods else COMPARED
        size_sets = [tuple(int(v) for v in t.split(",")) for t in args.sizes] if args.sizes else [sides]
        configs += [(f"{me}@{la} {'+'.join(map(str, ss))} px" + (f", slice sigma {sigma:g}" if sigma else ""),
                     (me, la, True, ss, sigma)) for me, la in pairs for ss in size_sets
                    if (me, la, tuple(sorted(ss))) != tuple(chosen) + (tuple(sides),)]
    if args.datasets:
        sources = [s for s, key in zip(sources, ("figshare3", "brats2015", "lgg")) if key in args.datasets]
    print(f"\nLocalisation of {m.id} (pointing game: peak within 3 mm of the tumour; energy: share of the heat "
          f"inside the tumour / box; outside: share of the heat outside the head); slice-level means")
    print(f"{'dataset':<16} {'sequence':<9} {'n':>4}  {'method':<50} {'pointing':>8} {'energy':>7} {'outside':>8}  "
          "pointing 95% CI (bootstrap over patients)")
    for name, src in sources:
        if not src.exists():
            print(f"{name:<16} (not found: {src})")
            continue
        for label, (me, la, mask, ss, sg) in configs:
            t = time.time()
            rep = localisation_report(m, src, me, la, mask_head=mask, step=args.step,
                                      limit=args.rows if src.is_file() else args.cases, input_sizes=ss, slice_sigma=sg)
            for seq, g in rep["groups"].items():
                ci = g.get("pointing_ci95") or [float("nan")] * 2
                print(f"{name:<16} {seq:<9} {g['n']:>4}  {label:<50} {g['pointing']:8.3f} {g['energy_in_tumour']:7.3f} "
                      f"{g['heat_outside_head']:8.3f}  [{ci[0]:.3f}, {ci[1]:.3f}]", flush=True)
                if g.get("misses") and src.is_dir() and label.startswith("chosen"):  # axial volumes: sides mean L / R
                    mi, small, large = g["misses"], g.get("pointing_small"), g.get("pointing_large")
                    print(f"{'':<16} {'':<9} {'':>4}  misses by peak distance " + ", ".join(f"{k} {v}" for k, v in mi.items()
                                                                                       if k != "other_side")
                          + f"; across the midline {mi['other_side']}; pointing on sections < {SMALL_SECTION_MM2:g} mm2 "
                          + (f"{small:.2f} ({g['n_small']})" if small is not None else "-")
                          + ", larger " + (f"{large:.2f} ({g['n_large']})" if large is not None else "-"), flush=True)
            print(f"{'':<16} ({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
