"""``brainspineai preprocess``: co-registration onto the reference sequence and brain
extraction (:mod:`brainspineai.preprocessing`), and the ``--preprocess`` option other
commands share (:func:`add_preprocess_arg`, :func:`preprocess_for`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import InputError
from .common import _json_line

SEQUENCES = ("t1", "t1ce", "t2", "flair")


def add_preprocess_arg(p, default: str = "auto", single: bool = False) -> None:
    text = ("extract the brain (deepbet) of a 3D input first, on its own grid; auto: only where a skull is still "
            "there (2D slices are left alone)" if single else
            "co-register the sequences onto the reference and extract the brain (deepbet) first; "
            "auto: register only when the head moved > 1 mm, strip only a skull still there")
    p.add_argument("--preprocess", choices=["auto", "on", "off"], default=default, help=f"{text} (default: {default})")
    p.add_argument("--brain-ml", type=float, nargs=2, default=[400.0, 2500.0], metavar=("MIN", "MAX"),
                   help="with --preprocess: plausible brain volume in ml; a mask outside it is refused "
                        "(default: 400 2500; studies with a placeholder voxel spacing need a wider range)")


def brain_ml_arg(args) -> tuple:
    """``--brain-ml MIN MAX`` as a tuple of ml.

    :raises InputError: not 0 < MIN < MAX."""
    lo, hi = (float(v) for v in getattr(args, "brain_ml", (400.0, 2500.0)))
    if not 0 < lo < hi:
        raise InputError(f"--brain-ml {lo:g} {hi:g}: give 0 < MIN < MAX (ml)")
    return lo, hi


def _device(name: str) -> str:
    from ..device import resolve_device

    return "cuda" if str(resolve_device(name)).startswith("cuda") else "cpu"


def preprocess_for(args, images: dict, reference: str, progress=None) -> tuple:
    """(images on the reference grid, report dict or ``None`` for ``off``) for a command with
    ``--preprocess``; prints what ``auto`` did on stderr unless ``progress`` is given."""
    mode = getattr(args, "preprocess", "off")
    brain_ml = brain_ml_arg(args)  # a bad range is refused even when nothing is preprocessed
    if mode == "off":
        return images, None
    from ..preprocessing.pipeline import preprocess
    from .worker import cached_preprocess

    device = _device(getattr(args, "device", "cpu"))

    def compute():
        res = preprocess(images, reference, mode=mode, device=device, brain_ml=brain_ml, progress=progress)
        return res.images, res.report

    out, report = cached_preprocess(images, (mode, reference, brain_ml, device), compute)
    if progress is None:
        print(summary_line(report), file=sys.stderr)
    else:
        progress(0.0, summary_line(report))
    return out, report


def summary_line(rep: dict) -> str:
    parts = [f"{s}: {'registered' if d['applied'] else 'header only'} (moved {d['motion_mm']:.1f} mm, NMI "
             f"{d['quality_nmi']:.3f})" for s, d in rep["registration"].items()]
    be = rep["brain_extraction"]
    if be.get("model") is None:
        parts.append(f"brain extraction {be['reason']}")
    else:
        parts.append(f"brain mask on {be['sequence']} {be['volume_ml']:.0f} ml, "
                     + ("applied" if be["applied"] else "not applied (already skull-stripped)"))
    reused = " (reused from the previous job on the same volumes)" if rep.get("reused") else ""
    return f"preprocessing ({rep['mode']}){reused}: " + "; ".join(parts)


def cmd_preprocess(args) -> int:
    from ..io import atomic_write_text, read_image, write_image_atomic
    from ..preprocessing.pipeline import preprocess

    given = {s: getattr(args, s) for s in SEQUENCES if getattr(args, s)}
    if not given:
        raise InputError("give at least one sequence (--t1, --t1ce, --t2, --flair)")
    ref = args.reference or next(s for s in ("flair", "t1ce", "t1", "t2") if s in given)
    if ref not in given:
        raise InputError(f"--reference {ref}: that sequence was not given")
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out-dir {out}: exists and is not a folder")
    images = {s: read_image(p) for s, p in given.items()}
    jsonl = args.progress == "jsonl"
    progress = (lambda f, m: _json_line({"event": "progress", "fraction": round(f, 3), "message": m})) if jsonl else None  # noqa: E731
    res = preprocess(images, ref, mode=args.mode, affine=args.affine, device=_device(args.device),
                     extract_on=args.extract_on, brain_ml=brain_ml_arg(args), progress=progress)
    files = {s: str((out / f"{s}.nii.gz").resolve()) for s in res.images}
    if res.mask is not None:
        files["brain_mask"] = str((out / "brain_mask.nii.gz").resolve())
    doc = dict(res.report, inputs={s: str(Path(p).resolve()) for s, p in given.items()}, outputs=files)
    for s, img in res.images.items():
        write_image_atomic(img, files[s])
    if res.mask is not None:
        write_image_atomic(res.mask, files["brain_mask"])
    atomic_write_text(out / "preprocessing.json", json.dumps(doc, indent=2) + "\n")
    if jsonl:
        _json_line({"event": "progress", "fraction": 1.0, "message": summary_line(res.report)})
        _json_line({"event": "done", "result": doc})
        return 0
    print(summary_line(res.report))
    print(f"written to {out} ({', '.join(sorted(Path(f).name for f in files.values()))}, preprocessing.json)")
    return 0


def add_parser(sub) -> None:
    from ..device import DEVICE_CHOICES

    p = sub.add_parser("preprocess", help="co-register the sequences and extract the brain (raw clinical studies)")
    for seq in SEQUENCES:
        p.add_argument(f"--{seq}", metavar="PATH", help=f"{seq} volume (NIfTI / NRRD / MHA / DICOM folder)")
    p.add_argument("--out-dir", required=True, help="folder for <seq>.nii.gz, brain_mask.nii.gz, preprocessing.json")
    p.add_argument("--reference", choices=SEQUENCES, help="grid everything is put on (default: flair, else t1ce, t1, t2)")
    p.add_argument("--mode", choices=["auto", "on"], default="on",
                   help="on: apply registration and mask; auto: only where the data needs them")
    p.add_argument("--affine", action="store_true", help="refine the rigid registration with an affine one")
    p.add_argument("--extract-on", choices=SEQUENCES, help="sequence for brain extraction (default: t1, t1ce, flair, t2)")
    p.add_argument("--brain-ml", type=float, nargs=2, default=[400.0, 2500.0], metavar=("MIN", "MAX"),
                   help="plausible brain mask volume in ml; outside it: error")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--progress", choices=["text", "jsonl"], default="text",
                   help="jsonl: progress and result as JSON lines on stdout (for 3D Slicer)")
    p.set_defaults(func=cmd_preprocess)
