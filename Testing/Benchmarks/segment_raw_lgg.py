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
    """Whole-tumour Dice: WT is every labelled voxel of the BraTS labelmap ``pred``, against the
    binary mask ``truth`` on the same grid."""
    import SimpleITK as sitk

    p = sitk.GetArrayFromImage(sitk.ReadImage(str(pred))) > 0
    t = sitk.GetArrayFromImage(sitk.ReadImage(str(truth))) > 0
    return float(2 * (p & t).sum() / max(1, p.sum() + t.sum()))


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
        raw, prep = (bootstrap_ci(np.mean, (a[:, k],), n_boot=2000) for k in (0, 1))
        print(f"{len(a)} patients: mean WT Dice as given {a[:, 0].mean():.3f} [{raw[0]:.3f}, {raw[1]:.3f}], "
              f"after preprocessing {a[:, 1].mean():.3f} [{prep[0]:.3f}, {prep[1]:.3f}] (95% bootstrap over patients)")


if __name__ == "__main__":
    main()
