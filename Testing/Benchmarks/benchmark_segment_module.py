"""Timing of the BrainSpineAI Segment module's logic on a real case, in a plain-Python MRML
scene (``slicer-core``): seconds from "Segment" to the segmentation node in the scene (the
background ``brainspineai segment`` process included), the node build alone (labelmap ->
three segments + closed surfaces) and the export of the case to a training set.

Usage (from the repository root)::

    python3 Testing/Benchmarks/benchmark_segment_module.py [--model ID|DIR] [--device cpu] [--case DIR] [--repeat 1]

The default case is ``../shared/data/volumes/brats2015-flair-t1c/brats_2013_pat0005_1`` (FLAIR + T1c);
the default model is the catalogue's first segmentation model (the shipped default when present).
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "BrainSpineAI"), str(ROOT / "BrainSpineAISegment")]
DEFAULT_CASE = ROOT.parent / "shared" / "data" / "volumes" / "brats2015-flair-t1c" / "brats_2013_pat0005_1"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--case", type=Path, default=DEFAULT_CASE)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    import slicer

    from BrainSpineAISegmentLib.segment_logic import SegmentationLogic

    scene = slicer.vtkMRMLScene()
    volumes_logic = slicer.vtkSlicerVolumesLogic()
    volumes_logic.SetMRMLScene(scene)
    t0 = time.perf_counter()
    for path in sorted(args.case.glob("*.nii*")):
        name = path.name.split(".")[0]
        if "mask" in name.lower() or "OTMultiClass" in name or name.endswith("seg"):
            continue
        volumes_logic.AddArchetypeVolume(str(path), name)
    load_s = time.perf_counter() - t0
    logic = SegmentationLogic(scene)
    volumes = logic.guessVolumes()
    card = logic.modelCard(args.model)
    print(f"case {args.case.name}: {', '.join(f'{s}={n.GetName()}' for s, n in volumes.items())} "
          f"(loaded in {load_s:.1f} s); model {card['id']} needs {', '.join(card['sequences'])}; device {args.device}")
    rows = []
    for i in range(args.repeat):
        t0 = time.perf_counter()
        job = logic.startSegmentation(volumes, modelRef=card["path"], device=args.device)
        start_s = time.perf_counter() - t0
        job.wait(3600)
        out = logic.finishSegmentation(job)
        total = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            t1 = time.perf_counter()
            logic.exportTrainingCase(Path(tmp) / "set", "case", {s: volumes[s] for s in card["sequences"]},
                                     out.segmentationNode)
            export_s = time.perf_counter() - t1
        regions = out.result["regions"]
        rows.append((total, start_s, out.result["seconds"], out.seconds["nodes"], export_s))
        print(f"run {i + 1}: Segment -> nodes in scene {total:.1f} s | writing inputs {start_s:.2f} s | "
              f"CLI inference {out.result['seconds']:.1f} s | node build {out.seconds['nodes']:.2f} s | "
              f"export {export_s:.2f} s | WT {regions['WT']['volume_ml']:.1f} ml, TC {regions['TC']['volume_ml']:.1f} ml, "
              f"ET {regions['ET']['volume_ml']:.1f} ml")
        scene.RemoveNode(out.segmentationNode)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak memory: this process (scene) {peak:.0f} MiB, CLI process {child:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
