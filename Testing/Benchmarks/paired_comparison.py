"""Paired comparison of two classifiers on the same held-out images.

Both models predict the validation images listed in model A's ``split.json`` (they must
share the split, as the ablation and label-efficiency runs do). Printed: each accuracy, the
difference B - A with a 95% paired percentile bootstrap interval (the same resampled cases
for both models), and McNemar's exact test on the discordant pairs (scipy binomtest).

    python Testing/Benchmarks/paired_comparison.py MODEL_A MODEL_B DATA_DIR [--bootstrap 2000]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BrainSpineAI"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_a")
    ap.add_argument("model_b")
    ap.add_argument("data_dir")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from scipy.stats import binomtest

    from brainspineai.catalogue import load_model
    from brainspineai.classification.data import load_slice_batch, scan_image_folder
    from brainspineai.classification.predict import predict_batches

    a, b = load_model(args.model_a, args.device), load_model(args.model_b, args.device)
    root = Path(args.data_dir)
    split_a = json.loads((a.folder / "split.json").read_text())["validation"]
    split_b = json.loads((b.folder / "split.json").read_text())["validation"]
    if sorted(split_a) != sorted(split_b):
        sys.exit("the two models were validated on different images; a paired comparison needs one split")
    paths, labels, _ = scan_image_folder(root, a.class_names)
    keep = [i for i, p in enumerate(paths) if str(p.relative_to(root)) in set(split_a)]
    paths, y = [paths[i] for i in keep], labels[keep]
    right = []
    for m in (a, b):
        x = load_slice_batch(paths, m.input_size)
        right.append(predict_batches(m.network, x, m.device).argmax(1) == y)
    ra, rb = right
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(y), size=(args.bootstrap, len(y)))
    diffs = rb[idx].mean(1) - ra[idx].mean(1)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    only_a, only_b = int(np.sum(ra & ~rb)), int(np.sum(rb & ~ra))
    p = binomtest(only_b, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    print(f"{len(y)} paired held-out images")
    print(f"A {a.id}: accuracy {ra.mean():.2%}")
    print(f"B {b.id}: accuracy {rb.mean():.2%}")
    print(f"B - A: {rb.mean() - ra.mean():+.2%}  (95% paired bootstrap CI {lo:+.2%} to {hi:+.2%})")
    print(f"discordant: only A right {only_a}, only B right {only_b}; McNemar exact p = {p:.3g}")


if __name__ == "__main__":
    main()
