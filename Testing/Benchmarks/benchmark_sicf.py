"""SICF speed: feature extraction and Lyrebird feature selection, beside a plain forest.

Prints, for the machine it runs on:
  - the quadrant ROI on the real cervical spine volume (T1 and T2): share of the manual cord
    mask inside the ROI (worst and mean axial slice), ROI area as a share of the slice, and
    milliseconds per slice;
  - slices per second of the hand-crafted branch (read, ROI, equalisation, SIFT) and of
    VGG16 fc7 alone (batches of 16 ROIs, CPU), on real figshare3 slices;
  - the LOA selection time for a budget (population x iterations, 5-fold CV RF fitness) and
    the validation accuracy of the forest on the selected features, beside a plain random
    forest on all 4608 fused features (fit time and accuracy), with the time ratio.

Usage: python Testing/Benchmarks/benchmark_sicf.py [--limit-per-class N] [--image-size PX]
       [--population N] [--iterations N] [--roi full|quadrant] [--data DIR]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BrainSpineAI"))
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    import numpy as np

    from brainspineai.classification.data import limit_per_class_subset, scan_image_folder, stratified_split
    from brainspineai.io import read_image
    from brainspineai.sicf.features import (VGGFeatures, bovw_histogram, equalised_roi, fit_codebook, roi_box,
                                            sift_features, slice_from_image)
    from brainspineai.sicf.forest import make_forest
    from brainspineai.sicf.lyrebird import select_features

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA / "brain-mri-2d" / "figshare3"))
    ap.add_argument("--limit-per-class", type=int, default=40)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--population", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--roi", default="full", choices=["full", "quadrant"])
    ap.add_argument("--words", type=int, default=512)
    a = ap.parse_args()
    spine_roi_report()

    paths, labels, classes = scan_image_folder(a.data)
    paths, labels = limit_per_class_subset(paths, labels, a.limit_per_class, 0)
    t0 = time.perf_counter()
    rois, descs = [], []
    for p in paths:
        arr = slice_from_image(read_image(p))
        roi = equalised_roi(arr, roi_box(arr, a.roi), a.image_size)
        rois.append(roi)
        descs.append(sift_features(roi)[1])
    t_hand = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vgg = VGGFeatures()
    t0 = time.perf_counter()
    fc7 = vgg(np.stack(rois))
    t_vgg = time.perf_counter() - t0
    n = len(paths)
    print(f"{n} slices of {Path(a.data).name}, ROI {a.roi}, {a.image_size} px, VGG16 {vgg.provenance['source']}")
    print(f"read + ROI + equalisation + SIFT: {n / t_hand:.1f} slices/s")
    print(f"VGG16 fc7 (CPU, batches of 16):   {n / t_vgg:.1f} slices/s")

    tr, va = stratified_split(labels, 0.3, 0)
    words = min(a.words, max(2, sum(len(descs[i]) for i in tr) // 4))
    codebook = fit_codebook([descs[i] for i in tr], words, 0)
    x = np.concatenate([np.stack([bovw_histogram(d, codebook) for d in descs]), fc7], 1)
    t0 = time.perf_counter()
    rf = make_forest(0).fit(x[tr], labels[tr])
    t_rf = time.perf_counter() - t0
    acc_rf = float((rf.predict(x[va]) == labels[va]).mean())
    mask, info = select_features(x[tr], labels[tr], a.population, a.iterations, seed=0)
    rf2 = make_forest(0).fit(x[tr][:, mask], labels[tr])
    acc_lo = float((rf2.predict(x[va][:, mask]) == labels[va]).mean())
    print(f"plain RF on all {x.shape[1]} features: fit {t_rf:.2f} s, validation accuracy {acc_rf:.3f} ({len(va)} slices)")
    print(f"LOA {a.population} x {a.iterations}: {info['seconds']:.1f} s ({info['evaluations']} fitness evaluations), "
          f"{info['n_kept']} features kept, validation accuracy {acc_lo:.3f}; "
          f"time ratio LOA / plain RF fit {info['seconds'] / t_rf:.0f}x")


def spine_roi_report() -> None:
    import numpy as np
    import SimpleITK as sitk

    from brainspineai.sicf.roi import quadrant_roi

    spine = DATA / "volumes" / "spine-cervical-t1-t2"
    for image, mask in (("t1/t1w.nii.gz", "t1/t1w_seg-manual.nii.gz"), ("t2/t2.nii.gz", "t2/t2_seg-manual.nii.gz")):
        if not (spine / image).exists():
            print(f"{spine / image} not found: spine ROI figures skipped")
            return
        vol = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(spine / image)), "LPS")).astype(np.float32)
        cord = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(spine / mask)), "LPS")) > 0
        cov, area = [], []
        t0 = time.perf_counter()
        for k in range(vol.shape[0]):
            if cord[k].any():
                r0, c0, r1, c1 = quadrant_roi(vol[k])
                cov.append(cord[k, r0:r1, c0:c1].sum() / cord[k].sum())
                area.append((r1 - r0) * (c1 - c0) / cord[k].size)
        ms = (time.perf_counter() - t0) / len(cov) * 1000
        print(f"quadrant ROI, {image} ({len(cov)} axial slices with cord, {vol.shape[1]}x{vol.shape[2]} px): "
              f"cord inside ROI worst {min(cov):.1%}, mean {np.mean(cov):.1%}; ROI area {np.mean(area):.0%} of the slice "
              f"(max {max(area):.0%}); {ms:.2f} ms/slice")


if __name__ == "__main__":
    main()
