"""Training throughput of each pipeline beside a bare cross-entropy loop on the same backbone.

Every pipeline runs through its public function (data in memory, augmentation, Fabric loop,
per-epoch validation and checkpoint included) on the same real slices; its images per second
come from its model card (training images seen / training seconds; SimCLR counts slices,
each seen as two views). The bare loop is plain PyTorch on the same prepared slices, same
backbone, input size and batch size: forward, cross-entropy, backward, AdamW step, nothing
else. The ratio pipeline / bare is the figure.

    python Testing/Benchmarks/benchmark_training.py [--backbone resnet18-w32] [--image-size 128]
        [--per-class 64] [--epochs 2] [--device auto]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BrainSpineAI"))
DATA = ROOT.parent / "shared" / "data" / "brain-mri-2d" / "kaggle4-train"


def bare_ce(x, y, backbone, size, batch, steps, device):
    import torch
    import torch.nn.functional as F

    from brainspineai.classification.networks import SingleBranchNet

    torch.manual_seed(0)
    net = SingleBranchNet(backbone, 4, size).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    n = len(y)

    def one(i):
        idx = torch.randint(0, n, (batch,))
        loss = F.cross_entropy(net(x[idx].to(device)), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(3):
        one(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(steps):
        one(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet18-w32")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--per-class", type=int, default=64, help="training slices per class (limit_per_class)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    import torch

    from brainspineai.classification.affcl import AFFCLConfig, train_affcl
    from brainspineai.classification.data import load_labelled_split
    from brainspineai.device import resolve_device
    from brainspineai.classification.simclr import FinetuneConfig, SimCLRConfig, train_finetune, train_simclr

    device = resolve_device(args.device)
    common = dict(image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
                  limit_per_class=args.per_class, device=args.device)
    data = load_labelled_split(DATA, args.image_size, 0.15, 0, args.per_class)
    x, y = data.x[data.train_idx], data.y[data.train_idx]
    steps = max(10, len(y) // args.batch_size)
    bare = bare_ce(x, y, args.backbone, args.image_size, args.batch_size, steps, device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = [
            ("AFF-CL (two-branch + SupCon queue)", lambda: train_affcl(DATA, tmp / "a", AFFCLConfig(backbone=args.backbone, **common))),
            ("+SupCon queue, one branch", lambda: train_affcl(DATA, tmp / "b", AFFCLConfig(backbone=args.backbone, two_branch=False, **common))),
            ("cross-entropy through the pipeline", lambda: train_affcl(DATA, tmp / "c", AFFCLConfig(backbone=args.backbone, two_branch=False, supcon_weight=0.0, **common))),
            ("SimCLR pre-training (2 views)", lambda: train_simclr(DATA, tmp / "s", SimCLRConfig(backbone=args.backbone, **{**common, "batch_size": args.batch_size}))),
            ("fine-tuning from scratch, 100% labels", lambda: train_finetune(DATA, tmp / "f", FinetuneConfig(backbone=args.backbone, **common))),
        ]
        for name, run in runs:
            folder = run()
            card = json.loads((folder / "model.json").read_text())
            rows.append((name, card["training"]["images_per_second"]))
    print(f"training throughput: backbone {args.backbone}, {args.image_size} px, batch {args.batch_size}, "
          f"{len(y)} training slices, {args.epochs} epochs, device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'pipeline':<40} {'images/s':>9} {'vs bare CE':>10}")
    print(f"{'bare cross-entropy loop (plain PyTorch)':<40} {bare:9.1f} {1.0:9.2f}x")
    for name, ips in rows:
        print(f"{name:<40} {ips:9.1f} {ips / bare:9.2f}x")


if __name__ == "__main__":
    main()
