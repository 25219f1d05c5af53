"""Head motion between sequences, and what preprocessing recovers (issue 17), on every shared
BraTS 2015 case: the same rigid motion (3, -2, 4 degrees about x, y, z and (4, -3, 2.5) mm about
the volume centre) is applied to the FLAIR in two ways, and the shipped segmenter's Dice
(WT / TC / ET against the expert labels) is compared with and without ``--preprocess``:

* header: the FLAIR's voxels untouched, its header moved (the unmoved case is the exact baseline);
* voxels: the FLAIR resampled through the motion onto its own grid (linear; the labels moved
  with it, nearest neighbour) -- what a patient moving between acquisitions does; its control
  is the T1c moved through the exact known motion too (the resampling's own cost, no
  registration error).

The segmenter trained on pat0001-0004 (their figures are training cases: use them for the
change that motion causes, not for accuracy); pat0005 and pat0006 were held out.

Usage: python Testing/Benchmarks/motion_recovery.py [--cases pat0005 ...] [--device cpu] [--model ID|DIR] [--tta] [--registration-only]
Prints the registration error per case, one line per case and setting, then the mean gap to the
baseline with a 95% bootstrap interval over cases.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BrainSpineAI"))
BRATS = ROOT.parent / "shared" / "data" / "volumes" / "brats2015-flair-t1c"
ROTATION_DEG = (3.0, -2.0, 4.0)
TRANSLATION_MM = (4.0, -3.0, 2.5)


def motion(image):
    """The rigid motion about ``image``'s centre (SimpleITK Euler3DTransform)."""
    import SimpleITK as sitk

    t = sitk.Euler3DTransform()
    t.SetCenter(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()]))
    t.SetRotation(*np.deg2rad(ROTATION_DEG))
    t.SetTranslation(TRANSLATION_MM)
    return t


def header_moved(image):
    """``image`` with its voxels untouched and its grid moved by :func:`motion`."""
    import SimpleITK as sitk

    t = motion(image)
    m = np.array(t.GetMatrix()).reshape(3, 3)
    c = np.array(t.GetCenter())
    out = sitk.Image(image)
    out.SetDirection(tuple((m @ np.array(image.GetDirection()).reshape(3, 3)).ravel()))
    out.SetOrigin(tuple(m @ (np.array(image.GetOrigin()) - c) + c + np.array(TRANSLATION_MM)))
    return out


def voxels_moved(image, nearest=False):
    """``image`` resampled through :func:`motion` onto its own grid (the head moved in the scanner);
    what moves in from outside gets the background value (the corner voxel: these volumes are
    z-scored, so their background is not 0)."""
    import SimpleITK as sitk

    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    background = float(sitk.GetArrayViewFromImage(image)[0, 0, 0])
    return sitk.Resample(image, image, motion(image).GetInverse(), interp, background, image.GetPixelID())


def dice(seg, labels) -> dict:
    """WT / TC / ET Dice; ``labels`` in BraTS 2015 codes (1 necrosis, 2 oedema, 3 non-enhancing,
    4 enhancing), ``seg`` in the segmenter's BraTS codes (1, 2, 4); regions as the library
    defines them (:func:`brainspineai.segmentation.data.label_to_regions`)."""
    from brainspineai.segmentation.data import REGIONS, brats2015_to_2020, label_to_regions

    p, t = label_to_regions(seg, axis=0), label_to_regions(brats2015_to_2020(labels), axis=0)
    return {r: float(2 * (p[i] & t[i]).sum() / max(1, p[i].sum() + t[i].sum())) for i, r in enumerate(REGIONS)}


def segment(flair: Path, t1ce: Path, out: Path, preprocess: str, device: str, model=None, tta=False) -> np.ndarray:
    import SimpleITK as sitk

    env = dict(os.environ, PYTHONPATH=str(ROOT / "BrainSpineAI"))
    r = subprocess.run([sys.executable, "-m", "brainspineai", "segment", "--flair", str(flair), "--t1ce", str(t1ce),
                        "--out", str(out), "--preprocess", preprocess, "--device", device, "--progress", "jsonl"]
                       + (["--model", str(model)] if model else []) + (["--tta"] if tta else []),
                       capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out)))


