"""``brainspineai segment``, ``train segmenter`` and ``evaluate-seg``: 3D BraTS regions."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import InputError
from .common import _check_train_out, _event_sink, _json_line, _overwrite_arg, _suffix_ok
from .preprocess import add_preprocess_arg, preprocess_for
from .progress import add_progress_arg, json_line, make_progress


def _read_sequences(args, needed) -> tuple:
    """(sequence -> image for the sequences the model needs, sorted names of the extra ones given)."""
    from ..io import read_image

    _check_given(args, needed)
    given = {s: getattr(args, s) for s in ("t1", "t1ce", "t2", "flair") if getattr(args, s)}
    return {s: read_image(given[s]) for s in needed}, sorted(set(given) - set(needed))


def _check_given(args, needed) -> None:
    """:raises InputError: a sequence of ``needed`` was not given on the command line."""
    for s in needed:
        if not getattr(args, s, None):
            raise InputError(f"missing sequence {s} (the model needs {', '.join(needed)})")


def _card_sequences(ref) -> list | None:
    """The sequences a local model's card names, read before the network is loaded (so that a
    missing sequence is said at once, not after seconds of imports); ``None`` for a URL or a
    model that cannot be resolved here (its load then says why)."""
    from ..catalogue import DEFAULT_SEGMENTER_ID, read_card, resolve_model
    from ..errors import BrainSpineAIError

    if ref and str(ref).startswith(("http://", "https://", "file://")):
        return None
    try:
        seqs = read_card(resolve_model(ref or DEFAULT_SEGMENTER_ID)).get("sequences")
    except (BrainSpineAIError, OSError, ValueError):
        return None
    return list(seqs) if isinstance(seqs, list) and all(isinstance(x, str) for x in seqs) else None


def _read_checking_overlap(args, seqs) -> tuple:
    """:func:`_read_sequences` for the sequences a model's card names, then sequences that do
    not overlap in space refused before the seconds of loading the network, with the check and
    message of the stage that would refuse them later: the segmenter's own (``--preprocess
    off``) or the registration's. Volumes that a later check refuses for another reason (not
    3D, too small) are left to it, so each input still gets its own line; a bad ``--brain-ml``
    is said first, as before.

    :raises InputError: a bad ``--brain-ml``, an unreadable sequence, or
        sequences that do not overlap."""
    from .preprocess import brain_ml_arg

    brain_ml_arg(args)  # (a bad --overlap is refused by the parser)
    images, extra = _read_sequences(args, seqs)
    if not all(im.GetDimension() == 3 and im.GetNumberOfComponentsPerPixel() == 1 for im in images.values()):
        return images, extra
    if getattr(args, "preprocess", "off") == "off":
        from ..segmentation.prepare import MIN_SEG_SIDE, check_overlap

        if all(min(im.GetSize()) >= MIN_SEG_SIDE for im in images.values()):
            check_overlap(images, seqs)
    else:
        from ..preprocessing.registration import check_overlap as check_pair

        for s in seqs[1:]:
            check_pair(images[seqs[0]], images[s], (seqs[0], s))
    return images, extra


def _case_doc(model, res, out, report) -> dict:
    from ..segmentation.data import LABELS

    return {"model": model.id, "sequences": model.sequences, "reference": model.sequences[0],
            "labelmap": str(Path(out).resolve()), "labels": {str(k): v for k, v in LABELS.items()},
            "regions": res.regions(), "report": report or None, "seconds": res.seconds}


def cmd_segment(args) -> int:
    from ..io import atomic_write_text, write_image_atomic
    from ..outputs import check_outputs
    from ..segmentation.inference import load_segmenter, report_warning, segment
    from .validate import guarded_load
    from .worker import cached_load

    if args.cases:
        return _segment_cases(args)
    if not _suffix_ok(args.out, (".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd")):
        raise InputError(f"--out {args.out}: use a .nii.gz, .nii, .nrrd or .mha file")
    check_outputs([("--out", args.out), ("--json", args.json)],
                  inputs=[getattr(args, s) for s in ("t1", "t1ce", "t2", "flair")] + [args.model])
    seqs = _card_sequences(args.model)
    _check_given(args, seqs or ())  # before seconds of loading the network
    early = _read_checking_overlap(args, seqs) if seqs else None
    model = cached_load(args.model, guarded_load, load_segmenter, args.model, args.device)
    if early is not None and list(model.sequences) == seqs:
        images, extra = early
    else:
        images, extra = _read_sequences(args, model.sequences)
    jsonl = args.progress == "jsonl"
    progress = make_progress(args.progress)
    if jsonl and extra:
        progress(0.0, f"ignoring {', '.join(extra)} (model uses {', '.join(model.sequences)})")
    try:
        images, prep = preprocess_for(args, images, model.sequences[0], progress)
        res = segment(images, model, report=args.report, overlap=args.overlap, tta=args.tta, progress=progress)
    finally:
        progress.close()
    if extra and not jsonl:  # said after the work, so that a refused input gives one line only
        print(f"note: ignoring {', '.join(extra)} (model '{model.id}' uses {', '.join(model.sequences)})", file=sys.stderr)
    warning = report_warning(model.card) if (args.report or "").strip() else None
    doc = _case_doc(model, res, args.out, args.report)
    doc["warnings"] = [warning] if warning else []
    if prep:
        doc["preprocessing"] = prep
    write_image_atomic(res.labelmap, args.out)
    if args.json:
        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
    if warning and not jsonl:
        print(f"warning: {warning}", file=sys.stderr)
    if jsonl:
        _json_line({"event": "done", "result": doc})
    else:
        print(f"model: {model.id}   reference: {model.sequences[0]}   {res.seconds:.1f} s")
        for r, v in doc["regions"].items():
            print(f"  {r}: {v['volume_ml']:.2f} ml ({v['voxels']} voxels)")
        print(f"labelmap (1 NCR, 2 ED, 4 ET): {args.out}")
    return 0


def _segment_cases(args) -> int:
    """``segment --cases DIR --out FOLDER``: every case of DIR (BraTS layouts or dataset.json),
    one model load; ``<case>.nii.gz`` and ``<case>.json`` per case and ``summary.csv`` (region
    volumes in ml) written once all cases are segmented."""
    from ..cases import discover_cases
    from ..io import atomic_write_text, read_image, write_image_atomic
    from ..outputs import check_outputs
    from ..segmentation.inference import load_segmenter, segment
    from .progress import scaled
    from .validate import guarded_load
    from .worker import cached_load

    given = [s for s in ("t1", "t1ce", "t2", "flair") if getattr(args, s)]
    if given or args.json:
        raise InputError(f"--cases takes the sequences from the case folders; leave out --{(given or ['json'])[0]}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise InputError(f"--out {args.out}: with --cases, a folder for the labelmaps (this is a file)")
    cases = discover_cases(args.cases)
    out = Path(args.out)
    check_outputs([("--out", str(out / f"{c.case_id}{ext}")) for c in cases for ext in (".nii.gz", ".json")]
                  + [("--out", str(out / "summary.csv"))], inputs=[args.cases, args.model])
    model = cached_load(args.model, guarded_load, load_segmenter, args.model, args.device)
    for c in cases:  # every case is checked before any is segmented
        missing = [s for s in model.sequences if s not in c.images]
        if missing:
            raise InputError(f"case {c.case_id}: missing sequence {missing[0]} (the model needs {', '.join(model.sequences)})")
    progress = make_progress(args.progress)
    results = []
    try:
        for k, c in enumerate(cases):
            step = scaled(progress, k / len(cases), (k + 1) / len(cases), f"{c.case_id}: ")
            res = segment({s: read_image(c.images[s]) for s in model.sequences}, model, report=args.report,
                          overlap=args.overlap, tta=args.tta, progress=step)
            results.append((c.case_id, res, _case_doc(model, res, out / f"{c.case_id}.nii.gz", args.report)))
    finally:
        progress.close()
    rows = ["case,seconds," + ",".join(f"{r}_ml" for r in results[0][2]["regions"])]
    for cid, res, doc in results:  # all computed: now write
        write_image_atomic(res.labelmap, out / f"{cid}.nii.gz")
        atomic_write_text(out / f"{cid}.json", json.dumps(doc, indent=2) + "\n")
        rows.append(f"{cid},{res.seconds}," + ",".join(f"{v['volume_ml']}" for v in doc["regions"].values()))
    atomic_write_text(out / "summary.csv", "\n".join(rows) + "\n")
    if args.progress == "jsonl":
        _json_line({"event": "done", "result": {"model": model.id, "cases": [d for _, _, d in results]}})
    else:
        print(f"model: {model.id}   {len(results)} cases -> {out}")
        for cid, res, doc in results:
            print(f"  {cid:<28} " + "  ".join(f"{r} {v['volume_ml']:8.2f} ml" for r, v in doc["regions"].items())
                  + f"   {res.seconds:.1f} s")
    return 0


def cmd_train_segmenter(args) -> int:
    _check_train_out(args)
    from ..segmentation.training import SegTrainConfig, train_segmenter

    cfg = SegTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                         sequences=tuple(args.sequences), patch_size=args.patch_size, spacing=args.spacing,
                         val_cases=args.val_cases, samples_per_epoch=args.samples_per_epoch,
                         channels=tuple(args.channels), semantic=not args.no_semantic,
                         image_bridge=not args.no_image_bridge, text_gate=not args.no_text_gate,
                         attention=not args.no_attention, clip_model=args.clip_model, init_model=args.init_model or "",
                         model_id=args.model_id or "",
                         extra_card={"description": args.description} if args.description else {})
    folder = train_segmenter(args.data, args.out, cfg, resume=args.resume, progress=_event_sink(args.events))
    import os

    if os.environ.get("RANK", "0") == "0":
        card = json.loads((Path(folder) / "model.json").read_text())
        mean = card.get("metrics", {}).get("held_out", {}).get("mean")
        extra = (" ; held-out Dice " + ", ".join(f"{r} {v['dice']:.3f}" for r, v in mean.items())) if mean else ""
        print(f"segmenter written to {folder}{extra}")
    return 0


def cmd_evaluate_seg(args) -> int:
    from ..io import atomic_write_text
    from ..outputs import check_outputs
    from ..segmentation.inference import evaluate_cases, load_segmenter
    from .validate import guarded_load

    if not 0 <= args.overlap < 1:
        raise InputError(f"--overlap {args.overlap}: must be in [0, 1)")
    check_outputs([("--json", args.json)], inputs=[args.data_dir, args.model])
    if not Path(args.data_dir).is_dir():
        raise InputError(f"{args.data_dir}: not a dataset folder" if Path(args.data_dir).exists()
                         else f"dataset folder not found: {args.data_dir}")
    model = guarded_load(args.model, load_segmenter, args.model, args.device)
    progress = make_progress(args.progress)
    try:
        doc = evaluate_cases(args.data_dir, model, overlap=args.overlap, tta=args.tta, cases=args.cases,
                             include_training=args.include_training, progress=progress)
    finally:
        progress.close()
    if args.json:
        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
    if args.progress == "jsonl":
        json_line({"event": "done", "result": doc})
        return 0
    print(f"model: {model.id}   data: {args.data_dir} ({len(doc['cases'])} cases)")
    if doc["left_out_training_cases"]:
        print(f"  left out {len(doc['left_out_training_cases'])} training case(s) of the model: "
              f"{', '.join(doc['left_out_training_cases'])} (--include-training to keep them)")
    for w in doc["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"  {'case':<28} " + " ".join(f"{r + ' Dice':>8} {r + ' HD95':>9}" for r in ("WT", "TC", "ET")))
    def fmt(m):
        return " ".join(f"{m[r]['dice']:8.3f} " + (f"{m[r]['hd95_mm']:9.2f}" if m[r]['hd95_mm'] is not None else f"{'n/a':>9}")
                        for r in ("WT", "TC", "ET"))
    for cid, m in doc["cases"].items():
        print(f"  {cid:<28} {fmt(m)}")
    print(f"  {'mean':<28} {fmt(doc['mean'])}   (HD95 in mm)")
    return 0


def add_segment_parser(sub) -> None:
    from ..device import DEVICE_CHOICES

    sg = sub.add_parser("segment", help="3D brain tumour segmentation (WT / TC / ET) -> BraTS labelmap")
    for seq in ("t1", "t1ce", "t2", "flair"):
        sg.add_argument(f"--{seq}", metavar="PATH", help=f"{seq} volume (NIfTI / NRRD / MHA / DICOM folder)")
    sg.add_argument("--report", metavar="TEXT", help="report text for the semantic level (default: per-region "
                    "descriptions); only meaningful with a pre-trained CLIP, not the shipped small-random one")
    sg.add_argument("--cases", metavar="DIR", help="segment every case of DIR (BraTS layouts or dataset.json) "
                                                   "instead of --t1 .. --flair; --out is then a folder")
    sg.add_argument("--out", required=True, help="labelmap to write (.nii.gz), on the grid of the model's first "
                                                 "sequence (with --cases: the folder of <case>.nii.gz, <case>.json "
                                                 "and summary.csv)")
    sg.add_argument("--model", help="segmenter id, folder or URL (default: the shipped FLAIR + T1ce model)")
    sg.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    sg.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1)")
    sg.add_argument("--tta", action="store_true", help="flip test-time augmentation (4 passes)")
    sg.add_argument("--json", metavar="OUT", help="write the result as JSON")
    add_progress_arg(sg)
    add_preprocess_arg(sg)
    sg.set_defaults(func=cmd_segment)



def add_train_parser(tsub) -> None:
    from ..device import DEVICE_CHOICES

    tg = tsub.add_parser("segmenter", help="CLIP-guided 3D U-Net on BraTS-layout cases (leave-cases-out)")
    tg.add_argument("--data", required=True, help="BraTS 2015/2020/2023 case folders or a dataset.json root")
    tg.add_argument("--out", required=True, help="model folder to write")
    _overwrite_arg(tg)
    tg.add_argument("--sequences", nargs="+", default=["flair", "t1ce"], help="input sequences; the first is the reference grid")
    tg.add_argument("--epochs", type=int, default=30)
    tg.add_argument("--patch-size", type=int, default=48, help="training patch / sliding window side in voxels")
    tg.add_argument("--spacing", type=float, default=2.0, help="model voxel size in mm (isotropic)")
    tg.add_argument("--batch-size", type=int, default=2, help="patches per step, per process")
    tg.add_argument("--samples-per-epoch", type=int, default=0, help="patches per epoch (0: 8 per training case)")
    tg.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    tg.add_argument("--seed", type=int, default=0)
    tg.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    tg.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128], help="U-Net feature channels per level")
    tg.add_argument("--clip-model", default="small-random",
                    help="small-random (local, no download), ARCH/TAG, ARCH/LOCAL_CHECKPOINT or hf-hub:NAME")
    tg.add_argument("--no-semantic", action="store_true", help="no CLIP level at all (plain attention residual U-Net)")
    tg.add_argument("--no-text-gate", action="store_true")
    tg.add_argument("--no-image-bridge", action="store_true")
    tg.add_argument("--no-attention", action="store_true", help="no semantic spatial attention on TC / ET")
    tg.add_argument("--val-cases", type=int, default=1, help="last N cases (sorted by id) held out for the card's metrics")
    tg.add_argument("--init-model", metavar="ID|DIR", help="fine-tune from this segmenter (version + 1, parent recorded)")
    tg.add_argument("--resume", action="store_true", help="continue from <out>.work/last.pt")
    tg.add_argument("--events", metavar="FILE", help="append progress events as JSON lines to FILE ('-' = stdout)")
    tg.add_argument("--model-id", help="id in the model card (default: the --out folder name)")
    tg.add_argument("--description", help="one-line description for the model card")
    tg.set_defaults(func=cmd_train_segmenter)



def add_evaluate_parser(sub) -> None:
    from ..device import DEVICE_CHOICES

    es = sub.add_parser("evaluate-seg", help="Dice and HD95 (mm) per region per case of a segmenter")
    es.add_argument("data_dir", help="labelled cases (BraTS layouts or dataset.json)")
    es.add_argument("--model", help="segmenter id, folder or URL (default: the shipped one)")
    es.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    es.add_argument("--overlap", type=float, default=0.5)
    es.add_argument("--tta", action="store_true")
    add_progress_arg(es)
    es.add_argument("--cases", nargs="+", metavar="ID", help="evaluate only these case ids (training cases included)")
    es.add_argument("--include-training", action="store_true",
                    help="keep the cases the model card lists as training data (left out by default)")
    es.add_argument("--json", metavar="OUT", help="write the metrics as JSON")
    es.set_defaults(func=cmd_evaluate_seg)

