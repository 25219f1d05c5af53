"""Classification speed and memory, beside a bare torchvision ResNet-18 of the same input size.

Prints, for the machine it runs on:
  - milliseconds per slice: classification alone, and with Grad-CAM (one 2D slice at a time,
    preparation included, model already loaded);
  - slices per second on a 240x240x155 volume (the real BraTS 2023 T1c case), without and
    with the Grad-CAM heatmap volume;
  - peak memory (process RSS on the CPU; allocated GPU memory on CUDA);
  - the same figures for a bare ``torchvision.models.resnet18`` forward pass on the same
    input size (3 x 128 x 128), and the ratios.

Usage: python Testing/Benchmarks/benchmark_classification.py [--device auto|cpu|cuda] [--repeats N]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BrainSpineAI"))
DATA = ROOT.parent / "shared" / "data"


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn, repeats: int, sync) -> float:
    fn()  # warm-up
    sync()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    import torch
    import torchvision

    from brainspineai.catalogue import load_model
    from brainspineai.classification.inference import classify_image
    from brainspineai.io import read_image

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()

    model = load_model(None, args.device)
    dev = model.device
    size = model.input_size
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    gpu_peak = (lambda: torch.cuda.max_memory_allocated() / 2**20) if dev.type == "cuda" else (lambda: float("nan"))
    slice_path = sorted((DATA / "brain-mri-2d" / "kaggle4-train" / "glioma").glob("*.jpg"))[0]
    volume_path = DATA / "volumes" / "brats2023-4seq-noseg" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1c.nii.gz"
    sl = read_image(slice_path)
    vol = read_image(volume_path)
    assert vol.GetSize() == (240, 240, 155)
    print(f"device: {dev} ({torch.cuda.get_device_name() if dev.type == 'cuda' else 'CPU, ' + str(torch.get_num_threads()) + ' threads'})")
    print(f"model: {model.id} ({model.card['architecture']}, input {size}x{size}); torch {torch.__version__}")

    t_cls = timed(lambda: classify_image(sl, model), args.repeats, sync)
    t_cam = timed(lambda: classify_image(sl, model, heatmap=True), args.repeats, sync)
    t_vol = timed(lambda: classify_image(vol, model), 2, sync)
    t_vol_cam = timed(lambda: classify_image(vol, model, heatmap=True), 2, sync)
    ours_rss, ours_gpu = rss_mib(), gpu_peak()

    bare = torchvision.models.resnet18(num_classes=4).to(dev).eval()
    x1 = torch.rand(1, 3, size, size, device=dev)
    xv = torch.rand(155, 3, size, size, device=dev)
    with torch.no_grad():
        t_bare = timed(lambda: bare(x1), args.repeats, sync)
        t_bare_vol = timed(lambda: [bare(xv[i:i + 64]) for i in range(0, 155, 64)], 2, sync)
    bare_gpu = gpu_peak()

    print()
    print(f"{'':44}{'BrainSpineAI':>14}{'bare ResNet-18':>16}{'ours/bare':>11}")
    print(f"{'ms per slice, classification':44}{t_cls * 1e3:14.1f}{t_bare * 1e3:16.1f}{t_cls / t_bare:11.2f}")
    print(f"{'ms per slice, classification + Grad-CAM':44}{t_cam * 1e3:14.1f}{t_bare * 1e3:16.1f}{t_cam / t_bare:11.2f}")
    print(f"{'slices/s, 240x240x155 volume':44}{155 / t_vol:14.1f}{155 / t_bare_vol:16.1f}{(155 / t_vol) / (155 / t_bare_vol):11.2f}")
    print(f"{'slices/s, volume + Grad-CAM volume':44}{155 / t_vol_cam:14.1f}{155 / t_bare_vol:16.1f}{(155 / t_vol_cam) / (155 / t_bare_vol):11.2f}")
    print(f"{'peak process RSS (MiB)':44}{ours_rss:14.0f}{'(same process)':>16}")
    if dev.type == "cuda":
        print(f"{'peak GPU memory allocated (MiB)':44}{ours_gpu:14.0f}{bare_gpu:16.0f}")
    print("\n(BrainSpineAI figures include reading nothing from disk but do include intensity normalisation,\n"
          " padding / resizing, softmax and, for volumes, reorientation and the volume-level rule.)")


if __name__ == "__main__":
    main()