def run_case(case: Path, tmp: Path, device: str, model=None, tta=False) -> dict:
    import SimpleITK as sitk

    flair = sitk.ReadImage(str(case / "Flair_subtrMeanDivStd.nii.gz"), sitk.sitkFloat32)
    t1ce_path = case / "T1c_subtrMeanDivStd.nii.gz"
    t1ce = sitk.ReadImage(str(t1ce_path), sitk.sitkFloat32)
    labels_img = sitk.ReadImage(str(case / "OTMultiClass.nii.gz"))
    labels = sitk.GetArrayFromImage(labels_img)
    moved_labels = sitk.GetArrayFromImage(voxels_moved(labels_img, nearest=True))

    def write(img, name):
        p = tmp / name
        sitk.WriteImage(img, str(p))
        return p

    f_header = write(header_moved(flair), "flair_header.nii.gz")
    f_voxels = write(voxels_moved(flair), "flair_voxels.nii.gz")
    t_voxels = write(voxels_moved(t1ce), "t1ce_voxels.nii.gz")
    f_orig = case / "Flair_subtrMeanDivStd.nii.gz"
    seg = lambda f, t, p: segment(f, t, tmp / "seg.nii.gz", p, device, model, tta)  # noqa: E731
    return {
        "unmoved": dice(seg(f_orig, t1ce_path, "off"), labels),
        "header, --preprocess off": dice(seg(f_header, t1ce_path, "off"), labels),
        "header, --preprocess auto": dice(seg(f_header, t1ce_path, "auto"), labels),
        "voxels, control (T1c moved exactly)": dice(seg(f_voxels, t_voxels, "off"), moved_labels),
        "voxels, --preprocess off": dice(seg(f_voxels, t1ce_path, "off"), moved_labels),
        "voxels, --preprocess auto": dice(seg(f_voxels, t1ce_path, "auto"), moved_labels),
    }


def registration_error(case: Path) -> dict:
    """Mean / max distance (mm, over every 500th FLAIR foreground voxel) between where the
    registration of the T1c onto the header-moved FLAIR puts a voxel and where it truly is (the
    same voxel index: the voxels were aligned before the header moved), beside the same figure
    for the unmoved pair (how far mutual information's optimum lies from BraTS's own alignment)."""
    import SimpleITK as sitk

    from brainspineai.preprocessing.registration import foreground, register

    flair = sitk.ReadImage(str(case / "Flair_subtrMeanDivStd.nii.gz"), sitk.sitkFloat32)
    t1ce = sitk.ReadImage(str(case / "T1c_subtrMeanDivStd.nii.gz"), sitk.sitkFloat32)
    idx = np.argwhere(foreground(sitk.GetArrayFromImage(flair)))[::500][:, ::-1].tolist()  # (x, y, z)
    out = {}
    for name, fixed in (("header-moved", header_moved(flair)), ("unmoved", flair)):
        r = register(fixed, t1ce, names=("flair", "t1ce"))
        d = [np.linalg.norm(np.subtract(r.transform.TransformPoint(fixed.TransformIndexToPhysicalPoint(i)),
                                        t1ce.TransformIndexToPhysicalPoint(i))) for i in idx]
        out[name] = {"mean_mm": float(np.mean(d)), "max_mm": float(np.max(d))}
    return out


def boot_ci(x):
    """95% bootstrap interval of the mean over cases (:func:`brainspineai.prognosis.survival.bootstrap_ci`)."""
    from brainspineai.prognosis.survival import bootstrap_ci

    return bootstrap_ci(np.mean, (np.asarray(x, float),), n_boot=2000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", help="case name parts (default: every shared BraTS 2015 case)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", help="segmenter id or folder (default: the shipped one)")
    ap.add_argument("--tta", action="store_true", help="segment every setting with flip test-time augmentation")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--registration-only", action="store_true",
                    help="only the registration error of the header motion (no segmentation)")
    args = ap.parse_args()
    cases = sorted(p for p in BRATS.iterdir() if p.is_dir()
                   and (not args.cases or any(c in p.name for c in args.cases)))
    for case in cases if not (args.model or args.tta) else []:
        e = registration_error(case)
        print(f"{case.name}  registration error, header motion: mean {e['header-moved']['mean_mm']:.2f} / max "
              f"{e['header-moved']['max_mm']:.2f} mm; the unmoved pair: mean {e['unmoved']['mean_mm']:.2f} / max "
              f"{e['unmoved']['max_mm']:.2f} mm", flush=True)
    if args.registration_only:
        return
    results = {}
    for case in cases:
        with tempfile.TemporaryDirectory() as tmp:
            results[case.name] = r = run_case(case, Path(tmp), args.device, args.model, args.tta)
        for setting, d in r.items():
            print(f"{case.name}  {setting:38s} WT {d['WT']:.3f}  TC {d['TC']:.3f}  ET {d['ET']:.3f}", flush=True)
    print("\nmean change (95% bootstrap over cases), registered minus baseline:")
    for label, setting, base in (("header", "header, --preprocess auto", "unmoved"),
                                 ("header, no preprocessing", "header, --preprocess off", "unmoved"),
                                 ("voxels vs control", "voxels, --preprocess auto", "voxels, control (T1c moved exactly)"),
                                 ("voxels vs unmoved", "voxels, --preprocess auto", "unmoved"),
                                 ("voxels, no preprocessing", "voxels, --preprocess off", "voxels, control (T1c moved exactly)")):
        parts = []
        for region in ("WT", "TC", "ET"):
            diff = [results[c][setting][region] - results[c][base][region] for c in results]
            lo, hi = boot_ci(diff)
            parts.append(f"{region} {np.mean(diff):+.3f} [{lo:+.3f}, {hi:+.3f}]")
        print(f"  {label:26s} " + "  ".join(parts))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
