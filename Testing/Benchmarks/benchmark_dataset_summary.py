"""Speed of the dataset summary (``brainspineai dataset-summary``) on real data: files per
second on the Kaggle training split (every slice fully decoded with Pillow, its size read)
and on the BraTS 2015 cases (headers of every sequence, every labelmap read whole).
The figure is the best of ``--repeats`` runs (the first one also warms the page cache).

    python Testing/Benchmarks/benchmark_dataset_summary.py [--repeats 3] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BrainSpineAI"))
DATA = ROOT.parent / "shared" / "data"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the figures as JSON")
    args = ap.parse_args()
    from brainspineai.datasets import summarise

    rows = []
    for name, folder in (("kaggle4-train", DATA / "brain-mri-2d" / "kaggle4-train"),
                         ("brats2015-flair-t1c", DATA / "volumes" / "brats2015-flair-t1c")):
        if not folder.is_dir():
            print(f"{name}: not found at {folder}, skipped")
            continue
        runs = [summarise(folder) for _ in range(max(1, args.repeats))]
        best = min(runs, key=lambda d: d["seconds"])
        n = best.get("n_files") or sum(best.get("sequences", {}).values()) + best.get("n_cases", 0)
        rows.append({"dataset": name, "files": n, "seconds": best["seconds"],
                     "files_per_second": best["files_per_second"], "problems": len(best["problems"])})
        print(f"{name:<22} {n:>6} files  {best['seconds']:7.2f} s  {best['files_per_second']:>9.1f} files/s  "
              f"problems: {len(best['problems'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
