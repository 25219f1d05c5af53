"""The shipped BraTS segmenter on raw clinical studies (issue 17): TCGA-LGG patients with the
skull present, segmented as they are (``--preprocess off``) and after ``brainspineai preprocess
--mode on`` (T1c and T1 registered onto the FLAIR, brain extracted); whole-tumour (WT) Dice
against the expert FLAIR abnormality mask. None of these patients is in the segmenter's
training data (BraTS only). TCGA's voxel spacing is a placeholder, hence ``--brain-ml 100 2500``.

Usage: python Testing/Benchmarks/segment_raw_lgg.py [--every 8] [--limit 10] [--device cpu]
Prints one line per patient and the mean with a 95% bootstrap interval over patients.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BrainSpineAI"))
LGG = ROOT.parent / "shared" / "data" / "volumes" / "tcga-lgg-flair"


def cli(*args) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "BrainSpineAI"))
    r = subprocess.run([sys.executable, "-m", "brainspineai", *map(str, args)], capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")


def dice(pred: Path, truth: Path) -> float:
    """Whole-tumour Dice of a BraTS labelmap against a binary mask on the same grid
    (:func:`brainspineai.segmentation.inference.region_metrics`)."""
    import SimpleITK as sitk

    from brainspineai.segmentation.inference import region_metrics

    p = sitk.GetArrayFromImage(sitk.ReadImage(str(pred)))
    t = (sitk.GetArrayFromImage(sitk.ReadImage(str(truth))) > 0).astype(np.uint8)  # label 1: inside WT
    return region_metrics(p, t, (1.0, 1.0, 1.0))["WT"]["dice"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--every", type=int, default=8, help="every K-th patient folder with a T1c")
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    cases = [c for c in sorted(LGG.iterdir()) if (c / "t1ce.nii.gz").is_file() and (c / "mask.nii.gz").is_file()]
    cases = cases[::args.every][:args.limit]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in cases:
            out = Path(tmp) / c.name
            t1 = ["--t1", c / "t1.nii.gz"] if (c / "t1.nii.gz").is_file() else []
            try:
                cli("segment", "--flair", c / "flair.nii.gz", "--t1ce", c / "t1ce.nii.gz", "--out", out / "raw.nii.gz",
                    "--device", args.device, "--preprocess", "off")
                cli("preprocess", "--flair", c / "flair.nii.gz", "--t1ce", c / "t1ce.nii.gz", *t1, "--out-dir", out / "prep",
                    "--mode", "on", "--brain-ml", "100", "2500", "--device", args.device)
                cli("segment", "--flair", out / "prep" / "flair.nii.gz", "--t1ce", out / "prep" / "t1ce.nii.gz",
                    "--out", out / "prep.nii.gz", "--device", args.device, "--preprocess", "off")
            except RuntimeError as exc:
                print(f"{c.name}: failed ({exc})", flush=True)
                continue
            rows.append((dice(out / "raw.nii.gz", c / "mask.nii.gz"), dice(out / "prep.nii.gz", c / "mask.nii.gz")))
            print(f"{c.name}: WT Dice as given {rows[-1][0]:.3f}, after preprocessing {rows[-1][1]:.3f}", flush=True)
    if rows:
        from brainspineai.prognosis.survival import bootstrap_ci

        a = np.asarray(rows)
        (lo0, hi0), (lo1, hi1) = (bootstrap_ci(np.mean, (a[:, k],), n_boot=2000) for k in (0, 1))
        lo, hi = (lo0, lo1), (hi0, hi1)
        print(f"{len(a)} patients: mean WT Dice as given {a[:, 0].mean():.3f} [{lo[0]:.3f}, {hi[0]:.3f}], "
              f"after preprocessing {a[:, 1].mean():.3f} [{lo[1]:.3f}, {hi[1]:.3f}] (95% bootstrap over patients)")


if __name__ == "__main__":
    main()
