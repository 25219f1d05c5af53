"""Seconds and peak memory to segment one 240x240x155 case: the CLIP-guided 3D U-Net
(brainspineai.segmentation.network) beside MONAI SegResNet of similar parameter count, with the same
preparation (2 mm, FLAIR + T1ce) and the same MONAI sliding window (48^3 windows, overlap
0.5, Gaussian weighting, 2 windows per batch).

Each model runs in its own process (``--one NAME``) so the peak resident memory
(``ru_maxrss``) belongs to that model alone; on CUDA ``torch.cuda.max_memory_allocated`` is
reported too. Seconds are the median of ``--repeat`` runs after one warm-up run.
Usage (from the repository root):

    python3 Testing/Benchmarks/benchmark_segmentation.py [--device cpu|cuda] [--repeat 3] [--out results/x.md]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BrainSpineAI"))
DATA = Path(os.environ.get("BRAINSPINEAI_TEST_DATA", ROOT.parent / "shared" / "data"))
CASE = DATA / "volumes" / "brats2015-flair-t1c" / "brats_2013_pat0005_1"


def _segresnet(target_params: int):
    from monai.networks.nets import SegResNet

    from brainspineai.segmentation.network import count_parameters

    best = None
    for f in range(8, 65, 8):  # GroupNorm(8) needs multiples of 8
        net = SegResNet(spatial_dims=3, in_channels=2, out_channels=3, init_filters=f)
        n = count_parameters(net)
        if best is None or abs(n - target_params) < abs(best[1] - target_params):
            best = (f, n)
    return SegResNet(spatial_dims=3, in_channels=2, out_channels=3, init_filters=best[0]), best[0]


def run_one(name: str, device: str, repeat: int) -> dict:
    import SimpleITK as sitk
    import torch
    from monai.inferers import sliding_window_inference

    from brainspineai.device import resolve_device
    from brainspineai.segmentation.inference import LoadedSegmenter, load_segmenter, predict_probabilities
    from brainspineai.segmentation.network import SegmenterConfig, build_segmenter, count_parameters
    from brainspineai.segmentation.prepare import prepare, restore

    dev = resolve_device(device)
    try:
        model = load_segmenter(None, device)
        ours, source = model.network, f"shipped model {model.id}"
    except Exception:  # no shipped model yet: same architecture, random weights (timing is the same)
        ours, source = build_segmenter(SegmenterConfig()).to(dev).eval(), "random weights"
    images = {"flair": sitk.ReadImage(str(CASE / "Flair_subtrMeanDivStd.nii.gz")),
              "t1ce": sitk.ReadImage(str(CASE / "T1c_subtrMeanDivStd.nii.gz"))}
    if name == "ours":
        net, info = ours, {"parameters": count_parameters(ours), "trainable": count_parameters(ours, True),
                           "weights": source}
    else:
        net, f = _segresnet(count_parameters(ours))
        net = net.to(dev).eval()
        info = {"parameters": count_parameters(net), "init_filters": f}

    def once():
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        prep = prepare(images, ["flair", "t1ce"], 2.0)
        if name == "ours":
            prob = predict_probabilities(net, prep.image, 48, overlap=0.5, device=dev)
        else:
            with torch.no_grad():
                x = torch.from_numpy(prep.image)[None].to(dev)
                prob = torch.sigmoid(sliding_window_inference(x, (48,) * 3, 2, net, overlap=0.5, mode="gaussian"))[0]
                prob = prob.float().cpu().numpy()
        restore(prob, prep)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    once()  # warm-up
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    secs = [once() for _ in range(repeat)]
    out = {"name": name, "device": str(dev), "seconds": round(statistics.median(secs), 2),
           "runs": [round(s, 2) for s in secs], "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           **info}
    if dev.type == "cuda":
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--one", choices=["ours", "segresnet"])
    ap.add_argument("--out", help="also write the table (markdown) here")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one, a.device, a.repeat)))
        return
    rows = []
    for name in ("ours", "segresnet"):
        r = subprocess.run([sys.executable, __file__, "--one", name, "--device", a.device, "--repeat", str(a.repeat)],
                           capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{name} failed:\n{r.stderr[-3000:]}")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    ours, seg = rows
    import torch

    lines = [f"# Segmentation benchmark: one 240x240x155 case ({CASE.name}), FLAIR + T1ce, 2 mm, sliding window 48^3, "
             f"overlap 0.5", "",
             f"device {ours['device']}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs visible (shared with other jobs: figures are indicative), median of {a.repeat} runs "
             f"after a warm-up; each model in its own process", "",
             "| model | parameters | seconds / case | peak RSS MiB | CUDA max allocated MiB |", "|---|---|---|---|---|"]
    for r, label in ((ours, f"CLIP-guided 3D U-Net ({ours['weights']}; {ours['trainable']} trainable, rest frozen CLIP)"),
                     (seg, f"MONAI SegResNet init_filters={seg['init_filters']}")):
        lines.append(f"| {label} | {r['parameters']} | {r['seconds']} | {r['peak_rss_mib']} | "
                     f"{r.get('cuda_max_allocated_mib', '-')} |")
    lines += ["", f"ratio ours / SegResNet: time {ours['seconds'] / seg['seconds']:.2f}x, "
                  f"peak RSS {ours['peak_rss_mib'] / seg['peak_rss_mib']:.2f}x", "",
              "runs (s): ours " + ", ".join(map(str, ours["runs"])) + "; SegResNet " + ", ".join(map(str, seg["runs"]))]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
