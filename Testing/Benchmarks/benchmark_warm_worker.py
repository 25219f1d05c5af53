"""Warm worker against the cold path (issue 19), on real data, printed side by side.

1. Slicer logic (``slicer-core`` scene, as the module's GUI calls it): seconds from "Apply" /
   "Segment" to the nodes in the scene for a 3D volume classification (with Grad-CAM) and a
   case segmentation: the cold path (a fresh ``brainspineai`` process per job,
   ``BRAINSPINEAI_WARM_WORKER=0``), then the warm worker's first job (it starts) and second
   job. Beside them the inference time the job itself reports (``seconds`` of its result:
   classification and Grad-CAM; for segmentation preparation, sliding window and restoring),
   measured in the same run, so the machine's load affects both alike. Overhead = total -
   inference: starting a process, importing torch / MONAI, loading the model, writing the
   input and reading the result back into the scene.
2. The ``brainspineai classify`` command: wall seconds for one slice in one call and for 50
   slices in one call (model loaded once), and their ratio.

Usage (from the repository root)::

    python3 Testing/Benchmarks/benchmark_warm_worker.py [--device cpu] [--skip-slicer] [--skip-cli] [--skip-segment]

Absolute times depend on the machine and its load; the ratios are the point.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "BrainSpineAI"), str(ROOT / "BrainSpineAISegment")]
DATA = Path(os.environ.get("BRAINSPINEAI_TEST_DATA", ROOT.parent / "shared" / "data"))
VOLUME = DATA / "volumes" / "brats2015-flair-t1c" / "brats_2013_pat0004_1" / "T1c_subtrMeanDivStd.nii.gz"
CASE = DATA / "volumes" / "brats2015-flair-t1c" / "brats_2013_pat0005_1"
SLICES = DATA / "brain-mri-2d" / "kaggle4-train" / "glioma"


def _load(scene, path, name):
    import slicer

    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetMRMLScene(scene)
    node = logic.AddArchetypeVolume(str(path), name, 0)
    if node is None:
        raise SystemExit(f"cannot load {path}")
    return node


def _timed(start, finish):
    t0 = time.perf_counter()
    job = start()
    if not job.wait(3600):
        raise SystemExit("job did not end")
    out = finish(job)
    return time.perf_counter() - t0, out, job


def _row(what, total, inference):
    extra = f"{inference:8.2f} s {total - inference:8.2f} s" if inference is not None else f"{'':>10} {'':>10}"
    print(f"  {what:<34} {total:8.2f} s {extra}", flush=True)


def bench_slicer(device: str, segment: bool) -> None:
    import slicer

    from BrainSpineAILib import worker_client
    from BrainSpineAILib.classification_logic import ClassificationLogic

    scene = slicer.vtkMRMLScene()
    node = _load(scene, VOLUME, "t1c")
    logic = ClassificationLogic(scene)
    start = lambda: logic.startBackgroundClassification(node, device=device)  # noqa: E731
    print(f"classification of a volume ({VOLUME.parent.name} T1c, 155 slices, Grad-CAM), Slicer logic:")
    print(f"  {'path':<34} {'total':>10} {'inference':>10} {'overhead':>10}")
    os.environ["BRAINSPINEAI_WARM_WORKER"] = "0"
    rows = [("cold (a new process per job)",) + _timed(start, logic.finishBackgroundClassification)[:2]]
    os.environ["BRAINSPINEAI_WARM_WORKER"] = "1"
    rows.append(("warm worker, first job",) + _timed(start, logic.finishBackgroundClassification)[:2])
    rows.append(("warm worker, second job",) + _timed(start, logic.finishBackgroundClassification)[:2])
    for what, total, o in rows:
        _row(what, total, o.result["seconds"])
    if not segment:
        return
    from BrainSpineAISegmentLib.segment_logic import SegmentationLogic

    seg = SegmentationLogic(scene)
    volumes = {"flair": _load(scene, CASE / "Flair_subtrMeanDivStd.nii.gz", "flair"),
               "t1ce": _load(scene, CASE / "T1c_subtrMeanDivStd.nii.gz", "t1c5")}
    start = lambda: seg.startSegmentation(volumes, device=device)  # noqa: E731
    print(f"segmentation of a case ({CASE.name}, FLAIR + T1c, shipped model), Slicer logic:")
    print(f"  {'path':<34} {'total':>10} {'inference':>10} {'overhead':>10}")
    os.environ["BRAINSPINEAI_WARM_WORKER"] = "0"
    rows = [("cold (a new process per job)",) + _timed(start, seg.finishSegmentation)[:2]]
    os.environ["BRAINSPINEAI_WARM_WORKER"] = "1"
    rows.append(("warm worker, first job",) + _timed(start, seg.finishSegmentation)[:2])
    rows.append(("warm worker, second job",) + _timed(start, seg.finishSegmentation)[:2])
    for what, total, o in rows:
        _row(what, total, o.result["seconds"])
    worker_client.stopAll()


def bench_cli(device: str) -> None:
    files = sorted(SLICES.glob("*.jpg"))[:50]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "BrainSpineAI")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))

    def run(inputs, out):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "brainspineai", "classify", *map(str, inputs), "--device", device,
                            "--json-dir", str(out)], capture_output=True, text=True, env=env)
        if r.returncode:
            raise SystemExit(r.stderr)
        return time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        one = run(files[:1], Path(tmp) / "one")
        fifty = run(files, Path(tmp) / "fifty")
    print("brainspineai classify (wall seconds, a new process each call):")
    print(f"  1 slice in one call    {one:8.2f} s")
    print(f"  50 slices in one call  {fifty:8.2f} s   ({fifty / one:.2f} x the single slice; "
          f"{50 / fifty:.1f} slices/s overall)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-slicer", action="store_true")
    ap.add_argument("--skip-segment", action="store_true")
    ap.add_argument("--skip-cli", action="store_true")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    if not args.skip_cli:
        bench_cli(args.device)
    if not args.skip_slicer:
        bench_slicer(args.device, not args.skip_segment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
